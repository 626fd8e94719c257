"""Concurrent preparation and inference give exactly the single-threaded results.

The embedder tokenizes blocks in several worker threads and runs batches on
several inference streams at once; these tests pin down that this changes
nothing observable: same vectors (and the same as sentence-transformers), same
order, same failures at the same positions, exact stats, observer calls on the
caller's thread. They also check the flat-buffer padding against a naive
per-row reference.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sutra_embedder.core import BatchTrace, ConfigError, Embedder, EmbedderConfig, EmbedResult
from sutra_embedder.core.batching import pad_batch, pad_flat
from sutra_embedder.core.config import BatchingConfig, RuntimeConfig
from tests.fixtures.models import cosine_rows

SERIAL = {"batching.prepare_workers": 1, "runtime.inference_streams": 1, "batching.pipeline_block": 100_000}
# Small blocks and small batches: many blocks in flight, many batches per block.
CONCURRENT = {
    "batching.prepare_workers": 3,
    "runtime.inference_streams": 3,
    "batching.pipeline_block": 24,
    "batching.max_batch_tokens": 2048,
    "batching.max_batch_size": 16,
}
# One ONNX Runtime thread per call: three streams on a 2-core machine must not spin against each other.
COMMON = {"runtime.warmup": False, "runtime.intra_op_threads": 1, "max_text_chars": 60_000, "chunking.max_chunks": 30}


@pytest.fixture(scope="module")
def texts(varied_texts: list[str]) -> list[str]:
    """A quarter of the real texts, plus long ones (chunked) and the unusual ones at the end."""
    return varied_texts[:-25:4] + varied_texts[-25:-17] + varied_texts[-5:]


def _embedder(minilm_dir: Path, **overrides: Any) -> Embedder:
    """A fresh embedder (fresh stats), not one shared through the fixtures' cache."""
    return Embedder(EmbedderConfig(model=str(minilm_dir)).with_overrides(**(COMMON | overrides)))


def _mixed_items(texts: list[str]) -> tuple[list[object], dict[int, str]]:
    """Real texts (long ones included) with bad inputs at known positions."""
    items: list[object] = list(texts)
    bad: list[tuple[object, str]] = [
        (None, "none"),
        (17, "not_a_string"),
        (b"\xff\xfe", "invalid_utf8"),
        ("", "empty"),
        ("  \n\t", "empty"),
        ("x" * 60_001, "too_large"),
        ("lone \ud800 surrogate", "invalid_utf8"),
        ("word " * 8000, "too_long"),  # 36 windows > max_chunks
    ]
    rng = np.random.default_rng(11)
    slots = sorted(rng.choice(len(items), size=len(bad) * 3, replace=False).tolist(), reverse=True)
    for k, slot in enumerate(slots):
        items.insert(slot, bad[k % len(bad)][0])
    expected = {}
    for i, item in enumerate(items):
        for value, kind in bad:
            if item is value or (isinstance(item, (str, bytes)) and type(item) is type(value) and item == value):
                expected[i] = kind
    return items, expected


def _same_result(a: EmbedResult, b: EmbedResult) -> None:
    assert a.ok.tolist() == b.ok.tolist()
    assert [(f.index, f.kind, f.message) for f in a.failures] == [(f.index, f.kind, f.message) for f in b.failures]
    assert a.n_tokens.tolist() == b.n_tokens.tolist()
    assert a.n_chunks.tolist() == b.n_chunks.tolist()
    assert a.truncated.tolist() == b.truncated.tolist()
    assert a.vectors.shape == b.vectors.shape and a.vectors.dtype == np.float32
    np.testing.assert_allclose(a.vectors, b.vectors, atol=2e-5)


