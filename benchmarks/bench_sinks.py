"""Rows/s into each sink: rolling Parquet, Postgres + pgvector, LanceDB; batched upsert vs row by row.

Vectors are real MiniLM embeddings of ``--embed`` corpus texts, repeated with a
little noise (renormalised) up to ``--rows`` rows, so the HNSW index sees a
realistic distribution without embedding thousands of texts first.

Measured per configuration: rows/s of ``write`` + ``flush`` into a fresh table
(or directory), and of a second pass that upserts the same ids again (every
row an update). Row-by-row runs (``batch_size=1``: one transaction or one
table version per row) use the first ``--row-by-row`` rows only. Postgres comes
from pgserver (PostgreSQL + pgvector on a unix socket) unless ``--pg-uri`` is
given. Writes benchmarks/results/sinks.json and sinks.png.

    python benchmarks/bench_sinks.py [--rows 5000] [--row-by-row 300] [--embed 256]
    python benchmarks/bench_sinks.py --small        # a quick run: 1000 rows
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, load_texts, machine, write_results
from sutra_embedder.connectors.sinks import EmbeddingRow, SearchOptions, make_sink, open_index
from sutra_embedder.core import ChunkingConfig, Embedder, EmbedderConfig


def make_rows(n: int, n_embed: int, model: str) -> tuple[list[EmbeddingRow], str, int]:
    emb = Embedder(EmbedderConfig(model=model, chunking=ChunkingConfig(policy="truncate")))
    texts = [t[:600] for t in load_texts(n_embed)]
    base = emb.embed(texts)
    rng = np.random.default_rng(0)
    reps = base[np.arange(n) % len(base)] + rng.normal(scale=0.03, size=(n, emb.dim)).astype(np.float32)
    reps /= np.linalg.norm(reps, axis=1, keepdims=True)
    rows = [EmbeddingRow(id=f"doc-{i:07d}", vector=reps[i], n_tokens=64, metadata={"i": i, "src": "bench"},
                         model=emb.model_id, offset=i) for i in range(n)]
    return rows, emb.model_id, emb.dim


def timed_load(uri: str, rows: list[EmbeddingRow], dim: int, model: str, chunk: int = 256) -> float:
    """Seconds to write ``rows`` (in chunks, as a stream delivers them) and flush."""
    sink = make_sink(uri, dim, model)
    sink.open()
    start = time.perf_counter()
    for i in range(0, len(rows), chunk):
        dead = sink.write(rows[i:i + chunk])
        assert not dead, dead[:1]
    assert not sink.flush()
    seconds = time.perf_counter() - start
    sink.close()
    return seconds


def bulk_then_index(uri: str, rows: list[EmbeddingRow], dim: int, model: str) -> dict[str, Any]:
    """A bulk load without index, then one HNSW build: rows/s over both."""
    from sutra_embedder.connectors.pgvector import PgVectorSink

    sink = make_sink(uri, dim, model)
    assert isinstance(sink, PgVectorSink)
    sink.open()
    start = time.perf_counter()
    for i in range(0, len(rows), 256):
        sink.write(rows[i:i + 256])
    sink.flush()
    loaded = time.perf_counter()
    sink.create_index()
    done = time.perf_counter()
    sink.close()
    return {"name": "pgvector copy, HNSW built after", "sink": "pgvector", "rows": len(rows), "batch_size": 500,
            "insert_rows_per_s": round(len(rows) / (done - start), 1), "load_s": round(loaded - start, 3),
            "index_build_s": round(done - loaded, 3)}


def search_latency(uri: str, queries: np.ndarray, options: SearchOptions) -> float:
    index = open_index(uri)
    index.search(queries[0], 10, options)  # warm up
    start = time.perf_counter()
    for q in queries:
        index.search(q, 10, options)
    index.close()
    return (time.perf_counter() - start) / len(queries) * 1000


def start_postgres(base: Path) -> tuple[str, Callable[[], None]]:
    runtime = base / "runtime"
    runtime.mkdir(mode=0o700, parents=True)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)  # read by pgserver at import
    import pgserver

    server = pgserver.get_server(base / "data", cleanup_mode="delete")
    return server.get_uri(), server.cleanup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--row-by-row", type=int, default=300, help="rows for the batch_size=1 runs")
    ap.add_argument("--embed", type=int, default=256, help="distinct texts embedded for the vectors")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--pg-uri", default=None, help="use this Postgres instead of starting one")
    ap.add_argument("--small", action="store_true", help="1000 rows, 100 row by row, 128 texts")
    ap.add_argument("--skip", nargs="*", default=[], choices=["parquet", "pgvector", "lancedb"])
    args = ap.parse_args()
    if args.small:
        args.rows, args.row_by_row, args.embed = 1000, 100, 128

    rows, model, dim = make_rows(args.rows, args.embed, args.model)
    rbr = rows[: args.row_by_row]
    queries = np.stack([r.vector for r in rows[:: max(1, len(rows) // 50)]])[:50]
    base = Path(tempfile.mkdtemp(prefix="sutra-bench-sinks-"))
    cleanup: Callable[[], None] | None = None
    results: list[dict[str, Any]] = []

    def run(name: str, sink: str, uri_of: Callable[[str], str], data: list[EmbeddingRow],
            batch: int | str, updates: bool = True) -> str:
        tag = f"r{len(results)}"
        uri = uri_of(tag)
        first = timed_load(uri, data, dim, model)
        entry: dict[str, Any] = {"name": name, "sink": sink, "rows": len(data), "batch_size": batch,
                                 "insert_rows_per_s": round(len(data) / first, 1)}
        if updates:
            again = timed_load(uri, data, dim, model)
            entry["upsert_rows_per_s"] = round(len(data) / again, 1)
        results.append(entry)
        print(f"{name:<42} {entry['insert_rows_per_s']:>10,.0f} rows/s insert"
              + (f"  {entry['upsert_rows_per_s']:>10,.0f} rows/s upsert" if updates else ""), flush=True)
        return uri

    try:
        if "parquet" not in args.skip:
            run("parquet rolling (fsync)", "parquet",
                lambda t: f"parquet://{base}/{t}?max_rows=2000", rows, "2000/file", updates=False)
            run("parquet rolling (no fsync)", "parquet",
                lambda t: f"parquet://{base}/{t}?max_rows=2000&fsync=false", rows, "2000/file", updates=False)
        if "pgvector" not in args.skip:
            if args.pg_uri:
                pg = args.pg_uri
            else:
                pg, cleanup = start_postgres(base / "pg")
            sep = "&" if "?" in pg else "?"

            def pg_table(params: str) -> Callable[[str], str]:
                return lambda t: f"{pg}{sep}table={t}&{params}"

            uris = [run(f"pgvector {m} batch 500 (hnsw)", "pgvector", pg_table(f"method={m}&batch_size=500"), rows, 500)
                    for m in ("copy", "executemany")]
            for m in ("copy", "executemany"):
                run(f"pgvector {m} batch 500 (no index)", "pgvector", pg_table(f"method={m}&batch_size=500&index=none"),
                    rows, 500)
            run("pgvector row by row (hnsw)", "pgvector", pg_table("method=executemany&batch_size=1"), rbr, 1)
            run("pgvector row by row (no index)", "pgvector", pg_table("method=executemany&batch_size=1&index=none"),
                rbr, 1)
            results.append(bulk_then_index(f"{pg}{sep}table=bulk&batch_size=500&index=none", rows, dim, model))
            print(results[-1], flush=True)
            uri = uris[0]
            results.append({"name": "pgvector search", "sink": "pgvector", "rows": len(rows),
                            "exact_ms": round(search_latency(uri, queries, SearchOptions(exact=True)), 2),
                            "hnsw_ef100_ms": round(search_latency(uri, queries, SearchOptions(ef_search=100)), 2)})
            print(results[-1], flush=True)
        if "lancedb" not in args.skip:
            run("lancedb merge_insert batch 2000", "lancedb",
                lambda t: f"lancedb://{base}/lance?table={t}&batch_size=2000&index=none&optimize=false",
                rows, 2000)
            run("lancedb row by row", "lancedb",
                lambda t: f"lancedb://{base}/lance?table={t}&batch_size=1&index=none&optimize=false", rbr, 1)
            uri = f"lancedb://{base}/lance?table=ann"
            timed_load(f"{uri}&batch_size=2000&index=hnsw&index_min_rows=1000", rows, dim, model)
            results.append({"name": "lancedb search", "sink": "lancedb", "rows": len(rows),
                            "exact_ms": round(search_latency(uri, queries, SearchOptions(exact=True)), 2),
                            "hnsw_ms": round(search_latency(uri, queries, SearchOptions(ef_search=100)), 2)})
            print(results[-1], flush=True)
    finally:
        if cleanup is not None:
            cleanup()
        shutil.rmtree(base, ignore_errors=True)

    data = {"benchmark": "sinks", "machine": machine(), "model": model, "dim": dim, "rows": args.rows,
            "row_by_row_rows": args.row_by_row, "write_chunk": 256, "results": results}
    path = write_results("sinks", data)
    plot(results)
    print(f"wrote {path} and {RESULTS / 'sinks.png'}")


def plot(results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [r for r in results if "insert_rows_per_s" in r]
    labels = [r["name"] for r in loads]
    ins = [r["insert_rows_per_s"] for r in loads]
    ups = [r.get("upsert_rows_per_s", 0.0) for r in loads]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    y = np.arange(len(labels))
    ax.barh(y - 0.2, ins, height=0.4, label="insert (new ids)", color="#4c72b0")
    ax.barh(y + 0.2, ups, height=0.4, label="upsert (same ids again)", color="#dd8452")
    for yi, v in zip(y, ins):
        ax.annotate(f"{v:,.0f}", (v, yi - 0.2), va="center", fontsize=8, xytext=(3, 0), textcoords="offset points")
    for yi, v in zip(y, ups):
        if v:
            ax.annotate(f"{v:,.0f}", (v, yi + 0.2), va="center", fontsize=8, xytext=(3, 0),
                        textcoords="offset points")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("rows / s (log scale)")
    ax.set_title("Writing 384-d embeddings into each sink (write + flush)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "sinks.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
