"""The Kafka worker: configuration, and reliability against the real broker.

The reliability tests run the worker as a child process (so SIGKILL is a real
crash) and check, by id, that every input ends as exactly one output or dead
letter, with the duplicates at-least-once allows and none under exactly-once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sutra_embedder.agents.faust_agent import AgentConfig
from sutra_embedder.connectors.kafka import KafkaConnection, decode_embedding
from sutra_embedder.core import Embedder
from sutra_embedder.core.errors import ConfigError
from sutra_embedder.devservices.kafka import KafkaBroker
from sutra_embedder.pipelines.kafka_worker import (
    PASSWORD_ENV,
    WorkerConfig,
    build_app,
    config_from_args,
    parse_sink,
    register_cli,
)
from tests.fixtures.kafka import TopicFactory

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ config
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sutra")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_options_build_the_worker_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret-pass")
    args = _parse([
        "worker", "--brokers", "b1:9092,b2:9092", "--source", "texts", "--sink", "kafka:vectors",
        "--dead-letter-topic", "texts-dlq", "--processing-guarantee", "exactly_once",
        "--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN", "--sasl-username", "svc",
        "--output-format", "binary", "--precision", "float16", "--max-wait-ms", "2", "--queue-size", "64",
        "--commit-interval", "0.5", "--model", "minilm", "--long-texts", "truncate",
        "--log-format", "json", "--metrics-port", "9108",
    ])
    assert callable(args.func)
    config = config_from_args(args)
    assert config.output_topic == "vectors" and config.processing_guarantee == "exactly_once"
    assert config.agent.dead_letter_topic == "texts-dlq" and config.agent.output_format == "binary"
    assert config.agent.streaming.max_wait_ms == 2 and config.agent.streaming.queue_size == 64
    assert config.agent.commit_interval_s == 0.5
    assert config.embedder.chunking.policy == "truncate"
    assert config.connection.sasl_password == "s3cret-pass"
    assert "s3cret-pass" not in repr(config)
    assert config.log_format == "json" and config.metrics_port == 9108
    assert "s3cret-pass" in config.secrets()  # what the log filter hides


@pytest.mark.parametrize("sink", ["vectors", "pg:vectors", "kafka:", "kafka:bad topic"])
def test_bad_sinks_are_rejected(sink: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sink(sink)
    assert info.value.field == "sink"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"sink": "kafka:texts"}, "sink"),
        ({"processing_guarantee": "at_most_once"}, "processing_guarantee"),
        ({"app_id": "has space"}, "app_id"),
        ({"session_timeout_s": 0.5}, "session_timeout_s"),
        ({"web_port": 70000}, "web_port"),
        ({"log_level": "loud"}, "log_level"),
        ({"source_topic": "a/b"}, "source_topic"),
        ({"metrics_port": 70000}, "metrics_port"),
        ({"log_format": "xml"}, "log_format"),
        ({"sink_max_pending_rows": 0}, "sink_max_pending_rows"),
        ({"sink": "postgresql://u@h/db?table=t", "processing_guarantee": "exactly_once"}, "processing_guarantee"),
    ],
)
def test_worker_config_validation_names_the_field(kwargs: dict[str, Any], name: str) -> None:
    base: dict[str, Any] = {"connection": KafkaConnection("h:1"), "source_topic": "texts", "sink": "kafka:out"}
    with pytest.raises(ConfigError) as info:
        WorkerConfig(**(base | kwargs))
    assert info.value.field == name


def test_store_sinks_name_no_topic() -> None:
    base: dict[str, Any] = {"connection": KafkaConnection("h:1"), "source_topic": "texts"}
    assert WorkerConfig(**base, sink="lancedb:///data/lance?table=docs").output_topic is None
    assert WorkerConfig(**base, sink="postgresql://u@db/app?table=docs").output_topic is None
    assert WorkerConfig(**base, sink="kafka:vectors").output_topic == "vectors"
    with pytest.raises(ConfigError, match="kafka:TOPIC or a store URI") as info:
        WorkerConfig(**base, sink="mysql://u:pw@db/app")
    assert "pw" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"max_pending": 0}, "max_pending"), ({"commit_interval_s": 0}, "commit_interval_s"),
     ({"output_format": "xml"}, "output_format"), ({"dead_letter_topic": "x y"}, "dead_letter_topic")],
)
def test_agent_config_validation_names_the_field(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig(**kwargs)
    assert info.value.field == name


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_build_app_settings(make_embedder: Callable[..., Embedder], guarantee: str) -> None:
    config = WorkerConfig(KafkaConnection("127.0.0.1:1"), "texts", "kafka:vectors",
                          processing_guarantee=guarantee, app_id=f"app-{guarantee}",  # type: ignore[arg-type]
                          agent=AgentConfig(dead_letter_topic="dlq"))
    app, handle = build_app(config, embedder=make_embedder())
    assert app.conf.web_enabled is False
    assert str(app.conf.processing_guarantee.value) == guarantee
    assert handle.output_topic == "vectors" and handle.agent is not None
    if guarantee == "exactly_once":  # the agent commits its transactions itself
        assert app.conf.broker_commit_interval > 3600
    web = WorkerConfig(KafkaConnection("127.0.0.1:1"), "texts", "kafka:vectors", web_port=6099)
    app2, _ = build_app(web, embedder=make_embedder())
    assert app2.conf.web_enabled and app2.conf.web_bind == "127.0.0.1" and app2.conf.web_port == 6099


def test_faust_import_error_names_the_extra() -> None:
    code = (
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('faust', 'mode'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, B())\n"
        "from sutra_embedder.agents import StreamingEmbedder\n"
        "from sutra_embedder.agents.faust_agent import require_faust\n"
        "try:\n"
        "    require_faust()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "pip install 'sutra-embedder[faust]'" in out.stdout


# ------------------------------------------------------------ reliability
def corpus_texts() -> list[str]:
    lines = (REPO / "examples/corpus.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"][:240] for line in lines if line.strip()]
    return [t for t in texts if t.strip()]


@dataclass
class Sent:
    """What the test produced: id -> (partition, offset), and the expected outcome."""

    position: dict[str, tuple[int, int]] = field(default_factory=dict)
    good: dict[str, str] = field(default_factory=dict)  # id -> text
    poison: dict[str, str] = field(default_factory=dict)  # id -> expected dead-letter kind
    stage: dict[str, str] = field(default_factory=dict)  # id -> expected dead-letter stage


class Producer:
    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.partitions = partitions
        self.sent = Sent()
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=2, max_request_size=12 * 1024 * 1024,
            reconnect_backoff_max_ms=1000,
        )
        self._texts = corpus_texts()
        self._n = 0

    def _send(self, rid: str, value: bytes, key: bytes | None) -> None:
        partition = self._n % self.partitions
        self._n += 1
        meta = self._producer.send(self.topic, key=key, value=value, partition=partition).get(timeout=60)
        self.sent.position[rid] = (meta.partition, meta.offset)

    def good(self, count: int) -> None:
        for _ in range(count):
            rid = f"doc-{self._n}"
            text = self._texts[self._n % len(self._texts)]
            self._send(rid, json.dumps({"id": rid, "text": text, "seq": self._n}).encode(), None)
            self.sent.good[rid] = text

    def poison(self) -> None:
        """One of each kind of bad message; ids come from keys."""
        cases: list[tuple[bytes, str, str]] = [
            (b"\xff\xfe not utf-8", "invalid_utf8", "read"),
            (b'{"id": "x", "text": ', "malformed_json", "read"),
            (b"", "empty", "read"),
            (b'{"body": "no text field"}', "missing_text", "read"),
            (b"y" * (10 * 1024 * 1024), "too_large", "read"),
            (b'{"text": "   "}', "empty", "validate"),  # found by the embedder
            (b'{"text": 42}', "not_a_string", "validate"),
        ]
        for value, kind, stage in cases:
            rid = f"bad-{self._n}"
            self._send(rid, value, rid.encode())
            self.sent.poison[rid] = kind
            self.sent.stage[rid] = stage

    def good_at_rate(self, count: int, per_second: float) -> threading.Thread:
        def run() -> None:
            for _ in range(count):
                self.good(1)
                time.sleep(1.0 / per_second)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._producer.close()


class Outputs:
    """Reads the output and dead-letter topics from the start, accumulating by id."""

    def __init__(self, bootstrap: str, out: str, dlq: str, isolation_level: str = "read_committed") -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            isolation_level=isolation_level, reconnect_backoff_max_ms=1000, request_timeout_ms=20000,
        )
        self.out, self.dlq = out, dlq
        tps = [TopicPartition(out, 0), TopicPartition(dlq, 0)]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self.embeddings: list[Any] = []
        self.letters: list[dict[str, Any]] = []

    def poll(self) -> None:
        for tp, messages in self._consumer.poll(timeout_ms=300).items():
            for m in messages:
                if tp.topic == self.out:
                    self.embeddings.append(decode_embedding(m.key, m.value, m.headers))
                else:
                    self.letters.append(json.loads(m.value))

    def ids(self) -> Counter[str]:
        return Counter([e.id for e in self.embeddings] + [d["id"] for d in self.letters])

    def wait_for(self, ids: Iterable[str], timeout: float, worker: Worker | None = None) -> None:
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if wanted <= set(self.ids()):
                return
            if worker is not None and worker.proc.poll() is not None:
                raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.log_tail()}")
        missing = sorted(wanted - set(self.ids()))
        raise AssertionError(f"{len(missing)} ids missing after {timeout:.0f}s, e.g. {missing[:5]}; "
                             f"read {len(self.embeddings)} embeddings, {len(self.letters)} dead letters\n"
                             + (worker.log_tail(120) if worker else ""))

    def wait_count(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and sum(self.ids().values()) < count:
            self.poll()
        assert sum(self.ids().values()) >= count, f"only {sum(self.ids().values())} outputs after {timeout}s"

    def settle(self, quiet_s: float = 1.5) -> None:
        """Read until nothing new arrives for ``quiet_s`` seconds."""
        last, since = -1, time.monotonic()
        while time.monotonic() - since < quiet_s:
            self.poll()
            total = len(self.embeddings) + len(self.letters)
            if total != last:
                last, since = total, time.monotonic()

    def close(self) -> None:
        self._consumer.close()


class Worker:
    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(log_path, "ab") as log:
            log.write(b"\n==== worker start ====\n")
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sutra_embedder.pipelines.kafka_worker", *args],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Setup:
    bootstrap: str
    source: str
    out: str
    dlq: str
    app_id: str
    args: list[str]
    log_path: Path


@pytest.fixture
def setup(kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory, minilm_dir: Path,
          tmp_path: Path) -> Setup:
    source = kafka_topic_factory("src", partitions=2)
    out = kafka_topic_factory("out")
    dlq = kafka_topic_factory("dlq")
    app_id = f"app-{source}"
    args = [
        "--brokers", kafka_broker.bootstrap_servers, "--source", source, "--sink", f"kafka:{out}",
        "--dead-letter-topic", dlq, "--app-id", app_id, "--model", str(minilm_dir),
        "--session-timeout", "3", "--commit-interval", "0.5", "--stats-interval", "0",
        "--log-level", "info", "--max-wait-ms", "5",
    ]
    return Setup(kafka_broker.bootstrap_servers, source, out, dlq, app_id, args, tmp_path / "worker.log")


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = 2) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    # A consumer that never subscribes only reads the group's offsets.
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        found = {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close()
    return {p: int(o) for p, o in found.items() if o is not None}


def check_vectors(outputs: Outputs, sent: Sent, emb: Embedder, sample: int = 8) -> None:
    by_id = {e.id: e for e in outputs.embeddings}
    ids = sorted(sent.good)[:sample]
    expected = emb.embed([sent.good[i] for i in ids])
    got = np.stack([by_id[i].vector for i in ids])
    assert ((got * expected).sum(1)).min() > 0.9999
    assert all(by_id[i].model == emb.model_id and by_id[i].dim == emb.dim for i in ids)


@pytest.mark.kafka
def test_outputs_and_dead_letters_cover_every_input(setup: Setup, make_embedder: Callable[..., Embedder]) -> None:
    producer = Producer(setup.bootstrap, setup.source, 2)
    producer.good(20)
    producer.poison()  # early in the stream: everything after it must still be embedded
    producer.good(100)
    producer.close()
    sent = producer.sent
    outputs = Outputs(setup.bootstrap, setup.out, setup.dlq)
    worker = Worker(setup.args, setup.log_path)
    try:
        outputs.wait_for([*sent.good, *sent.poison], timeout=240, worker=worker)
        outputs.settle()
    finally:
        code = worker.stop()
        outputs.close()
    assert code == 0, worker.log_tail()

    assert Counter(e.id for e in outputs.embeddings) == Counter(list(sent.good))  # each once
    letters = {d["id"]: d for d in outputs.letters}
    assert len(outputs.letters) == len(letters) == len(sent.poison)
    assert {rid: d["kind"] for rid, d in letters.items()} == sent.poison
    for rid, d in letters.items():
        assert (d["topic"], d["partition"], d["offset"]) == (setup.source, *sent.position[rid])
        assert d["stage"] == sent.stage[rid]
        assert d["model"] == ("" if d["stage"] == "read" else make_embedder().model_id)
    assert letters[next(r for r, k in sent.poison.items() if k == "invalid_utf8")]["original_encoding"] == "base64"
    assert len(letters[next(r for r, k in sent.poison.items() if k == "too_large")]["original"]) == 4096
    check_vectors(outputs, sent, make_embedder())
    first = next(e for e in outputs.embeddings if e.id == "doc-0")
    assert first.metadata == {"seq": 0}


@pytest.mark.kafka
def test_broker_restart_mid_stream_loses_nothing(setup: Setup, kafka_broker: KafkaBroker) -> None:
    producer = Producer(setup.bootstrap, setup.source, 2)
    producer.good(80)
    outputs = Outputs(setup.bootstrap, setup.out, setup.dlq)
    worker = Worker(setup.args, setup.log_path)
    try:
        outputs.wait_count(20, timeout=180)
        kafka_broker.restart(graceful=False)  # a broker crash, mid-stream
        producer.good(80)
        producer.close()
        outputs.wait_for(producer.sent.good, timeout=240, worker=worker)
        assert worker.proc.poll() is None, "the worker survives a broker restart"
    finally:
        worker.stop()
        outputs.close()
    assert set(outputs.ids()) == set(producer.sent.good)


def _crash_and_resume(
    setup: Setup, guarantee: str, isolation_level: str
) -> tuple[Sent, Outputs, set[str], dict[int, int]]:
    """Stream inputs, SIGKILL the worker mid-stream, restart it, wait for every id.

    Returns what was sent, the outputs, the ids output before the restart and
    the group's committed offsets at the crash.
    """
    args = [*setup.args, "--processing-guarantee", guarantee]
    producer = Producer(setup.bootstrap, setup.source, 2)
    producer.good(10)
    producer.poison()
    outputs = Outputs(setup.bootstrap, setup.out, setup.dlq, isolation_level)
    worker = Worker(args, setup.log_path)
    try:
        outputs.wait_count(10, timeout=180)
        feeder = producer.good_at_rate(200, per_second=50)
        time.sleep(2.0)  # mid-stream, after a few commits
        worker.kill()
        committed = committed_offsets(setup.bootstrap, setup.app_id, setup.source)
        outputs.settle()
        before = set(outputs.ids())
        feeder.join(60)
        producer.close()
        worker = Worker(args, setup.log_path)
        outputs.wait_for([*producer.sent.good, *producer.sent.poison], timeout=300, worker=worker)
        outputs.settle()
    finally:
        worker.stop()
        outputs.close()
    return producer.sent, outputs, before, committed


@pytest.mark.kafka
def test_sigkill_at_least_once_resumes_from_committed_offsets(setup: Setup) -> None:
    sent, outputs, before, committed = _crash_and_resume(setup, "at_least_once", "read_uncommitted")
    everything = set(sent.good) | set(sent.poison)
    counts = outputs.ids()
    assert set(counts) == everything, "nothing lost"
    assert sum(committed.values()) > 0, "offsets were committed before the crash"
    # The restarted worker starts at the committed offsets: exactly the outputs
    # written past them before the crash are written again.
    replayed = {rid for rid in before if sent.position[rid][1] >= committed.get(sent.position[rid][0], 0)}
    duplicates = {rid for rid, n in counts.items() if n > 1}
    assert duplicates == replayed
    assert max(counts.values()) <= 2
    assert len(before) < len(everything), "the crash happened mid-stream"
    # A replayed embedding is identical to the first one.
    by_id: dict[str, list[np.ndarray]] = {}
    for e in outputs.embeddings:
        by_id.setdefault(e.id, []).append(e.vector)
    for rid in duplicates & set(sent.good):
        np.testing.assert_allclose(by_id[rid][0], by_id[rid][1], atol=1e-6)


@pytest.mark.kafka
def test_sigkill_exactly_once_shows_no_duplicates(setup: Setup) -> None:
    sent, outputs, before, committed = _crash_and_resume(setup, "exactly_once", "read_committed")
    counts = outputs.ids()
    assert set(counts) == set(sent.good) | set(sent.poison), "nothing lost"
    assert max(counts.values()) == 1, f"duplicates: {[r for r, n in counts.items() if n > 1][:5]}"
    assert {d["id"]: d["kind"] for d in outputs.letters} == sent.poison
    assert sum(committed.values()) > 0 and len(before) < len(counts), "the crash happened mid-stream"


@pytest.mark.kafka
def test_exactly_once_across_a_rebalance_and_a_crash(setup: Setup) -> None:
    """A second worker joins mid-stream (partitions move), then the first is killed."""
    args = [*setup.args, "--processing-guarantee", "exactly_once"]
    producer = Producer(setup.bootstrap, setup.source, 2)
    producer.good(20)
    outputs = Outputs(setup.bootstrap, setup.out, setup.dlq, "read_committed")
    first = Worker(args, setup.log_path)
    second: Worker | None = None
    try:
        outputs.wait_count(10, timeout=180)
        feeder = producer.good_at_rate(240, per_second=40)
        second = Worker(args, setup.log_path.with_name("worker2.log"))
        time.sleep(8.0)  # the second worker joins: a rebalance while records flow
        first.kill()
        feeder.join(60)
        producer.close()
        outputs.wait_for(producer.sent.good, timeout=300, worker=second)
        outputs.settle()
        assert second.proc.poll() is None, second.log_tail()
    finally:
        first.stop()
        if second is not None:
            second.stop()
        outputs.close()
    counts = outputs.ids()
    assert set(counts) == set(producer.sent.good)
    assert max(counts.values()) == 1, f"duplicates: {[r for r, n in counts.items() if n > 1][:5]}"
