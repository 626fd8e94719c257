"""Real-time indexing: the Kafka worker writing into a store, and its Prometheus metrics.

Documents go through the whole streaming path (a real broker, the worker as a
child process, a real Postgres + pgvector or LanceDB). Expected vectors come
from the embedder's batch path on the same texts, expected neighbours from
brute-force numpy over those vectors.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from sutra_embedder.devservices.kafka import KafkaBroker
from tests.agents.test_kafka_worker import Outputs, Producer, Worker, committed_offsets
from tests.fixtures.kafka import TopicFactory
from tests.fixtures.postgres import SinkCorpus, brute_force, sql

N_DOCS = 200  # the sink corpus


def _produce_corpus(producer: Producer, corpus: SinkCorpus, vary: str = "") -> None:
    """Every corpus document once, as JSON with its id (``vary`` changes the texts)."""
    for rid, text in zip(corpus.ids, corpus.texts, strict=True):
        producer._send(rid, json.dumps({"id": rid, "text": text + vary, "lang": "en"}).encode(), None)
        producer.sent.good[rid] = text + vary


def _wait(predicate: Any, timeout: float, worker: Worker, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert worker.proc.poll() is None, f"worker exited with {worker.proc.returncode}:\n{worker.log_tail()}"
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{worker.log_tail()}")


def _worker_args(broker: KafkaBroker, source: str, dlq: str, app_id: str, sink: str, model: Path) -> list[str]:
    return [
        "--brokers", broker.bootstrap_servers, "--source", source, "--sink", sink, "--dead-letter-topic", dlq,
        "--app-id", app_id, "--model", str(model), "--session-timeout", "3", "--commit-interval", "0.5",
        "--stats-interval", "0", "--log-level", "info", "--max-wait-ms", "5", "--long-texts", "truncate",
    ]


@pytest.fixture
def topics(kafka_topic_factory: TopicFactory) -> Iterator[tuple[str, str, str]]:
    """Source (2 partitions), dead letters, and an output topic."""
    yield kafka_topic_factory("docs", partitions=2), kafka_topic_factory("docs-dlq"), kafka_topic_factory("vecs")


# ------------------------------------------------------------------ pgvector
@pytest.mark.kafka
@pytest.mark.postgres
def test_worker_indexes_a_stream_into_pgvector(
    kafka_broker: KafkaBroker, topics: tuple[str, str, str], pg_uri: str, pg_table: str, minilm_dir: Path,
    sink_corpus: SinkCorpus, tmp_path: Path,
) -> None:
    """N documents through the streaming path: exact search = brute force, HNSW recall, replay, dead letters."""
    from sutra_embedder.connectors.pgvector import PgVectorIndex
    from sutra_embedder.connectors.sinks import SearchOptions

    source, dlq, unused = topics
    app_id = f"app-{source}"
    sink_uri = f"{pg_uri}{'&' if '?' in pg_uri else '?'}table={pg_table}&batch_size=64"
    args = _worker_args(kafka_broker, source, dlq, app_id, sink_uri, minilm_dir)
    producer = Producer(kafka_broker.bootstrap_servers, source, 2)
    _produce_corpus(producer, sink_corpus)
    producer.poison()
    outputs = Outputs(kafka_broker.bootstrap_servers, unused, dlq)
    worker = Worker(args, tmp_path / "worker.log")
    try:
        count = lambda: sql(pg_uri, f"SELECT count(*) FROM {pg_table}")[0][0]  # noqa: E731
        _wait(lambda: _table_exists(pg_uri, pg_table) and count() == N_DOCS, 240, worker, f"{N_DOCS} rows")
        outputs.wait_for(producer.sent.poison, timeout=60, worker=worker)
        # Offsets are committed only after the rows are durable: wait for the commit of everything.
        total = {p: n for p, n in _end_offsets(producer).items()}
        _wait(lambda: committed_offsets(kafka_broker.bootstrap_servers, app_id, source) == total, 60, worker,
              f"committed offsets {total}")
    finally:
        assert worker.stop() == 0, worker.log_tail()
    password = urlsplit(pg_uri).password
    if password:
        log_text = (tmp_path / "worker.log").read_text()
        assert f":{password}@" not in log_text and ":***@" in log_text, "the DSN's password must be redacted"
    letters = {d["id"]: d for d in outputs.letters}
    assert {i: d["kind"] for i, d in letters.items()} == producer.sent.poison
    assert all(d["error"] and d["source"].startswith(source) for d in letters.values())

    rows = sql(pg_uri, f"SELECT id, embedding::text FROM {pg_table}")
    stored = {rid: np.array(json.loads(vec), dtype=np.float32) for rid, vec in rows}
    assert set(stored) == set(sink_corpus.ids), "rows + dead letters = inputs, by id"
    ref = {rid: sink_corpus.vectors[j] for j, rid in enumerate(sink_corpus.ids)}
    assert max(float(np.abs(stored[r] - ref[r]).max()) for r in stored) < 1e-5

    index = PgVectorIndex.from_uri(sink_uri)
    try:
        recalls = []
        for q in sink_corpus.query_vectors:
            expected = brute_force(sink_corpus.ids, sink_corpus.vectors, q, 10)[0]
            exact = [h[0] for h in index.search(q, 10, SearchOptions(exact=True))]
            assert exact == expected
            ann = [h[0] for h in index.search(q, 10, SearchOptions(ef_search=200))]
            recalls.append(len(set(ann) & set(expected)) / 10)
        assert float(np.mean(recalls)) >= 0.95
    finally:
        index.close()

    # Replay with changed texts (a new consumer group reads everything again):
    # still exactly N rows, each with the latest vector.
    _produce_corpus(producer, sink_corpus, vary=" (revised)")
    producer.close()
    replay = Worker([*args[:args.index("--app-id")], "--app-id", f"{app_id}-replay",
                     *args[args.index("--app-id") + 2:]], tmp_path / "replay.log")
    latest = _latest_vectors(minilm_dir, sink_corpus)
    try:
        def updated() -> bool:
            got = dict(sql(pg_uri, f"SELECT id, embedding::text FROM {pg_table}"))
            return all(np.abs(np.array(json.loads(got[r]), np.float32) - latest[r]).max() < 1e-5 for r in got)

        _wait(updated, 300, replay, "the revised vectors")
    finally:
        assert replay.stop() == 0, replay.log_tail()
    assert sql(pg_uri, f"SELECT count(*), count(DISTINCT id) FROM {pg_table}")[0] == (N_DOCS, N_DOCS)
    outputs.close()


def _table_exists(pg_uri: str, table: str) -> bool:
    return bool(sql(pg_uri, f"SELECT to_regclass('{table}') IS NOT NULL")[0][0])


def _end_offsets(producer: Producer) -> dict[int, int]:
    ends: dict[int, int] = {}
    for partition, offset in producer.sent.position.values():
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def _latest_vectors(model: Path, corpus: SinkCorpus) -> dict[str, np.ndarray]:
    from sutra_embedder.core import ChunkingConfig, Embedder, EmbedderConfig

    emb = Embedder(EmbedderConfig(model=str(model), chunking=ChunkingConfig(policy="truncate")))
    vectors = emb.embed([t + " (revised)" for t in corpus.texts])
    return {rid: vectors[j] for j, rid in enumerate(corpus.ids)}


# ------------------------------------------------------------------ LanceDB
@pytest.mark.kafka
def test_worker_indexes_a_stream_into_lancedb(
    kafka_broker: KafkaBroker, topics: tuple[str, str, str], minilm_dir: Path, sink_corpus: SinkCorpus, tmp_path: Path,
) -> None:
    """The embedded default store: exact search equals brute force after indexing through the stream."""
    pytest.importorskip("lancedb")
    from sutra_embedder.connectors.lance import LanceIndex
    from sutra_embedder.connectors.sinks import SearchOptions

    source, dlq, _ = topics
    uri = f"lancedb://{tmp_path / 'lance'}?table=docs"
    args = _worker_args(kafka_broker, source, dlq, f"app-{source}", uri, minilm_dir)
    producer = Producer(kafka_broker.bootstrap_servers, source, 2)
    _produce_corpus(producer, sink_corpus)
    producer.close()
    worker = Worker(args, tmp_path / "worker.log")

    def rows() -> int:
        import lancedb

        try:
            return int(lancedb.connect(str(tmp_path / "lance")).open_table("docs").count_rows())
        except Exception:  # not created yet
            return 0

    try:
        _wait(lambda: rows() == N_DOCS, 240, worker, f"{N_DOCS} rows")
    finally:
        assert worker.stop() == 0, worker.log_tail()
    index = LanceIndex.from_uri(uri)
    try:
        for q in sink_corpus.query_vectors[:10]:
            exact = [h[0] for h in index.search(q, 10, SearchOptions(exact=True))]
            assert exact == brute_force(sink_corpus.ids, sink_corpus.vectors, q, 10)[0]
    finally:
        index.close()


# ------------------------------------------------------------------ metrics
def _scrape(port: int) -> dict[str, float]:
    """Samples of /metrics as ``{'name{labels}': value}``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.mark.kafka
