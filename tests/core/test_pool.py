"""The multi-device pool, on CPU sessions standing in for GPUs.

Every vector is checked against the plain single embedder (never against the
pool itself). Faults are injected through the pool's session factory, which
is the only stand-in used here: a wrapper around the real MiniLM embedder that
raises, returns NaN, or slows down after some calls.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from sutra_embedder.core import ConfigError, Embedder, EmbedderConfig, EmbedResult, InputError, RuntimeConfig
from sutra_embedder.core.pool import (
    DEVICE_INDEX_ENV,
    DevicePoolError,
    DeviceSpec,
    EmbedderPool,
    MemoryInfo,
    PoolConfig,
    discover_cuda_devices,
    embedder_factory,
    nvidia_smi_memory,
    parse_devices,
    pin_worker,
    pinned_config,
    worker_index,
)
from tests.fixtures.models import cosine_rows

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


# ------------------------------------------------------------------ helpers
class StandIn:
    """A device's embedder: the real one, with an injected fault after ``after`` calls.

    Faults: ``"raise"`` (an exception), ``"nan"`` (NaN vectors), ``"slow"``
    (``slow_s`` more per call). ``healed = True`` ends the fault; ``gate``
    holds every call until it is set; ``delay`` slows every call.
    """

    def __init__(
        self,
        inner: Embedder,
        fault: str | None = None,
        after: int = 0,
        *,
        delay: float = 0.0,
        slow_s: float = 1.0,
        gate: threading.Event | None = None,
    ) -> None:
        self.inner = inner
        self.fault = fault
        self.after = after
        self.delay = delay
        self.slow_s = slow_s
        self.gate = gate
        self.healed = False
        self.calls = 0
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed_records(self, items: Sequence[object], prompt: str | None = None) -> EmbedResult:
        with self._lock:
            self.calls += 1
            n = self.calls
        if self.gate is not None:
            assert self.gate.wait(30)
        faulty = self.fault is not None and n > self.after and not self.healed
        time.sleep(self.delay + (self.slow_s if faulty and self.fault == "slow" else 0.0))
        if faulty and self.fault == "raise":
            raise RuntimeError("injected device fault")
        result = self.inner.embed_records(items, prompt=prompt)
        if faulty and self.fault == "nan":
            result.vectors = np.full_like(result.vectors, np.nan)
        return result


def make_pool(devices: dict[str, StandIn], **settings: Any) -> EmbedderPool:
    """A pool over the named stand-ins (``cpu:fallback`` is the CPU fallback's, if given)."""
    names = ",".join(name for name in devices if name != "cpu:fallback")
    settings.setdefault("min_share_texts", 4)
    settings.setdefault("share_texts", 8)
    settings.setdefault("latency_factor", 1000.0)  # a loaded CI machine must not make a stand-in look degraded
    return EmbedderPool(PoolConfig(devices=names, **settings), factory=lambda spec: devices[spec.name])


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def assert_same(result: EmbedResult, reference: EmbedResult) -> None:
    """Same inputs ok and failed, same vectors, in input order."""
    np.testing.assert_array_equal(result.ok, reference.ok)
    np.testing.assert_allclose(result.vectors, reference.vectors, atol=2e-5)
    np.testing.assert_array_equal(result.n_tokens, reference.n_tokens)
    assert [(f.index, f.kind) for f in result.failures] == [(f.index, f.kind) for f in reference.failures]


@pytest.fixture(scope="module")
def inner(make_embedder: Callable[..., Embedder]) -> Embedder:
    """The real MiniLM embedder on the CPU (shared by the stand-ins)."""
    return make_embedder(**{"runtime.device": "cpu"})


@pytest.fixture(scope="module")
def texts(varied_texts: list[str]) -> list[str]:
    """Short real texts (several scripts), so that the tests stay fast."""
    short = [t for t in varied_texts if len(t) < 160]
    return short[:48]


@pytest.fixture(scope="module")
def reference(inner: Embedder, texts: list[str]) -> EmbedResult:
    """The plain embedder's result for ``texts``."""
    return inner.embed_records(texts)


def total(pool: EmbedderPool, key: str) -> int:
    return sum(int(s[key]) for s in pool.stats().values())


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"strategy": "fastest"}, "pool.strategy", "round_robin, least_loaded, performance, random"),
        ({"devices": "tpu:0"}, "pool.devices", "valid forms: all, cpu"),
        ({"devices": "cuda:0,cuda:0"}, "pool.devices", "twice"),
        ({"devices": "cpu*0"}, "pool.devices", "bad repeat"),
        ({"devices": ""}, "pool.devices", "non-empty"),
        ({"max_retries": -1}, "pool.max_retries", ">= 0"),
        ({"queue_size": 0}, "pool.queue_size", ">= 1"),
        ({"share_texts": 8, "min_share_texts": 16}, "pool.min_share_texts", "exceeds share_texts"),
        ({"max_error_rate": 0.0}, "pool.max_error_rate", "(0.0, 1.0]"),
        ({"max_error_rate": 1.5}, "pool.max_error_rate", "(0.0, 1.0]"),
        ({"latency_factor": 1.0}, "pool.latency_factor", "(1.0, inf]"),
        ({"ewma_alpha": 0}, "pool.ewma_alpha", "(0.0, 1.0]"),
        ({"min_free_memory_mb": -5}, "pool.min_free_memory_mb", ">= 0"),
        ({"probe_interval_s": 0}, "pool.probe_interval_s", "(0.0, inf]"),
        ({"cpu_fallback": "yes"}, "pool.cpu_fallback", "true or false"),
        ({"error_window": 2.5}, "pool.error_window", "must be an integer"),
    ],
)
def test_config_validation_names_the_field(settings: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}: ") as err:
        PoolConfig(**settings)
    assert err.value.field == field
    assert message in str(err.value)


