"""Output-vector quantization: float16, int8/uint8 from calibration ranges, binary.

The semantics follow sentence-transformers' ``quantize_embeddings``:

* ``float16``: a cast.
* ``int8`` / ``uint8``: each dimension's calibration range ``[lo, hi]`` is cut
  into 255 equal steps; ``uint8 = floor((x - lo) / step)`` and
  ``int8 = uint8 - 128`` (float32 arithmetic). Values outside the calibration
  range are clipped to its ends, never wrapped around.
* ``binary`` / ``ubinary``: one bit per dimension (``x > 0``) packed 8 to a byte
  (big-endian bit order); ``binary`` stores the bytes offset by -128 as int8.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import PRECISIONS, Precision
from .errors import ConfigError


@dataclass(frozen=True)
class CalibrationRanges:
    """Per-dimension value ranges used by int8/uint8 quantization.

    Attributes:
        lo: Lower bound per dimension.
        hi: Upper bound per dimension.
    """

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self) -> None:
        if self.lo.shape != self.hi.shape or self.lo.ndim != 1:
            raise ConfigError("calibration", "lo and hi must be 1-D arrays of the same length")

    @classmethod
    def from_embeddings(cls, sample: np.ndarray) -> CalibrationRanges:
        """Ranges from a sample of float embeddings ``(n, dim)``."""
        if sample.ndim != 2 or len(sample) == 0:
            raise ConfigError("calibration", "need a non-empty (n, dim) sample of embeddings")
        return cls(sample.min(axis=0).astype(np.float32), sample.max(axis=0).astype(np.float32))

    @property
    def dim(self) -> int:
        return int(self.lo.shape[0])

    def truncated(self, dim: int) -> CalibrationRanges:
        """Ranges of the first ``dim`` dimensions (for Matryoshka-truncated vectors)."""
        return CalibrationRanges(self.lo[:dim], self.hi[:dim])

    def to_dict(self) -> dict[str, list[float]]:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> CalibrationRanges:
        return cls(np.asarray(data["lo"], np.float32), np.asarray(data["hi"], np.float32))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CalibrationRanges:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def quantize_embeddings(
    embeddings: np.ndarray,
    precision: Precision,
    calibration: CalibrationRanges | None = None,
) -> np.ndarray:
    """Quantize float embeddings ``(n, dim)`` to ``precision``.

    Args:
        embeddings: Float vectors.
        precision: One of float32, float16, int8, uint8, binary, ubinary.
        calibration: Required for int8/uint8 (see :class:`CalibrationRanges`).

    Returns:
        float32/float16 ``(n, dim)``, int8/uint8 ``(n, dim)``, or packed bits
        ``(n, ceil(dim / 8))`` as int8 (binary) or uint8 (ubinary).
    """
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"got {precision!r}; choose one of {', '.join(PRECISIONS)}")
    emb = np.asarray(embeddings)
    if precision == "float32":
        return emb.astype(np.float32, copy=False)
    if precision == "float16":
        return emb.astype(np.float16)
    if precision in ("binary", "ubinary"):
        bits = np.packbits(emb > 0, axis=-1)
        return (bits.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else bits
    if calibration is None:
        raise ConfigError(
            "calibration",
            f"precision {precision!r} needs calibration ranges; compute them with "
            "CalibrationRanges.from_embeddings(sample) or `sutra quantize --calibrate`",
        )
    if calibration.dim != emb.shape[-1]:
        if calibration.dim < emb.shape[-1]:
            raise ConfigError(
                "calibration",
                f"ranges cover {calibration.dim} dims but the vectors have {emb.shape[-1]}",
            )
        calibration = calibration.truncated(emb.shape[-1])
    lo = calibration.lo.astype(np.float32)
    steps = (calibration.hi.astype(np.float32) - lo) / np.float32(255)
    steps = np.where(steps > 0, steps, np.float32(1))
    levels = np.clip(np.floor((emb.astype(np.float32) - lo) / steps), 0, 255)
    if precision == "uint8":
        return levels.astype(np.uint8)
    return (levels - 128.0).astype(np.int8)


def dequantize_int8(codes: np.ndarray, calibration: CalibrationRanges, precision: Precision) -> np.ndarray:
    """Approximate float vectors back from int8/uint8 codes (for scoring)."""
    lo = calibration.lo[: codes.shape[-1]].astype(np.float32)
    steps = (calibration.hi[: codes.shape[-1]].astype(np.float32) - lo) / 255.0
    levels = codes.astype(np.float32) + (128.0 if precision == "int8" else 0.0)
    return lo + levels * steps


def bytes_per_vector(dim: int, precision: Precision) -> int:
    """Storage bytes of one vector of ``dim`` dimensions at ``precision``."""
    if precision == "float32":
        return 4 * dim
    if precision == "float16":
        return 2 * dim
    if precision in ("int8", "uint8"):
        return dim
    return (dim + 7) // 8
