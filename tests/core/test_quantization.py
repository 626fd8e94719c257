"""Output quantization follows sentence-transformers' semantics, and clips out-of-range values."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from sutra_embedder.core import CalibrationRanges, ConfigError, Embedder, bytes_per_vector, quantize_embeddings

st_quant = pytest.importorskip("sentence_transformers.quantization")


@pytest.fixture(scope="module")
def vectors(make_embedder: Callable[..., Embedder]) -> np.ndarray:
    texts = [f"Document {i} about {w}" for i, w in enumerate(["cats", "dogs", "rust", "python",
                                                             "kafka", "beam", "tea", "maps"] * 8)]
    return make_embedder().embed(texts)


def test_float16_is_a_cast(vectors: np.ndarray) -> None:
    half = quantize_embeddings(vectors, "float16")
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), vectors, atol=1e-3)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_matches_sentence_transformers_in_range(vectors: np.ndarray, precision: str) -> None:
    calib = CalibrationRanges.from_embeddings(vectors)
    ours = quantize_embeddings(vectors, precision, calib)  # type: ignore[arg-type]
    ref = st_quant.quantize_embeddings(vectors, precision=precision, calibration_embeddings=vectors)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


def test_out_of_range_values_clip_instead_of_wrapping(vectors: np.ndarray) -> None:
    calib = CalibrationRanges.from_embeddings(vectors[:10])
    probe = np.stack([calib.lo - 0.5, calib.hi + 0.5, (calib.lo + calib.hi) / 2])
    q = quantize_embeddings(probe, "int8", calib)
    assert (q[0] == -128).all() and (q[1] == 127).all()
    u = quantize_embeddings(probe, "uint8", calib)
    assert (u[0] == 0).all() and (u[1] == 255).all()
    assert np.abs(q[2].astype(int)).max() <= 1  # the middle of the range is near zero


def test_int8_needs_calibration(vectors: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="calibration"):
        quantize_embeddings(vectors, "int8")


def test_int8_preserves_ranking(vectors: np.ndarray) -> None:
    calib = CalibrationRanges.from_embeddings(vectors)
    q = quantize_embeddings(vectors, "int8", calib).astype(np.float32)
    exact = np.argsort(-(vectors @ vectors[0]))[:5]
    approx = np.argsort(-(q @ q[0]))[:5]
    assert exact[0] == approx[0] == 0


def test_bytes_per_vector() -> None:
    assert [bytes_per_vector(384, p) for p in ("float32", "float16", "int8", "binary")] == [1536, 768, 384, 48]


def test_matryoshka_truncation_renormalises(make_embedder: Callable[..., Embedder]) -> None:
    full = make_embedder().embed(["Matryoshka vectors keep their first dimensions."])
    small = make_embedder(truncate_dim=128).embed(["Matryoshka vectors keep their first dimensions."])
    ref = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    assert small.shape == (1, 128)
    np.testing.assert_allclose(small, ref, atol=1e-6)
