"""The rolling Parquet sink: atomic commits, replay-stable files, resume without duplicates."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from sutra_embedder.connectors import parquet_rolling
from sutra_embedder.connectors.parquet_rolling import ParquetIndex, RollingParquetSink, read_rows
from sutra_embedder.connectors.sinks import AsyncSink, BufferedSink, EmbeddingRow, SearchOptions, open_sink
from tests.fixtures.postgres import SinkCorpus


def _sink(path: Path, corpus: SinkCorpus, **params: Any) -> RollingParquetSink:
    query = "&".join(f"{k}={v}" for k, v in {"fsync": "false", **params}.items())
    sink = open_sink(f"parquet://{path}?{query}", corpus.dim, corpus.model)
    assert isinstance(sink, RollingParquetSink)
    return sink


def _write_in_chunks(sink: BufferedSink, rows: list[EmbeddingRow], sizes: list[int]) -> None:
    i = 0
    for size in sizes * (len(rows) // max(1, sum(sizes)) + 2):
        if i >= len(rows):
            break
        assert sink.write(rows[i:i + size]) == []
        i += size


def _digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.glob("*.parquet"))}


def test_union_of_files_equals_inputs(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    rows = sink_corpus.rows()
    sink = _sink(tmp_path, sink_corpus, max_rows=64)
    _write_in_chunks(sink, rows, [7, 30, 1])
    sink.flush()
    sink.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    # Offsets [0, 64), [64, 128), [128, 192), [192, 200): one file each, named by the first offset.
    assert names == [f"part-{o:020d}.parquet" for o in (0, 64, 128, 192)]
    table = read_rows(tmp_path)
    assert table.column("id").to_pylist() == sink_corpus.ids
    assert table.column("offset").to_pylist() == list(range(len(rows)))
    stored = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(stored, sink_corpus.vectors)
    assert table.column("n_tokens").to_pylist() == sink_corpus.result.n_tokens.tolist()
    assert table.schema.metadata[b"sutra.model"] == sink_corpus.model.encode()
    assert sink.stats.rows_stored == len(rows) and sink.stats.batches == 4


def test_replay_gives_identical_files(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    rows = sink_corpus.rows()
    first, second = tmp_path / "a", tmp_path / "b"
    with _sink(first, sink_corpus, max_rows=50) as sink:
        _write_in_chunks(sink, rows, [13])
    with _sink(second, sink_corpus, max_rows=50) as sink:
        _write_in_chunks(sink, rows, [1, 99, 4])
    original = _digests(first)
    assert len(original) == 4 and original == _digests(second)

    # Replaying into the same directory drops the already committed offsets and changes nothing.
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.glob("*.parquet")}
    with _sink(first, sink_corpus, max_rows=50) as sink:
        _write_in_chunks(sink, rows, [17])
        assert sink.stats.rows_skipped == len(rows) and sink.stats.rows_stored == 0
    assert _digests(first) == original
    assert {p.name: p.stat().st_mtime_ns for p in first.glob("*.parquet")} == mtimes


def test_crash_then_replay_from_start_stores_each_row_once(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    rows = sink_corpus.rows()
    sink = _sink(tmp_path, sink_corpus, max_rows=40)
    _write_in_chunks(sink, rows[:130], [9])
    sink.abort()  # a crash: rows 120..129 were only buffered
    assert [p.name for p in sorted(tmp_path.glob("*.parquet"))] == [f"part-{o:020d}.parquet" for o in (0, 40, 80)]

    resumed = _sink(tmp_path, sink_corpus, max_rows=40)
    assert resumed.last_offset() == 119
    _write_in_chunks(resumed, rows, [25])  # replay from offset 0, as a consumer without a commit would
    resumed.close()
    assert resumed.stats.rows_skipped == 120
    table = read_rows(tmp_path)
    assert sorted(table.column("offset").to_pylist()) == list(range(len(rows)))
    assert table.column("id").to_pylist() == sink_corpus.ids

    fresh = tmp_path / "fresh"
    with _sink(fresh, sink_corpus, max_rows=40) as sink:
        _write_in_chunks(sink, rows, [200])
    assert _digests(fresh) == _digests(tmp_path)


def test_files_only_appear_complete(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    rows = sink_corpus.rows()
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[str] = []

    def watch() -> None:
        while not stop.is_set():
            for p in tmp_path.glob("*.parquet"):
                try:
                    n = pq.read_metadata(p).num_rows
                    pq.read_table(p)
                    seen.add(p.name)
                    if n == 0:
                        errors.append(f"{p.name} is empty")
                except FileNotFoundError:
                    pass
                except Exception as exc:  # a partial file under a final name
                    errors.append(f"{p.name}: {exc}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with _sink(tmp_path, sink_corpus, max_rows=10, fsync="true") as sink:
            for i in range(0, len(rows), 3):
                sink.write(rows[i:i + 3])
    finally:
        stop.set()
        watcher.join()
    assert not errors
    assert len(list(tmp_path.glob("*.parquet"))) == 20 and seen
    assert not list(tmp_path.glob("*.inprogress"))


def test_failed_commit_leaves_no_final_file(
    tmp_path: Path, sink_corpus: SinkCorpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = sink_corpus.rows()[:30]
    sink = _sink(tmp_path, sink_corpus, max_rows=100)
    sink.write(rows)

    def crash(src: Any, dst: Any) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(parquet_rolling.os, "replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        sink.flush()
    assert not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob("*.inprogress"))
    monkeypatch.undo()
    sink.flush()  # the rows stayed buffered: the retry commits them
    sink.close()
    assert read_rows(tmp_path).column("id").to_pylist() == sink_corpus.ids[:30]


def test_roll_by_time_bytes_and_partitions(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    vecs = sink_corpus.vectors
    timed = _sink(tmp_path / "t", sink_corpus, max_rows=1000, max_seconds=0.2)
    timed.write(sink_corpus.rows()[:5])
    assert not list((tmp_path / "t").glob("*.parquet"))
    time.sleep(0.25)
    timed.write(sink_corpus.rows()[5:6])
    assert [p.name for p in (tmp_path / "t").glob("*.parquet")] == [f"part-{0:020d}.parquet"]
    timed.close()

    sized = _sink(tmp_path / "s", sink_corpus, max_rows=1000, max_bytes=10 * vecs[0].nbytes)
    sized.write(sink_corpus.rows()[:35])
    sized.close()
    assert len(list((tmp_path / "s").glob("*.parquet"))) == 4

    parts = _sink(tmp_path / "p", sink_corpus, max_rows=1000)
    rows = [EmbeddingRow(id=f"{p}-{o}", vector=vecs[o], offset=o, partition=p)
            for o in range(10) for p in ("texts-0", "texts/1")]
    parts.write(rows)
    parts.close()
    names = sorted(p.name for p in (tmp_path / "p").glob("*.parquet"))
    assert names[0] == f"part-texts-0-{0:020d}.parquet"
    assert names[1].startswith("part-texts_1-") and names[1].endswith(f"-{0:020d}.parquet")
    assert read_rows(tmp_path / "p").num_rows == 20


def test_refused_rows_become_dead_letters(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    good = sink_corpus.rows()[:3]
    wrong = EmbeddingRow(id="short", vector=np.ones(128, np.float32), source="texts/0/17")
    nan = EmbeddingRow(id="nan", vector=np.full(sink_corpus.dim, np.nan, np.float32))
    with _sink(tmp_path, sink_corpus) as sink:
        dead = sink.write([good[0], wrong, good[1], nan, good[2]])
    assert [(d.id, d.kind, d.stage) for d in dead] == [("short", "dimension_mismatch", "write"),
                                                       ("nan", "invalid_vector", "write")]
    assert "128 dimensions" in dead[0].error and f"stores {sink_corpus.dim}" in dead[0].error
    assert dead[0].source == "texts/0/17" and dead[0].model == sink_corpus.model
    assert read_rows(tmp_path).column("id").to_pylist() == [r.id for r in good]


@pytest.mark.parametrize("precision", ["float16", "ubinary"])
def test_stored_precision(tmp_path: Path, sink_corpus: SinkCorpus, precision: str) -> None:
    with _sink(tmp_path, sink_corpus, precision=precision) as sink:
        sink.write(sink_corpus.rows()[:20])
    stored = np.stack(read_rows(tmp_path).column("vector").to_numpy(zero_copy_only=False))
    v = sink_corpus.vectors[:20]
    if precision == "float16":
        np.testing.assert_array_equal(stored, v.astype(np.float16))
    else:
        bits = np.array([[1 if x > 0 else 0 for x in row] for row in v], np.uint8)  # one bit per dimension
        np.testing.assert_array_equal(np.unpackbits(stored.astype(np.uint8), axis=1), bits)


def test_exact_search_over_files(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    with _sink(tmp_path, sink_corpus, max_rows=64) as sink:
        sink.write(sink_corpus.rows())
    index = ParquetIndex(str(tmp_path))
    assert (index.info.model, index.info.dim, index.info.rows) == (sink_corpus.model, sink_corpus.dim, 200)
    docs = sink_corpus.vectors / np.linalg.norm(sink_corpus.vectors, axis=1, keepdims=True)
    for q in sink_corpus.query_vectors[:5]:
        scores = docs @ (q / np.linalg.norm(q))
        top = np.argsort(-scores)[:10]
        hits = index.search(q, 10, SearchOptions(exact=True))
        assert [h[0] for h in hits] == [sink_corpus.ids[i] for i in top]
        np.testing.assert_allclose([h[1] for h in hits], scores[top], atol=1e-5)


def test_async_wrapper_over_parquet(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    rows = sink_corpus.rows()

    async def main() -> None:
        async with AsyncSink(_sink(tmp_path, sink_corpus, max_rows=64), max_pending_rows=32) as sink:
            for i in range(0, len(rows), 16):
                assert await sink.write(rows[i:i + 16]) == []
            await sink.flush()  # the point where an agent commits its offsets
            assert read_rows(tmp_path).num_rows == len(rows)

    asyncio.run(main())
