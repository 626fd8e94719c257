"""The kafka-python sink and the bounded offset-range source, against the real broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sutra_embedder.connectors.kafka import (
    KafkaConnectorError,
    KafkaEmbeddingSink,
    KafkaSinkConfig,
    decode_embedding,
    end_offsets,
    read_offset_range,
)
from sutra_embedder.connectors.records import DeadLetter, InputRecord
from sutra_embedder.core import Embedder
from sutra_embedder.devservices.kafka import KafkaBroker
from tests.fixtures.kafka import TopicFactory

pytestmark = pytest.mark.kafka


def producer(bootstrap: str, **overrides: Any) -> Any:
    from kafka import KafkaProducer

    settings: dict[str, Any] = {"bootstrap_servers": bootstrap, "acks": "all", "linger_ms": 2,
                                "reconnect_backoff_max_ms": 1000}
    settings.update(overrides)
    return KafkaProducer(**settings)


def read_all(bootstrap: str, topic: str, isolation_level: str = "read_committed") -> list[Any]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             isolation_level=isolation_level, consumer_timeout_ms=2500)
    try:
        return list(consumer)
    finally:
        consumer.close()


def test_sink_writes_embeddings_and_dead_letters(
    kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory, make_embedder: Callable[..., Embedder]
) -> None:
    out, dlq = kafka_topic_factory("vectors"), kafka_topic_factory("dlq")
    emb = make_embedder()
    records = [InputRecord(f"id{i}", t, {"n": i}, f"src/0/{i}")
               for i, t in enumerate(["first text", "", "third text", None])]
    result = emb.embed_records([r.text for r in records])
    config = KafkaSinkConfig(out, dead_letter_topic=dlq)
    with KafkaEmbeddingSink(kafka_broker.bootstrap_servers, config, model=emb.model_id) as sink:
        assert sink.write(records, result) == (2, 2)
        sink.send_dead_letters([DeadLetter("r9", "read", "malformed_json", "bad", "", "src/0/9", "{x", "text")])
        sink.flush()
    assert sink.counters.embeddings == 2 and sink.counters.dead_letters == 3
    assert "KafkaEmbeddingSink" in repr(sink)

    outputs = [decode_embedding(m.key, m.value, m.headers) for m in read_all(kafka_broker.bootstrap_servers, out)]
    assert [o.id for o in outputs] == ["id0", "id2"]
    np.testing.assert_allclose(outputs[0].vector, result.vectors[0], atol=1e-7)
    assert outputs[1].metadata == {"n": 2} and outputs[1].model == emb.model_id
    letters = [json.loads(m.value) for m in read_all(kafka_broker.bootstrap_servers, dlq)]
    assert [(d["id"], d["kind"], d["stage"]) for d in letters] == [
        ("id1", "empty", "validate"), ("id3", "none", "validate"), ("r9", "malformed_json", "read")]
    assert (letters[2]["topic"], letters[2]["partition"], letters[2]["offset"]) == ("src", 0, 9)


def test_sink_binary_format(
    kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory, make_embedder: Callable[..., Embedder]
) -> None:
    out = kafka_topic_factory("vectors-bin")
    emb = make_embedder()
    records = [InputRecord("a", "binary please")]
    result = emb.embed_records(["binary please"])
    config = KafkaSinkConfig(out, output_format="binary", precision="float16")
    with KafkaEmbeddingSink(kafka_broker.bootstrap_servers, config, model=emb.model_id) as sink:
        sink.write(records, result)
    (message,) = read_all(kafka_broker.bootstrap_servers, out)
    assert len(message.value) == 2 * emb.dim
    back = decode_embedding(message.key, message.value, message.headers)
    np.testing.assert_allclose(back.vector.astype(np.float32), result.vectors[0], atol=1e-3)


def test_flush_raises_when_a_message_is_not_delivered(
    kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory
) -> None:
    small = kafka_topic_factory("small", config={"max.message.bytes": "2000"})
    sink = KafkaEmbeddingSink(kafka_broker.bootstrap_servers, KafkaSinkConfig(small), model="m")
    from sutra_embedder.connectors.kafka import KafkaMessage

    try:
        sink.produce(small, [KafkaMessage(b"k", b"x" * 50_000)])
        with pytest.raises(KafkaConnectorError, match="not delivered"):
            sink.flush(timeout_s=30)
    finally:
        sink.close()


def test_read_offset_range_is_bounded_per_partition(
    kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory
) -> None:
    topic = kafka_topic_factory("backfill", partitions=2)
    bootstrap = kafka_broker.bootstrap_servers
    prod = producer(bootstrap)
    for i in range(20):
        prod.send(topic, key=f"k{i}".encode(), value=f"text {i}".encode(), partition=i % 2)
    prod.send(topic, value=b"\xff", partition=0)  # offset 10 of partition 0: a poison message
    prod.flush()
    prod.close()
    assert end_offsets(bootstrap, topic) == {0: 11, 1: 10}

    got = list(read_offset_range(bootstrap, topic, {0: 2, 1: 5}, {0: 6, 1: 7}))
    by_partition: dict[str, list[str]] = {}
    for item in got:
        assert isinstance(item, InputRecord)
        _, p, o = item.source.split("/")
        by_partition.setdefault(p, []).append(o)
    assert by_partition == {"0": ["2", "3", "4", "5"], "1": ["5", "6"]}
    assert {r.id for r in got} == {"k4", "k6", "k8", "k10", "k11", "k13"}

    tail = list(read_offset_range(bootstrap, topic, {0: 9}))  # to the current end
    assert [type(x).__name__ for x in tail] == ["InputRecord", "DeadLetter"]
    assert isinstance(tail[1], DeadLetter) and tail[1].kind == "invalid_utf8"
    assert list(read_offset_range(bootstrap, topic, {1: 10})) == []  # empty range


def test_read_offset_range_skips_aborted_transactions(
    kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory
) -> None:
    topic = kafka_topic_factory("txn")
    bootstrap = kafka_broker.bootstrap_servers
    prod = producer(bootstrap, transactional_id=f"{topic}-tx")
    prod.init_transactions()
    prod.begin_transaction()
    prod.send(topic, value=b"kept 1")
    prod.commit_transaction()
    prod.begin_transaction()
    prod.send(topic, value=b"aborted")
    prod.flush()
    prod.abort_transaction()
    prod.begin_transaction()
    prod.send(topic, value=b"kept 2")
    prod.commit_transaction()
    prod.close()
    texts = [r.text for r in read_offset_range(bootstrap, topic, {0: 0}) if isinstance(r, InputRecord)]
    assert texts == ["kept 1", "kept 2"]
    raw = [r.text for r in read_offset_range(bootstrap, topic, {0: 0}, isolation_level="read_uncommitted")
           if isinstance(r, InputRecord)]
    assert raw == ["kept 1", "aborted", "kept 2"]


def test_read_offset_range_reports_deleted_offsets(
    kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory
) -> None:
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient

    topic = kafka_topic_factory("trimmed")
    bootstrap = kafka_broker.bootstrap_servers
    prod = producer(bootstrap)
    for i in range(5):
        prod.send(topic, value=f"t{i}".encode())
    prod.flush()
    prod.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_records({TopicPartition(topic, 0): 3})
    finally:
        admin.close()
    with pytest.raises(KafkaConnectorError, match="deleted"):
        list(read_offset_range(bootstrap, topic, {0: 1}))
    assert [r.text for r in read_offset_range(bootstrap, topic, {0: 3})] == ["t3", "t4"]  # type: ignore[union-attr]