# ------------------------------------------------------------------ padding
def _naive_pad(
    flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, prefix: np.ndarray, suffix: np.ndarray, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    rows = [np.concatenate([prefix, flat[s : s + n], suffix]) for s, n in zip(starts, lengths)]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


@pytest.mark.parametrize("seed", range(40))
def test_pad_flat_equals_naive_per_row_padding(seed: int) -> None:
    rng = np.random.default_rng(seed)
    flat = rng.integers(5, 30000, size=int(rng.integers(0, 400))).astype(np.int64)
    rows = int(rng.integers(1, 30))
    starts = rng.integers(0, flat.size + 1, size=rows)
    lengths = np.array([int(rng.integers(0, flat.size - s + 1)) for s in starts], dtype=np.int64)
    if rows > 2 and flat.size:  # rows at both ends of the buffer, and an empty one
        starts[0], lengths[0] = 0, flat.size
        starts[1], lengths[1] = flat.size, 0
    prefix = rng.integers(100, 110, size=int(rng.integers(0, 3))).astype(np.int64)
    suffix = rng.integers(110, 120, size=int(rng.integers(0, 3))).astype(np.int64)
    pad_id = int(rng.integers(0, 3))
    ids, mask = pad_flat(flat, starts, lengths, prefix, suffix, pad_id)
    ref_ids, ref_mask = _naive_pad(flat, starts, lengths, prefix, suffix, pad_id)
    assert ids.dtype == mask.dtype == np.int64
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(mask, ref_mask)
    # ... and it is what the old per-text path (frame, then pad_batch) produced.
    old_ids, old_mask = pad_batch(
        [np.concatenate([prefix, flat[s : s + n], suffix]) for s, n in zip(starts, lengths)], pad_id
    )
    np.testing.assert_array_equal(ids, old_ids)
    np.testing.assert_array_equal(mask, old_mask)


def test_flat_tokens_are_the_ids_of_encode_batch(truncating_embedder: Embedder, varied_texts: list[str]) -> None:
    """encode_batch_fast (no offsets) gives exactly encode_batch's ids, multilingual texts included."""
    tok = truncating_embedder.tokenizer
    flat = tok.encode_flat(varied_texts)
    slow = tok._tok.encode_batch(varied_texts, add_special_tokens=False)
    assert len(flat) == len(varied_texts) and flat.ids.dtype == np.int64
    for i, enc in enumerate(slow):
        assert flat.ids[flat.offsets[i] : flat.offsets[i + 1]].tolist() == enc.ids
    assert [x.tolist() for x in tok.encode_content(varied_texts[:20])] == [e.ids for e in slow[:20]]
    empty = tok.encode_flat([])
    assert len(empty) == 0 and empty.split() == [] and empty.offsets.tolist() == [0]


# ------------------------------------------------------------------ results
@pytest.fixture(scope="module")
def mixed(texts: list[str]) -> tuple[list[object], dict[int, str]]:
    return _mixed_items(texts)


@pytest.fixture(scope="module")
def serial_chunked(minilm_dir: Path, mixed: tuple[list[object], dict[int, str]]) -> EmbedResult:
    return _embedder(minilm_dir, **SERIAL).embed_records(mixed[0])


def test_concurrent_equals_serial_with_chunks_and_bad_inputs(
    minilm_dir: Path,
    mixed: tuple[list[object], dict[int, str]],
    serial_chunked: EmbedResult,
) -> None:
    items, expected = mixed
    emb = _embedder(minilm_dir, **CONCURRENT)
    assert (emb.prepare_workers, emb.inference_streams) == (3, 3)
    seen: list[BatchTrace] = []
    callers: set[int] = set()

    def observe(trace: BatchTrace) -> None:
        seen.append(trace)
        callers.add(threading.get_ident())

    emb.observer = observe
    result = emb.embed_records(items)
    _same_result(result, serial_chunked)

    # Failures at the right positions, every input accounted for, order kept.
    assert {f.index: f.kind for f in result.failures} == expected
    assert sorted(result.ok.tolist() + [f.index for f in result.failures]) == list(range(len(items)))
    assert result.ok.tolist() == sorted(set(range(len(items))) - set(expected))
    assert result.n_chunks.max() > 1  # long texts really were chunked

    # Stats add up exactly, and the observer saw every batch, on this thread.
    stats = emb.stats
    assert stats.texts == len(result.ok)
    assert sum(stats.failures.values()) == len(result.failures) == len(expected)
    assert stats.chunks == int(result.n_chunks.sum())
    assert stats.batches == len(seen) > len(items) // 16
    assert sum(t.rows for t in seen) == stats.chunks
    assert sum(t.tokens for t in seen) == stats.tokens
    assert sum(t.padded_tokens for t in seen) == stats.padded_tokens >= stats.tokens
    assert callers == {threading.get_ident()}
    assert stats.tokenize_s > 0 and stats.pad_s > 0 and stats.inference_s > 0


def test_concurrent_truncation_matches_sentence_transformers(
    minilm_dir: Path,
    st_minilm: Any,
    mixed: tuple[list[object], dict[int, str]],
) -> None:
    items, expected = mixed
    result = _embedder(minilm_dir, **CONCURRENT, **{"chunking.policy": "truncate"}).embed_records(items)
    good = [items[i] for i in result.ok.tolist()]
    assert len(good) == len(items) - len([k for k in expected.values() if k != "too_long"])
    ref = st_minilm.encode(good, batch_size=32, convert_to_numpy=True)
    cos = cosine_rows(result.vectors, ref)
    assert cos.min() >= 0.9999, (int(cos.argmin()), str(good[int(cos.argmin())])[:80])
    assert result.truncated.any()


def test_inference_failures_are_isolated_and_indexed_under_concurrency(
    minilm_dir: Path,
    mixed: tuple[list[object], dict[int, str]],
    serial_chunked: EmbedResult,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection: the model fails on any batch holding a poisoned token."""
    items = list(mixed[0])
    emb = _embedder(minilm_dir, **CONCURRENT)
    poison = int(emb.tokenizer.encode_content(["saxophone"])[0][0])
    assert not any(isinstance(t, str) and "saxophone" in t for t in items)  # a single token, used nowhere else
    real_run = emb._run
    calls: list[int] = []

    def flaky(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls.append(threading.get_ident())
        if (ids == poison).any():
            raise RuntimeError("device lost")
        return real_run(ids, mask)

    monkeypatch.setattr(emb, "_run", flaky)
    long_ok = int(serial_chunked.ok[int(np.argmax(serial_chunked.n_chunks))])
    poisoned = {3: "a saxophone solo", len(items) // 2: "saxophone", len(items) - 2: "the last saxophone"}
    for pos, text in poisoned.items():
        items[pos] = text
    # A chunked text poisoned in its last window only: the whole text fails.
    items[long_ok] = str(items[long_ok]) + " saxophone"
    result = emb.embed_records(items)

    kinds = {f.index: f.kind for f in result.failures}
    errors = {f.index: f.message for f in result.failures if f.kind == "inference_error"}
    assert set(errors) == set(poisoned) | {long_ok}
    assert all("device lost" in m for m in errors.values())
    assert {i: k for i, k in kinds.items() if k != "inference_error"} == {
        i: k for i, k in mixed[1].items() if i not in poisoned
    }
    assert len(set(calls)) > 1  # batches really ran on several streams
    # Every other text has the vector it has without the fault.
    ref = dict(zip(serial_chunked.ok.tolist(), serial_chunked.vectors))
    assert result.ok.tolist() == [i for i in serial_chunked.ok.tolist() if i not in errors]
    np.testing.assert_allclose(result.vectors, np.stack([ref[i] for i in result.ok.tolist()]), atol=2e-5)
    assert emb.stats.failures["inference_error"] == len(errors)
    assert emb.stats.texts == len(result.ok)


def test_concurrent_callers_share_the_pools(
    minilm_dir: Path,
    mixed: tuple[list[object], dict[int, str]],
    serial_chunked: EmbedResult,
) -> None:
    """Two threads calling one embedder at once get their own results and their own traces."""
    items = mixed[0]
    emb = _embedder(minilm_dir, **CONCURRENT)
    local = threading.local()
    emb.observer = lambda trace: local.traces.append(trace)
    out: dict[str, tuple[EmbedResult, list[BatchTrace]]] = {}

    def call(name: str, part: list[object]) -> None:
        local.traces = []
        out[name] = (emb.embed_records(part), local.traces)

    half = len(items) // 2
    threads = [threading.Thread(target=call, args=(name, part)) for name, part in (("a", items), ("b", items[:half]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _same_result(out["a"][0], serial_chunked)
    b = out["b"][0]
    n_ok = int((serial_chunked.ok < half).sum())
    assert b.ok.tolist() == serial_chunked.ok[:n_ok].tolist()
    np.testing.assert_allclose(b.vectors, serial_chunked.vectors[:n_ok], atol=2e-5)
    for result, traces in out.values():
        assert sum(t.rows for t in traces) == int(result.n_chunks.sum())


def test_truncate_dim_and_chunk_infos_with_streams(minilm_dir: Path, texts: list[str]) -> None:
    over = {"truncate_dim": 128, "chunking.return_chunks": True}
    part = texts[::3] + texts[-7:]
    a = _embedder(minilm_dir, **SERIAL, **over).embed_records(part)
    b = _embedder(minilm_dir, **CONCURRENT, **over).embed_records(part)
    _same_result(a, b)
    assert a.vectors.shape[1] == 128
    np.testing.assert_allclose(np.linalg.norm(b.vectors, axis=1), 1.0, atol=1e-5)
    assert a.chunks is not None and b.chunks is not None and len(a.chunks) == len(b.chunks) == len(b.ok)
    for x, y, n in zip(a.chunks, b.chunks, b.n_chunks.tolist()):
        assert x.spans == y.spans and len(y.spans) == n
        np.testing.assert_allclose(x.vectors, y.vectors, atol=2e-5)


# ------------------------------------------------------------------ knobs
def test_defaults_follow_the_device(minilm_dir: Path) -> None:
    emb = _embedder(minilm_dir)
    assert not emb.session_info.on_gpu
    assert (emb.prepare_workers, emb.inference_streams) == (1, 1)  # CPU: do not oversubscribe
    emb.session_info = replace(emb.session_info, active="CUDAExecutionProvider")
    from sutra_embedder.core.embedder import usable_cores

    assert (emb.prepare_workers, emb.inference_streams) == (min(4, usable_cores()), 2)
    assert emb.describe()["inference_streams"] == 2


def test_tokenizer_threads_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from sutra_embedder.core.tokenization import TextTokenizer

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    monkeypatch.setenv("RAYON_NUM_THREADS", "3")
    assert TextTokenizer.threads() == 3
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert TextTokenizer.threads() == 1
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    monkeypatch.delenv("RAYON_NUM_THREADS")
    monkeypatch.delenv("RAYON_RS_NUM_CPUS", raising=False)
    from sutra_embedder.core.embedder import usable_cores

    assert TextTokenizer.threads() == usable_cores()


@pytest.mark.parametrize(
    "make",
    [
        lambda: BatchingConfig(prepare_workers=0),
        lambda: RuntimeConfig(inference_streams=0),
        lambda: RuntimeConfig(inference_streams=1.5),  # type: ignore[arg-type]
    ],
)
def test_knobs_are_validated(make: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        make()


@pytest.mark.parametrize(
    "n,block",
    [(0, 4), (4, 4), (5, 4), (9, 4), (100_000, 16384), (30_000, 16384), (3000, 1000), (5000, 4096), (2049, 2048)],
)
def test_blocks_ramp_up_and_down_and_cover_the_call(minilm_dir: Path, n: int, block: int) -> None:
    emb = _embedder(minilm_dir, **{"batching.pipeline_block": block})
    bounds = emb._blocks(n)
    assert [lo for lo, _ in bounds] == [0, *[hi for _, hi in bounds[:-1]]][: len(bounds)]
    assert (bounds[-1][1] if bounds else 0) == n
    sizes = [hi - lo for lo, hi in bounds]
    assert all(0 < s <= block for s in sizes)
    if n <= block:
        assert len(bounds) == (1 if n else 0)
        return
    first = min(block, 1024)
    peak = sizes.index(max(sizes))
    assert sizes[: peak + 1] == sorted(sizes[: peak + 1]) and sizes[peak:] == sorted(sizes[peak:], reverse=True)
    if n >= 4 * first:
        assert sizes[0] == sizes[-1] == first and max(sizes) >= min(block, 2 * first)
