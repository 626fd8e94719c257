"""Records shared by every connector: an input to embed, a dead letter."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

MAX_DEAD_LETTER_INPUT = 4096  # characters of the original input kept in a dead letter


@dataclass(frozen=True)
class InputRecord:
    """One text to embed, with where it came from.

    Attributes:
        id: The record's id (from the id field, else its position in the source).
        text: The text; may be anything, the embedder validates it.
        metadata: Other fields, passed through to the output.
        source: Where the record came from (``file:line``, ``topic/partition/offset``).
    """

    id: str
    text: object
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class DeadLetter:
    """An input that did not become an embedding, and why.

    Attributes:
        id: The record's id, when known.
        stage: Where it failed: ``read`` (parsing), ``validate``, ``embed``, ``write``.
        kind: Stable reason (``malformed_json``, ``empty``, ``too_long``...).
        error: Human-readable message.
        model: Model id of the embedder, when it got that far.
        source: Where the record came from.
        original: The original input (text, or base64 of undecodable bytes), truncated.
    """

    id: str | None
    stage: str
    kind: str
    error: str
    model: str = ""
    source: str = ""
    original: str | None = None
    original_encoding: str = "text"

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False, default=str)


def describe_original(value: object) -> tuple[str | None, str]:
    """A JSON-safe, truncated rendering of an input for a dead letter."""
    if value is None:
        return None, "none"
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)[:MAX_DEAD_LETTER_INPUT]
        return base64.b64encode(raw).decode("ascii"), "base64"
    if isinstance(value, str):
        text = value[:MAX_DEAD_LETTER_INPUT]
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
            return base64.b64encode(raw).decode("ascii"), "base64"
        return text, "text"
    return repr(value)[:MAX_DEAD_LETTER_INPUT], "repr"
