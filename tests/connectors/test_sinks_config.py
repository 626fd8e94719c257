"""Sink URIs, config validation, secret redaction, row checks, missing extras and AsyncSink backpressure."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from sutra_embedder.connectors.lance import LanceSinkConfig
from sutra_embedder.connectors.parquet_rolling import ParquetSinkConfig
from sutra_embedder.connectors.pgvector import PgVectorSinkConfig
from sutra_embedder.connectors.records import DeadLetter
from sutra_embedder.connectors.sinks import (
    AsyncSink,
    EmbeddingRow,
    SinkError,
    SinkStats,
    check_row,
    make_sink,
    redact_uri,
    sink_config_from_uri,
)
from sutra_embedder.core.errors import ConfigError

SECRET = "pa ss@w:rd/42"  # URL-escaped in the URI below
PG_URI = "pgvector+postgresql://app:pa%20ss%40w%3Ard%2F42@db.local:5433/emb?table=docs&batch_size=64&sslmode=require"


def test_uris_build_each_config() -> None:
    pq = sink_config_from_uri("parquet:///data/out?max_rows=50&max_seconds=2.5&precision=float16", 384, "minilm")
    assert isinstance(pq, ParquetSinkConfig)
    assert (pq.path, pq.max_rows, pq.max_seconds, pq.precision) == ("/data/out", 50, 2.5, "float16")
    rel = sink_config_from_uri("parquet://rel/dir", 8, "m")
    assert isinstance(rel, ParquetSinkConfig) and rel.path == "rel/dir"

    pg = sink_config_from_uri(PG_URI, 384, "minilm")
    assert isinstance(pg, PgVectorSinkConfig)
    assert (pg.table, pg.batch_size, pg.method, pg.column_type) == ("docs", 64, "copy", "vector(384)")
    # Sink parameters are removed from the libpq URI; libpq's own stay.
    assert pg.dsn.startswith("postgresql://app:") and "sslmode=require" in pg.dsn and "batch_size" not in pg.dsn

    lance = sink_config_from_uri("lancedb:///tmp/l?table=docs&index=ivf_pq&index_min_rows=500", 16, "m")
    assert isinstance(lance, LanceSinkConfig)
    assert (lance.path, lance.table, lance.index, lance.index_min_rows) == ("/tmp/l", "docs", "ivf_pq", 500)

    over = sink_config_from_uri("lancedb:///tmp/l?batch_size=10", 16, "m", batch_size=99)
    assert isinstance(over, LanceSinkConfig) and over.batch_size == 99


@pytest.mark.parametrize(
    ("uri", "field", "needle"),
    [
        ("kafka://x", "uri", "parquet"),
        ("parquet:///d?max_rowz=5", "max_rowz", "max_rows"),
        ("parquet:///d?max_rows=0", "max_rows", ">= 1"),
        ("parquet:///d?max_rows=ten", "max_rows", "integer"),
        ("parquet:///d?precision=int8", "calibration", "calibration"),
        ("lancedb:///d?precision=int8", "precision", "float16"),
        ("lancedb:///d?table=bad-name", "table", "valid table"),
        ("lancedb:///d?index=ivf_pq&index_min_rows=5", "index_min_rows", ">= 256 rows"),
        ("postgresql://u@h/db?precision=uint8", "precision", "binary"),
        ("postgresql://u@h/db?method=bulk", "method", "executemany"),
        ("postgresql://u@h/db?table=a.b.c", "table", "schema.name"),
        ("postgresql://u@h/db?max_seconds=-1", "max_seconds", "positive"),
    ],
)
def test_invalid_settings_name_the_field(uri: str, field: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        sink_config_from_uri(uri, 384, "minilm")
    assert err.value.field == field
    assert needle in str(err.value)


def test_hnsw_dimension_limit_suggests_halfvec() -> None:
    with pytest.raises(ConfigError, match="float16"):
        sink_config_from_uri("postgresql://u@h/db", 3072, "big")
    cfg = sink_config_from_uri("postgresql://u@h/db?precision=float16", 3072, "big")
    assert isinstance(cfg, PgVectorSinkConfig) and cfg.column_type == "halfvec(3072)"


def test_password_never_printed() -> None:
    cfg = sink_config_from_uri(PG_URI, 384, "minilm")
    assert isinstance(cfg, PgVectorSinkConfig)
    for text in (repr(cfg), str(cfg), cfg.location, redact_uri(PG_URI)):
        assert "pa%20ss" not in text and SECRET not in text
        assert "***" in text
    assert SECRET in cfg.secrets
    assert redact_uri("host=db user=app password='x y z' dbname=e") == "host=db user=app password=*** dbname=e"
    assert "hunter2" not in redact_uri("postgresql://u@h/db?password=hunter2&table=t")


def _row(vec: np.ndarray, **kw: object) -> EmbeddingRow:
    return EmbeddingRow(id=str(kw.pop("id", "a")), vector=vec, **kw)  # type: ignore[arg-type]


def test_check_row_reasons() -> None:
    good = np.ones(4, np.float32)
    assert check_row(_row(good), 4, "m") is None
    kind, msg = check_row(_row(np.ones(6, np.float32)), 4, "m") or ("", "")
    assert kind == "dimension_mismatch" and "6 dimensions" in msg and "stores 4" in msg
    assert (check_row(_row(np.ones((2, 2), np.float32)), 4, "m") or ("",))[0] == "dimension_mismatch"
    assert (check_row(_row(np.array([1, np.nan, 0, 0], np.float32)), 4, "m") or ("",))[0] == "invalid_vector"
    assert (check_row(_row(good, id=""), 4, "m") or ("",))[0] == "invalid_id"
    assert (check_row(_row(good, id="a\x00b"), 4, "m") or ("",))[0] == "invalid_id"
    kind, msg = check_row(_row(good, model="other"), 4, "m") or ("", "")
    assert kind == "model_mismatch" and "other" in msg


@pytest.mark.parametrize(("uri", "module", "extra"), [
    ("postgresql://u@h/db", "psycopg", "sutra-embedder[postgres]"),
    ("lancedb:///tmp/x", "lancedb", "sutra-embedder[lancedb]"),
])
def test_missing_extra_names_the_pip_command(
    uri: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=rf"pip install '{extra.replace('[', '.').replace(']', '.')}'"):
        make_sink(uri, 8, "m")


# ------------------------------------------------------------------ AsyncSink
class SlowSink:
    """A blocking sink that takes ``delay`` per write and records concurrency (a test double)."""

    def __init__(self, delay: float, fail_after: int | None = None) -> None:
        self.stats = SinkStats()
        self.delay = delay
        self.fail_after = fail_after
        self.rows: list[EmbeddingRow] = []
        self.active = 0
        self.max_active = 0
        self.threads: set[str] = set()
        self.opened = self.closed = False
        self.flushes = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        self.opened = True

    def write(self, rows: Sequence[EmbeddingRow]) -> list[DeadLetter]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.threads.add(threading.current_thread().name)
        try:
            time.sleep(self.delay)
            if self.fail_after is not None and len(self.rows) >= self.fail_after:
                raise ConnectionError("store went away")
            dead = [DeadLetter(r.id, "write", "dimension_mismatch", "bad", "m") for r in rows if r.vector.size != 2]
            self.rows += [r for r in rows if r.vector.size == 2]
            return dead
        finally:
            with self._lock:
                self.active -= 1

    def flush(self) -> list[DeadLetter]:
        self.flushes += 1
        return []

    def close(self) -> None:
        self.closed = True


def _rows(n: int, start: int = 0, dim: int = 2) -> list[EmbeddingRow]:
    return [EmbeddingRow(id=str(start + i), vector=np.ones(dim, np.float32)) for i in range(n)]


def test_async_sink_bounds_pending_rows_and_keeps_order() -> None:
    slow = SlowSink(delay=0.02)

    async def main() -> tuple[int, list[DeadLetter]]:
        sink = AsyncSink(slow, max_pending_rows=20)
        await sink.open()
        peak = 0
        dead: list[DeadLetter] = []
        for b in range(15):
            dead += await sink.write(_rows(8, start=b * 8))
            peak = max(peak, sink.pending_rows)
        dead += await sink.write([EmbeddingRow(id="bad", vector=np.ones(3, np.float32))])
        dead += await sink.flush()
        await sink.close()
        return peak, dead

    peak, dead = asyncio.run(main())
    assert peak <= 20  # the writer waited instead of queueing all 120 rows
    assert [r.id for r in slow.rows] == [str(i) for i in range(120)]
    assert [d.id for d in dead] == ["bad"]
    assert slow.max_active == 1 and slow.threads and all(t.startswith("sutra-sink") for t in slow.threads)
    assert slow.opened and slow.closed and slow.flushes >= 1


def test_async_sink_does_not_block_the_event_loop() -> None:
    slow = SlowSink(delay=0.2)

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.get_running_loop().create_task(ticker())
        async with AsyncSink(slow, max_pending_rows=100) as sink:
            await sink.write(_rows(10))
            await sink.flush()
        task.cancel()
        return ticks

    assert asyncio.run(main()) >= 5


def test_async_sink_surfaces_store_errors() -> None:
    slow = SlowSink(delay=0.0, fail_after=10)

    async def main() -> None:
        sink = AsyncSink(slow, max_pending_rows=100)
        await sink.open()
        await sink.write(_rows(10))
        await sink.write(_rows(10, start=10))  # fails in the worker
        with pytest.raises(SinkError, match="store went away"):
            await sink.flush()
        with pytest.raises(SinkError):
            await sink.write(_rows(1, start=99))
        await sink.close()

    asyncio.run(main())
