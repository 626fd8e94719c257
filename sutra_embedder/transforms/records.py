"""Schema'd records of the Beam transforms: an embedding, a dead letter.

Both are ``NamedTuple`` types registered with Beam's ``RowCoder``, so their
PCollections carry a portable schema (Beam SQL, cross-language transforms and
every portable runner can read them) and encode compactly: the vector is an
``ARRAY<FLOAT>`` of 4-byte floats.

Each type has a fixed schema id, so a worker that decodes a row gets back the
same Python type (not an anonymous generated one), and this module's helpers
work on the rows anywhere in a pipeline.

This module does not use ``from __future__ import annotations``: Beam reads
the field types from the class annotations at run time.
"""

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from apache_beam import coders

from sutra_embedder.connectors.records import DeadLetter, describe_original

#: Output tag of the dead letters in :class:`~sutra_embedder.transforms.EmbedText`.
DEAD_LETTERS = "dead_letters"
#: Output tag of the embeddings in :class:`~sutra_embedder.transforms.EmbedText`.
EMBEDDINGS = "embeddings"


class EmbeddingRow(NamedTuple):
    """One embedded text.

    Attributes:
        id: The record's id: its id field, else a hash of its text.
        vector: The embedding, ``dim`` float32 values (a list of floats in Python).
        n_tokens: Tokens of the text, special tokens included, before any
            truncation or chunking.
        n_chunks: Windows embedded for the text (1 unless it was chunked).
        truncated: Whether the text was cut at the model's length.
        metadata: The record's other fields as a JSON object, or ``None``.
    """

    id: str
    vector: Sequence[np.float32]
    n_tokens: int
    n_chunks: int
    truncated: bool
    metadata: str | None


class DeadLetterRow(NamedTuple):
    """An element that did not become an embedding, and why.

    The fields are those of :class:`sutra_embedder.connectors.records.DeadLetter`,
    so :func:`dead_letter_json` writes the same JSON lines as the other jobs.

    Attributes:
        id: The record's id, when known.
        stage: Where it failed: ``read`` (file parsing), ``validate`` (element
            structure or text), ``embed`` (the model call).
        kind: Stable reason (``missing_text``, ``unsupported_element``, ``empty``,
            ``invalid_utf8``, ``too_long``, ``inference_error``...).
        error: Human-readable message.
        model: Model id of the embedder.
        source: Where the record came from, when known (``file:line``).
        original: The element (or its text) rendered as text, base64 or repr.
        original_encoding: ``text``, ``base64``, ``repr`` or ``none``.
    """

    id: str | None
    stage: str
    kind: str
    error: str
    model: str
    source: str
    original: str | None
    original_encoding: str


class PendingText(NamedTuple):
    """A validated text waiting in a batch (internal to the transforms).

    Attributes:
        id: The record's id.
        text: The text, a valid UTF-8 string.
        metadata: JSON object of the other fields, or ``None``.
        source: Where the record came from.
    """

    id: str
    text: str
    metadata: str | None
    source: str


def _register(row_type: type[Any]) -> None:
    # A fixed id makes every process map the schema back to this very class.
    # Java runners parse schema ids as UUIDs: derive one from the type's name.
    name = f"https://sutra-embedder/beam-schema/{row_type.__name__}/v1"
    row_type._beam_schema_id = str(uuid.uuid5(uuid.NAMESPACE_URL, name))  # type: ignore[attr-defined]
    coders.registry.register_row(row_type)


_register(EmbeddingRow)
_register(DeadLetterRow)
_register(PendingText)


def vector_array(row: EmbeddingRow) -> np.ndarray:
    """The row's vector as a float32 numpy array of shape ``(dim,)``."""
    return np.asarray(row.vector, dtype=np.float32)


def vectors_matrix(rows: Sequence[EmbeddingRow]) -> np.ndarray:
    """Stack rows' vectors into a float32 ``(len(rows), dim)`` matrix."""
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray([r.vector for r in rows], dtype=np.float32)


def metadata_dict(row: EmbeddingRow) -> dict[str, Any]:
    """The row's metadata as a dict (empty when it had none)."""
    return dict(json.loads(row.metadata)) if row.metadata else {}


def encode_metadata(metadata: Mapping[str, Any]) -> str | None:
    """JSON text of a metadata mapping (``None`` when empty), as the Parquet writer stores it."""
    if not metadata:
        return None
    return json.dumps(dict(metadata), ensure_ascii=False, default=str)


def content_id(text: str) -> str:
    """A stable id derived from a text, for elements that carry none.

    Equal texts get equal ids, so re-running a pipeline upserts rather than
    duplicates.
    """
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12)
    return digest.hexdigest()


def make_dead_letter(
    *,
    id: str | None,
    stage: str,
    kind: str,
    error: str,
    model: str,
    source: str = "",
    original: object = None,
) -> DeadLetterRow:
    """Build a dead letter, rendering ``original`` the way the file jobs do."""
    text, encoding = describe_original(original)
    return DeadLetterRow(id, stage, kind, error, model, source, text, encoding)


def from_dead_letter(letter: DeadLetter) -> DeadLetterRow:
    """Convert a connector dead letter (from a file reader) to a row."""
    return DeadLetterRow(
        letter.id,
        letter.stage,
        letter.kind,
        letter.error,
        letter.model,
        letter.source,
        letter.original,
        letter.original_encoding,
    )


def to_dead_letter(row: DeadLetterRow) -> DeadLetter:
    """Convert a row to the connectors' :class:`DeadLetter`."""
    return DeadLetter(
        row.id,
        row.stage,
        row.kind,
        row.error,
        row.model,
        row.source,
        row.original,
        row.original_encoding,
    )


def dead_letter_json(row: DeadLetterRow) -> str:
    """One JSON line for a dead letter, identical to what ``sutra embed`` writes."""
    return to_dead_letter(row).to_json()
