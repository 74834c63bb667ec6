"""Checks a routed chat request's shape before any model sees it.

LiteLLM passes many malformed bodies on to the provider code, which fails on them with an
`APIConnectionError` (a 500, or a fallback to the other model that fails the same way). Caught
here, they are a 400 naming the field, and no upstream is called. The request is described by
pydantic models of the fields the plugin and the providers rely on; every other field is
LiteLLM's business and passes unread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

MessageRole = Literal["system", "developer", "user", "assistant", "tool", "function"]
PartType = Literal["text", "image_url", "input_audio", "file", "refusal", "video_url"]
MESSAGE_ROLES = frozenset(get_args(MessageRole))
MAX_CHOICES = 128
# Bigger than any model's context window: a max_tokens above it is a bug in the client. Large but
# plausible values (131072) pass; the plugin clamps them for Cerebras (rate_limits.max_tokens_cap).
MAX_OUTPUT_TOKENS = 1 << 20
# Names of the content's two forms in an error's location; a space keeps them apart from field
# names (a text part's field is also called "text"), so they can be left out of the location shown.
_AS_TEXT, _AS_PARTS = "content text", "content parts"


@dataclass(frozen=True)
class Invalid:
    """What is wrong, and the request field it is about."""

    message: str
    param: str


class _Checked(BaseModel):
    """The checked fields of one part of a request; the others are not read. The class names show
    in errors ("messages[0]: Input should be a valid dictionary or instance of Message")."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ContentPart(_Checked):
    type: PartType
    text: StrictStr | None = None

    @model_validator(mode="after")
    def _text_parts_have_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs its text, a string")
        return self


def _content_form(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return _AS_TEXT
    return _AS_PARTS if isinstance(value, list) else None


_Content = Annotated[
    Annotated[StrictStr | None, Tag(_AS_TEXT)] | Annotated[list[ContentPart], Tag(_AS_PARTS)],
    Discriminator(_content_form, custom_error_type="content_type", custom_error_message="must be a string or a list of content parts"),
]


# Roles whose message is nothing without its content (an assistant's may be only tool calls).
_CONTENT_ROLES = frozenset({"system", "developer", "user"})


class Message(_Checked):
    role: MessageRole
    content: _Content = None
    tool_call_id: StrictStr | None = None

    @model_validator(mode="after")
    def _has_what_its_role_needs(self) -> Message:
        if self.role in _CONTENT_ROLES and self.content is None:
            raise ValueError(f"a {self.role} message needs its content")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self


def _not_empty(messages: list[Message]) -> list[Message]:
    if not messages:
        raise ValueError("must not be empty")
    return messages


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


_Tokens = Annotated[StrictInt, Field(ge=1, le=MAX_OUTPUT_TOKENS)]
_Penalty = Annotated[StrictFloat, Field(ge=-2.0, le=2.0)]


class ChatRequest(_Checked):
    # The ranges are OpenAI's documented ones.
    messages: Annotated[list[Message], AfterValidator(_not_empty)]
    max_tokens: _Tokens | None = None
    max_completion_tokens: _Tokens | None = None
    temperature: Annotated[StrictFloat, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] | None = None
    presence_penalty: _Penalty | None = None
    frequency_penalty: _Penalty | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_CHOICES)] | None = None
    stream: StrictBool | None = None
    tools: list[dict[str, Any]] | None = None
    stop: Annotated[list[StrictStr], BeforeValidator(_listed)] | None = None  # one string or several


def _where(location: tuple[int | str, ...]) -> str:
    """('messages', 0, 'content', 'content parts', 1) -> 'messages[0].content[1]'."""
    where = ""
    for step in location:
        if isinstance(step, int):
            where += f"[{step}]"
        elif " " not in step:
            where += f".{step}" if where else step
    return where


def _invalid(error: ErrorDetails) -> Invalid:
    where = _where(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] != "missing" and isinstance(value, (str, int, float)):
        message += f" (got {repr(value)[:40]})"  # a scalar only, cut: never echo a whole message back
    return Invalid(f"{where}: {message}" if where else message, where or "messages")


def request_problem(data: Any) -> Invalid | None:
    """The first thing wrong with a chat request, or None if its shape is fine."""
    try:
        ChatRequest.model_validate(data)
    except ValidationError as error:
        return _invalid(error.errors(include_url=False)[0])
    return None


# A text completion's prompt as Cerebras can take it: LiteLLM turns it into chat messages, which
# it cannot do for token ids (it fails with a 500 "Unmapped prompt format").
_TEXT_PROMPT: TypeAdapter[str | list[str]] = TypeAdapter(StrictStr | list[StrictStr])


def text_prompt_problem(data: Any) -> Invalid | None:
    """What is wrong with a text completion's prompt for Cerebras, or None if it is text."""
    try:
        _TEXT_PROMPT.validate_python(data.get("prompt") if isinstance(data, dict) else None)
    except ValidationError:
        return Invalid("prompt: must be text, a string or a list of strings (token ids cannot be sent to Cerebras)", "prompt")
    return None
