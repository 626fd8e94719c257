"""Kafka -> EmbedText -> Kafka with Beam's cross-language Kafka IO on Prism, real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sutra_embedder.core import Embedder, EmbedderConfig

pytestmark = [pytest.mark.kafka, pytest.mark.prism, pytest.mark.slow]


def _consume(kafka: Any, bootstrap: str, topic: str, n: int, timeout: float = 60) -> list[Any]:
    consumer = kafka.KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend(batch)
    finally:
        consumer.close()
    return got


def test_topic_to_topic_on_prism(prism_args: list[str], kafka_bootstrap_servers: str, kafka_topic_factory: Any,
                                 minilm_dir: Path) -> None:
    beam = pytest.importorskip("apache_beam")
    kafka = pytest.importorskip("kafka")
    from apache_beam.options.pipeline_options import PipelineOptions

    from sutra_embedder.devservices import beam_runners
    from sutra_embedder.pipelines.beam_kafka import add_kafka_embedding

    beam_runners.ensure_expansion_service_jar()
    src, out, dlq = (kafka_topic_factory(p) for p in ("texts", "vectors", "dlq"))
    good = {f"d{i}": f"Document {i} is about stream processing topic {i % 3}." for i in range(6)}
    producer = kafka.KafkaProducer(bootstrap_servers=kafka_bootstrap_servers)
    for i, (k, v) in enumerate(good.items()):
        value = json.dumps({"id": k, "text": v, "n": i}).encode() if i % 2 else v.encode()
        producer.send(src, key=k.encode(), value=value)
    producer.send(src, key=b"bad-json", value=b'{"id": "bad-json", "text": ')
    producer.send(src, key=b"bad-utf8", value=b"\xff\xfe\xfa")
    producer.flush()
    producer.close()

    with beam.Pipeline(options=PipelineOptions(prism_args)) as p:
        add_kafka_embedding(p, kafka_bootstrap_servers, src, out, dlq, EmbedderConfig(model=str(minilm_dir)),
                            max_num_records=len(good) + 2)

    vectors = {m.key.decode(): json.loads(m.value) for m in _consume(kafka, kafka_bootstrap_servers, out, 6)}
    dead = {m.key.decode(): json.loads(m.value) for m in _consume(kafka, kafka_bootstrap_servers, dlq, 2)}
    assert sorted(vectors) == sorted(good)
    assert sorted(dead) == ["bad-json", "bad-utf8"]
    assert {d["kind"] for d in dead.values()} == {"malformed_json", "invalid_utf8"}
    ref = Embedder(EmbedderConfig(model=str(minilm_dir))).embed(list(good.values()))
    got = np.asarray([vectors[k]["vector"] for k in good], dtype=np.float32)
    assert ((got * ref).sum(1) > 0.9999).all()
    assert vectors["d1"]["metadata"] == {"n": 1}
