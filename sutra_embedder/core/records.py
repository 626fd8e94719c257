"""Input validation and per-item results of the embedder."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

FAILURE_KINDS = (
    "none",
    "not_a_string",
    "invalid_utf8",
    "empty",
    "too_large",
    "too_long",
    "inference_error",
)


def validate_text(value: object, max_chars: int) -> str:
    """Return ``value`` as a usable text or raise :class:`InputError` with its kind.

    ``bytes`` are accepted when they are valid UTF-8. Strings holding lone
    surrogates (which no UTF-8 encoder accepts) count as ``invalid_utf8``.
    """
    if type(value) is str and value.isascii() and 0 < len(value) <= max_chars and not value.isspace():
        return value  # the common case: ASCII always encodes, so no UTF-8 round trip
    if value is None:
        raise InputError("none", "text is None")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("invalid_utf8", f"text bytes are not valid UTF-8: {exc}") from None
    if not isinstance(value, str):
        raise InputError("not_a_string", f"expected str or UTF-8 bytes, got {type(value).__name__}")
    if len(value) > max_chars:
        raise InputError(
            "too_large",
            f"text has {len(value)} characters, over max_text_chars={max_chars}",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError("invalid_utf8", f"text holds characters UTF-8 cannot encode: {exc}") from None
    if not value.strip():
        raise InputError("empty", "text is empty or only whitespace")
    return value


@dataclass(frozen=True)
class Failure:
    """An input that could not be embedded.

    Attributes:
        index: Position of the input in the call.
        kind: Stable reason (one of :data:`FAILURE_KINDS`).
        message: Human-readable explanation.
    """

    index: int
    kind: str
    message: str


@dataclass(frozen=True)
class ChunkInfo:
    """The windows a long text was cut into.

    Attributes:
        spans: ``(start, end)`` content-token span of each window.
        vectors: Each window's vector ``(n_windows, dim)``.
    """

    spans: list[tuple[int, int]]
    vectors: np.ndarray


@dataclass
class EmbedResult:
    """Outcome of :meth:`Embedder.embed_records` for a list of inputs.

    Attributes:
        vectors: ``(len(ok), dim)`` float32 vectors of the inputs that succeeded.
        ok: Input positions of those vectors, ascending.
        n_tokens: Tokens of each successful text, special tokens included, before
            any truncation or chunking.
        n_chunks: Windows embedded per successful text (1 unless chunked).
        truncated: Whether the text was cut at the model's length (policy truncate).
        failures: The inputs that failed, with their reasons.
        chunks: Per successful text, its windows (only with ``return_chunks``).
    """

    vectors: np.ndarray
    ok: np.ndarray
    n_tokens: np.ndarray
    n_chunks: np.ndarray
    truncated: np.ndarray
    failures: list[Failure] = field(default_factory=list)
    chunks: list[ChunkInfo] | None = None

    @property
    def n_inputs(self) -> int:
        return len(self.ok) + len(self.failures)

    @classmethod
    def concat(cls, parts: list[EmbedResult], dim: int) -> EmbedResult:
        """Join the results of consecutive blocks of one call."""
        with_chunks = [c for p in parts if p.chunks is not None for c in p.chunks]
        return cls(
            vectors=np.concatenate([p.vectors for p in parts]) if parts else np.zeros((0, dim), np.float32),
            ok=np.concatenate([p.ok for p in parts]),
            n_tokens=np.concatenate([p.n_tokens for p in parts]),
            n_chunks=np.concatenate([p.n_chunks for p in parts]),
            truncated=np.concatenate([p.truncated for p in parts]),
            failures=[f for p in parts for f in p.failures],
            chunks=with_chunks if any(p.chunks is not None for p in parts) else None,
        )

    def failure_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.failures:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        return counts