def test_device_specs() -> None:
    names = lambda spec: [d.name for d in parse_devices(spec, discover=lambda: (2, "test"))]  # noqa: E731
    assert names("cpu*2") == ["cpu:0", "cpu:1"]
    assert names("cpu,cpu:3") == ["cpu:0", "cpu:3"]
    assert names("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]
    assert names("0,1") == ["cuda:0", "cuda:1"]
    assert names("cuda*2") == ["cuda:0", "cuda:1"]
    assert names("all") == ["cuda:0", "cuda:1"]


def test_all_without_gpu_falls_back_to_cpu_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sutra_embedder.core.pool"):
        devices = parse_devices("all", discover=lambda: (0, "nvidia-smi not found"))
    assert devices == [DeviceSpec("cpu", 0)]
    assert "nvidia-smi not found" in caplog.text
    count, how = discover_cuda_devices()  # the real discovery: never raises
    if not HAS_CUDA:
        assert count == 0 and "onnxruntime-gpu" in how
    assert nvidia_smi_memory(DeviceSpec("cpu", 0)) is None


# ------------------------------------------------------------------ results
def test_real_sessions_match_the_single_embedder(minilm_dir: Path, texts: list[str], reference: EmbedResult) -> None:
    """The default factory: one real CPU session per device, each with its share of the cores."""
    config = EmbedderConfig(model=str(minilm_dir))
    with EmbedderPool(PoolConfig(devices="cpu*2", min_share_texts=4, share_texts=16), config) as pool:
        assert pool.devices == ["cpu:0", "cpu:1"]
        result = pool.embed_records(texts)
        assert_same(result, reference)
        stats = pool.stats()
        assert {s["provider"] for s in stats.values()} == {"CPUExecutionProvider"}
        assert all(s["requests"] >= 1 for s in stats.values()), "both devices worked"
        np.testing.assert_allclose(pool.embed(texts[:3]), reference.vectors[:3], atol=2e-5)
    factory = embedder_factory(config, cpu_sessions=2)
    emb = factory(DeviceSpec("cpu", 1))
    assert isinstance(emb, Embedder)
    assert emb.session.get_session_options().intra_op_num_threads == max(1, (os.cpu_count() or 1) // 2)


def test_closing_the_pool_stops_its_embedders_tokenizer_processes(
    minilm_dir: Path, texts: list[str], reference: EmbedResult
) -> None:
    from tests.core.test_tokenize_procs import _wait_gone

    config = EmbedderConfig(model=str(minilm_dir)).with_overrides(
        **{"batching.tokenize_processes": 1, "batching.pipeline_block": 8, "runtime.warmup": False}
    )
    pool = EmbedderPool(PoolConfig(devices="cpu*2", min_share_texts=4, share_texts=24), config)
    try:
        assert_same(pool.embed_records(texts), reference)
        procs = [getattr(d.embedder, "_token_procs", None) for d in pool._all_devices()]
        pids = [pid for p in procs if p is not None for pid in p.worker_pids]
        assert len(pids) == 2, "each device's embedder tokenized in its own worker process"
    finally:
        pool.close()
    assert _wait_gone(pids)


def test_order_and_dead_letters_are_kept(inner: Embedder, texts: list[str]) -> None:
    items: list[object] = list(texts[:20])
    items[3] = None
    items[7] = ""
    items[15] = 42
    ref = inner.embed_records(items)
    with make_pool({"cpu:0": StandIn(inner), "cpu:1": StandIn(inner)}, strategy="round_robin") as pool:
        result = pool.embed_records(items)
        assert_same(result, ref)
        assert [f.index for f in result.failures] == [3, 7, 15]
        with pytest.raises(InputError, match="text #3"):
            pool.embed(items)  # type: ignore[arg-type]
        assert pool.embed([]).shape == (0, inner.dim)
        futures = [pool.submit(texts[k : k + 6]) for k in range(0, 24, 6)]
        for k, fut in zip(range(0, 24, 6), futures):
            np.testing.assert_allclose(fut.result().vectors, inner.embed(texts[k : k + 6]), atol=2e-5)
    with pytest.raises(DevicePoolError, match="closed"):
        pool.submit(texts[:2])


def test_stats_equal_the_counts_sent(inner: Embedder, texts: list[str], reference: EmbedResult) -> None:
    items: list[object] = [*texts, None, "   "]
    with make_pool({"cpu:0": StandIn(inner), "cpu:1": StandIn(inner)}, strategy="least_loaded") as pool:
        result = pool.embed_records(items)
        pool.embed_records(texts[:5])
        stats = pool.stats()
        assert len(result.ok) == len(texts) and len(result.failures) == 2
        assert total(pool, "texts") == len(texts) + 5
        assert total(pool, "tokens") == int(reference.n_tokens.sum()) + int(reference.n_tokens[:5].sum())
        assert total(pool, "requests") == len(pool.routes()) == 7 + 1  # 50 items in 7 shares of <= 8, then 1
        assert total(pool, "errors") == total(pool, "retries") == 0
        for s in stats.values():
            assert s["state"] == "healthy" and s["queue_depth"] == 0 and s["in_flight_texts"] == 0
            assert s["ewma_ms_per_text"] > 0 and s["error_rate"] == 0.0


# ------------------------------------------------------------------ strategies
def test_round_robin_alternates(inner: Embedder, texts: list[str]) -> None:
    with make_pool({"cpu:0": StandIn(inner), "cpu:1": StandIn(inner)}, strategy="round_robin") as pool:
        for k in range(6):
            pool.embed_records(texts[k : k + 2])  # small calls: one share each
        assert pool.routes() == ["cpu:0", "cpu:1"] * 3
        pool.embed_records(texts[:32])  # a large call: 4 shares, spread in turn
        assert pool.routes()[6:] == ["cpu:0", "cpu:1"] * 2
        assert [s["requests"] for s in pool.stats().values()] == [5, 5]


def test_least_loaded_prefers_the_shorter_queue(inner: Embedder, texts: list[str]) -> None:
    gate = threading.Event()
    devices = {"cpu:0": StandIn(inner, gate=gate), "cpu:1": StandIn(inner)}
    with make_pool(devices, strategy="least_loaded") as pool:
        held = pool.submit(texts[:3])  # cpu:0 takes it and is held
        wait_for(lambda: pool.stats()["cpu:0"]["in_flight_texts"] == 3)
        for k in range(5):
            pool.embed_records(texts[k : k + 2])
        assert pool.routes() == ["cpu:0"] + ["cpu:1"] * 5
        gate.set()
        np.testing.assert_allclose(held.result().vectors, inner.embed(texts[:3]), atol=2e-5)


def test_performance_prefers_the_faster_device(inner: Embedder, texts: list[str]) -> None:
    devices = {"cpu:0": StandIn(inner, delay=0.5), "cpu:1": StandIn(inner)}
    with make_pool(devices, strategy="performance") as pool:
        pool.embed_records(texts[:2])  # each device is tried once...
        pool.embed_records(texts[2:4])
        assert sorted(pool.routes()) == ["cpu:0", "cpu:1"]
        futures = [pool.submit(texts[k : k + 2]) for k in range(0, 32, 2)]  # ...then the fast one is preferred
        for k, fut in zip(range(0, 32, 2), futures):
            np.testing.assert_allclose(fut.result().vectors, inner.embed(texts[k : k + 2]), atol=2e-5)
        later = pool.routes()[2:]
        assert later.count("cpu:1") >= 12, later
        stats = pool.stats()
        assert stats["cpu:0"]["ewma_ms_per_text"] > 3 * stats["cpu:1"]["ewma_ms_per_text"]
        assert stats["cpu:0"]["state"] == "healthy"  # consistently slow is not degraded


def test_random_is_seeded_and_covers_every_device(inner: Embedder, texts: list[str]) -> None:
    def routes(seed: int) -> list[str]:
        devices = {f"cpu:{k}": StandIn(inner) for k in range(3)}
        with make_pool(devices, strategy="random", seed=seed) as pool:
            for k in range(24):
                pool.embed_records(texts[k : k + 1])
            return pool.routes()

    first = routes(11)
    assert first == routes(11)
    assert set(first) == {"cpu:0", "cpu:1", "cpu:2"}
    assert first != routes(12)


# ------------------------------------------------------------------ health
@pytest.mark.parametrize("fault", ["raise", "nan", "slow"])
def test_a_faulty_device_is_drained_and_the_work_completes(
    inner: Embedder, texts: list[str], reference: EmbedResult, fault: str
) -> None:
    sick = StandIn(inner, fault, after=2, slow_s=1.0)
    devices = {"cpu:0": sick, "cpu:1": StandIn(inner)}
    settings = {"min_health_calls": 2, "latency_factor": 3.0, "probe_interval_s": 60, "share_texts": 4}
    with make_pool(devices, strategy="round_robin", **settings) as pool:
        result = pool.embed_records(texts)  # 48 texts: 12 shares in turn
        assert_same(result, reference)
        stats = pool.stats()
        bad, good = stats["cpu:0"], stats["cpu:1"]
        assert bad["state"] == "sick", bad
        assert bad["texts"] + good["texts"] == len(texts)
        if fault == "slow":
            assert "latency" in bad["reason"] and bad["errors"] == 0 == good["retries"]
        else:
            assert "error rate" in bad["reason"]
            assert bad["errors"] == 2 == good["retries"], "each failed share was retried on cpu:1"
        assert bad["moved"] >= 1, "its queued shares moved to cpu:1"
        calls = sick.calls
        pool.embed_records(texts[:16])  # a drained device gets no new work
        assert sick.calls == calls
        assert pool.stats()["cpu:1"]["texts"] == good["texts"] + 16


def test_all_devices_sick_falls_over_to_cpu(inner: Embedder, texts: list[str], reference: EmbedResult) -> None:
    devices = {"cpu:0": StandIn(inner, "raise"), "cpu:1": StandIn(inner, "nan"), "cpu:fallback": StandIn(inner)}
    with make_pool(devices, strategy="round_robin", min_health_calls=2, probe_interval_s=60) as pool:
        assert pool.devices == ["cpu:0", "cpu:1"]  # the fallback is created on need
        result = pool.embed_records(texts)
        assert_same(result, reference)
        stats = pool.stats()
        assert pool.devices == ["cpu:0", "cpu:1", "cpu:fallback"]
        assert stats["cpu:0"]["state"] == stats["cpu:1"]["state"] == "sick"
        assert stats["cpu:0"]["texts"] == stats["cpu:1"]["texts"] == 0
        assert stats["cpu:fallback"]["texts"] == len(texts)
        assert stats["cpu:fallback"]["requests"] == 6  # every share ended there: retried, or moved by a drain
        assert 1 <= stats["cpu:fallback"]["retries"] <= 6
        assert stats["cpu:fallback"]["retries"] + stats["cpu:0"]["moved"] + stats["cpu:1"]["moved"] >= 6


def test_without_fallback_failed_texts_become_dead_letters(inner: Embedder, texts: list[str]) -> None:
    devices = {"cpu:0": StandIn(inner, "raise"), "cpu:1": StandIn(inner, "raise")}
    with make_pool(devices, cpu_fallback=False, max_retries=1, probe_interval_s=60) as pool:
        result = pool.embed_records(texts[:6])
        assert len(result.ok) == 0
        assert [f.index for f in result.failures] == list(range(6))
        assert {f.kind for f in result.failures} == {"inference_error"}
        assert "injected device fault" in result.failures[0].message
        assert total(pool, "errors") == 2 and total(pool, "retries") == 1  # tried on both, retried once
        with pytest.raises(DevicePoolError, match="text #0"):
            pool.embed(texts[:2])


def test_a_sick_device_recovers_after_its_probe(inner: Embedder, texts: list[str]) -> None:
    flaky = StandIn(inner, "raise", after=1)
    devices = {"cpu:0": flaky, "cpu:1": StandIn(inner)}
    with make_pool(devices, strategy="round_robin", min_health_calls=2, probe_interval_s=0.2) as pool:
        pool.embed_records(texts[:32])
        assert pool.stats()["cpu:0"]["state"] in ("sick", "draining")
        time.sleep(0.5)
        assert pool.stats()["cpu:0"]["state"] == "sick", "a failing probe keeps it sick"
        flaky.healed = True
        wait_for(lambda: pool.stats()["cpu:0"]["state"] == "recovering")
        assert pool.stats()["cpu:0"]["probes"] >= 2
        before = pool.stats()["cpu:0"]["texts"]
        for k in range(6):
            np.testing.assert_allclose(pool.embed(texts[k : k + 2]), inner.embed(texts[k : k + 2]), atol=2e-5)
        stats = pool.stats()["cpu:0"]
        assert stats["texts"] > before and stats["state"] == "healthy" and stats["reason"] is None


def test_low_free_memory_drains_a_device(inner: Embedder, texts: list[str], reference: EmbedResult) -> None:
    free = {"cpu:0": 8000.0, "cpu:1": 8000.0}

    def memory(spec: DeviceSpec) -> MemoryInfo:
        return MemoryInfo(used_mb=16000.0 - free[spec.name], total_mb=16000.0)

    devices = {"cpu:0": StandIn(inner), "cpu:1": StandIn(inner)}
    config = PoolConfig(devices="cpu*2", min_free_memory_mb=512, probe_interval_s=0.1, min_share_texts=4, share_texts=8)
    with EmbedderPool(config, factory=lambda spec: devices[spec.name], memory_probe=memory) as pool:
        free["cpu:1"] = 100.0
        wait_for(lambda: pool.stats()["cpu:1"]["state"] == "sick")
        assert "free memory 100 MiB" in pool.stats()["cpu:1"]["reason"]
        assert_same(pool.embed_records(texts), reference)
        assert pool.stats()["cpu:1"]["texts"] == 0
        free["cpu:1"] = 8000.0
        wait_for(lambda: pool.stats()["cpu:1"]["state"] == "recovering")


def test_mark_sick_by_hand_and_unknown_device(inner: Embedder, texts: list[str]) -> None:
    with make_pool({"cpu:0": StandIn(inner), "cpu:1": StandIn(inner)}, probe_interval_s=60) as pool:
        pool.mark_sick("cpu:0", "maintenance")
        assert pool.stats()["cpu:0"]["reason"] == "maintenance"
        pool.embed_records(texts[:16])
        assert set(pool.routes()) == {"cpu:1"}
        with pytest.raises(ConfigError, match="unknown device 'cuda:7'"):
            pool.mark_sick("cuda:7")


def test_a_device_that_cannot_load_is_left_out(inner: Embedder, texts: list[str]) -> None:
    def factory(spec: DeviceSpec) -> StandIn:
        if spec.name == "cpu:1":
            raise RuntimeError("CUDA out of memory")
        return StandIn(inner)

    with EmbedderPool(PoolConfig(devices="cpu*2", probe_interval_s=60), factory=factory) as pool:
        stats = pool.stats()
        assert stats["cpu:1"]["state"] == "sick" and "CUDA out of memory" in stats["cpu:1"]["reason"]
        np.testing.assert_allclose(pool.embed(texts[:4]), inner.embed(texts[:4]), atol=2e-5)
    with pytest.raises(DevicePoolError, match="no device could load"):
        EmbedderPool(PoolConfig(devices="cpu", cpu_fallback=False), factory=factory_failing)


def factory_failing(spec: DeviceSpec) -> StandIn:
    raise RuntimeError("no session")


# ------------------------------------------------------------------ pinning
def test_pin_worker_spreads_workers_over_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [DeviceSpec("cuda", 0), DeviceSpec("cuda", 1)]
    assert [pin_worker(i, gpus).device.name for i in range(5)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    pin = pin_worker(3, gpus)
    assert pin.env == {"CUDA_VISIBLE_DEVICES": "5", DEVICE_INDEX_ENV: "3"}  # the physical GPU
    runtime = pin.runtime(RuntimeConfig(device="auto"))
    assert (runtime.device, runtime.device_id) == ("cuda", 1)  # when the process sees both
    assert pin_worker(0, "cpu").env["CUDA_VISIBLE_DEVICES"] == "-1"
    config = pinned_config(EmbedderConfig(), gpus, env={DEVICE_INDEX_ENV: "1"})
    assert (config.runtime.device, config.runtime.device_id) == ("cuda", 1)
    assert pinned_config(EmbedderConfig(), "cpu", env={DEVICE_INDEX_ENV: "1"}).runtime.device == "cpu"
    with pytest.raises(ConfigError, match=DEVICE_INDEX_ENV):
        worker_index({DEVICE_INDEX_ENV: "first"})


def test_worker_processes_claim_one_slot_each(tmp_path: Path) -> None:
    """Without an index (Beam SDK workers), each process locks the lowest free slot."""
    lock_dir = str(tmp_path / "slots")
    assert worker_index({}, slots=2, lock_dir=lock_dir) == 0
    assert worker_index({}, slots=2, lock_dir=lock_dir) == 0  # the same process keeps its slot
    code = (
        f"from sutra_embedder.core.pool import worker_index; print(worker_index({{}}, slots=2, lock_dir={lock_dir!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    assert worker_index({DEVICE_INDEX_ENV: "7"}, slots=2, lock_dir=lock_dir) == 7
    assert worker_index({}) == 0


# ------------------------------------------------------------------ CLI
def test_bench_cli_writes_valid_json(minilm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sutra_embedder.cli import main
    from sutra_embedder.pipelines.bench import DEFAULT_CORPUS, load_corpus

    out = tmp_path / "bench.json"
    args = ["bench", "--devices", "cpu*2", "--texts", "64", "--corpus", "generated", "--model", str(minilm_dir)]
    assert main([*args, "--no-progress", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["label"] for r in report["runs"]] == ["cpu:0", "cpu:1", "all"]
    for run in report["runs"]:
        assert run["embedded"] == 64 and run["failed"] == 0 and run["texts_per_s"] > 0
        assert sum(s["texts"] for s in run["stats"].values()) == 64
        assert run["max_abs_diff"] is None or run["max_abs_diff"] < 1e-4
    assert report["runs"][-1]["stats"]["cpu:0"]["requests"] >= 1
    assert report["runs"][-1]["stats"]["cpu:1"]["requests"] >= 1
    assert report["scaling"]["ratio_vs_mean_single"] > 0
    table = capsys.readouterr().out
    assert "scaling: all 2 devices" in table and "TEXTS/S" in table
    texts, source = load_corpus(None, 3)
    assert len(texts) == 3 and (source == str(DEFAULT_CORPUS) or source == "generated")


# ------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a CUDA device")
def test_gpu_pool_matches_cpu(minilm_dir: Path, inner: Embedder, texts: list[str]) -> None:
    count, how = discover_cuda_devices()
    if count == 0:
        pytest.skip(f"no CUDA device: {how}")
    many = texts * 40
    config = EmbedderConfig(model=str(minilm_dir))
    with EmbedderPool(PoolConfig(devices="all", cpu_fallback=False), config) as pool:
        assert pool.devices == [f"cuda:{k}" for k in range(count)]
        vectors = pool.embed(many)
        stats = pool.stats()
    assert all(s["provider"] == "CUDAExecutionProvider" for s in stats.values()), stats
    assert all(s["texts"] > 0 for s in stats.values()), "every GPU took a share"
    cpu = inner.embed(many)
    assert cosine_rows(vectors, cpu).min() >= 0.999


def test_pinned_if_several_gpus_spreads_workers_only_over_several_gpus(minilm_dir: Path) -> None:
    from sutra_embedder.core.pool import pinned_if_several_gpus

    auto = EmbedderConfig(model=str(minilm_dir))
    env = {DEVICE_INDEX_ENV: "3"}
    two = lambda: (2, "two GPUs")  # noqa: E731
    pinned = pinned_if_several_gpus(auto, env, discover=two)
    assert (pinned.runtime.device, pinned.runtime.device_id) == ("cuda", 1)  # worker 3 of 2 GPUs
    assert pinned_if_several_gpus(auto, {DEVICE_INDEX_ENV: "2"}, discover=two).runtime.device_id == 0
    assert pinned_if_several_gpus(auto, env, discover=lambda: (1, "one GPU")) == auto
    assert pinned_if_several_gpus(auto, env, discover=lambda: (0, "no GPU")) == auto
    cpu = EmbedderConfig(model=str(minilm_dir), runtime=RuntimeConfig(device="cpu"))
    assert pinned_if_several_gpus(cpu, env, discover=two) == cpu
