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
* On every rebalance, the open transactions of revoked partitions are
  aborted once Faust has committed what it could. Faust forgets a revoked
  partition's acknowledgements before that last commit, and when this worker
  is assigned the same partition again Faust reuses the still-open
  transaction: outputs written before the rebalance would be committed next
  to their copies embedded again from the committed offset.
* Exactly-once also fences the previous owner of a partition by offset: when
  a partition is assigned, its transactional producer is started first (which
  aborts or completes the previous owner's open transaction), then the
  partition's committed offset is read with ``require_stable`` (so an offset
  whose transaction is still being completed is waited for, not read stale).
  Messages below it were already written in a committed transaction: they are
  acknowledged without output and counted as ``already_committed``. Without
  this, a consumer that reads the committed offset while the previous
  owner's last commit is still being written starts from the older offset and
  writes those outputs a second time.
* Results complete in input order, so the committed offset never passes a
  message whose output is not written yet.
* When partitions move to another worker, Faust waits until every message
  read so far is written and acknowledged, then commits and hands over.
* An error in the agent stops the worker process (Faust's crashing
  supervisor) rather than restarting the agent in place: the restarted worker
  reads again from the committed offsets, so no message is skipped.

With a store sink (Postgres + pgvector, LanceDB, rolling Parquet: any
:class:`~sutra_embedder.connectors.sinks.Sink`) the embeddings are upserted by
id instead of produced to a topic. The store runs on its own thread behind a
bounded queue (:class:`~sutra_embedder.connectors.sinks.AsyncSink`): a slow
store makes the agent wait instead of buffering without bound. Messages are
acknowledged only after the store confirmed a flush that covers them, so
offsets are never committed ahead of durable rows; a replay after a crash
upserts the same ids again and leaves one row per id. Rows the store refuses
(wrong dimension, another model) become dead letters with stage ``write``.

Inference runs in a worker thread: the event loop keeps heartbeating while
the model runs, so long batches do not trigger rebalances.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from sutra_embedder.connectors.kafka import (
    DecodeOptions,
    KafkaConnection,
    KafkaMessage,
    OutputFormat,
    check_topic,
    decode_message,
    encode_dead_letter,
    encode_embedding,
    require_kafka_python,
)
from sutra_embedder.connectors.records import DeadLetter, InputRecord
from sutra_embedder.connectors.sinks import AsyncSink, EmbeddingRow, is_sink_uri, make_sink
from sutra_embedder.core.config import PRECISIONS, EmbedderConfig, Precision
from sutra_embedder.core.embedder import Embedder
from sutra_embedder.core.errors import ConfigError
from sutra_embedder.core.quantization import CalibrationRanges

from .streaming import StreamingConfig, StreamingEmbedder, StreamingStats, StreamResult

log = logging.getLogger(__name__)

FAUST_EXTRA = "pip install 'sutra-embedder[faust]'"
STORE_EXACTLY_ONCE = (
    "exactly_once applies to Kafka outputs; a store sink upserts by id, so at_least_once already leaves one "
    "row per id: use at_least_once with a store sink"
)


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
    already_committed: int = 0
    aborted_transactions: int = 0
    stored: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "embedded": self.embedded,
            "dead_letters": self.dead_letters,
            "dead_letters_by_kind": dict(self.dead_letters_by_kind),
            "transactions": self.transactions,
            "already_committed": self.already_committed,
            "aborted_transactions": self.aborted_transactions,
            "stored": self.stored,
        }


class CommittedOffsets:
    """Reads a consumer group's committed offsets as exactly-once needs them.

    The read asks the broker for *stable* offsets (``require_stable``, sent by
    kafka-python when its consumer reads ``read_committed``): while a
    transaction that commits offsets of the partition is still being
    completed, the broker answers "unstable" and the read is retried, instead
    of returning the older offset. The client never joins the group.

    Args:
        connection: The Kafka cluster.
        group_id: The consumer group (the Faust app id).
    """

    def __init__(self, connection: KafkaConnection, group_id: str) -> None:
        self.connection = connection
        self.group_id = group_id
        self._consumer: Any = None

    def __call__(self, topic: str, partition: int) -> int:
        """The committed offset of one partition (0 when the group never committed it). Blocking."""
        kafka = require_kafka_python()
        if self._consumer is None:
            self._consumer = kafka.KafkaConsumer(
                group_id=self.group_id, enable_auto_commit=False, isolation_level="read_committed",
                **self.connection.kafka_python_kwargs(),
            )
        committed = self._consumer.committed(kafka.TopicPartition(topic, partition), timeout_ms=60_000)
        return int(committed) if committed is not None else 0

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class _AlreadyCommitted:
    """Marks a message whose output a committed transaction already holds."""


