"""An asyncio streaming embedder: records in one at a time, micro-batches out.

:class:`StreamingEmbedder` is the engine under the Faust agent and can be used
alone in any asyncio program::

    engine = StreamingEmbedder(Embedder(), StreamingConfig(max_wait_ms=5))
    await engine.start()
    future = await engine.submit(InputRecord("a1", "some text"))  # waits if the queue is full
    result = await future                                          # a StreamResult
    await engine.stop()                                            # drains what was submitted

How it batches: records wait in a bounded queue. Whenever the model is free
(``max_in_flight`` micro-batches at a time), the engine takes the oldest
record and keeps adding records until the batch holds ``max_batch_size``
records, or about ``max_batch_tokens`` tokens, or the oldest record has waited
``max_wait_ms``. Under load the queue is never empty, so batches fill at once
and the model never waits; when idle a lone record leaves after at most
``max_wait_ms``. Each micro-batch goes to :meth:`Embedder.embed_records` in a
worker thread (ONNX Runtime releases the GIL), so the event loop keeps
serving producers, heartbeats and network I/O while the model runs. The core
then packs the micro-batch into token-budget model calls and chunks long texts.

:class:`StreamChunker` cuts a continuous text that arrives piece by piece
into the same overlapping token windows that the core's
:func:`~sutra_embedder.core.chunking.window_spans` gives for the whole text,
emitting each window as soon as its last token is final.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from sutra_embedder.connectors.records import DeadLetter, InputRecord, describe_original
from sutra_embedder.core.embedder import Embedder
from sutra_embedder.core.errors import ConfigError, SutraError

TokenCount = Literal["estimate", "exact"]
TOKEN_COUNTS: tuple[str, ...] = get_args(TokenCount)


class StreamingError(SutraError, RuntimeError):
    """The streaming embedder is not running, or a micro-batch failed as a whole."""


def _int_at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")


def _number_at_least(name: str, value: object, minimum: float, *, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(name, f"must be {'>' if strict else '>='} {minimum}, got {value}")


@dataclass(frozen=True)
class StreamingConfig:
    """How the streaming embedder queues and batches records.

    Attributes:
        max_batch_size: Most records per micro-batch.
        max_batch_tokens: Token budget of a micro-batch (a record over it goes
            alone). Bounds the latency one batch adds to the records behind it.
        max_wait_ms: Longest a record waits for others to join its batch; 0
            sends whatever is queued as soon as the model is free.
        queue_size: Records waiting for the model before :meth:`StreamingEmbedder.submit`
            makes producers wait (backpressure).
        max_in_flight: Micro-batches embedded at the same time (worker threads).
            1 suits a CPU, where ONNX Runtime already uses every core for one
            batch; 2 overlaps host work with a GPU.
        token_count: ``estimate`` counts ``len(text) / chars_per_token`` tokens
            (no extra tokenizer pass on the event loop); ``exact`` tokenizes.
        chars_per_token: Characters per token for ``estimate``.
        latency_window: Latest latencies kept for the percentiles.
        prompt: Prompt name or prefix passed to the embedder (e.g. ``"query"``).
    """

    max_batch_size: int = 64
    max_batch_tokens: int = 16384
    max_wait_ms: float = 2.0
    queue_size: int = 1024
    max_in_flight: int = 1
    token_count: TokenCount = "estimate"
    chars_per_token: float = 4.0
    latency_window: int = 20000
    prompt: str | None = None

    def __post_init__(self) -> None:
        _int_at_least("max_batch_size", self.max_batch_size, 1)
        _int_at_least("max_batch_tokens", self.max_batch_tokens, 1)
        _number_at_least("max_wait_ms", self.max_wait_ms, 0.0)
        _int_at_least("queue_size", self.queue_size, 1)
        _int_at_least("max_in_flight", self.max_in_flight, 1)
        if self.token_count not in TOKEN_COUNTS:
            raise ConfigError(
                "token_count", f"got {self.token_count!r}; choose one of {', '.join(TOKEN_COUNTS)}"
            )
        _number_at_least("chars_per_token", self.chars_per_token, 0.0, strict=True)
        _int_at_least("latency_window", self.latency_window, 1)
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ConfigError("prompt", f"must be a string or None, got {type(self.prompt).__name__}")


@dataclass(frozen=True)
class StreamResult:
    """What became of one submitted record.

    Attributes:
        record: The record as submitted.
        vector: Its embedding ``(dim,)`` float32, or ``None`` when it failed.
        n_tokens: Tokens of the text (special tokens included); 0 on failure.
        n_chunks: Windows embedded (1 unless the text was chunked); 0 on failure.
        error_kind: Failure kind (see :data:`~sutra_embedder.core.records.FAILURE_KINDS`).
        error: Failure message.
        queue_s: Seconds from submission until its micro-batch started.
        latency_s: Seconds from submission until the result was ready.
        batch_size: Records in the micro-batch it went with.
    """

    record: InputRecord
    vector: np.ndarray | None
    n_tokens: int = 0
    n_chunks: int = 0
    error_kind: str | None = None
    error: str | None = None
    queue_s: float = 0.0
    latency_s: float = 0.0
    batch_size: int = 0

    @property
    def ok(self) -> bool:
        return self.vector is not None

    def dead_letter(self, model: str) -> DeadLetter:
        """The dead letter of a failed record (stage ``embed`` for inference errors)."""
        if self.ok:
            raise ValueError(f"record {self.record.id!r} did not fail")
        original, encoding = describe_original(self.record.text)
        stage = "embed" if self.error_kind == "inference_error" else "validate"
        return DeadLetter(self.record.id, stage, self.error_kind or "unknown", self.error or "",
                          model, self.record.source, original, encoding)


@dataclass(frozen=True)
class StreamingStats:
    """A snapshot of the engine's counters (see :meth:`StreamingEmbedder.stats`).

    Latencies are from submission to result; ``queue_ms`` is the part spent
    waiting for a batch to start, ``inference_ms`` the mean time of one
    micro-batch in the embedder.
    """

    submitted: int
    completed: int
    failed: int
    failures: dict[str, int]
    batches: int
    mean_batch_size: float
    queue_depth: int
    max_queue_depth: int
    in_flight: int
    backpressure_events: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    queue_p50_ms: float
    queue_p95_ms: float
    inference_ms: float
    elapsed_s: float
    throughput: float

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = round(value, 3) if isinstance(value, float) else value
        return out


@dataclass(eq=False)
class _Item:
    record: InputRecord
    tokens: int
    future: asyncio.Future[StreamResult]
    enqueued: float


_STOP = object()


class StreamingEmbedder:
    """Micro-batching asyncio front end of an :class:`Embedder`.

    Args:
        embedder: The loaded embedder (shared; load the model once per process).
        config: Queueing and batching settings.

    Results come back per record: a failed text (empty, too long...) gives a
    :class:`StreamResult` with ``error_kind`` set; only an unexpected error of
    a whole micro-batch (the model itself failing) sets an exception on the
    futures of that batch.
    """

    def __init__(self, embedder: Embedder, config: StreamingConfig | None = None) -> None:
        self.embedder = embedder
        self.config = config or StreamingConfig()
        self._queue: asyncio.Queue[Any] | None = None
        self._carry: _Item | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._runner: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = False
        self._closing = False
        self._ids = itertools.count()
        self._reset_counters()

    def _reset_counters(self) -> None:
        window = self.config.latency_window
        self._latencies: deque[float] = deque(maxlen=window)
        self._queue_times: deque[float] = deque(maxlen=window)
        self._submitted = 0
        self._completed = 0
        self._failures: dict[str, int] = {}
        self._batches = 0
        self._batched_records = 0
        self._inference_s = 0.0
        self._max_depth = 0
        self._backpressure = 0
        self._in_flight = 0
        self._started_at = time.perf_counter()

    # ----------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        """Whether :meth:`submit` accepts records."""
        return self._accepting

    async def start(self) -> None:
        """Start the batching task and the inference thread(s). Idempotent."""
        if self._runner is not None and not self._runner.done():
            return
        self._queue = asyncio.Queue(maxsize=self.config.queue_size)
        self._slots = asyncio.Semaphore(self.config.max_in_flight)
        self._executor = ThreadPoolExecutor(
            max_workers=self.config.max_in_flight, thread_name_prefix="sutra-embed"
        )
        self._carry = None
        self._closing = False
        self._accepting = True
        self._reset_counters()
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="sutra-streaming-batcher")

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting records and shut down.

        Args:
            drain: Embed every record already submitted before returning (the
                default). When false, queued records fail with
                :class:`StreamingError` and only running batches finish.
        """
        if self._runner is None:
            return
        self._accepting = False
        self._closing = True
        queue = self._queue
        assert queue is not None
        if not drain:
            self._fail_queued(StreamingError("the streaming embedder was stopped before this record ran"))
        # Queued behind every record already submitted (and producers still
        # waiting for room), so a draining stop embeds all of them first.
        await queue.put(_STOP)
        runner, self._runner = self._runner, None
        try:
            await runner
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._fail_queued(StreamingError("the streaming embedder stopped"))
            executor, self._executor = self._executor, None
            if executor is not None:
                executor.shutdown(wait=False)

    async def __aenter__(self) -> StreamingEmbedder:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(drain=exc_info[0] is None)

    def _fail_queued(self, error: BaseException) -> None:
        items: list[_Item] = []
        if self._carry is not None:
            items.append(self._carry)
            self._carry = None
        queue = self._queue
        while queue is not None and not queue.empty():
            entry = queue.get_nowait()
            if isinstance(entry, _Item):
                items.append(entry)
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    # ---------------------------------------------------------- submission
    def _count_tokens(self, text: object) -> int:
        if not isinstance(text, str):
            return 1
        if self.config.token_count == "exact":
            try:
                ids = self.embedder.tokenizer.encode_content([text])[0]
            except Exception:  # the embedder reports the bad text itself
                return 1
            return len(ids) + self.embedder.tokenizer.n_special
        return int(len(text) / self.config.chars_per_token) + 2

    def _make_item(self, record: InputRecord | str) -> _Item:
        if not self._accepting or self._queue is None:
            raise StreamingError("the streaming embedder is not running; call start() first")
        if not isinstance(record, InputRecord):
            record = InputRecord(str(next(self._ids)), record)
        future: asyncio.Future[StreamResult] = asyncio.get_running_loop().create_future()
        return _Item(record, self._count_tokens(record.text), future, time.perf_counter())

    async def submit(self, record: InputRecord | str) -> asyncio.Future[StreamResult]:
        """Queue one record, waiting while the queue is full (backpressure).

        Args:
            record: The record, or a bare text (its id is then a sequence number).

        Returns:
            A future of its :class:`StreamResult`.

        Raises:
            StreamingError: The engine is not running.
        """
        item = self._make_item(record)
        queue = self._queue
        assert queue is not None
        if queue.full():
            self._backpressure += 1
        await queue.put(item)
        if not self._accepting and self._runner is None:
            # stop() finished while this producer waited for room.
            self._fail_queued(StreamingError("the streaming embedder stopped"))
        self._submitted += 1
        self._max_depth = max(self._max_depth, queue.qsize())
        return item.future

    def submit_nowait(self, record: InputRecord | str) -> asyncio.Future[StreamResult]:
        """Queue one record without waiting.

        Raises:
            asyncio.QueueFull: The queue is full (counted as a backpressure event).
            StreamingError: The engine is not running.
        """
        item = self._make_item(record)
        queue = self._queue
        assert queue is not None
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            self._backpressure += 1
            raise
        self._submitted += 1
        self._max_depth = max(self._max_depth, queue.qsize())
        return item.future

    async def embed(self, record: InputRecord | str) -> StreamResult:
        """Submit one record and wait for its result."""
        return await (await self.submit(record))

    async def embed_many(self, records: Iterable[InputRecord | str]) -> list[StreamResult]:
        """Submit records in order (with backpressure) and wait for all results."""
        futures = [await self.submit(r) for r in records]
        return list(await asyncio.gather(*futures))

    # -------------------------------------------------------------- batching
    async def _next(self, timeout: float | None) -> Any:
        """The next queued entry, or ``None`` after ``timeout`` seconds (None: wait)."""
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        queue = self._queue
        assert queue is not None
        if not queue.empty():
            return queue.get_nowait()
        if timeout is not None and timeout <= 0:
            return None
        if timeout is None:
            return await queue.get()
        try:
            return await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            return None

    async def _run(self) -> None:
        cfg = self.config
        slots = self._slots
        queue = self._queue
        assert slots is not None and queue is not None
        max_wait = cfg.max_wait_ms / 1000.0
        loop = asyncio.get_running_loop()
        stopping = False
        while True:
            await slots.acquire()
            if stopping and self._carry is None and queue.empty():
                slots.release()
                return
            first = await self._next(None)
            if first is _STOP:
                stopping = True
                slots.release()
                continue
            batch: list[_Item] = [first]
            tokens = first.tokens
            deadline = first.enqueued + max_wait
            while len(batch) < cfg.max_batch_size and tokens < cfg.max_batch_tokens:
                entry = await self._next(deadline - time.perf_counter())
                if entry is None:
                    break
                if entry is _STOP:
                    stopping = True
                    break
                if tokens + entry.tokens > cfg.max_batch_tokens:
                    self._carry = entry
                    break
                batch.append(entry)
                tokens += entry.tokens
            task = loop.create_task(self._infer(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _infer(self, batch: list[_Item]) -> None:
        slots = self._slots
        assert slots is not None
        self._in_flight += 1
        texts = [item.record.text for item in batch]
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.embedder.embed_records, texts, self.config.prompt
            )
        except BaseException as exc:  # handed to the waiting producers
            error = StreamingError(f"embedding a batch of {len(batch)} records failed: {exc!r}")
            error.__cause__ = exc
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            self._failures["batch_error"] = self._failures.get("batch_error", 0) + len(batch)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            return
        finally:
            self._in_flight -= 1
            slots.release()
        done = time.perf_counter()
        self._batches += 1
        self._batched_records += len(batch)
        self._inference_s += done - started
        size = len(batch)
        for row, index in enumerate(result.ok.tolist()):
            item = batch[index]
            self._finish(item, StreamResult(
                item.record, result.vectors[row], int(result.n_tokens[row]), int(result.n_chunks[row]),
                queue_s=started - item.enqueued, latency_s=done - item.enqueued, batch_size=size,
            ))
        for failure in result.failures:
            item = batch[failure.index]
            self._failures[failure.kind] = self._failures.get(failure.kind, 0) + 1
            self._finish(item, StreamResult(
                item.record, None, error_kind=failure.kind, error=failure.message,
                queue_s=started - item.enqueued, latency_s=done - item.enqueued, batch_size=size,
            ))

    def _finish(self, item: _Item, result: StreamResult) -> None:
        self._completed += 1
        self._latencies.append(result.latency_s)
        self._queue_times.append(result.queue_s)
        if not item.future.done():
            item.future.set_result(result)

    # ----------------------------------------------------------------- stats
    def stats(self) -> StreamingStats:
        """Counters and latency percentiles since :meth:`start`."""
        lat = np.asarray(self._latencies, dtype=np.float64) * 1000.0
        qt = np.asarray(self._queue_times, dtype=np.float64) * 1000.0

        def pct(values: np.ndarray, q: float) -> float:
            return float(np.percentile(values, q)) if values.size else 0.0

        elapsed = time.perf_counter() - self._started_at
        queue = self._queue
        depth = (queue.qsize() if queue is not None else 0) + (1 if self._carry is not None else 0)
        failed = sum(self._failures.values())
        return StreamingStats(
            submitted=self._submitted,
            completed=self._completed,
            failed=failed,
            failures=dict(self._failures),
            batches=self._batches,
            mean_batch_size=self._batched_records / self._batches if self._batches else 0.0,
            queue_depth=depth,
            max_queue_depth=self._max_depth,
            in_flight=self._in_flight,
            backpressure_events=self._backpressure,
            latency_p50_ms=pct(lat, 50),
            latency_p95_ms=pct(lat, 95),
            latency_p99_ms=pct(lat, 99),
            latency_max_ms=float(lat.max()) if lat.size else 0.0,
            queue_p50_ms=pct(qt, 50),
            queue_p95_ms=pct(qt, 95),
            inference_ms=1000.0 * self._inference_s / self._batches if self._batches else 0.0,
            elapsed_s=elapsed,
            throughput=self._completed / elapsed if elapsed > 0 else 0.0,
        )


# ------------------------------------------------------------ stream chunker
@dataclass(frozen=True)
class TextWindow:
    """One window of a continuous text, in content tokens (special tokens excluded).

    Attributes:
        index: Position of the window in the stream (0, 1, ...).
        start: First token of the window, counted from the start of the stream.
        end: Token after its last one.
        ids: The window's content token ids.
        text: The characters its tokens cover.
        char_start: Offset of ``text`` in the stream, in characters.
    """

    index: int
    start: int
    end: int
    ids: np.ndarray
    text: str
    char_start: int

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end


_WHITESPACE = re.compile(r"\s")


@dataclass
class _Committed:
    """Final tokens kept for windows still to come (from token ``base`` on)."""

    base: int = 0
    ids: list[int] = field(default_factory=list)
    offsets: list[tuple[int, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.base + len(self.ids)


class StreamChunker:
    """Cut a text that arrives in pieces into overlapping token windows.

    Windows are those of :func:`~sutra_embedder.core.chunking.window_spans` over
    the tokens of the whole text: window ``i`` covers tokens
    ``[i * (window - overlap), ... + window)`` and the last window ends at the
    last token (shifted back so that it is full). A window is emitted by
    :meth:`feed` as soon as its last token is final; :meth:`flush` emits the
    rest when the text ends.

    A token is final once whitespace follows it: the tokenizers of the
    supported models never merge characters across whitespace. A piece of
    more than ``max_pending_chars`` characters without any whitespace is cut
    before its last ``hold_tokens`` tokens instead, which can differ from
    tokenizing the whole text at once (such texts are rare).

    Args:
        tokenizer: A ``tokenizers.Tokenizer`` or the path of a ``tokenizer.json``.
        window: Content tokens per window.
        overlap: Tokens shared by consecutive windows.
        max_pending_chars: Longest run of text without whitespace kept pending.
        hold_tokens: Tokens held back when such a run is cut.
    """

    def __init__(
        self,
        tokenizer: Any,
        window: int,
        overlap: int = 32,
        *,
        max_pending_chars: int = 8192,
        hold_tokens: int = 8,
    ) -> None:
        _int_at_least("window", window, 1)
        _int_at_least("overlap", overlap, 0)
        if overlap >= window:
            raise ConfigError("overlap", f"must be smaller than the window ({window}), got {overlap}")
        _int_at_least("max_pending_chars", max_pending_chars, 1)
        _int_at_least("hold_tokens", hold_tokens, 1)
        if isinstance(tokenizer, (str, Path)):
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer))
        # Shipped tokenizer.json files often pad and truncate to 128 tokens.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        self.window = window
        self.overlap = overlap
        self.stride = window - overlap
        self.max_pending_chars = max_pending_chars
        self.hold_tokens = hold_tokens
        self.reset()

    @classmethod
    def for_embedder(cls, embedder: Embedder, overlap: int | None = None) -> StreamChunker:
        """Windows of the embedder's length and (by default) its configured overlap."""
        window = embedder.max_content_tokens
        return cls(
            Path(embedder.model_dir) / "tokenizer.json",
            window,
            embedder.config.chunking.overlap if overlap is None else overlap,
        )

    def reset(self) -> None:
        """Forget everything; the next :meth:`feed` starts a new text."""
        self._pending = ""  # text not yet turned into final tokens
        self._pending_at = 0  # stream offset of _pending[0]
        self._text = ""  # stream text from the first kept token on
        self._text_at = 0
        self._committed = _Committed()
        self._next_start = 0
        self._emitted_end = 0
        self._index = 0
        self._closed = False

    @property
    def n_tokens(self) -> int:
        """Final tokens seen so far."""
        return self._committed.total

    def feed(self, piece: str) -> list[TextWindow]:
        """Add the next piece of text; return the windows it completed."""
        if self._closed:
            raise StreamingError("flush() ended this text; call reset() to start another")
        if not isinstance(piece, str):
            raise TypeError(f"piece must be a str, got {type(piece).__name__}")
        if not piece:
            return []
        self._pending += piece
        self._text += piece
        has_space = _WHITESPACE.search(piece) is not None
        if has_space or len(self._pending) > self.max_pending_chars:
            self._commit(final=False)
        return self._emit()

    def flush(self) -> list[TextWindow]:
        """End the text: return the windows not emitted yet (the last one ends at its end)."""
        if self._closed:
            return []
        self._commit(final=True)
        out = self._emit()
        total = self._committed.total
        if total > self._emitted_end:
            out.append(self._window(max(0, total - self.window), total))
        self._closed = True
        return out

    def _commit(self, final: bool) -> None:
        pending = self._pending
        if not pending:
            return
        enc = self._tok.encode(pending, add_special_tokens=False)
        ids, offsets = enc.ids, enc.offsets
        if final:
            keep, cut = len(ids), len(pending)
        else:
            last_space = -1
            for match in _WHITESPACE.finditer(pending):
                last_space = match.start()
            if last_space >= 0:
                cut = last_space
                keep = 0
                while keep < len(ids) and offsets[keep][1] <= cut:
                    keep += 1
            else:  # a long run without whitespace: hold back its last tokens
                keep = max(0, len(ids) - self.hold_tokens)
                cut = offsets[keep][0] if keep < len(ids) else len(pending)
            if keep < len(ids):
                cut = min(cut, offsets[keep][0])
        committed = self._committed
        at = self._pending_at
        committed.ids.extend(ids[:keep])
        committed.offsets.extend((at + s, at + e) for s, e in offsets[:keep])
        self._pending = pending[cut:]
        self._pending_at = at + cut

    def _emit(self) -> list[TextWindow]:
        out: list[TextWindow] = []
        while self._committed.total >= self._next_start + self.window:
            out.append(self._window(self._next_start, self._next_start + self.window))
            self._next_start += self.stride
        self._trim()
        return out

    def _window(self, start: int, end: int) -> TextWindow:
        committed = self._committed
        lo, hi = start - committed.base, end - committed.base
        ids = np.asarray(committed.ids[lo:hi], dtype=np.int64)
        if hi > lo:
            c0, c1 = committed.offsets[lo][0], committed.offsets[hi - 1][1]
        else:
            c0 = c1 = self._pending_at
        text = self._text[c0 - self._text_at : c1 - self._text_at]
        window = TextWindow(self._index, start, end, ids, text, c0)
        self._index += 1
        self._emitted_end = end
        return window

    def _trim(self) -> None:
        """Drop tokens and text that no future window can need."""
        committed = self._committed
        # The final window may reach back a whole window from the end.
        keep_from = min(self._next_start, max(0, committed.total - self.window))
        drop = keep_from - committed.base
        if drop > 0:
            del committed.ids[:drop]
            del committed.offsets[:drop]
            committed.base = keep_from
        first_char = committed.offsets[0][0] if committed.offsets else self._pending_at
        cut = first_char - self._text_at
        if cut > 0:
            self._text = self._text[cut:]
            self._text_at = first_char


def chunk_text(chunker: StreamChunker, pieces: Sequence[str]) -> list[TextWindow]:
    """Feed ``pieces`` to a fresh text of ``chunker`` and return every window."""
    chunker.reset()
    windows: list[TextWindow] = []
    for piece in pieces:
        windows.extend(chunker.feed(piece))
    windows.extend(chunker.flush())
    return windows


__all__ = [
    "StreamChunker",
    "StreamResult",
    "StreamingConfig",
    "StreamingEmbedder",
    "StreamingError",
    "StreamingStats",
    "TextWindow",
    "chunk_text",
]
