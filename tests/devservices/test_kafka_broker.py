"""Tests for the local Kafka broker dev service.

Tests marked ``kafka`` run against a real broker started by the
``kafka_broker`` fixture (see ``tests/fixtures/kafka.py``); the others are
fast unit tests of configuration and helpers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from sutra_embedder.devservices.kafka import (
    KAFKA_VERSION,
    KafkaBroker,
    KafkaBrokerConfig,
    KafkaDevServiceError,
    KafkaToolchainError,
    broker_properties,
    cache_dir,
    ensure_kafka_jars,
    random_cluster_id,
)
from tests.fixtures.kafka import TopicFactory

REPO_ROOT = Path(__file__).resolve().parents[2]
TEN_MB = 10 * 1024 * 1024
CLIENT_MAX_BYTES = 16 * 1024 * 1024


# --------------------------------------------------------------------------
# kafka-python helpers
# --------------------------------------------------------------------------


def make_producer(bootstrap: str, **overrides: Any) -> Any:
    from kafka import KafkaProducer

    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "linger_ms": 5,
        "bootstrap_timeout_ms": 15000,
        # kafka-python backs off up to 30 s between reconnects by default,
        # which would dominate the broker restart tests.
        "reconnect_backoff_max_ms": 1000,
    }
    settings.update(overrides)
    return KafkaProducer(**settings)


def make_consumer(bootstrap: str, topic: str, **overrides: Any) -> Any:
    from kafka import KafkaConsumer

    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": f"group-{uuid.uuid4().hex[:8]}",
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        # Below the broker's 6 s default minimum: the test broker allows 1 s.
        "session_timeout_ms": 2000,
        "heartbeat_interval_ms": 500,
        "bootstrap_timeout_ms": 15000,
        "reconnect_backoff_max_ms": 1000,
    }
    settings.update(overrides)
    return KafkaConsumer(topic, **settings)


def encode(message_id: int) -> tuple[bytes, bytes]:
    key = str(message_id).encode()
    value = json.dumps({"id": message_id, "text": f"document number {message_id}"}).encode()
    return key, value


def produce(producer: Any, topic: str, ids: Iterable[int]) -> None:
    futures = []
    for message_id in ids:
        key, value = encode(message_id)
        futures.append(producer.send(topic, key=key, value=value))
    producer.flush(timeout=60)
    for future in futures:
        future.get(timeout=60)


def poll_until(consumer: Any, count: int, timeout: float = 60.0) -> dict[int, dict[str, Any]]:
    """Consume until ``count`` distinct ids were seen; return them by id."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                payload = json.loads(record.value)
                assert record.key == str(payload["id"]).encode()
                seen[payload["id"]] = payload
    return seen


# --------------------------------------------------------------------------
# Unit tests (no broker)
# --------------------------------------------------------------------------


def test_cache_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUTRA_CACHE_DIR", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("SUTRA_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "sutra-embedder"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"port": -1}, "port"),
        ({"port": 70000}, "port"),
        ({"controller_port": 65536}, "controller_port"),
        ({"port": 9092, "controller_port": 9092}, "controller_port"),
        ({"heap": "lots"}, "heap"),
        ({"num_partitions": 0}, "num_partitions"),
        ({"start_timeout": 0}, "start_timeout"),
        ({"stop_timeout": -5}, "stop_timeout"),
        ({"extra_properties": {"bad=key": "1"}}, "extra_properties"),
        ({"extra_properties": {"a": "two\nlines"}}, "extra_properties"),
        ({"log_level": "loud"}, "log_level"),
        ({"cluster_id": "not-an-id"}, "cluster_id"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        KafkaBrokerConfig(**kwargs)


def test_config_type_errors_name_the_field() -> None:
    with pytest.raises(TypeError, match=r"^port:"):
        KafkaBrokerConfig(port="9092")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^jvm_options:"):
        KafkaBrokerConfig(jvm_options="-Xint")  # type: ignore[arg-type]


def test_config_is_frozen_and_normalised(tmp_path: Path) -> None:
    extra = {"log.retention.ms": "1000"}
    config = KafkaBrokerConfig(data_dir=str(tmp_path), extra_properties=extra, log_level="DEBUG")  # type: ignore[arg-type]
    assert config.data_dir == tmp_path
    assert config.log_level == "debug"
    extra["log.retention.ms"] = "5"
    assert config.extra_properties["log.retention.ms"] == "1000"
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_broker_properties_defaults_and_overrides(tmp_path: Path) -> None:
    props = broker_properties(
        port=19092,
        controller_port=19093,
        log_dir=tmp_path,
        num_partitions=4,
        extra={"group.min.session.timeout.ms": "500"},
    )
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["num.partitions"] == "4"
    assert props["auto.create.topics.enable"] == "true"
    assert int(props["message.max.bytes"]) >= CLIENT_MAX_BYTES
    assert int(props["replica.fetch.max.bytes"]) >= CLIENT_MAX_BYTES
    assert props["group.min.session.timeout.ms"] == "500"
    assert props["log.dirs"] == str(tmp_path)


def test_random_cluster_id_shape() -> None:
    ids = {random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) and not i.startswith("-") for i in ids)


