"""The LanceDB sink: upsert by id, exact and ANN search, index creation, dead letters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sutra_embedder.connectors.lance import LanceIndex, LanceSink
from sutra_embedder.connectors.sinks import EmbeddingRow, SearchOptions, open_sink
from sutra_embedder.core.errors import ConfigError
from tests.fixtures.postgres import SinkCorpus, brute_force

pytest.importorskip("lancedb")


def _uri(path: Path, **params: Any) -> str:
    return f"lancedb://{path}?" + "&".join(f"{k}={v}" for k, v in {"table": "docs", **params}.items())


def _sink(path: Path, corpus: SinkCorpus, **params: Any) -> LanceSink:
    sink = open_sink(_uri(path, **params), corpus.dim, corpus.model)
    assert isinstance(sink, LanceSink)
    return sink


def _recall(index: LanceIndex, ids: list[str], vectors: np.ndarray, queries: np.ndarray,
            options: SearchOptions) -> float:
    found = 0
    for q in queries:
        want, _ = brute_force(ids, vectors, q, 10)
        found += len({h[0] for h in index.search(q, 10, options)} & set(want))
    return found / (10 * len(queries))


@pytest.fixture(scope="module")
def flat_db(tmp_path_factory: pytest.TempPathFactory, sink_corpus: SinkCorpus) -> Path:
    path = tmp_path_factory.mktemp("lance-flat")
    with _sink(path, sink_corpus, index="none", batch_size=64) as sink:
        assert sink.write(sink_corpus.rows()) == []
    return path


def test_exact_search_equalsbrute_force(flat_db: Path, sink_corpus: SinkCorpus) -> None:
    index = LanceIndex.from_uri(_uri(flat_db))
    assert (index.info.model, index.info.dim, index.info.rows) == (sink_corpus.model, sink_corpus.dim, 200)
    assert not index.has_ann_index
    for q in [*sink_corpus.query_vectors[:8], sink_corpus.vectors[3]]:
        want_ids, want_scores = brute_force(sink_corpus.ids, sink_corpus.vectors, q, 10)
        hits = index.search(q, 10, SearchOptions(exact=True))
        assert [h[0] for h in hits] == want_ids
        np.testing.assert_allclose([h[1] for h in hits], want_scores, atol=1e-5)


def test_hnsw_index_recall_at_10(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    with _sink(tmp_path, sink_corpus, index="hnsw", index_min_rows=150, batch_size=100) as sink:
        sink.write(sink_corpus.rows()[:100])
        sink.flush()
        assert not LanceIndex.from_uri(_uri(tmp_path)).has_ann_index  # 100 rows: below index_min_rows
        sink.write(sink_corpus.rows()[100:])
        sink.flush()
    index = LanceIndex.from_uri(_uri(tmp_path))
    assert index.has_ann_index
    stats = index.table.index_stats(index.table.list_indices()[0].name)
    assert (stats.num_indexed_rows, stats.index_type, stats.distance_type) == (200, "IVF_HNSW_SQ", "cosine")
    options = SearchOptions(ef_search=100)
    recall = _recall(index, sink_corpus.ids, sink_corpus.vectors, sink_corpus.query_vectors, options)
    assert recall >= 0.95, recall
    # Hits' scores are exact cosine similarities (re-ranked with the stored vectors).
    q = sink_corpus.query_vectors[0]
    hits = index.search(q, 5, options)
    ref = dict(zip(*brute_force(sink_corpus.ids, sink_corpus.vectors, q, 200)))
    np.testing.assert_allclose([s for _, s in hits], [ref[i] for i, _ in hits], atol=1e-5)


def test_ivf_pq_index_recall_at_10(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    # PQ needs >= 256 training rows: add 100 paraphrase-like neighbours of real documents.
    rng = np.random.default_rng(11)
    extra = sink_corpus.vectors[:100] + rng.normal(scale=0.02, size=(100, sink_corpus.dim)).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    ids = sink_corpus.ids + [f"near-{i}" for i in range(100)]
    vectors = np.concatenate([sink_corpus.vectors, extra])
    rows = [EmbeddingRow(id=i, vector=v, model=sink_corpus.model) for i, v in zip(ids, vectors)]
    with _sink(tmp_path, sink_corpus, index="ivf_pq", index_min_rows=256) as sink:
        sink.write(rows)
    index = LanceIndex.from_uri(_uri(tmp_path))
    stats = index.table.index_stats(index.table.list_indices()[0].name)
    assert (stats.num_indexed_rows, stats.index_type) == (300, "IVF_PQ")
    recall = _recall(index, ids, vectors, sink_corpus.query_vectors, SearchOptions(nprobes=20, refine_factor=10))
    assert recall >= 0.95, recall


def test_replay_and_changed_vectors_leave_n_latest_rows(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    n = len(sink_corpus.ids)
    changed = sink_corpus.vectors.copy()
    rng = np.random.default_rng(5)
    picked = rng.choice(n, size=25, replace=False)
    changed[picked] = rng.normal(size=(25, sink_corpus.dim)).astype(np.float32)
    with _sink(tmp_path, sink_corpus, batch_size=70, index="none") as sink:
        sink.write(sink_corpus.rows())
        sink.flush()
        sink.write(sink_corpus.rows())
        sink.flush()
        sink.write(sink_corpus.rows()[:10] + sink_corpus.rows(vectors=changed))
    index = LanceIndex.from_uri(_uri(tmp_path))
    assert index.count() == n
    stored = index.fetch()
    assert sorted(stored) == sorted(sink_corpus.ids)
    np.testing.assert_array_equal(np.stack([stored[i] for i in sink_corpus.ids]), changed)


def test_buffer_is_bounded_by_batch_size(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    sink = _sink(tmp_path, sink_corpus, batch_size=16, index="none")
    sink.write(sink_corpus.rows()[:40])
    assert sink.stats.batches == 2 and sink.buffered == 8  # two batches stored during write()
    assert LanceIndex.from_uri(_uri(tmp_path)).count() == 32
    sink.close()
    assert LanceIndex.from_uri(_uri(tmp_path)).count() == 40


def test_dead_letters_and_model_check(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    rows = sink_corpus.rows()[:5]
    wrong = EmbeddingRow(id="wide", vector=np.ones(sink_corpus.dim + 1, np.float32))
    other = EmbeddingRow(id="other", vector=rows[0].vector, model="mpnet")
    with _sink(tmp_path, sink_corpus, index="none") as sink:
        dead = sink.write([*rows[:2], wrong, other, *rows[2:]])
    assert [(d.id, d.kind) for d in dead] == [("wide", "dimension_mismatch"), ("other", "model_mismatch")]
    assert LanceIndex.from_uri(_uri(tmp_path)).count() == 5
    with pytest.raises(ConfigError, match="has model 'minilm'") as err:
        open_sink(_uri(tmp_path), sink_corpus.dim, "mpnet")
    assert err.value.field == "model"
    with pytest.raises(ConfigError, match="has dim '384'"):
        open_sink(_uri(tmp_path), 768, sink_corpus.model)


def test_float16_table(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    with _sink(tmp_path, sink_corpus, precision="float16", index="none") as sink:
        sink.write(sink_corpus.rows())
    index = LanceIndex.from_uri(_uri(tmp_path))
    assert index.info.precision == "float16"
    stored = index.fetch([sink_corpus.ids[4]])[sink_corpus.ids[4]]
    np.testing.assert_array_equal(stored, sink_corpus.vectors[4].astype(np.float16).astype(np.float32))
    hits = index.search(sink_corpus.vectors[4], 3, SearchOptions(exact=True))
    assert hits[0][0] == sink_corpus.ids[4] and hits[0][1] == pytest.approx(1.0, abs=1e-3)