_ALREADY_COMMITTED = _AlreadyCommitted()


# An entry of the ordered pipeline: the event, and its record's future (None
# for a message that is already a dead letter).
_Pending = tuple[Any, "InputRecord | DeadLetter | _AlreadyCommitted", "asyncio.Future[StreamResult] | None"]


class EmbeddingAgent:
    """The running state of one embedding agent (created by :func:`embedding_agent`).

    Attributes:
        app: The Faust app.
        agent: The Faust agent.
        embedder: The shared embedder.
        engine: The streaming embedder (``None`` until the agent runs).
        counters: Messages received and written.
        store: The store sink, when embeddings go to a store instead of a topic.
        output_topic: The topic of the embeddings (``None`` with a store sink).
    """

    def __init__(
        self,
        app: Any,
        embedder: Embedder,
        output_topic: str | None,
        config: AgentConfig,
        calibration: CalibrationRanges | None,
        committed_offsets: Callable[[str, int], int] | None = None,
        store: AsyncSink | None = None,
    ) -> None:
        if (output_topic is None) == (store is None):
            raise ConfigError("sink", "give either an output topic or a store sink")
        self.app = app
        self.store = store
        # Called with every StreamResult (metrics); must be cheap and not raise.
        self.result_observers: list[Callable[[StreamResult], None]] = []
        self.committed_offsets = committed_offsets
        # Exactly-once: per assigned partition, the stable committed offset read
        # after the partition's producer fenced the previous owner.
        self._floors: dict[tuple[str, int], int] = {}
        self.embedder = embedder
        self.output_topic = output_topic
        self.config = config
        self.calibration = calibration
        self.engine: StreamingEmbedder | None = None
        self.counters = AgentCounters()
        self.agent: Any = None
        self._last_commit = time.monotonic()
        self._uncommitted = 0
        self._rows: list[EmbeddingRow] = []
        self._row_events: list[Any] = []
        self._rejected: list[Awaitable[Any]] = []
        self._handed = 0  # rows given to the store
        self._store_rejected = 0  # of which the store refused

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
        if self.store is not None:
            await self.store.open()
        tasks = [asyncio.ensure_future(self._complete(source, pending, delivered))]
        if self.store is not None:
            tasks.append(asyncio.ensure_future(self._ack_after_flush(source, delivered)))
        elif not self.transactional:
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
            if self.store is not None:
                # Rows not yet flushed belong to unacknowledged messages: they are
                # read again after a restart and upserted then.
                await self.store.close()
            close = getattr(self.committed_offsets, "close", None)
            if close is not None:
                close()

    def forget_partitions(self, tps: Iterable[Any]) -> None:
        """Drop the offset floors of revoked partitions (called on every rebalance)."""
        for tp in tps:
            self._floors.pop((tp.topic, tp.partition), None)

    def _transactional_id(self, topic: str, partition: int) -> str:
        from faust.transport.consumer import TopicPartitionGroup

        group = self.app.assignor.group_for_topic(topic)
        return str(self.app.consumer.transactions.transactional_id_format.format(
            tpg=TopicPartitionGroup(topic, partition, group), group_id=self.app.conf.id))

    async def abort_open_transactions(self, revoked: Iterable[Any]) -> int:
        """Abort the transactions of revoked partitions that are still open.

        Called at the end of a revocation, after Faust has written, acknowledged
        and committed what it could. Faust forgets a revoked partition's
        acknowledgements *before* that commit, so outputs written for them can
        be left in an open transaction whose offsets were never committed. The
        partition's messages are read again from its committed offset (by this
        worker if it keeps the partition, else by the new owner), so those
        outputs must not survive: when this worker keeps the partition, Faust
        reuses the open transaction and would commit them next to their
        re-embedded copies. Returns how many transactions were aborted.
        """
        if not self.transactional:
            return 0
        producer = self.app.producer
        open_producers = getattr(producer, "_transaction_producers", {})
        aborted = 0
        for tp in revoked:
            tid = self._transactional_id(tp.topic, tp.partition)
            txn = getattr(open_producers.get(tid), "_txn_manager", None)
            if txn is not None and txn.is_in_transaction():
                await producer.abort_transaction(tid)
                aborted += 1
        if aborted:
            log.info("aborted %d open transaction(s) of revoked partitions", aborted)
        self.counters.aborted_transactions += aborted
        return aborted

    async def _floor(self, topic: str, partition: int) -> int:
        key = (topic, partition)
        floor = self._floors.get(key)
        if floor is None:
            assert self.committed_offsets is not None
            loop = asyncio.get_running_loop()
            floor = await loop.run_in_executor(None, self.committed_offsets, topic, partition)
            self._floors[key] = floor
            log.info("partition %s-%s resumes above committed offset %d", topic, partition, floor)
        return floor

    async def _read(self, source: Any, engine: StreamingEmbedder, pending: asyncio.Queue[_Pending]) -> None:
        decode = self.config.decode
        fence = self.transactional and self.committed_offsets is not None
        async for event in source.events():
            message = event.message
            self.counters.received += 1
            if fence and message.offset < await self._floor(message.topic, message.partition):
                await pending.put((event, _ALREADY_COMMITTED, None))
                continue
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
            if isinstance(item, _AlreadyCommitted):
                self.counters.already_committed += 1
                await self._write_in_transaction(source, event, None, None)
                continue
            result = await future if future is not None else None
            if result is not None:
                for observe in self.result_observers:
                    observe(result)
            if self.store is not None and result is not None and result.ok:
                self._buffer_row(result, event)
                if pending.empty() or len(self._rows) >= self.config.max_pending:
                    await self._hand_rows(delivered)
                continue
            if self.store is not None:
                await self._hand_rows(delivered)  # rows before this dead letter: keep acks in input order
            topic, message = self._output_for(item, result)
            if transactional:
                await self._write_in_transaction(source, event, topic, message)
                self._uncommitted += 1
                if self._uncommitted >= self.config.commit_every or (
                    time.monotonic() - self._last_commit >= self.config.commit_interval_s
                ):
                    await self._commit_transaction()
            elif topic is None:
                await delivered.put((event, _DONE))
            else:
                await delivered.put((event, await self._send(topic, message, event)))

    # ------------------------------------------------------------ store sink
    def _buffer_row(self, result: StreamResult, event: Any) -> None:
        """Keep one embedded row until :meth:`_hand_rows` gives the buffer to the store."""
        assert result.vector is not None
        self.counters.embedded += 1
        record, message = result.record, event.message
        self._rows.append(EmbeddingRow(
            id=record.id, vector=result.vector, n_tokens=result.n_tokens, n_chunks=result.n_chunks,
            metadata=record.metadata, model=self.embedder.model_id, offset=message.offset,
            partition=f"{message.topic}-{message.partition}", source=record.source,
        ))
        self._row_events.append(event)

    async def _hand_rows(self, delivered: asyncio.Queue[tuple[Any, Awaitable[Any]]]) -> None:
        """Give the buffered rows to the store, then queue their messages for acknowledgement.

        The messages go to ``delivered`` only once the store has the rows, so
        the acknowledging task (which flushes the store first) never
        acknowledges a message whose row the store has not seen.
        """
        if not self._rows:
            return
        assert self.store is not None
        rows, events = self._rows, self._row_events
        self._rows, self._row_events = [], []
        self._handed += len(rows)
        self._rejected += await self._dead_letters(await self.store.write(rows))
        for ev in events:
            await delivered.put((ev, _DONE))

    async def _dead_letters(self, letters: list[DeadLetter]) -> list[Awaitable[Any]]:
        """Count rows the store refused and send them to the dead-letter topic."""
        deliveries: list[Awaitable[Any]] = []
        for letter in letters:
            self.counters.embedded -= 1
            self._store_rejected += 1
            self._count_dead(letter)
            topic = self.config.dead_letter_topic
            if topic is None:
                log.warning("dead letter %s from %s (%s/%s): %s", letter.id, letter.source, letter.stage,
                            letter.kind, letter.error)
            else:
                deliveries.append(await self._send(topic, encode_dead_letter(letter), None))
        return deliveries

    async def _ack_after_flush(self, source: Any, delivered: asyncio.Queue[tuple[Any, Awaitable[Any]]]) -> None:
        """Acknowledge messages in order, each after a store flush that covers its row.

        Flushes when ``commit_every`` messages wait, when the oldest waited
        ``commit_interval_s``, or ``idle_commit_s`` after the agent caught up.
        """
        assert self.store is not None
        cfg = self.config
        waiting: list[tuple[Any, Awaitable[Any]]] = []
        oldest = 0.0
        while True:
            timeout: float | None = None
            if waiting:
                now = time.monotonic()
                timeout = max(0.0, min(oldest + cfg.commit_interval_s - now, cfg.idle_commit_s))
            try:
                entry = await asyncio.wait_for(delivered.get(), timeout)
            except TimeoutError:
                entry = None
            if entry is not None:
                if not waiting:
                    oldest = time.monotonic()
                waiting.append(entry)
                if len(waiting) < cfg.commit_every and time.monotonic() - oldest < cfg.commit_interval_s:
                    continue
            if not waiting:
                continue
            handed = self._handed
            rejected = self._rejected + await self._dead_letters(await self.store.flush())
            self._rejected = []
            for delivery in rejected:
                await delivery
            self.counters.stored = max(self.counters.stored, handed - self._store_rejected)
            for event, delivery in waiting:
                await delivery  # a failed delivery crashes the agent: its offset is never committed
                await source.ack(event)
            log.debug("flushed the store and acknowledged %d messages", len(waiting))
            waiting = []

    def _count_dead(self, letter: DeadLetter) -> None:
        self.counters.dead_letters += 1
        by_kind = self.counters.dead_letters_by_kind
        by_kind[letter.kind] = by_kind.get(letter.kind, 0) + 1

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
            assert result.vector is not None and self.output_topic is not None
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
        self._count_dead(letter)
        if self.config.dead_letter_topic is None:
            log.warning("dead letter %s from %s (%s/%s): %s", letter.id, letter.source, letter.stage,
                        letter.kind, letter.error)
            return None, encode_dead_letter(letter)
        return self.config.dead_letter_topic, encode_dead_letter(letter)

    async def _write_in_transaction(
        self, source: Any, event: Any, topic: str | None, message: KafkaMessage | None
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
            if topic is not None and message is not None:
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
        if self.transactional and event is not None:
            # The transaction of the input partition: Faust commits that
            # partition's offsets in it.
            tp = event.message.tp
            transactional_id = self._transactional_id(tp.topic, tp.partition)
        result: Awaitable[Any] = await app.producer.send(
            topic, message.key, message.value, None, None, message.headers or None,
            transactional_id=transactional_id,
        )
        return result


class _Done:
    """An awaitable that is already complete (a message with nothing to deliver)."""

    def __await__(self) -> Any:
        return iter(())


_DONE = _Done()


def embedding_agent(
    app: Any,
    source_topic: Any,
    sink: Any,
    config: AgentConfig | None = None,
    *,
    embedder: Embedder | None = None,
    embedder_config: EmbedderConfig | None = None,
    calibration: CalibrationRanges | None = None,
    connection: KafkaConnection | None = None,
    max_pending_rows: int = 4096,
) -> EmbeddingAgent:
    """Register an embedding agent on a Faust app.

    The model is loaded here, once per process, not when the agent starts.

    Args:
        app: The ``faust.App``. Its ``processing_guarantee`` chooses between
            at-least-once and exactly-once delivery.
        source_topic: Input topic name (or a Faust topic with raw serializers).
        sink: Output topic name, ``"kafka:<topic>"``, a Faust topic, a store
            URI (``postgresql://...?table=docs``, ``lancedb:///path?table=docs``,
            ``parquet:///path``), or a :class:`~sutra_embedder.connectors.sinks.Sink`
            or :class:`~sutra_embedder.connectors.sinks.AsyncSink`.
        config: Agent settings.
        embedder: A loaded embedder to share; built from ``embedder_config`` otherwise.
        embedder_config: Settings for a new embedder.
        calibration: Ranges for int8/uint8 output precision.
        connection: The cluster (with its credentials) for reading committed
            offsets under exactly-once; default: the app's brokers, plaintext.
        max_pending_rows: With a store sink: rows queued for the store before
            the agent waits (backpressure).

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
    eos = str(getattr(app.conf.processing_guarantee, "value", app.conf.processing_guarantee)) == "exactly_once"
    emb = embedder or Embedder(embedder_config or EmbedderConfig())
    output_topic: str | None = None
    store: AsyncSink | None = None
    if isinstance(sink, AsyncSink):
        store = sink
    elif isinstance(sink, str) and is_sink_uri(sink):
        store = AsyncSink(make_sink(sink, emb.dim, emb.model_id), max_pending_rows=max_pending_rows)
    elif isinstance(sink, str):
        output_topic = sink.removeprefix("kafka:")
    elif hasattr(sink, "get_topic_name"):
        output_topic = sink.get_topic_name()
    else:
        store = AsyncSink(sink, max_pending_rows=max_pending_rows)
    if store is not None and eos:
        raise ConfigError("processing_guarantee", STORE_EXACTLY_ONCE)
    if output_topic is not None:
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
    committed = None
    if eos:
        if connection is None:
            connection = KafkaConnection(",".join(f"{u.host}:{u.port or 9092}" for u in app.conf.broker))
        committed = CommittedOffsets(connection, app.conf.id)
    handle = EmbeddingAgent(app, emb, output_topic, cfg, calibration, committed, store)

    async def forget_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        handle.forget_partitions(revoked)
        await handle.abort_open_transactions(revoked)

    app.on_partitions_revoked.connect(forget_revoked)

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
    "STORE_EXACTLY_ONCE",
    "AgentConfig",
    "AgentCounters",
    "CommittedOffsets",
    "EmbeddingAgent",
    "embedding_agent",
    "require_faust",
]

