"""``sutra produce``: write demo text messages to a Kafka topic at a steady rate.

The messages follow the worker's input contract (see
:mod:`sutra_embedder.connectors.kafka`): key = the id, value = JSON
``{"id", "text", "source", "seq"}`` (or, with ``--format text``, the bare text).
With ``--bad-every N`` every Nth message is one the worker must turn into a
dead letter (an empty value, invalid UTF-8, malformed JSON or JSON without a
text), cycling through those kinds, so a demo shows the dead-letter topic too.

    sutra produce --brokers 127.0.0.1:9092 --topic texts --count 1000 --rate 50

Texts come from ``--corpus`` (a ``.jsonl`` file with a ``text`` field, or any
other file read one text per line) or, without it, from a small built-in set
of sentences combined into texts of varied length. ``--count 0`` produces
until SIGTERM or SIGINT; either way the producer waits for the broker to
acknowledge every message before it exits.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal, get_args

from sutra_embedder.connectors.kafka import KafkaConnection, check_topic, require_kafka_python
from sutra_embedder.core.errors import ConfigError, SutraError

log = logging.getLogger(__name__)

MessageFormat = Literal["json", "text"]
MESSAGE_FORMATS: tuple[str, ...] = get_args(MessageFormat)
BAD_KINDS = ("empty", "invalid_utf8", "malformed_json", "missing_text")

_SENTENCES = (
    "Kafka topics carry text events from many producers.",
    "Apache Beam pipelines embed documents in token-budget batches.",
    "A Faust agent reads a partition and writes one vector per message.",
    "Postgres with pgvector answers nearest-neighbour queries over the vectors.",
    "Long documents are cut into overlapping windows and aggregated.",
    "Every input ends as a vector or as a dead letter that says why.",
    "The consumer group spreads partitions over the running workers.",
    "Exactly-once delivery commits outputs and offsets in one transaction.",
    "Sentence embeddings place similar meanings close together.",
    "Der Zug nach Berlin fährt um neun Uhr ab.",
    "La recherche sémantique trouve des documents par leur sens.",
    "東京の天気は晴れです。",
)


@dataclass(frozen=True)
class ProducerConfig:
    """What ``sutra produce`` writes, where and how fast.

    Attributes:
        brokers: Bootstrap servers, ``host:port[,host:port]``.
        topic: Topic to write to.
        count: Messages to write; 0 writes until stopped.
        rate: Messages per second; 0 writes as fast as the producer accepts them.
        message_format: ``json`` (``{"id", "text", ...}``) or ``text`` (the bare text, id in the key).
        corpus: File of texts (``.jsonl`` with a ``text`` field, else one text per line); None: built-in.
        id_prefix: Ids are ``<id_prefix>-<sequence number>``.
        bad_every: Every Nth message is a deliberately bad one (0: never).
        seed: Seed of the built-in texts' random combination.
    """

    brokers: str
    topic: str
    count: int = 1000
    rate: float = 50.0
    message_format: MessageFormat = "json"
    corpus: str | None = None
    id_prefix: str = "demo"
    bad_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        KafkaConnection(self.brokers)  # validates host:port[,host:port]
        check_topic("topic", self.topic)
        for name in ("count", "bad_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"must be an integer >= 0, got {value!r}")
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not self.rate >= 0:
            raise ConfigError("rate", f"must be a number >= 0 (messages per second), got {self.rate!r}")
        if self.message_format not in MESSAGE_FORMATS:
            raise ConfigError("message_format", f"got {self.message_format!r}; choose one of json, text")
        if not isinstance(self.id_prefix, str) or not self.id_prefix or any(c.isspace() for c in self.id_prefix):
            raise ConfigError("id_prefix", f"must be a non-empty string without spaces, got {self.id_prefix!r}")
        if self.corpus is not None and not Path(self.corpus).is_file():
            raise ConfigError("corpus", f"{self.corpus!r} is not a file")


def load_corpus(path: str) -> list[str]:
    """The texts of a corpus file: the ``text`` field of each ``.jsonl`` line, or each non-empty line.

    Raises:
        ConfigError: The file holds no text.
    """
    texts: list[str] = []
    jsonl = path.endswith(".jsonl")
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if jsonl:
                obj = json.loads(line)
                text = obj.get("text") if isinstance(obj, dict) else None
                if isinstance(text, str) and text:
                    texts.append(text)
            else:
                texts.append(line)
    if not texts:
        raise ConfigError("corpus", f"{path!r} holds no text")
    return texts


def demo_texts(seed: int = 0) -> Iterator[str]:
    """An endless, reproducible stream of texts of one to eight built-in sentences."""
    rng = random.Random(seed)
    while True:
        n = rng.choice((1, 1, 1, 2, 2, 3, 5, 8))
        yield " ".join(rng.choice(_SENTENCES) for _ in range(n))


def bad_message(kind: str, rid: str) -> bytes:
    """A value the worker turns into a dead letter of ``kind``."""
    if kind == "empty":
        return b""
    if kind == "invalid_utf8":
        return b"\xff\xfe not utf-8 \xc3\x28"
    if kind == "malformed_json":
        return b'{"id": "' + rid.encode() + b'", "text": '
    if kind == "missing_text":
        return json.dumps({"id": rid, "body": "no text field"}).encode()
    raise ValueError(f"unknown bad message kind {kind!r}")


def messages(config: ProducerConfig) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` pairs in the order they are produced (endless when ``count`` is 0)."""
    texts: Iterator[str] = itertools.cycle(load_corpus(config.corpus)) if config.corpus else demo_texts(config.seed)
    sequence = itertools.count() if config.count == 0 else iter(range(config.count))
    bad = itertools.cycle(BAD_KINDS)
    for seq in sequence:
        rid = f"{config.id_prefix}-{seq}"
        key = rid.encode("utf-8")
        if config.bad_every and (seq + 1) % config.bad_every == 0:
            yield key, bad_message(next(bad), rid)
            continue
        text = next(texts)
        if config.message_format == "text":
            yield key, text.encode("utf-8")
        else:
            yield (
                key,
                json.dumps({"id": rid, "text": text, "source": "sutra-produce", "seq": seq}, ensure_ascii=False).encode(
                    "utf-8"
                ),
            )


