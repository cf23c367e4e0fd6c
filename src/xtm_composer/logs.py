"""Logging setup: structlog, JSON lines or `LEVEL key="value" message` text.

Secrets are kept out of logs in two ways. Settings hold them in `SecretStr`,
whose str and repr are masked. On top of that, every secret the agent has
(platform token, registry password, proxy credentials, decrypted contract
values) is registered here, and a processor replaces any occurrence of one in
any field of any event, so a secret echoed back by an engine error is masked too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO, cast

import structlog

MASK = "***"
MIN_SECRET_LENGTH = 4
"""Shorter values are not masked: they would blank out ordinary words."""

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask `value` in every log line from now on."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def forget_secrets() -> None:
    with _secrets_lock:
        _secrets.clear()


def mask_secrets(text: str) -> str:
    """Replace every registered secret in `text`, longest first."""
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {key: _redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    if isinstance(value, BaseException):
        return mask_secrets(str(value))
    return value


def redact_processor(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event):
        event[key] = _redact(event[key])
    return event


def render_text(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
    """Render `2026-01-01T00:00:00Z INFO key="value" ... message`."""
    timestamp = event.pop("timestamp", "")
    level = str(event.pop("level", "info")).upper()
    message = str(event.pop("event", ""))
    fields = " ".join(f"{key}={_text_field(value)}" for key, value in event.items())
    return " ".join(part for part in (timestamp, level, fields, message) if part)


def _text_field(value: Any) -> str:
    if (
        isinstance(value, dict | list | tuple | str | int | float | bool)
        or value is None
    ):
        return json.dumps(value, default=str, ensure_ascii=False)
    return json.dumps(str(value), ensure_ascii=False)


def render_json(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
    event["message"] = event.pop("event", "")
    return json.dumps(event, default=str, ensure_ascii=False)


def _add_timestamp(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event["timestamp"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    return event


def configure_logging(
    level: str = "info", log_format: str = "json", stream: TextIO | None = None
) -> None:
    """Send structured logs to `stream` (standard error by default)."""
    renderer = render_json if log_format == "json" else render_text
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            _add_timestamp,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(
            cast(TextIO, TolerantStream(stream or sys.stderr))
        ),
        cache_logger_on_first_use=False,
    )


class TolerantStream:
    """A text stream whose write errors are dropped instead of raised.

    When the reader of the agent's output goes away (a closed pipe, a full
    disk), logging must not crash the agent or leave a signal handler half
    done: the connectors still need reconciling and SIGTERM still needs
    honouring.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


def get_logger(name: str) -> Any:
    """Return a logger; `name` is the module, kept for the logger factory."""
    return structlog.get_logger(name)
