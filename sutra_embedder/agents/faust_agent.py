"""A Faust agent that embeds a Kafka topic, with at-least-once or exactly-once delivery.

:func:`embedding_agent` registers on a ``faust.App`` an agent that reads raw
messages (the contract of :mod:`sutra_embedder.connectors.kafka`), embeds them
through a :class:`~sutra_embedder.agents.streaming.StreamingEmbedder` and
writes one output message per input: the embedding to the output topic, or a
dead letter to the dead-letter topic.

How offsets stay safe:

* The agent reads with manual acknowledgements. A message is acknowledged
  (and so becomes committable) only after its output was written: with
  ``processing_guarantee="at_least_once"`` once the broker confirmed the
  output; Faust commits the acknowledged offsets every
  ``broker_commit_interval``. A crash replays at most the uncommitted tail
  (outputs keyed by id: replays overwrite in a compacted topic).
* With ``processing_guarantee="exactly_once"`` each output is written in the
  Kafka transaction of the input partition it came from, and the agent
  itself commits (offsets and outputs in one transaction) at least every
  ``commit_interval_s`` and whenever it has caught up. Outputs appear
  exactly once to consumers reading with ``isolation_level=read_committed``.
* Results complete in input order, so the committed offset never passes a
  message whose output is not written yet.
* When partitions move to another worker, Faust waits until every message
  read so far is written and acknowledged, then commits and hands over.
* An error in the agent stops the worker process (Faust's crashing
  supervisor) rather than restarting the agent in place: the restarted worker
  reads again from the committed offsets, so no message is skipped.

Inference runs in a worker thread: the event loop keeps heartbeating while
the model runs, so long batches do not trigger rebalances.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from sutra_embedder.connectors.kafka import (
    DecodeOptions,
    KafkaMessage,
    OutputFormat,
    check_topic,
    decode_message,
    encode_dead_letter,
    encode_embedding,
)
from sutra_embedder.connectors.records import DeadLetter, InputRecord
from sutra_embedder.core.config import PRECISIONS, EmbedderConfig, Precision
from sutra_embedder.core.embedder import Embedder
from sutra_embedder.core.errors import ConfigError
from sutra_embedder.core.quantization import CalibrationRanges

from .streaming import StreamingConfig, StreamingEmbedder, StreamingStats, StreamResult

log = logging.getLogger(__name__)

FAUST_EXTRA = "pip install 'sutra-embedder[faust]'"


def require_faust() -> ModuleType:
    """Import faust (faust-streaming), or raise an ImportError naming the extra."""
    try:
        import faust
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"the Faust agent needs faust-streaming: {FAUST_EXTRA}") from exc
    return faust


def _positive(name: str, value: object, *, integer: bool = False) -> None:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not float(value) > 0:  # type: ignore[arg-type]
        kind = "integer" if integer else "number"
        raise ConfigError(name, f"must be a positive {kind}, got {value!r}")


@dataclass(frozen=True)
class AgentConfig:
    """Settings of the embedding agent.

    Attributes:
        dead_letter_topic: Topic for dead letters; ``None`` logs and counts them.
        output_format: ``json`` or ``binary`` output values.
        precision: Stored vector precision.
        decode: How input messages are read.
        streaming: Micro-batching of the streaming embedder.
        max_pending: Messages read but not yet written; the agent stops reading
            (and Faust stops fetching) beyond it. On a rebalance these are
            written before the partitions move, which must take less than the
            consumer session timeout.
        commit_interval_s: Exactly-once only: longest time between transaction commits.
        commit_every: Exactly-once only: commit after this many messages.
        idle_commit_s: Exactly-once only: commit this soon after the agent
            caught up (bounds the latency of read_committed consumers).
        name: Agent name (part of Faust's task names and logs).
    """

    dead_letter_topic: str | None = None
    output_format: OutputFormat = "json"
    precision: Precision = "float32"
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    max_pending: int = 256
    commit_interval_s: float = 1.0
    commit_every: int = 1000
    idle_commit_s: float = 0.05
    name: str = "sutra-embed"

    def __post_init__(self) -> None:
        if self.dead_letter_topic is not None:
            check_topic("dead_letter_topic", self.dead_letter_topic)
        if self.output_format not in ("json", "binary"):
            raise ConfigError("output_format", f"got {self.output_format!r}; choose one of json, binary")
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"got {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not isinstance(self.decode, DecodeOptions):
            raise ConfigError("decode", "must be a DecodeOptions")
        if not isinstance(self.streaming, StreamingConfig):
            raise ConfigError("streaming", "must be a StreamingConfig")
        _positive("max_pending", self.max_pending, integer=True)
        _positive("commit_interval_s", self.commit_interval_s)
        _positive("commit_every", self.commit_every, integer=True)
        _positive("idle_commit_s", self.idle_commit_s)
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name", "must be a non-empty string")


@dataclass
class AgentCounters:
    """What the agent has written since the process started."""

    received: int = 0
    embedded: int = 0
    dead_letters: int = 0
    dead_letters_by_kind: dict[str, int] = field(default_factory=dict)
    transactions: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "embedded": self.embedded,
            "dead_letters": self.dead_letters,
            "dead_letters_by_kind": dict(self.dead_letters_by_kind),
            "transactions": self.transactions,
        }


# An entry of the ordered pipeline: the event, and its record's future (None
# for a message that is already a dead letter).
_Pending = tuple[Any, "InputRecord | DeadLetter", "asyncio.Future[StreamResult] | None"]


class EmbeddingAgent:
    """The running state of one embedding agent (created by :func:`embedding_agent`).

    Attributes:
        app: The Faust app.
        agent: The Faust agent.
        embedder: The shared embedder.
        engine: The streaming embedder (``None`` until the agent runs).
        counters: Messages received and written.
    """

    def __init__(
        self,
        app: Any,
        embedder: Embedder,
        output_topic: str,
        config: AgentConfig,
        calibration: CalibrationRanges | None,
    ) -> None:
        self.app = app
        self.embedder = embedder
        self.output_topic = output_topic
        self.config = config
        self.calibration = calibration
        self.engine: StreamingEmbedder | None = None
        self.counters = AgentCounters()
        self.agent: Any = None
        self._last_commit = time.monotonic()
        self._uncommitted = 0

    @property
    def transactional(self) -> bool:
        """Whether the app runs with ``processing_guarantee="exactly_once"``."""
        return bool(self.app.in_transaction)

    def stats(self) -> dict[str, Any]:
        """Counters plus the streaming embedder's latency and batching statistics."""
        out: dict[str, Any] = self.counters.as_dict()
        engine_stats: StreamingStats | None = self.engine.stats() if self.engine else None
        out["streaming"] = engine_stats.as_dict() if engine_stats else None
        return out

    # ------------------------------------------------------------- the agent
    async def process(self, stream: Any) -> None:
        """The agent body: read, embed, write in order, acknowledge."""
        engine = StreamingEmbedder(self.embedder, self.config.streaming)
        self.engine = engine
        await engine.start()
        pending: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=self.config.max_pending)
        delivered: asyncio.Queue[tuple[Any, Awaitable[Any]]] = asyncio.Queue(
            maxsize=self.config.max_pending
        )
        source = stream.noack()
        tasks = [asyncio.ensure_future(self._complete(source, pending, delivered))]
        if not self.transactional:
            tasks.append(asyncio.ensure_future(self._ack_delivered(source, delivered)))
        reader = asyncio.ensure_future(self._read(source, engine, pending))
        try:
            done, _ = await asyncio.wait([reader, *tasks], return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise the first failure
        finally:
            for task in (reader, *tasks):
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)
            await engine.stop(drain=False)

    async def _read(self, source: Any, engine: StreamingEmbedder, pending: asyncio.Queue[_Pending]) -> None:
        decode = self.config.decode
        async for event in source.events():
            message = event.message
            self.counters.received += 1
            item = decode_message(message.key, message.value, message.topic, message.partition,
                                  message.offset, decode)
            future = await engine.submit(item) if isinstance(item, InputRecord) else None
            await pending.put((event, item, future))

    async def _complete(
        self,
        source: Any,
        pending: asyncio.Queue[_Pending],
        delivered: asyncio.Queue[tuple[Any, Awaitable[Any]]],
    ) -> None:
        transactional = self.transactional
        while True:
            entry = await self._next_pending(pending) if transactional else await pending.get()
            if entry is None:  # idle: time to end the open transaction
                await self._commit_transaction()
                continue
            event, item, future = entry
            topic, message = self._output_for(item, await future if future is not None else None)
            if transactional:
                await self._write_in_transaction(source, event, topic, message)
                self._uncommitted += 1
                if self._uncommitted >= self.config.commit_every or (
                    time.monotonic() - self._last_commit >= self.config.commit_interval_s
                ):
                    await self._commit_transaction()
            elif topic is None:
                await delivered.put((event, _done_future()))
            else:
                await delivered.put((event, await self._send(topic, message, event)))

    async def _next_pending(self, pending: asyncio.Queue[_Pending]) -> _Pending | None:
        if not self._uncommitted or not pending.empty():
            return await pending.get()
        wait = max(0.0, self._last_commit + self.config.idle_commit_s - time.monotonic())
        try:
            return await asyncio.wait_for(pending.get(), wait)
        except TimeoutError:
            return None

    async def _ack_delivered(self, source: Any, delivered: asyncio.Queue[tuple[Any, Awaitable[Any]]]) -> None:
        while True:
            event, delivery = await delivered.get()
            await delivery  # a failed delivery crashes the agent: its offset is never committed
            await source.ack(event)

    async def _commit_transaction(self) -> None:
        if not self._uncommitted:
            return
        await self.app.consumer.commit()
        self.counters.transactions += 1
        self._uncommitted = 0
        self._last_commit = time.monotonic()

    def _output_for(
        self, item: InputRecord | DeadLetter, result: StreamResult | None
    ) -> tuple[str | None, KafkaMessage]:
        model = self.embedder.model_id
        if result is not None and result.ok:
            assert result.vector is not None
            self.counters.embedded += 1
            record = result.record
            return self.output_topic, encode_embedding(
                record.id, result.vector, model=model, n_tokens=result.n_tokens,
                n_chunks=result.n_chunks, metadata=record.metadata,
                output_format=self.config.output_format, precision=self.config.precision,
                calibration=self.calibration,
            )
        letter = result.dead_letter(model) if result is not None else item
        assert isinstance(letter, DeadLetter)
        self.counters.dead_letters += 1
        by_kind = self.counters.dead_letters_by_kind
        by_kind[letter.kind] = by_kind.get(letter.kind, 0) + 1
        if self.config.dead_letter_topic is None:
            log.warning("dead letter %s from %s (%s/%s): %s", letter.id, letter.source, letter.stage,
                        letter.kind, letter.error)
            return None, encode_dead_letter(letter)
        return self.config.dead_letter_topic, encode_dead_letter(letter)

    async def _write_in_transaction(
        self, source: Any, event: Any, topic: str | None, message: KafkaMessage
    ) -> None:
        """Write one output into the input partition's transaction and acknowledge its input.

        A Faust commit (its own, during a rebalance or a stop) reads the
        acknowledged offsets first and then commits each partition's
        transaction. An output written in between would be committed without
        its offset, and be written again after a crash. So the write and the
        acknowledgement hold Faust's commit latch (``Consumer._commit_fut``,
        which every ``Consumer.commit`` waits for and then skips its turn), and
        wait for a commit already running.
        """
        consumer = self.app.consumer
        if not hasattr(consumer, "_commit_fut"):  # pragma: no cover - another faust version
            raise RuntimeError("this faust version has no commit latch; exactly_once is unsafe here")
        while consumer._commit_fut is not None:
            await consumer.maybe_wait_for_commit_to_finish()
        latch: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        consumer._commit_fut = latch
        try:
            if topic is not None:
                await self._send(topic, message, event)
            await source.ack(event)
        finally:
            if consumer._commit_fut is latch:
                consumer._commit_fut = None
            latch.set_result(None)

    async def _send(self, topic: str, message: KafkaMessage, event: Any) -> Awaitable[Any]:
        """Hand one message to the producer; returns its delivery future."""
        app = self.app
        transactional_id = None
        if self.transactional:
            # The transaction of the input partition: Faust commits that
            # partition's offsets in it.
            tp = event.message.tp
            from faust.transport.consumer import TopicPartitionGroup

            group = app.assignor.group_for_topic(tp.topic)
            transactional_id = app.consumer.transactions.transactional_id_format.format(
                tpg=TopicPartitionGroup(tp.topic, tp.partition, group), group_id=app.conf.id
            )
        result: Awaitable[Any] = await app.producer.send(
            topic, message.key, message.value, None, None, message.headers or None,
            transactional_id=transactional_id,
        )
        return result