class _Stop:
    """Set by SIGTERM / SIGINT: the producer finishes the message in hand, flushes and exits."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def produce(config: ProducerConfig, producer: Any = None, stop: _Stop | None = None) -> int:
    """Write the configured messages and wait until the broker has acknowledged them all.

    Args:
        config: What to write.
        producer: A ``kafka.KafkaProducer`` to use (not closed); None creates one.
        stop: Checked before each message; when set, writing ends early.

    Returns:
        How many messages were acknowledged.

    Raises:
        SutraError: A message could not be delivered.
    """
    own = producer is None
    if producer is None:
        kafka = require_kafka_python()
        try:
            producer = kafka.KafkaProducer(
                **KafkaConnection(config.brokers, client_id="sutra-produce").kafka_python_kwargs(),
                acks="all",
                linger_ms=5,
                reconnect_backoff_max_ms=1000,
            )
        except kafka.errors.KafkaError as exc:
            raise SutraError(f"no Kafka broker answered at {config.brokers}: {type(exc).__name__}: {exc}") from exc
    interval = 1.0 / config.rate if config.rate > 0 else 0.0
    started = last_report = time.monotonic()
    pending: list[Any] = []
    sent = 0
    try:
        for key, value in messages(config):
            if stop is not None and stop.requested:
                break
            if interval:
                delay = started + sent * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                pending.append(producer.send(config.topic, key=key, value=value))
            except Exception as exc:  # kafka-python raises its own KafkaError subclasses
                raise SutraError(f"cannot send to {config.topic}: {type(exc).__name__}: {exc}") from exc
            sent += 1
            if len(pending) >= 1000:
                _wait(pending)
            now = time.monotonic()
            if now - last_report >= 10.0:
                log.info("produced %d messages to %s (%.0f/s)", sent, config.topic, sent / (now - started))
                last_report = now
        producer.flush()
        _wait(pending)
    finally:
        if own:
            producer.close()
    return sent


def _wait(pending: list[Any]) -> None:
    try:
        for future in pending:
            future.get(timeout=120)
    except Exception as exc:  # kafka-python raises its own KafkaError subclasses
        raise SutraError(f"delivery failed: {type(exc).__name__}: {exc}") from exc
    pending.clear()


# ---------------------------------------------------------------- command line
def add_producer_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``sutra produce``."""
    parser.add_argument("--brokers", required=True, help="bootstrap servers, host:port[,host:port]")
    parser.add_argument("--topic", required=True, help="topic to write the texts to")
    parser.add_argument(
        "--count", type=int, default=ProducerConfig.count, help="messages to write (0: until SIGTERM/SIGINT)"
    )
    parser.add_argument(
        "--rate", type=float, default=ProducerConfig.rate, help="messages per second (0: as fast as possible)"
    )
    parser.add_argument(
        "--format",
        dest="message_format",
        default="json",
        choices=MESSAGE_FORMATS,
        help='json: {"id","text",...} values; text: the bare text, id in the key',
    )
    parser.add_argument(
        "--corpus",
        default=None,
        help="texts to send, cycled: .jsonl with a text field, else one per line (default: built-in sentences)",
    )
    parser.add_argument("--id-prefix", default=ProducerConfig.id_prefix, help="ids are PREFIX-<n>")
    parser.add_argument(
        "--bad-every", type=int, default=0, help="make every Nth message one the worker dead-letters (0: never)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in texts")


def config_from_args(args: argparse.Namespace) -> ProducerConfig:
    return ProducerConfig(
        brokers=args.brokers,
        topic=args.topic,
        count=args.count,
        rate=args.rate,
        message_format=args.message_format,
        corpus=args.corpus,
        id_prefix=args.id_prefix,
        bad_every=args.bad_every,
        seed=args.seed,
    )


def _run(config: ProducerConfig) -> int:
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.monotonic()
    sent = produce(config, stop=stop)
    elapsed = time.monotonic() - started
    print(
        f"produced {sent} messages to {config.topic} in {elapsed:.1f} s "
        f"({sent / elapsed if elapsed > 0 else 0.0:.0f}/s)",
        file=sys.stderr,
    )
    return 0


def _cli_produce(args: argparse.Namespace) -> int:
    return _run(config_from_args(args))


def register_cli(subparsers: Any) -> None:
    """Add the ``produce`` subcommand to the ``sutra`` command line."""
    parser = subparsers.add_parser(
        "produce",
        help="write demo text messages to a Kafka topic (rate, count)",
        description=(__doc__ or "").split("\n\n")[0],
    )
    add_producer_args(parser)
    parser.set_defaults(func=_cli_produce)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m sutra_embedder.pipelines.demo_producer``."""
    parser = argparse.ArgumentParser(
        prog="python -m sutra_embedder.pipelines.demo_producer", description=(__doc__ or "").split("\n\n")[0]
    )
    add_producer_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except SutraError as exc:
        parser.error(str(exc))
    try:
        return _run(config)
    except SutraError as exc:
        print(f"sutra produce: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["BAD_KINDS", "ProducerConfig", "demo_texts", "load_corpus", "messages", "produce", "register_cli"]
