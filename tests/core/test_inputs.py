"""Every kind of bad input gets its defined result; nothing is dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sutra_embedder.core import Embedder, InputError


def test_each_bad_input_kind(make_embedder: Callable[..., Embedder], st_minilm: Any) -> None:
    emb = make_embedder(**{"max_text_chars": 5000})
    items: list[object] = [
        "good one",
        None,
        17,
        b"\xff\xfe not utf8",
        "",
        "   \n\t ",
        "x" * 5001,
        "bad surrogate \ud800 inside",
        "caf\u00e9".encode(),  # valid UTF-8 bytes are accepted
        ["a", "list"],
        "good two",
    ]
    result = emb.embed_records(items)
    kinds = {f.index: f.kind for f in result.failures}
    assert kinds == {1: "none", 2: "not_a_string", 3: "invalid_utf8", 4: "empty", 5: "empty",
                     6: "too_large", 7: "invalid_utf8", 9: "not_a_string"}
    assert result.ok.tolist() == [0, 8, 10]
    assert result.n_inputs == len(items)
    ref = st_minilm.encode(["good one", "café", "good two"], convert_to_numpy=True)
    np.testing.assert_allclose((result.vectors * ref).sum(1), 1.0, atol=1e-4)
    assert all(f.message for f in result.failures)


def test_embed_raises_with_position(make_embedder: Callable[..., Embedder]) -> None:
    with pytest.raises(InputError, match=r"text #2: text is empty") as err:
        make_embedder().embed(["fine", "also fine", ""])
    assert err.value.kind == "empty"


def test_order_is_preserved_across_length_sorting(make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder()
    texts = [("word " * n).strip() for n in (50, 3, 200, 1, 90, 7)]
    together = emb.embed(texts)
    one_by_one = np.stack([emb.embed([t])[0] for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=2e-5)


def test_empty_call(make_embedder: Callable[..., Embedder]) -> None:
    out = make_embedder().embed([])
    assert out.shape == (0, 384)


def test_failing_batch_is_split_to_find_the_bad_row(make_embedder: Callable[..., Embedder],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the model fails on any batch holding a poisoned token id."""
    emb = make_embedder(**{"runtime.warmup": False, "batching.max_batch_tokens": 100000})
    poison = emb.tokenizer.encode_content(["zebra"])[0][0]
    real_run = emb._run

    def flaky(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if (ids == poison).any():
            raise RuntimeError("device error")
        return real_run(ids, mask)

    monkeypatch.setattr(emb, "_run", flaky)
    texts = [f"text number {i}" for i in range(9)] + ["a zebra here"] + ["more text"] * 5
    result = emb.embed_records(texts)
    assert [(f.index, f.kind) for f in result.failures] == [(9, "inference_error")]
    assert "device error" in result.failures[0].message
    assert len(result.ok) == 14


def test_blocks_give_the_same_result_as_one_call(make_embedder: Callable[..., Embedder]) -> None:
    """Large calls are cut into blocks tokenized ahead in a thread: same vectors, same failures."""
    items: list[object] = []
    for i in range(23):
        items.append(f"text {i} " * (i % 9 + 1) if i % 5 else None)
    items.append("long " * 600)
    whole = make_embedder().embed_records(items)
    blocked = make_embedder(**{"batching.pipeline_block": 4}).embed_records(items)
    assert blocked.ok.tolist() == whole.ok.tolist()
    assert [(f.index, f.kind) for f in blocked.failures] == [(f.index, f.kind) for f in whole.failures]
    assert blocked.n_chunks.tolist() == whole.n_chunks.tolist()
    np.testing.assert_allclose(blocked.vectors, whole.vectors, atol=2e-5)
