"""Streaming Beam job: a Kafka topic of texts in, embeddings and dead letters out to Kafka.

Uses Beam's cross-language ``ReadFromKafka`` / ``WriteToKafka`` (Java transforms;
the expansion-service jar is fetched into Beam's jar cache by
``python -m sutra_embedder.devservices.beam_runners fetch kafka-io``), so it runs
on portable runners (Prism, Flink, Dataflow). Messages follow the same contract
as ``sutra worker`` (see :mod:`sutra_embedder.connectors.kafka`).

    python -m sutra_embedder.pipelines.beam_kafka --brokers HOST:PORT --source texts \\
        --sink vectors --dead-letter-topic texts-dlq --runner=PrismRunner ...
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.kafka import ReadFromKafka, WriteToKafka
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from sutra_embedder.connectors.kafka import decode_message, encode_embedding
from sutra_embedder.core.config import EmbedderConfig
from sutra_embedder.core.embedder import resolve_model_dir
from sutra_embedder.core.manifest import load_manifest
from sutra_embedder.transforms import EmbedText, EmbedTextConfig, dead_letter_json
from sutra_embedder.transforms.records import EmbeddingRow, metadata_dict


def _decode(kv: tuple[bytes | None, bytes | None], topic: str) -> Any:
    # ReadFromKafka without metadata carries no partition/offset: -1 marks them unknown.
    return decode_message(kv[0], kv[1], topic, -1, -1)


def _encode(row: EmbeddingRow, model: str) -> tuple[bytes, bytes]:
    vector = np.asarray(row.vector, dtype=np.float32)
    msg = encode_embedding(row.id, vector, model=model, n_tokens=row.n_tokens, n_chunks=row.n_chunks,
                           metadata=metadata_dict(row) or None)
    return (msg.key or b"", msg.value)


def _dead(row: Any) -> tuple[bytes, bytes]:
    text = dead_letter_json(row)
    key = json.loads(text).get("id") or ""
    return (str(key).encode("utf-8"), text.encode("utf-8"))


def add_kafka_embedding(
    pipeline: beam.Pipeline,
    brokers: str,
    source: str,
    sink: str,
    dead_letter_topic: str | None,
    embedder: EmbedderConfig,
    max_num_records: int | None = None,
) -> None:
    """Apply read -> decode -> EmbedText -> encode -> write to ``pipeline``.

    Call it inside ``with beam.Pipeline(...)``: Beam only starts the Java
    worker of the cross-language steps while the pipeline context is open.
    """
    read = pipeline | "ReadTexts" >> ReadFromKafka(
        consumer_config={"bootstrap.servers": brokers, "auto.offset.reset": "earliest",
                         "group.id": f"sutra-beam-{source}"},
        topics=[source],
        max_num_records=max_num_records,
    )
    out = read | "Decode" >> beam.Map(_decode, source) | "Embed" >> EmbedText(EmbedTextConfig(embedder=embedder))
    model = load_manifest(resolve_model_dir(embedder.model)).name
    write = {"bootstrap.servers": brokers}
    _ = (out.embeddings
         | "Encode" >> beam.Map(_encode, model).with_output_types(tuple[bytes, bytes])
         | "WriteEmbeddings" >> WriteToKafka(producer_config=write, topic=sink))
    if dead_letter_topic:
        _ = (out.dead_letters
             | "EncodeDead" >> beam.Map(_dead).with_output_types(tuple[bytes, bytes])
             | "WriteDeadLetters" >> WriteToKafka(producer_config=write, topic=dead_letter_topic))


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--dead-letter-topic", default=None)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-num-records", type=int, default=None,
                        help="stop after this many messages (a bounded backfill)")
    args, beam_args = parser.parse_known_args(argv)
    options = PipelineOptions(beam_args)
    if args.max_num_records is None:
        options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as pipeline:
        add_kafka_embedding(pipeline, args.brokers, args.source, args.sink, args.dead_letter_topic,
                            EmbedderConfig(model=args.model), args.max_num_records)


if __name__ == "__main__":
    run(sys.argv[1:])