def test_metrics_endpoint_counts_what_was_sent(
    kafka_broker: KafkaBroker, topics: tuple[str, str, str], minilm_dir: Path, tmp_path: Path,
) -> None:
    """Scrape /metrics during a real run: counters equal the messages sent, by kind."""
    source, dlq, out = topics
    port = _free_port()
    args = [*_worker_args(kafka_broker, source, dlq, f"app-{source}", f"kafka:{out}", minilm_dir),
            "--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
    producer = Producer(kafka_broker.bootstrap_servers, source, 2)
    producer.good(40)
    producer.poison()
    worker = Worker(args, tmp_path / "worker.log")
    outputs = Outputs(kafka_broker.bootstrap_servers, out, dlq)
    try:
        _wait(lambda: _port_open(port), 120, worker, "the metrics endpoint")
        first = _scrape(port)
        assert "sutra_messages_received_total" in first  # served while the stream runs
        outputs.wait_for(set(producer.sent.good) | set(producer.sent.poison), timeout=180, worker=worker)
        producer.good(10)  # more traffic after the first scrape
        producer.close()
        outputs.wait_for(set(producer.sent.good) | set(producer.sent.poison), timeout=120, worker=worker)
        sent = len(producer.sent.good) + len(producer.sent.poison)
        _wait(lambda: _scrape(port).get("sutra_messages_received_total") == sent, 30, worker, "the counters")
        m = _scrape(port)
    finally:
        worker.stop()
        outputs.close()
    assert m["sutra_messages_received_total"] == sent
    assert m["sutra_texts_embedded_total"] == len(producer.sent.good)
    kinds: dict[str, int] = {}
    for kind in producer.sent.poison.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    got = {re.search(r'kind="([^"]+)"', k).group(1): int(v)  # type: ignore[union-attr]
           for k, v in m.items() if k.startswith("sutra_dead_letters_total{")}
    assert got == kinds
    assert m["sutra_texts_embedded_total"] + sum(got.values()) == sent
    # Every embedded text was one record through the queue and latency histograms.
    assert m["sutra_queue_seconds_count"] == m["sutra_latency_seconds_count"] >= len(producer.sent.good)
    assert m["sutra_batch_size_sum"] == m["sutra_chunks_total"] >= len(producer.sent.good)
    assert m["sutra_tokens_total"] > 0 and m["sutra_padded_tokens_total"] >= m["sutra_tokens_total"]
    assert m["sutra_batch_inference_seconds_count"] == m["sutra_model_batches_total"] > 0
    assert any(k.startswith("sutra_device_requests_total{") for k in m)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
