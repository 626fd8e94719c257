"""Frozen, validated settings of the Beam transforms."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from sutra_embedder.core.config import EmbedderConfig
from sutra_embedder.core.errors import ConfigError

BatchingMode = Literal["auto", "bundle", "stateful"]
ModelSharing = Literal["process", "multi_process"]

BATCHING_MODES: tuple[str, ...] = get_args(BatchingMode)
MODEL_SHARINGS: tuple[str, ...] = get_args(ModelSharing)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class EmbedTextConfig:
    """How :class:`~sutra_embedder.transforms.EmbedText` reads elements and batches them.

    Attributes:
        embedder: The embedder's own settings (model, device, token budget,
            long-text policy).
        id_field: Field of dict/Row elements holding the record id. Elements
            without it get an id derived from their text.
        text_field: Field of dict/Row elements holding the text.
        metadata_fields: Fields copied to the output's ``metadata`` JSON;
            ``None`` copies every field except the id and the text.
        prompt: A prompt name from the model's manifest (``"query"``) or a
            literal prefix for every text.
        batching: ``"bundle"`` buffers elements inside each bundle and embeds
            them at the buffer limits or at the bundle's end; ``"stateful"``
            groups elements with ``GroupIntoBatches.WithShardedKey`` so a quiet
            stream still flushes within ``max_buffering_secs``; ``"auto"``
            picks ``"stateful"`` for an unbounded input PCollection (a
            streaming source) and ``"bundle"`` for a bounded one, also when a
            bounded input runs in a ``--streaming`` pipeline.
        max_buffer_texts: Most texts embedded per call of the core embedder
            (which then cuts them into token-budget batches). Larger buffers
            sort more texts by length, so batches waste less padding.
        max_buffer_chars: Bundle mode also embeds once the buffered texts hold
            this many characters, which bounds memory with long texts.
        max_buffering_secs: Stateful mode: the longest a text waits for its
            batch to fill, in seconds.
        model_sharing: ``"process"`` loads the model once per worker process
            and shares it between the DoFn threads; ``"multi_process"`` loads
            it once per machine and serves every process from it (one GPU,
            several SDK worker processes).
    """

    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    id_field: str = "id"
    text_field: str = "text"
    metadata_fields: tuple[str, ...] | None = None
    prompt: str | None = None
    batching: BatchingMode = "auto"
    max_buffer_texts: int = 2048
    max_buffer_chars: int = 4_000_000
    max_buffering_secs: float = 1.0
    model_sharing: ModelSharing = "process"

    def __post_init__(self) -> None:
        if not isinstance(self.embedder, EmbedderConfig):
            raise ConfigError("embedder", f"must be an EmbedderConfig, got {type(self.embedder).__name__}")
        for name in ("id_field", "text_field"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(name, f"must be a non-empty field name, got {value!r}")
        if self.id_field == self.text_field:
            raise ConfigError("id_field", f"must differ from text_field (both are {self.id_field!r})")
        if self.metadata_fields is not None:
            if isinstance(self.metadata_fields, str) or not all(
                isinstance(f, str) and f for f in self.metadata_fields
            ):
                raise ConfigError(
                    "metadata_fields", f"must be a tuple of field names or None, got {self.metadata_fields!r}"
                )
            object.__setattr__(self, "metadata_fields", tuple(self.metadata_fields))
        if self.batching not in BATCHING_MODES:
            raise ConfigError(
                "batching", f"got {self.batching!r}; choose one of {', '.join(BATCHING_MODES)}"
            )
        if self.model_sharing not in MODEL_SHARINGS:
            raise ConfigError(
                "model_sharing", f"got {self.model_sharing!r}; choose one of {', '.join(MODEL_SHARINGS)}"
            )
        _positive_int("max_buffer_texts", self.max_buffer_texts)
        _positive_int("max_buffer_chars", self.max_buffer_chars)
        secs = self.max_buffering_secs
        is_number = isinstance(secs, (int, float)) and not isinstance(secs, bool)
        if not (is_number and math.isfinite(secs) and secs > 0):
            raise ConfigError("max_buffering_secs", f"must be a positive number of seconds, got {secs!r}")
