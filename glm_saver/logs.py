"""The plugin's log: the `glm_saver` logger to a rotating file and the console, secrets redacted.

Levels follow the issue: INFO for routing decisions, WARNING for fallbacks, rate limits and budget
alerts, ERROR for failures. Every record that reaches these handlers (the `glm_saver` logger and its
children) passes `RedactSecrets` first, so a key that slips into a message, its arguments or a
traceback is written as `[REDACTED]`. Prompt and answer text is never logged by the plugin; the
filter cannot recognise it, so that rule is kept by the callers (and checked by the e2e tests).

Nothing is written on the caller's thread: the logger's one handler appends records to a queue,
and a writer thread redacts, formats and writes them (file and console), so a slow disk or a full
pipe never stalls the proxy's event loop. The writer wakes every DRAIN_SECONDS rather than for each
record: waking a thread per routing decision cost the loop a thread switch per request. `flush()`
on that handler waits until every record queued so far is written, and the writer drains the queue
at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from logging.handlers import QueueHandler, RotatingFileHandler
from pathlib import Path

from glm_saver.settings import LoggingSettings

LOGGER_NAME = "glm_saver"
REDACTED = "[REDACTED]"
FORMAT = "%(asctime)s %(levelname)s %(message)s"  # messages start with "glm_saver: "
# Marks the handlers configure_logging added, so a second call replaces them instead of stacking.
_OURS = "_glm_saver_handler"
SECRET_NAME_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD")
# Shorter env values ("1", "true", a port) are settings, not secrets; redacting them would mangle text.
MIN_SECRET_LENGTH = 8
# Records waiting for the writer thread. A disk that stalls this long drops records (counted in
# `BackgroundHandler.dropped`) rather than growing the proxy's memory without bound.
MAX_QUEUED_RECORDS = 10_000
# How long a record may wait for the writer thread (a flush or the exit does not wait for this).
DRAIN_SECONDS = 0.2

_PATTERNS = (
    # Authorization: Bearer <token>
    (re.compile(r"(?i)\bbearer\s+[^\s'\",;]+"), f"Bearer {REDACTED}"),
    # OpenAI-style and Cerebras keys: sk-..., sk-proj-..., csk-...
    (re.compile(r"\b(?:sk|csk)-[A-Za-z0-9][A-Za-z0-9_\-]{5,}"), REDACTED),
    # api_key=..., "api-key": "...", x-litellm-api-key: ...
    (re.compile(r"(?i)(api[_-]?key['\"]?\s*[:=]\s*['\"]?)[^\s'\",;}]+"), rf"\g<1>{REDACTED}"),
)


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of env vars whose name says they are secret (…KEY, …SECRET, …TOKEN, …PASSWORD)."""
    environ = os.environ if environ is None else environ
    values = {value for name, value in environ.items() if any(word in name.upper() for word in SECRET_NAME_WORDS) and len(value) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)  # longest first: a value containing another goes whole


class RedactSecrets(logging.Filter):
    """Rewrites each record's text (message, arguments, traceback) with secrets replaced."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if secret]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string (any error): keep the raw parts, still redacted
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
            record.exc_info = None  # the formatter would otherwise print the raw traceback again
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def log_file_path(settings: LoggingSettings, config_dir: str | Path) -> Path | None:
    """Where the log goes: `file` relative to the config's folder (None: console only)."""
    if settings.file is None:
        return None
    path = Path(settings.file).expanduser()
    return path if path.is_absolute() else Path(config_dir) / path


def _handlers(settings: LoggingSettings, config_dir: str | Path) -> list[logging.Handler]:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    path = log_file_path(settings, config_dir)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(RotatingFileHandler(path, maxBytes=settings.max_bytes, backupCount=settings.backup_count, encoding="utf-8"))
    return handlers


class BackgroundHandler(QueueHandler):
    """Queues records for a writer thread that writes them; `flush` waits until they are written."""

    def __init__(self, targets: list[logging.Handler]) -> None:
        # Records, and the markers a flush (an Event to set) or the exit (None) leaves behind them.
        self._pending: deque[logging.LogRecord | threading.Event | None] = deque()
        super().__init__(self._pending)  # type: ignore[arg-type]  # only enqueue, overridden below, touches it
        self.targets = targets
        self.dropped = 0
        self._wake = threading.Event()
        self._writer: threading.Thread | None = threading.Thread(target=self._write_until_stopped, name="glm-saver-log", daemon=True)
        self._writer.start()
        atexit.register(self.close)

    def enqueue(self, record: logging.LogRecord) -> None:
        if len(self._pending) >= MAX_QUEUED_RECORDS:
            self.dropped += 1
            return
        self._pending.append(record)  # no wake-up: the writer comes round within DRAIN_SECONDS

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        prepared: logging.LogRecord = super().prepare(record)  # message, arguments and traceback become one text
        prepared.stack_info = None  # already part of that text
        return prepared

    def _write_until_stopped(self) -> None:
        while True:
            self._wake.wait(DRAIN_SECONDS)
            self._wake.clear()
            while self._pending:
                item = self._pending.popleft()
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                for target in self.targets:
                    if item.levelno >= target.level:
                        target.handle(item)

    def _wait_for(self, marker: threading.Event | None) -> None:
        self._pending.append(marker)
        self._wake.set()

    def flush(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            written = threading.Event()
            self._wait_for(written)
            written.wait()
        for target in self.targets:
            target.flush()

    def close(self) -> None:
        """Write what is queued, stop the thread, close the files (idempotent)."""
        atexit.unregister(self.close)
        if self._writer is not None:
            self._wait_for(None)
            self._writer.join()
            self._writer = None
        for target in self.targets:
            target.close()
        super().close()


def configure_logging(settings: LoggingSettings, config_dir: str | Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """Point the `glm_saver` logger at the console and the rotating file; returns the file's path.

    Idempotent: a second call replaces the handlers of the first (a reloaded plugin logs once)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(handler)
        handler.close()
    redactor = RedactSecrets(secret_env_values(environ))
    formatter = logging.Formatter(FORMAT)
    targets = _handlers(settings, config_dir)
    for target in targets:
        target.addFilter(redactor)  # in the listener thread: redaction costs the request nothing
        target.setFormatter(formatter)
    handler = BackgroundHandler(targets)
    setattr(handler, _OURS, True)
    logger.addHandler(handler)
    logger.setLevel(settings.level)
    # Ours are the only handlers: no second, unredacted copy through the root logger's handlers.
    logger.propagate = False
    return log_file_path(settings, config_dir)
