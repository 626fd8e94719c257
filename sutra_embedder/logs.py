"""Log output for long-running workers: one JSON object per line, secrets redacted.

Every record passes :class:`RedactingFilter` first, which hides passwords in
connection URIs (``postgresql://user:***@host``), ``password=...`` pairs
(libpq conninfo, query strings) and any literal secret it is given (a SASL
password read from the environment). :class:`JsonFormatter` then writes
``{"ts", "level", "logger", "msg"[, "exc"]}`` lines that log collectors parse
without patterns. :func:`logging_config` wires both into a
:func:`logging.config.dictConfig` dictionary (Faust's worker takes it as is).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")

_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?P<at>@)")
_KEY_VALUE = re.compile(r"(?P<key>\b(?:password|passwd|pwd|sasl_password|secret)\s*[=:]\s*)(?P<value>[^\s&,;'\"]+)",
                        re.IGNORECASE)
MASK = "***"


class Redactor:
    """Scrubs known secret strings out of messages (errors from drivers may echo them).

    Secrets shorter than 3 characters are ignored: masking them would mangle
    ordinary words without protecting anything.
    """

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def __call__(self, message: object) -> str:
        text = str(message)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


def redact(text: str, secrets: Sequence[str] | Redactor = ()) -> str:
    """``text`` with URI passwords, ``password=`` values and the given secrets replaced by ``***``."""
    text = _URI_PASSWORD.sub(lambda m: m.group("head") + MASK + m.group("at"), text)
    text = _KEY_VALUE.sub(lambda m: m.group("key") + MASK, text)
    return (secrets if isinstance(secrets, Redactor) else Redactor(secrets))(text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with its secrets redacted (never drops a record).

    Args:
        secrets: Literal values to hide wherever they appear.
    """

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__()
        self.redactor = Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.redactor)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.redactor)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def logging_config(level: str = "info", fmt: LogFormat = "text", secrets: Sequence[str] = ()) -> dict[str, Any]:
    """A ``dictConfig`` dictionary: stderr, the given format, secrets redacted on every record.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        fmt: ``text`` (human-readable) or ``json`` (one object per line).
        secrets: Literal values to hide (passwords read from the environment).
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: choose one of {', '.join(LOG_FORMATS)}")
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if fmt == "json"
        else {"format": "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": f"{__name__}.RedactingFilter", "secrets": list(secrets)}},
        "formatters": {"main": formatter},
        "handlers": {"main": {"class": "logging.StreamHandler", "formatter": "main", "filters": ["redact"],
                              "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["main"]},
    }


__all__ = ["LOG_FORMATS", "JsonFormatter", "LogFormat", "RedactingFilter", "Redactor", "logging_config", "redact"]
