"""``sutra produce``: its messages follow the worker's input contract, at the rate and count asked.

The messages are decoded with the worker's own decoder (``decode_message``), so a
change on either side that breaks the demo fails here. The broker tests run
against the real Kafka broker of ``tests.fixtures.kafka``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sutra_embedder.cli import main
from sutra_embedder.connectors.kafka import decode_message, end_offsets
from sutra_embedder.connectors.records import DeadLetter, InputRecord
from sutra_embedder.core.errors import ConfigError
from sutra_embedder.pipelines.demo_producer import BAD_KINDS, ProducerConfig, messages
from tests.fixtures.kafka import TopicFactory

REPO = Path(__file__).resolve().parents[2]


def decoded(config: ProducerConfig) -> list[InputRecord | DeadLetter]:
    return [decode_message(k, v, config.topic, 0, i) for i, (k, v) in enumerate(messages(config))]


def records_of(config: ProducerConfig) -> list[InputRecord]:
    """The decoded messages, all of which must be records to embed."""
    out = decoded(config)
    assert all(isinstance(r, InputRecord) for r in out), [r for r in out if isinstance(r, DeadLetter)]
    return [r for r in out if isinstance(r, InputRecord)]


def test_json_messages_are_records_the_worker_embeds() -> None:
    config = ProducerConfig("kafka:9092", "texts", count=50, id_prefix="d")
    records = records_of(config)
    assert len(records) == 50
    assert [r.id for r in records] == [f"d-{i}" for i in range(50)]
    assert all(isinstance(r.text, str) and r.text.strip() for r in records)
    assert all(r.metadata == {"source": "sutra-produce", "seq": i} for i, r in enumerate(records))
    assert len({r.text for r in records}) > 5  # texts of varied content and length
    again = records_of(ProducerConfig("kafka:9092", "texts", count=50, id_prefix="d"))
    assert [r.text for r in again] == [r.text for r in records]  # reproducible with the same seed


def test_text_messages_carry_the_id_in_the_key() -> None:
    config = ProducerConfig("kafka:9092", "texts", count=5, message_format="text")
    pairs = list(messages(config))
    assert all(not v.startswith(b"{") for _, v in pairs)
    records = records_of(config)
    assert [r.id for r in records] == [f"demo-{i}" for i in range(5)]
    assert [r.text for r in records] == [v.decode() for _, v in pairs]


def test_bad_messages_become_the_dead_letters_they_announce() -> None:
    config = ProducerConfig("kafka:9092", "texts", count=12, bad_every=3)
    records = decoded(config)
    good = [r for i, r in enumerate(records) if (i + 1) % 3 != 0]
    bad = [r for i, r in enumerate(records) if (i + 1) % 3 == 0 and isinstance(r, DeadLetter)]
    assert all(isinstance(r, InputRecord) for r in good)
    assert len(bad) == 4
    assert [r.kind for r in bad] == list(BAD_KINDS)  # each kind, in turn
    assert [r.id for r in bad] == ["demo-2", "demo-5", "demo-8", "demo-11"]


def test_a_corpus_file_is_cycled(tmp_path: Path) -> None:
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text('{"id": "x", "text": "first"}\n\n{"text": "second"}\n{"id": "no text"}\n')
    texts = [r.text for r in records_of(ProducerConfig("b:1", "t", count=5, corpus=str(jsonl)))]
    assert texts == ["first", "second", "first", "second", "first"]
    lines = tmp_path / "corpus.txt"
    lines.write_text("one\n\ntwo\n")
    texts = [r.text for r in records_of(ProducerConfig("b:1", "t", count=3, corpus=str(lines)))]
    assert texts == ["one", "two", "one"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="corpus"):
        list(messages(ProducerConfig("b:1", "t", count=1, corpus=str(empty))))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"brokers": "no-port"}, "bootstrap_servers"),
        ({"topic": "bad topic"}, "topic"),
        ({"count": -1}, "count"),
        ({"rate": -5.0}, "rate"),
        ({"bad_every": -1}, "bad_every"),
        ({"message_format": "xml"}, "message_format"),
        ({"id_prefix": "a b"}, "id_prefix"),
        ({"corpus": "/no/such/file"}, "corpus"),
    ],
)
def test_invalid_settings_name_the_field(overrides: dict[str, Any], field: str) -> None:
    settings: dict[str, Any] = {"brokers": "kafka:9092", "topic": "texts", **overrides}
    with pytest.raises(ConfigError) as info:
        ProducerConfig(**settings)
    assert info.value.field == field


def test_count_zero_is_endless() -> None:
    stream = messages(ProducerConfig("kafka:9092", "texts", count=0))
    ids = [json.loads(next(stream)[1])["id"] for _ in range(2500)]
    assert ids[-1] == "demo-2499"


def test_cli_reports_bad_settings_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", "--brokers", "kafka:9092", "--topic", "bad topic"]) == 2
    assert "topic" in capsys.readouterr().err


def _read_all(bootstrap: str, topic: str) -> list[Any]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", consumer_timeout_ms=2500
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


@pytest.mark.kafka
def test_produces_count_messages_at_the_rate(
    kafka_bootstrap_servers: str, kafka_topic_factory: TopicFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = kafka_topic_factory("texts", partitions=3)
    started = time.monotonic()
    code = main(
        [
            "produce",
            "--brokers",
            kafka_bootstrap_servers,
            "--topic",
            topic,
            "--count",
            "40",
            "--rate",
            "100",
            "--bad-every",
            "10",
        ]
    )
    elapsed = time.monotonic() - started
    assert code == 0
    assert "produced 40 messages" in capsys.readouterr().err
    assert elapsed >= 0.39  # 40 messages at 100/s: the last leaves 0.39 s after the first
    got = _read_all(kafka_bootstrap_servers, topic)
    assert sorted(m.key.decode() for m in got) == sorted(f"demo-{i}" for i in range(40))
    records = [decode_message(m.key, m.value, m.topic, m.partition, m.offset) for m in got]
    assert sum(isinstance(r, DeadLetter) for r in records) == 4
    assert len({m.partition for m in got}) > 1  # keyed messages spread over the partitions


@pytest.mark.kafka
def test_sigterm_stops_an_endless_producer_after_delivering_what_it_sent(
    kafka_bootstrap_servers: str, kafka_topic_factory: TopicFactory
) -> None:
    topic = kafka_topic_factory("texts")
    code = "import sys; from sutra_embedder.cli import main; sys.argv[0] = 'sutra'; sys.exit(main())"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "produce",
            "--brokers",
            kafka_bootstrap_servers,
            "--topic",
            topic,
            "--count",
            "0",
            "--rate",
            "200",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(end_offsets(kafka_bootstrap_servers, topic).values()) < 50:
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err  # the stream reads to its end only once the producer stopped
    line = next(x for x in err.splitlines() if x.startswith("produced "))
    sent = int(line.split()[1])
    got = _read_all(kafka_bootstrap_servers, topic)
    assert sent >= 50 and len(got) == sent  # every message sent before the signal was delivered
    assert sorted(int(m.key.decode().split("-")[1]) for m in got) == list(range(sent))
