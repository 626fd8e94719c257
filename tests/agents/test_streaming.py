"""The asyncio streaming embedder: results, batching, backpressure, shutdown, stats."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from sutra_embedder.agents.streaming import (
    StreamingConfig,
    StreamingEmbedder,
    StreamingError,
)
from sutra_embedder.connectors.records import InputRecord
from sutra_embedder.core import Embedder, EmbedResult, Failure
from sutra_embedder.core.errors import ConfigError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Kafka topics are split into partitions.",
    "Embeddings map text to vectors.",
    "东京是日本的首都。",
    "¿Dónde está la biblioteca?",
    "short",
    "A somewhat longer sentence about stream processing, batching and latency percentiles.",
    "Zürich liegt am Zürichsee.",
]


class FakeEmbedder:
    """Records the batches it is given; optionally blocks until released.

    Vectors are ``[len(text), index in batch]``; texts equal to ``"FAIL"``
    come back as failures, as the real core reports them.
    """

    model_id = "fake"
    dim = 2

    def __init__(self, gate: threading.Event | None = None, delay_s: float = 0.0,
                 raise_on: str | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.gate = gate
        self.delay_s = delay_s
        self.raise_on = raise_on
        self.started = threading.Event()
        self.threads: set[str] = set()

    def embed_records(self, items: Sequence[object], prompt: str | None = None) -> EmbedResult:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.raise_on is not None and self.raise_on in items:
            raise RuntimeError("model exploded")
        ok = [i for i, t in enumerate(items) if t != "FAIL"]
        vectors = np.array([[len(str(items[i])), i] for i in ok], dtype=np.float32).reshape(-1, 2)
        return EmbedResult(vectors=vectors, ok=np.array(ok, dtype=np.int64),
                           n_tokens=np.full(len(ok), 3), n_chunks=np.ones(len(ok), dtype=np.int64),
                           truncated=np.zeros(len(ok), bool),
                           failures=[Failure(i, "empty", "bad") for i, t in enumerate(items) if t == "FAIL"])


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def engine_for(embedder: Any, **config: Any) -> StreamingEmbedder:
    return StreamingEmbedder(embedder, StreamingConfig(**config))


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 2.5}, "max_batch_size"),
        ({"max_batch_tokens": 0}, "max_batch_tokens"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"max_wait_ms": float("nan")}, "max_wait_ms"),
        ({"queue_size": 0}, "queue_size"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"token_count": "words"}, "token_count"),
        ({"chars_per_token": 0}, "chars_per_token"),
        ({"latency_window": True}, "latency_window"),
        ({"prompt": 3}, "prompt"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        StreamingConfig(**kwargs)
    assert info.value.field == name


def test_config_is_frozen() -> None:
    cfg = StreamingConfig()
    with pytest.raises(AttributeError):
        cfg.max_batch_size = 3  # type: ignore[misc]


# ----------------------------------------------------------------- results
def test_results_match_the_batch_embedder(make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder()
    inputs = [*TEXTS, "", "   ", *TEXTS[:3]]
    expected = emb.embed_records(inputs)

    async def go() -> list[Any]:
        async with engine_for(emb, max_batch_size=3, max_wait_ms=1) as engine:
            return await engine.embed_many([InputRecord(f"r{i}", t, {"i": i}) for i, t in enumerate(inputs)])

    results = run(go())
    assert [r.record.id for r in results] == [f"r{i}" for i in range(len(inputs))]
    ok = [i for i, r in enumerate(results) if r.ok]
    assert ok == expected.ok.tolist()
    got = np.stack([results[i].vector for i in ok])  # type: ignore[misc]
    cos = (got * expected.vectors).sum(1)
    assert cos.min() > 0.9999
    assert [results[i].n_tokens for i in ok] == expected.n_tokens.tolist()
    failed = {i: r.error_kind for i, r in enumerate(results) if not r.ok}
    assert failed == {f.index: f.kind for f in expected.failures} == {8: "empty", 9: "empty"}
    letter = results[8].dead_letter(emb.model_id)
    assert (letter.id, letter.stage, letter.kind, letter.model) == ("r8", "validate", "empty", emb.model_id)
    with pytest.raises(ValueError):
        results[0].dead_letter(emb.model_id)


def test_long_texts_are_chunked_by_the_core(make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder()
    long_text = " ".join(TEXTS * 40)

    async def go() -> Any:
        async with engine_for(emb) as engine:
            return await engine.embed(long_text)

    result = run(go())
    expected = emb.embed_records([long_text])
    assert result.n_chunks == int(expected.n_chunks[0]) > 1
    assert float(result.vector @ expected.vectors[0]) > 0.9999


def test_bare_texts_get_sequence_ids() -> None:
    fake = FakeEmbedder()

    async def go() -> list[Any]:
        async with engine_for(fake, max_wait_ms=0) as engine:
            return [await engine.embed("a"), await engine.embed("bb")]

    first, second = run(go())
    assert (first.record.id, second.record.id) == ("0", "1")
    assert first.vector.tolist() == [1.0, 0.0] and second.vector.tolist() == [2.0, 0.0]


# ---------------------------------------------------------------- batching
def test_batches_are_capped_by_count() -> None:
    gate = threading.Event()
    fake = FakeEmbedder(gate)

    async def go() -> None:
        async with engine_for(fake, max_batch_size=4, max_wait_ms=50) as engine:
            futures = [await engine.submit(f"t{i}") for i in range(10)]
            await asyncio.sleep(0.05)
            gate.set()
            await asyncio.gather(*futures)

    run(go())
    sizes = [len(b) for b in fake.batches]
    assert sum(sizes) == 10 and max(sizes) == 4
    # Records stay in submission order across batches.
    assert [t for b in fake.batches for t in b] == [f"t{i}" for i in range(10)]


def test_batches_are_capped_by_token_budget() -> None:
    fake = FakeEmbedder()
    texts = ["x" * 396] * 6  # 396 / 4 + 2 = 101 estimated tokens each

    async def go() -> None:
        async with engine_for(fake, max_batch_size=64, max_batch_tokens=250, max_wait_ms=200) as engine:
            await engine.embed_many(texts)

    run(go())
    assert [len(b) for b in fake.batches] == [2, 2, 2]


def test_exact_token_count_uses_the_tokenizer(make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder()
    engine = engine_for(emb, token_count="exact")
    text = "tokenization of a sentence"
    assert engine._count_tokens(text) == len(emb.tokenizer.encode_content([text])[0]) + 2


def test_a_lone_record_leaves_after_max_wait() -> None:
    fake = FakeEmbedder()

    async def go() -> float:
        async with engine_for(fake, max_batch_size=64, max_wait_ms=80) as engine:
            start = time.perf_counter()
            await engine.embed("alone")
            return time.perf_counter() - start

    elapsed = run(go())
    assert 0.07 <= elapsed < 1.0
    assert [len(b) for b in fake.batches] == [1]


def test_records_arriving_within_the_wait_share_a_batch() -> None:
    fake = FakeEmbedder()

    async def go() -> None:
        async with engine_for(fake, max_batch_size=64, max_wait_ms=300) as engine:
            first = await engine.submit("a")
            await asyncio.sleep(0.05)
            second = await engine.submit("b")
            await asyncio.gather(first, second)

    run(go())
    assert fake.batches == [["a", "b"]]


def test_inference_runs_off_the_event_loop() -> None:
    fake = FakeEmbedder(delay_s=0.4)

    async def go() -> float:
        async with engine_for(fake, max_wait_ms=0) as engine:
            future = await engine.submit("slow")
            worst = 0.0
            while not future.done():
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                worst = max(worst, time.perf_counter() - before)
            return worst

    worst_tick = run(go())
    assert worst_tick < 0.2  # the loop kept ticking while the model "ran" for 0.4 s
    assert all(name.startswith("sutra-embed") for name in fake.threads)


# ------------------------------------------------------------ backpressure
def test_producers_wait_when_the_queue_is_full() -> None:
    gate = threading.Event()
    fake = FakeEmbedder(gate)

    async def go() -> tuple[bool, Any]:
        engine = engine_for(fake, max_batch_size=1, queue_size=2, max_wait_ms=0)
        await engine.start()
        first = await engine.submit("r0")  # taken by the blocked model call
        await asyncio.get_running_loop().run_in_executor(None, fake.started.wait, 5)
        await engine.submit("r1")
        await engine.submit("r2")  # queue now full
        blocked = asyncio.ensure_future(engine.submit("r3"))
        await asyncio.sleep(0.1)
        was_blocked = not blocked.done()
        with pytest.raises(asyncio.QueueFull):
            engine.submit_nowait("r4")
        gate.set()
        await (await blocked)
        await first
        stats = engine.stats()
        await engine.stop()
        return was_blocked, stats

    was_blocked, stats = run(go())
    assert was_blocked
    assert stats.backpressure_events == 2
    assert stats.max_queue_depth == 2
    assert stats.submitted == 4


# --------------------------------------------------------------- lifecycle
def test_stop_drains_submitted_records() -> None:
    fake = FakeEmbedder(delay_s=0.02)

    async def go() -> list[Any]:
        engine = engine_for(fake, max_batch_size=2, max_wait_ms=0)
        await engine.start()
        futures = [await engine.submit(f"t{i}") for i in range(7)]
        await engine.stop()
        assert not engine.running
        with pytest.raises(StreamingError):
            await engine.submit("late")
        return [f.result() for f in futures]

    results = run(go())
    assert [r.record.text for r in results] == [f"t{i}" for i in range(7)]


def test_stop_without_drain_fails_queued_records() -> None:
    gate = threading.Event()
    fake = FakeEmbedder(gate)

    async def go() -> tuple[Any, list[BaseException | None]]:
        engine = engine_for(fake, max_batch_size=1, max_wait_ms=0)
        await engine.start()
        running = await engine.submit("running")
        await asyncio.get_running_loop().run_in_executor(None, fake.started.wait, 5)
        queued = [await engine.submit(f"q{i}") for i in range(3)]
        stopping = asyncio.ensure_future(engine.stop(drain=False))
        await asyncio.sleep(0.05)
        gate.set()
        await stopping
        return running.result(), [f.exception() for f in queued]

    running, errors = run(go())
    assert running.ok
    assert all(isinstance(e, StreamingError) for e in errors)


def test_submit_before_start_raises() -> None:
    async def go() -> None:
        with pytest.raises(StreamingError, match="start"):
            await engine_for(FakeEmbedder()).submit("x")

    run(go())


def test_a_failing_model_call_fails_its_batch_only() -> None:
    fake = FakeEmbedder(raise_on="boom")

    async def go() -> tuple[BaseException | None, Any]:
        async with engine_for(fake, max_batch_size=1, max_wait_ms=0) as engine:
            bad = await engine.submit("boom")
            good = await engine.submit("fine")
            await asyncio.wait([bad, good])
            return bad.exception(), good.result()

    error, good = run(go())
    assert isinstance(error, StreamingError) and "model exploded" in repr(error.__cause__)
    assert good.ok


def test_failed_texts_are_counted_by_kind() -> None:
    fake = FakeEmbedder()

    async def go() -> Any:
        async with engine_for(fake, max_wait_ms=0) as engine:
            await engine.embed_many(["a", "FAIL", "b", "FAIL"])
            return engine.stats()

    stats = run(go())
    assert stats.failures == {"empty": 2} and stats.failed == 2 and stats.completed == 4


def test_stats_percentiles_and_throughput() -> None:
    fake = FakeEmbedder(delay_s=0.01)

    async def go() -> Any:
        async with engine_for(fake, max_batch_size=8, max_wait_ms=1) as engine:
            await engine.embed_many([f"t{i}" for i in range(40)])
            return engine.stats()

    stats = run(go())
    assert stats.completed == 40 and stats.batches >= 5
    assert 0 < stats.latency_p50_ms <= stats.latency_p95_ms <= stats.latency_p99_ms <= stats.latency_max_ms
    assert stats.inference_ms >= 10
    assert stats.throughput > 0 and stats.queue_depth == 0 and stats.in_flight == 0
    assert set(stats.as_dict()) >= {"latency_p95_ms", "throughput", "backpressure_events", "queue_depth"}
