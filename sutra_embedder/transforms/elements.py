"""Turn pipeline elements of any shape into texts to embed, or dead letters.

Parsing never raises: an element of an unexpected type, without its text
field, or whose text is unusable comes back as a :class:`DeadLetterRow`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from sutra_embedder.connectors.records import DeadLetter, InputRecord
from sutra_embedder.core.errors import InputError
from sutra_embedder.core.records import validate_text

from .config import EmbedTextConfig
from .records import (
    DeadLetterRow,
    PendingText,
    content_id,
    encode_metadata,
    from_dead_letter,
    make_dead_letter,
)

_TEXT_TYPES = (str, bytes, bytearray, memoryview)


def _fields_of(element: object) -> dict[str, Any] | None:
    """The fields of a structured element, or ``None`` if it has none."""
    if isinstance(element, Mapping):
        return dict(element)
    as_dict = getattr(element, "_asdict", None)  # beam.Row and NamedTuples
    if callable(as_dict):
        fields = as_dict()
        return dict(fields) if isinstance(fields, Mapping) else None
    if dataclasses.is_dataclass(element) and not isinstance(element, type):
        return {f.name: getattr(element, f.name) for f in dataclasses.fields(element)}
    return None


def _render(element: object) -> object:
    """What a dead letter keeps of a structured element: its JSON when possible."""
    fields = _fields_of(element)
    if fields is None:
        return element
    try:
        return json.dumps(fields, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(element)


def parse_element(element: object, config: EmbedTextConfig, model_id: str) -> PendingText | DeadLetterRow:
    """Validate one element and pull out its id, text and metadata.

    Args:
        element: A text (``str`` or UTF-8 ``bytes``), a dict, a ``beam.Row`` or
            NamedTuple, a dataclass, a connector ``InputRecord``, or a connector
            ``DeadLetter`` (passed through as a dead letter).
        config: Field names and the embedder's ``max_text_chars``.
        model_id: Model id recorded in dead letters.

    Returns:
        The text ready to batch, or the dead letter saying why it is not.
    """
    try:
        return _parse(element, config, model_id)
    except Exception as exc:  # a bad element must never stop the pipeline
        return make_dead_letter(
            id=None,
            stage="validate",
            kind="unsupported_element",
            error=f"cannot read element of type {type(element).__name__}: {type(exc).__name__}: {exc}",
            model=model_id,
            original=_safe_repr(element),
        )


def _safe_repr(element: object) -> str:
    try:
        return repr(element)
    except Exception:  # repr itself may fail on a broken object
        return f"<unprintable {type(element).__name__}>"


def _parse(element: object, config: EmbedTextConfig, model_id: str) -> PendingText | DeadLetterRow:
    if isinstance(element, DeadLetterRow):
        return element
    if isinstance(element, DeadLetter):
        return from_dead_letter(element)

    rid: str | None = None
    metadata: str | None = None
    source = ""
    if isinstance(element, InputRecord):
        rid, value, source = element.id, element.text, element.source
        metadata = encode_metadata(_select(element.metadata, config, skip_keys=False))
    elif element is None or isinstance(element, (*_TEXT_TYPES, int, float, bool)):
        value = element
    else:
        fields = _fields_of(element)
        if fields is None:
            return make_dead_letter(
                id=None,
                stage="validate",
                kind="unsupported_element",
                error=(
                    f"expected a str, bytes, dict, beam.Row or NamedTuple element, "
                    f"got {type(element).__name__}"
                ),
                model=model_id,
                original=element,
            )
        raw_id = fields.get(config.id_field)
        rid = None if raw_id is None else str(raw_id)
        if config.text_field not in fields:
            return make_dead_letter(
                id=rid,
                stage="validate",
                kind="missing_text",
                error=(
                    f"element has no {config.text_field!r} field (fields: {sorted(fields)}); "
                    "set text_field to the field holding the text"
                ),
                model=model_id,
                original=_render(element),
            )
        value = fields[config.text_field]
        metadata = encode_metadata(_select(fields, config, skip_keys=True))

    try:
        text = validate_text(value, config.embedder.max_text_chars)
    except InputError as exc:
        return make_dead_letter(
            id=rid, stage="validate", kind=exc.kind, error=str(exc), model=model_id, source=source,
            original=value,
        )
    return PendingText(rid if rid is not None else content_id(text), text, metadata, source)


def _select(fields: Mapping[str, Any], config: EmbedTextConfig, skip_keys: bool) -> dict[str, Any]:
    if config.metadata_fields is not None:
        return {k: fields[k] for k in config.metadata_fields if k in fields}
    if not skip_keys:
        return dict(fields)
    return {k: v for k, v in fields.items() if k not in (config.id_field, config.text_field)}
