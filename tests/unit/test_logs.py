"""glm_saver.logs: the rotating file and the console, set up once, with secrets redacted."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from glm_saver.logs import LOGGER_NAME, REDACTED, RedactSecrets, configure_logging, secret_env_values
from glm_saver.settings import LoggingSettings

CEREBRAS_KEY = "csk-9f8e7d6c5b4a39281706"
MASTER_KEY = "sk-master-abcdef0123456789"
ODD_SECRET = "plain-looking-secret-value"  # matches no pattern: only the env var says it is secret
ENVIRON = {"CEREBRAS_API_KEY": CEREBRAS_KEY, "MY_DB_PASSWORD": ODD_SECRET, "HOME": "/root/home-not-secret", "SOME_TOKEN": "1"}


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    """configure_logging changes a process-wide logger; put it back for the other tests."""
    logger = logging.getLogger(LOGGER_NAME)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    for handler in logger.handlers:
        if handler not in handlers:
            handler.close()
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def _configure(tmp_path: Path, **settings: object) -> Path | None:
    return configure_logging(LoggingSettings(**settings), tmp_path, environ=ENVIRON)


def _flush() -> None:
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        handler.flush()


def test_records_go_to_the_file_beside_the_config_and_to_stderr(tmp_path: Path, capsys) -> None:
    path = _configure(tmp_path, file="logs/glm.log")
    assert path == tmp_path / "logs" / "glm.log"
    logging.getLogger(LOGGER_NAME).warning("glm_saver: cerebras failed with %s", 503)
    logging.getLogger(f"{LOGGER_NAME}.budgets").info("budget alpha reached 50%%")
    _flush()
    text = path.read_text()
    assert "WARNING glm_saver: cerebras failed with 503" in text
    assert "INFO budget alpha reached 50%" in text
    assert "cerebras failed with 503" in capsys.readouterr().err


def test_an_absolute_file_is_used_as_is(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "x.log"
    assert _configure(tmp_path / "config-dir", file=str(target)) == target
    logging.getLogger(LOGGER_NAME).info("hello")
    _flush()
    assert "hello" in target.read_text()


def test_configuring_twice_does_not_stack_handlers(tmp_path: Path) -> None:
    path = _configure(tmp_path)
    before = len(logging.getLogger(LOGGER_NAME).handlers)
    assert _configure(tmp_path) == path
    assert len(logging.getLogger(LOGGER_NAME).handlers) == before
    logging.getLogger(LOGGER_NAME).info("exactly once")
    _flush()
    assert path.read_text().count("exactly once") == 1


def test_without_a_file_only_the_console_is_written(tmp_path: Path, capsys) -> None:
    assert _configure(tmp_path, file=None) is None
    logging.getLogger(LOGGER_NAME).info("console only")
    _flush()
    assert "console only" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_level_drops_quieter_records(tmp_path: Path) -> None:
    path = _configure(tmp_path, level="WARNING")
    logger = logging.getLogger(LOGGER_NAME)
    logger.info("routine decision")
    logger.error("upstream failure")
    _flush()
    text = path.read_text()
    assert "upstream failure" in text and "routine decision" not in text


def test_the_file_rotates_at_max_bytes_keeping_backup_count_files(tmp_path: Path) -> None:
    path = _configure(tmp_path, file="r.log", max_bytes=1024, backup_count=2)
    for n in range(200):
        logging.getLogger(LOGGER_NAME).info("line %03d %s", n, "x" * 40)
    _flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.log", "r.log.1", "r.log.2"]
    assert all(p.stat().st_size <= 1024 for p in tmp_path.iterdir())
    assert "line 199" in path.read_text()


@pytest.mark.parametrize(
    "secret",
    [CEREBRAS_KEY, MASTER_KEY, ODD_SECRET, "sk-proj-AbC123_def-456", "csk-short1"],
)
def test_secrets_in_messages_and_arguments_are_redacted(tmp_path: Path, capsys, secret: str) -> None:
    path = _configure(tmp_path)
    logger = logging.getLogger(LOGGER_NAME)
    logger.warning("in the message " + secret)  # noqa: G003 - a secret already inside the message, on purpose
    logger.warning("in an argument %s", secret)
    logger.warning("in a mapping %s", {"headers": {"authorization": f"Bearer {secret}"}})
    _flush()
    for text in (path.read_text(), capsys.readouterr().err):
        assert secret not in text
        assert text.count(REDACTED) >= 3


@pytest.mark.parametrize(
    "line",
    ["Authorization: Bearer opaque.jwt.token-value", "x-litellm-api-key: opaque-value-123", 'api_key="opaque-value-123"', "api-key=opaque-value-123"],
)
def test_key_shaped_fields_are_redacted_whatever_the_value(line: str) -> None:
    redacted = RedactSecrets().redact(line)
    assert "opaque" not in redacted
    assert REDACTED in redacted


def test_a_traceback_is_redacted_too(tmp_path: Path) -> None:
    path = _configure(tmp_path)
    try:
        raise RuntimeError(f"upstream said no to {CEREBRAS_KEY}")
    except RuntimeError:
        logging.getLogger(LOGGER_NAME).exception("call failed")
    _flush()
    text = path.read_text()
    assert "RuntimeError: upstream said no to" in text
    assert CEREBRAS_KEY not in text


def test_ordinary_text_is_left_alone() -> None:
    line = "glm_saver: glm-saver -> local (classifier-simple: score 0.12); task-abc disk-usage 1 /root/home-not-secret"
    assert RedactSecrets(secret_env_values(ENVIRON)).redact(line) == line


def test_only_long_values_of_secret_named_env_vars_are_secrets() -> None:
    assert set(secret_env_values(ENVIRON)) == {CEREBRAS_KEY, ODD_SECRET}