def test_unstarted_broker_has_no_address() -> None:
    broker = KafkaBroker()
    assert not broker.is_running()
    with pytest.raises(KafkaDevServiceError):
        _ = broker.bootstrap_servers
    assert KafkaBroker(KafkaBrokerConfig(port=19092)).bootstrap_servers == "127.0.0.1:19092"


def test_missing_maven_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUTRA_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(KafkaToolchainError, match="mvn"):
        ensure_kafka_jars(KAFKA_VERSION)


def test_import_does_not_need_kafka_python() -> None:
    code = (
        "import sys\n"
        "sys.modules['kafka'] = None  # make 'import kafka' fail\n"
        "import sutra_embedder.devservices.kafka as m\n"
        "assert m.KAFKA_VERSION\n"
        "assert sys.modules['kafka'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


# --------------------------------------------------------------------------
# Integration tests (real broker)
# --------------------------------------------------------------------------


@pytest.mark.kafka
def test_broker_is_up(kafka_broker: KafkaBroker) -> None:
    assert kafka_broker.is_running()
    assert kafka_broker.bootstrap_servers == f"127.0.0.1:{kafka_broker.port}"
    assert kafka_broker.log_path.is_file()
    assert kafka_broker.last_start_seconds is not None


@pytest.mark.kafka
def test_produce_and_consume_by_id(kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory) -> None:
    topic = kafka_topic_factory(partitions=3)
    count = 500
    producer = make_producer(kafka_broker.bootstrap_servers)
    try:
        produce(producer, topic, range(count))
    finally:
        producer.close()

    consumer = make_consumer(kafka_broker.bootstrap_servers, topic)
    try:
        seen = poll_until(consumer, count)
    finally:
        consumer.close()
    assert sorted(seen) == list(range(count))
    assert seen[123]["text"] == "document number 123"


@pytest.mark.kafka
def test_auto_created_topic(kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory) -> None:
    topic = kafka_topic_factory(create=False)
    producer = make_producer(kafka_broker.bootstrap_servers)
    try:
        produce(producer, topic, range(10))
    finally:
        producer.close()
    assert topic in kafka_broker.topics()
    consumer = make_consumer(kafka_broker.bootstrap_servers, topic)
    try:
        assert sorted(poll_until(consumer, 10)) == list(range(10))
    finally:
        consumer.close()


@pytest.mark.kafka
@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "sigkill"])
def test_restart_mid_stream_keeps_messages(
    kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory, graceful: bool
) -> None:
    topic = kafka_topic_factory(partitions=2)
    bootstrap = kafka_broker.bootstrap_servers
    group = f"restart-{uuid.uuid4().hex[:8]}"
    producer = make_producer(bootstrap, retries=20, retry_backoff_ms=200)
    consumer = make_consumer(bootstrap, topic, group_id=group)
    try:
        produce(producer, topic, range(100))
        first_half = poll_until(consumer, 100)
        assert sorted(first_half) == list(range(100))
        consumer.commit()

        port_before = kafka_broker.port
        kafka_broker.restart(graceful=graceful)
        assert kafka_broker.port == port_before
        assert kafka_broker.bootstrap_servers == bootstrap

        # The same clients carry on once the broker is back.
        produce(producer, topic, range(100, 200))
        second_half = poll_until(consumer, 100)
        assert sorted(second_half) == list(range(100, 200))
    finally:
        producer.close()
        consumer.close()

    # A new consumer group still reads everything, including pre-restart data.
    reader = make_consumer(bootstrap, topic)
    try:
        everything = poll_until(reader, 200)
    finally:
        reader.close()
    assert sorted(everything) == list(range(200))