def _done_future() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def embedding_agent(
    app: Any,
    source_topic: Any,
    sink: Any,
    config: AgentConfig | None = None,
    *,
    embedder: Embedder | None = None,
    embedder_config: EmbedderConfig | None = None,
    calibration: CalibrationRanges | None = None,
) -> EmbeddingAgent:
    """Register an embedding agent on a Faust app.

    The model is loaded here, once per process, not when the agent starts.

    Args:
        app: The ``faust.App``. Its ``processing_guarantee`` chooses between
            at-least-once and exactly-once delivery.
        source_topic: Input topic name (or a Faust topic with raw serializers).
        sink: Output topic name, ``"kafka:<topic>"``, or a Faust topic.
        config: Agent settings.
        embedder: A loaded embedder to share; built from ``embedder_config`` otherwise.
        embedder_config: Settings for a new embedder.
        calibration: Ranges for int8/uint8 output precision.

    Returns:
        The agent's state (its ``agent`` attribute is the Faust agent).

    Example:
        >>> app = faust.App("embedder", broker="kafka://127.0.0.1:9092",
        ...                 web_enabled=False)                              # doctest: +SKIP
        >>> handle = embedding_agent(app, "texts", "kafka:vectors",
        ...                          AgentConfig(dead_letter_topic="texts-dlq"))  # doctest: +SKIP
        >>> app.main()                                                       # doctest: +SKIP
    """
    require_faust()
    cfg = config or AgentConfig()
    if isinstance(sink, str):
        output_topic = sink.removeprefix("kafka:")
    else:
        output_topic = sink.get_topic_name()
    check_topic("sink", output_topic)
    if output_topic == cfg.dead_letter_topic:
        raise ConfigError("dead_letter_topic", "must differ from the output topic")
    if cfg.precision in ("int8", "uint8") and calibration is None:
        raise ConfigError("calibration", f"precision {cfg.precision} needs calibration ranges")
    if isinstance(source_topic, str):
        check_topic("source_topic", source_topic)
        if source_topic in (output_topic, cfg.dead_letter_topic):
            raise ConfigError("source_topic", "must differ from the output and dead-letter topics")
        channel = app.topic(source_topic, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw")
    else:
        channel = source_topic
    emb = embedder or Embedder(embedder_config or EmbedderConfig())
    handle = EmbeddingAgent(app, emb, output_topic, cfg, calibration)

    async def sutra_embed(stream: Any) -> None:
        await handle.process(stream)

    import mode

    # An agent error exits the worker (to be restarted by its supervisor)
    # instead of restarting the agent in place: messages the failed agent held
    # are then read again from the committed offsets, never skipped.
    handle.agent = app.agent(channel, name=cfg.name, supervisor_strategy=mode.CrashingSupervisor)(sutra_embed)
    return handle


__all__ = [
    "FAUST_EXTRA",
    "AgentConfig",
    "AgentCounters",
    "EmbeddingAgent",
    "embedding_agent",
    "require_faust",
]
