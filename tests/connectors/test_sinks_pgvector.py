"""The pgvector sink against a real PostgreSQL 18 + pgvector 0.8 server."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from sutra_embedder.connectors.pgvector import PgVectorIndex, PgVectorSink
from sutra_embedder.connectors.sinks import AsyncSink, EmbeddingRow, SearchOptions, SinkError, open_sink
from sutra_embedder.core.errors import ConfigError
from tests.fixtures.postgres import PgServer, SinkCorpus, brute_force, sql

pytestmark = pytest.mark.postgres


def _uri(base: str, table: str, **params: Any) -> str:
    extra = "".join(f"&{k}={v}" for k, v in {"table": table, **params}.items())
    return base + ("&" if "?" in base else "?") + extra.lstrip("&")


def _sink(pg_uri: str, table: str, corpus: SinkCorpus, **params: Any) -> PgVectorSink:
    sink = open_sink(_uri(pg_uri, table, **params), corpus.dim, corpus.model)
    assert isinstance(sink, PgVectorSink)
    return sink


@pytest.fixture
def loaded_table(pg_uri: str, pg_table: str, sink_corpus: SinkCorpus) -> str:
    with _sink(pg_uri, pg_table, sink_corpus, batch_size=64) as sink:
        assert sink.write(sink_corpus.rows()) == []
    return pg_table


def test_schema_index_and_model_comment(pg_uri: str, loaded_table: str, sink_corpus: SinkCorpus) -> None:
    rows = sql(pg_uri, f"SELECT indexdef FROM pg_indexes WHERE tablename = '{loaded_table}'")
    defs = " ".join(r[0] for r in rows)
    assert "USING hnsw (embedding vector_cosine_ops)" in defs and "m='16'" in defs
    index = PgVectorIndex.from_uri(_uri(pg_uri, loaded_table, batch_size=5))
    assert (index.info.model, index.info.dim, index.info.precision, index.info.rows) == (
        sink_corpus.model, sink_corpus.dim, "float32", 200)
    stored = sql(pg_uri, f"SELECT n_tokens, metadata->>'pos', model FROM {loaded_table} WHERE id = "
                          f"'{sink_corpus.ids[7]}'")
    assert stored == [(int(sink_corpus.result.n_tokens[7]), "7", sink_corpus.model)]
    index.close()


def test_exact_search_equals_brute_force(pg_uri: str, loaded_table: str, sink_corpus: SinkCorpus) -> None:
    index = PgVectorIndex.from_uri(_uri(pg_uri, loaded_table))
    for q in [*sink_corpus.query_vectors[:8], sink_corpus.vectors[3]]:
        want_ids, want_scores = brute_force(sink_corpus.ids, sink_corpus.vectors, q, 10)
        hits = index.search(q, 10, SearchOptions(exact=True))
        assert [h[0] for h in hits] == want_ids
        np.testing.assert_allclose([h[1] for h in hits], want_scores, atol=1e-5)
    index.close()


def test_hnsw_recall_at_10(pg_uri: str, loaded_table: str, sink_corpus: SinkCorpus) -> None:
    index = PgVectorIndex.from_uri(_uri(pg_uri, loaded_table))
    plan = sql(pg_uri, "EXPLAIN SELECT id FROM {t} ORDER BY embedding <=> '[{v}]'::vector LIMIT 10".format(
        t=loaded_table, v=",".join(["0.1"] * sink_corpus.dim)))
    assert f"Index Scan using {loaded_table}_embedding_hnsw" in " ".join(r[0] for r in plan)
    found = 0
    for q in sink_corpus.query_vectors:
        want, _ = brute_force(sink_corpus.ids, sink_corpus.vectors, q, 10)
        hits = index.search(q, 10, SearchOptions(ef_search=200))
        found += len({h[0] for h in hits} & set(want))
    recall = found / (10 * len(sink_corpus.query_vectors))
    assert recall >= 0.95, recall
    index.close()


@pytest.mark.parametrize("method", ["copy", "executemany"])
def test_replay_and_changed_vectors_leave_n_latest_rows(
    pg_uri: str, pg_table: str, sink_corpus: SinkCorpus, method: str
) -> None:
    n = len(sink_corpus.ids)
    with _sink(pg_uri, pg_table, sink_corpus, method=method, batch_size=48) as sink:
        sink.write(sink_corpus.rows())
        sink.flush()
        sink.write(sink_corpus.rows())  # an identical replay
        sink.flush()
        changed = sink_corpus.vectors.copy()
        rng = np.random.default_rng(3)
        picked = rng.choice(n, size=25, replace=False)
        changed[picked] = rng.normal(size=(25, sink_corpus.dim)).astype(np.float32)
        # The replay with new vectors also repeats ids inside one batch: the last write wins.
        sink.write(sink_corpus.rows()[:10] + sink_corpus.rows(vectors=changed))
    index = PgVectorIndex.from_uri(_uri(pg_uri, pg_table))
    assert index.count() == n
    stored = index.fetch()
    assert sorted(stored) == sorted(sink_corpus.ids)
    for j, rid in enumerate(sink_corpus.ids):
        np.testing.assert_array_equal(stored[rid], changed[j])  # 9 significant digits round-trip float32
    index.close()


def test_postgres_restart_during_indexing_loses_nothing(
    pg_server: PgServer, pg_table: str, sink_corpus: SinkCorpus
) -> None:
    rows = sink_corpus.rows()
    sink = _sink(pg_server.uri, pg_table, sink_corpus, batch_size=20, retries=60, retry_base_s=0.1,
                 retry_max_s=0.5)
    try:
        assert sink.write(rows[:90]) == []  # 80 rows stored, 10 buffered
        pg_server.stop()
        restarter = pg_server.restart_later(1.5)
        assert sink.write(rows[90:]) == []  # blocks in retries until the server is back
        assert sink.flush() == []
        restarter.join()
    finally:
        sink.close()
    assert sink.stats.retries >= 1
    index = PgVectorIndex.from_uri(_uri(pg_server.uri, pg_table))
    stored = index.fetch()
    assert len(stored) == len(rows) == index.count()
    np.testing.assert_array_equal(np.stack([stored[i] for i in sink_corpus.ids]), sink_corpus.vectors)
    index.close()


def test_refused_rows_become_dead_letters(pg_uri: str, pg_table: str, sink_corpus: SinkCorpus) -> None:
    rows = sink_corpus.rows()[:50]
    short = EmbeddingRow(id="short", vector=np.ones(768, np.float32), model=sink_corpus.model)
    nul = EmbeddingRow(id="nul", vector=rows[0].vector, metadata={"note": "a\x00b"})
    huge = EmbeddingRow(id="huge", vector=rows[1].vector, n_tokens=2**40)  # over Postgres' integer
    with _sink(pg_uri, pg_table, sink_corpus, batch_size=100) as sink:
        dead = sink.write([*rows[:20], short, nul, *rows[20:40], huge, *rows[40:]])
        assert [(d.id, d.kind) for d in dead] == [("short", "dimension_mismatch"), ("nul", "invalid_metadata")]
        assert "768 dimensions" in dead[0].error and f"stores {sink_corpus.dim}" in dead[0].error
        late = sink.flush()  # the server refuses "huge"; splitting the batch finds it
    assert [(d.id, d.kind, d.stage) for d in late] == [("huge", "rejected_by_store", "write")]
    assert "out of range" in late[0].error
    assert sql(pg_uri, f"SELECT count(*) FROM {pg_table}") == [(50,)]
    assert sink.stats.dead_letters == {"dimension_mismatch": 1, "invalid_metadata": 1, "rejected_by_store": 1}


def test_existing_table_of_other_dim_or_model_is_refused(
    pg_uri: str, loaded_table: str, sink_corpus: SinkCorpus
) -> None:
    with pytest.raises(ConfigError, match=r"stores vector\(384\) vectors.*vector\(768\)") as err:
        open_sink(_uri(pg_uri, loaded_table), 768, sink_corpus.model)
    assert err.value.field == "dim"
    with pytest.raises(ConfigError, match="holds vectors of model 'minilm'") as err:
        open_sink(_uri(pg_uri, loaded_table), sink_corpus.dim, "mpnet")
    assert err.value.field == "model"


@pytest.mark.parametrize(("precision", "column", "opclass"), [
    ("float16", "halfvec(384)", "halfvec_cosine_ops"),
    ("binary", "bit(384)", "bit_hamming_ops"),
])
def test_halfvec_and_bit_tables(
    pg_uri: str, pg_table: str, sink_corpus: SinkCorpus, precision: str, column: str, opclass: str
) -> None:
    with _sink(pg_uri, pg_table, sink_corpus, precision=precision) as sink:
        sink.write(sink_corpus.rows())
    assert sql(pg_uri, f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                        f"WHERE attrelid = '{pg_table}'::regclass AND attname = 'embedding'") == [(column,)]
    defs = " ".join(r[0] for r in sql(pg_uri, f"SELECT indexdef FROM pg_indexes WHERE tablename = '{pg_table}'"))
    assert opclass in defs
    index = PgVectorIndex.from_uri(_uri(pg_uri, pg_table))
    assert index.info.precision == precision
    q = sink_corpus.vectors[11]
    hits = index.search(q, 5, SearchOptions(exact=True))
    assert hits[0] == (sink_corpus.ids[11], pytest.approx(1.0, abs=1e-3))
    stored = index.fetch([sink_corpus.ids[11]])[sink_corpus.ids[11]]
    if precision == "float16":
        np.testing.assert_array_equal(stored, sink_corpus.vectors[11].astype(np.float16).astype(np.float32))
        _want, scores = brute_force(sink_corpus.ids, sink_corpus.vectors, q, 5)
        np.testing.assert_allclose([h[1] for h in hits], scores, atol=2e-3)
    else:
        np.testing.assert_array_equal(stored, (sink_corpus.vectors[11] > 0).astype(np.uint8))
    index.close()


def test_secrets_stay_out_of_errors_and_no_global_adapters(tmp_path: Any, sink_corpus: SinkCorpus) -> None:
    import psycopg

    uri = f"postgresql://app:Sup3r-Secret-PW@/db?host={tmp_path}&table=x&retries=2&retry_base_s=0.01"
    with pytest.raises(SinkError) as err:
        open_sink(uri, sink_corpus.dim, sink_corpus.model)
    assert "Sup3r-Secret-PW" not in str(err.value) and "failed after 2 attempts" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # the driver's error is not chained
    assert psycopg.adapters.types.get("vector") is None  # nothing registered globally


def test_async_sink_over_pgvector(pg_uri: str, pg_table: str, sink_corpus: SinkCorpus) -> None:
    rows = sink_corpus.rows()

    async def main() -> None:
        sink = AsyncSink(_sink(pg_uri, pg_table, sink_corpus, batch_size=32), max_pending_rows=64)
        await sink.open()
        for i in range(0, len(rows), 25):
            assert await sink.write(rows[i:i + 25]) == []
        assert await sink.flush() == []
        await sink.close()

    asyncio.run(main())
    assert sql(pg_uri, f"SELECT count(*) FROM {pg_table}") == [(len(rows),)]
