"""Overlapping windows and their aggregation, checked against brute-force numpy."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sutra_embedder.core import Embedder, aggregate, window_spans
from tests.fixtures.models import cosine_rows, st_token_vectors


@pytest.mark.parametrize("n,window,overlap", [(10, 20, 5), (100, 30, 10), (257, 254, 32), (1000, 64, 0)])
def test_windows_cover_every_token_with_the_given_overlap(n: int, window: int, overlap: int) -> None:
    spans = window_spans(n, window, overlap)
    covered = np.zeros(n, dtype=int)
    for s, e in spans:
        assert 0 <= s < e <= n and e - s == min(window, n)
        covered[s:e] += 1
    assert covered.min() >= 1
    for (_s0, e0), (s1, _e1) in itertools.pairwise(spans):
        assert e0 - s1 >= overlap  # consecutive windows share at least `overlap` tokens
    assert spans[-1][1] == n


def _reference_weights(spans: list[tuple[int, int]], n: int, method: str) -> np.ndarray:
    """The documented weights, recomputed token by token."""
    if method == "mean":
        return np.ones(len(spans))
    if method == "weighted":
        return np.array([e - s for s, e in spans], float)
    if method == "positional":
        return np.array([1 - abs(((s + e) / 2) / n - 0.5) for s, e in spans])
    cover = [sum(1 for s, e in spans if s <= t < e) for t in range(n)]
    return np.array([sum(1 / cover[t] for t in range(s, e)) for s, e in spans])


@pytest.mark.parametrize("method", ["mean", "max", "weighted", "positional", "overlap"])
def test_aggregate_matches_numpy(method: str) -> None:
    rng = np.random.default_rng(0)
    spans = window_spans(300, 100, 30)
    vecs = rng.normal(size=(len(spans), 16)).astype(np.float32)
    got = aggregate(vecs, spans, 300, method, normalize=True)  # type: ignore[arg-type]
    if method == "max":
        ref = vecs.max(axis=0)
    else:
        w = _reference_weights(spans, 300, method)
        ref = (vecs * w[:, None]).sum(0) / w.sum()
    ref = ref / np.linalg.norm(ref)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_overlap_weights_give_every_token_weight_one() -> None:
    spans = window_spans(500, 120, 50)
    w = _reference_weights(spans, 500, "overlap")
    assert w.sum() == pytest.approx(500)


@pytest.mark.parametrize("method", ["mean", "weighted", "overlap"])
def test_chunked_text_equals_aggregate_of_reference_windows(
    make_embedder: Callable[..., Embedder], st_minilm: Any, method: str
) -> None:
    emb = make_embedder(**{"chunking.policy": "chunk", "chunking.window": 64, "chunking.overlap": 16,
                           "chunking.aggregation": method, "chunking.return_chunks": True})
    text = " ".join(f"Sentence {i} talks about topic {i % 7} in some detail." for i in range(40))
    short = "A short text shares the batch with the windows."
    result = emb.embed_records([short, text])
    assert result.n_chunks.tolist()[0] == 1 and result.n_chunks[1] > 3
    assert result.chunks is not None
    info = result.chunks[1]
    # Independent reference: torch runs each window's exact token ids.
    content = emb.tokenizer.encode_content([text])[0]
    window_ids = [emb.tokenizer.frame(content[s:e]) for s, e in info.spans]
    ref_windows = st_token_vectors(st_minilm, window_ids)
    assert cosine_rows(info.vectors, ref_windows).min() >= 0.9999
    n = len(content)
    w = _reference_weights(info.spans, n, method)
    ref = (ref_windows * w[:, None]).sum(0) / w.sum()
    ref /= np.linalg.norm(ref)
    assert float(result.vectors[1] @ ref) >= 0.9999
    # The short text in the same call is unaffected by chunking.
    assert float(result.vectors[0] @ st_minilm.encode([short])[0]) >= 0.9999


def test_too_many_windows_is_rejected_not_cut(make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder(**{"chunking.window": 32, "chunking.overlap": 8, "chunking.max_chunks": 3})
    result = emb.embed_records(["word " * 500, "fine"])
    assert [f.kind for f in result.failures] == ["too_long"]
    assert "max_chunks" in result.failures[0].message
    assert result.ok.tolist() == [1]


def test_reject_policy(make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder(**{"chunking.policy": "reject"})
    result = emb.embed_records(["word " * 400, "ok text"])
    assert [(f.index, f.kind) for f in result.failures] == [(0, "too_long")]
