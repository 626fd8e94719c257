"""Vectors equal sentence-transformers' on the same real model and texts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sutra_embedder.core import Embedder, EmbedderConfig
from sutra_embedder.models.registry import import_into_cache
from tests.fixtures.models import cosine_rows


def test_minilm_matches_sentence_transformers(truncating_embedder: Embedder, st_minilm: Any,
                                              varied_texts: list[str]) -> None:
    assert len(varied_texts) >= 250
    ours = truncating_embedder.embed(varied_texts)
    ref = st_minilm.encode(varied_texts, batch_size=32, convert_to_numpy=True)
    assert ours.shape == ref.shape == (len(varied_texts), 384)
    assert ours.dtype == np.float32
    cos = cosine_rows(ours, ref)
    assert cos.min() >= 0.9999, (cos.argmin(), varied_texts[int(cos.argmin())][:80])
    # Normalised like the reference (modules.json has a Normalize module).
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_long_texts_are_not_cut_at_128_tokens(truncating_embedder: Embedder, st_minilm: Any) -> None:
    """tokenizer.json ships with truncation at 128; the model's real limit is 256."""
    words = ["alpha", "beta", "gamma", "delta"] * 100  # one token each
    text = " ".join(words)
    result = truncating_embedder.embed_records([text])
    assert result.n_tokens[0] > 256
    assert result.truncated[0]
    ref = st_minilm.encode([text], convert_to_numpy=True)
    assert cosine_rows(result.vectors, ref)[0] >= 0.9999
    # The tail matters: changing a token between 128 and 254 changes the vector.
    words[180] = "zebra"  # token 181: past 128, within 256
    other = truncating_embedder.embed([" ".join(words)])
    assert cosine_rows(result.vectors, other)[0] < 0.99999


def test_unfused_graph_matches_too(minilm_source: Path, st_minilm: Any, varied_texts: list[str],
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sutra_embedder.models.importer import import_model

    path = import_model(minilm_source, tmp_path / "plain", "plain", fused=False)
    emb = Embedder(EmbedderConfig(model=str(path)).with_overrides(**{"chunking.policy": "truncate"}))
    texts = varied_texts[:80]
    cos = cosine_rows(emb.embed(texts), st_minilm.encode(texts, convert_to_numpy=True))
    assert cos.min() >= 0.9999


@pytest.mark.slow
def test_mpnet_matches_sentence_transformers(mpnet_source: Path, varied_texts: list[str]) -> None:
    torch = pytest.importorskip("torch")
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    path = import_into_cache(mpnet_source, "mpnet")
    emb = Embedder(EmbedderConfig(model=str(path)).with_overrides(**{"chunking.policy": "truncate"}))
    assert emb.dim == 768 and emb.manifest.max_tokens == 384
    rng = np.random.default_rng(3)
    texts = [varied_texts[i] for i in rng.choice(len(varied_texts), 48, replace=False)]
    texts += varied_texts[-5:]  # the long and unusual ones
    ref = SentenceTransformer(str(mpnet_source), device="cpu").encode(texts, convert_to_numpy=True)
    cos = cosine_rows(emb.embed(texts), ref)
    assert cos.min() >= 0.9999