@pytest.mark.kafka
def test_ten_megabyte_message_round_trip(
    kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory
) -> None:
    topic = kafka_topic_factory()
    payload = os.urandom(TEN_MB)
    producer = make_producer(
        kafka_broker.bootstrap_servers,
        max_request_size=CLIENT_MAX_BYTES - 1024,
        request_timeout_ms=60000,
    )
    try:
        producer.send(topic, key=b"big", value=payload).get(timeout=120)
    finally:
        producer.close()

    consumer = make_consumer(
        kafka_broker.bootstrap_servers,
        topic,
        max_partition_fetch_bytes=CLIENT_MAX_BYTES,
        fetch_max_bytes=2 * CLIENT_MAX_BYTES,
    )
    received: list[bytes] = []
    deadline = time.monotonic() + 120
    try:
        while not received and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                received.extend(r.value for r in records if r.key == b"big")
    finally:
        consumer.close()
    assert len(received) == 1
    assert len(received[0]) == TEN_MB
    assert hashlib.sha256(received[0]).digest() == hashlib.sha256(payload).digest()


@pytest.mark.kafka
def test_create_topic_with_java_tool(kafka_broker: KafkaBroker, kafka_topic_factory: TopicFactory) -> None:
    name = kafka_topic_factory(create=False)
    kafka_broker.create_topic(name, partitions=3, via="java")
    kafka_broker.create_topic(name, partitions=3, via="java", exist_ok=True)
    assert name in kafka_broker.topics()

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap_servers)
    try:
        assert consumer.partitions_for_topic(name) == {0, 1, 2}
    finally:
        consumer.close()


@pytest.mark.kafka
def test_create_existing_topic_fails(kafka_broker: KafkaBroker, kafka_topic: str) -> None:
    with pytest.raises(KafkaDevServiceError, match="already exists"):
        kafka_broker.create_topic(kafka_topic)
    kafka_broker.create_topic(kafka_topic, exist_ok=True)


@pytest.mark.kafka
def test_bad_configuration_reports_broker_output(tmp_path: Path) -> None:
    # Rejected while formatting the storage.
    config = KafkaBrokerConfig(
        data_dir=tmp_path / "broken",
        extra_properties={"num.io.threads": "not-a-number"},
    )
    with pytest.raises(KafkaDevServiceError, match=r"num\.io\.threads"), KafkaBroker(config):
        pass

    # Rejected by the broker itself, on a data directory formatted earlier.
    data_dir = tmp_path / "reused"
    KafkaBroker(KafkaBrokerConfig(data_dir=data_dir)).start().stop()
    config = KafkaBrokerConfig(data_dir=data_dir, extra_properties={"node.id": "7"})
    with pytest.raises(KafkaDevServiceError, match="exited during start-up") as info:
        KafkaBroker(config).start()
    assert "node id 7" in str(info.value)


@pytest.mark.kafka
def test_start_timeout_kills_the_process(tmp_path: Path) -> None:
    broker = KafkaBroker(KafkaBrokerConfig(data_dir=tmp_path / "slow", start_timeout=0.3))
    with pytest.raises(KafkaDevServiceError, match=r"not ready within 0\.3 s") as info:
        broker.start()
    assert not broker.is_running()
    assert str(broker.log_path) in str(info.value)


@pytest.mark.kafka
def test_port_in_use_is_reported(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    config = KafkaBrokerConfig(port=kafka_broker.port, data_dir=tmp_path / "clash")
    with pytest.raises(KafkaDevServiceError, match=rf"port {kafka_broker.port} .* in use"):
        KafkaBroker(config).start()
    assert kafka_broker.is_running()


@pytest.mark.kafka
def test_command_line_runs_until_sigterm(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    # ``kafka_broker`` makes sure the jars are cached before the subprocess starts.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sutra_embedder.devservices.kafka",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "cli"),
            "--topic",
            "cli-topic:2",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        assert re.fullmatch(r"127\.0\.0\.1:\d+", address), address
        assert address != kafka_broker.bootstrap_servers

        from kafka import KafkaConsumer

        consumer = KafkaConsumer(bootstrap_servers=address, bootstrap_timeout_ms=15000)
        try:
            assert consumer.partitions_for_topic("cli-topic") == {0, 1}
        finally:
            consumer.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = (tmp_path / "cli" / "broker.log").read_text("utf-8", errors="replace")
    assert "Kafka Server started" in log
