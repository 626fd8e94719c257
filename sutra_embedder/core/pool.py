"""A pool of embedders, one per device, with routing, health checks and failover.

Use :class:`EmbedderPool` when one machine has several GPUs (or to spread work
over CPU sessions): each device gets its own :class:`~sutra_embedder.core.embedder.Embedder`
(an ONNX Runtime session bound to that device), its own worker thread and its
own bounded queue. A large call is cut into shares that the devices embed at
the same time, which is what makes two GPUs about twice as fast as one.

How a share finds its device (``PoolConfig.strategy``):

* ``round_robin``: the devices in turn;
* ``least_loaded``: the device with the fewest texts queued or running;
* ``performance``: the device expected to finish first, from its latency
  EWMA (seconds per text) times the texts it already holds;
* ``random``: a seeded random device (reproducible with ``PoolConfig.seed``).

Health: after every call a device's error rate (over the last
``error_window`` calls) and latency (its EWMA against its own baseline) are
checked, and on GPUs its free memory (``nvidia-smi``) every probe interval. A
device over a threshold is marked sick and *drained*: it gets no new work and
its queued shares move to the other devices. Every ``probe_interval_s`` a sick
device runs a small probe; when that works it comes back (``recovering``, then
``healthy`` after ``min_health_calls`` good calls). A share that fails (an
exception, ``inference_error`` rows or non-finite vectors) is retried on
another device, up to ``max_retries`` times; when no device of the pool is
usable and ``cpu_fallback`` is on, it runs on a CPU embedder created on first
need. Bad *inputs* (empty, None, too long...) are not device faults: they come
back as dead letters, as from the plain embedder.

The pinning helpers at the end (:func:`pin_worker`, :func:`worker_index`,
:func:`pinned_config`) are for the other way of using several GPUs: one worker
*process* per GPU (Beam SDK workers, Faust workers), each with a plain embedder.

This module, like the rest of the core, imports only numpy, onnxruntime and
the standard library.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from types import TracebackType
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
import onnxruntime as ort

from .config import EmbedderConfig, RuntimeConfig
from .errors import ConfigError, InputError, SutraError
from .records import ChunkInfo, EmbedResult, Failure

log = logging.getLogger(__name__)

Strategy = Literal["round_robin", "least_loaded", "performance", "random"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
DeviceState = Literal["healthy", "draining", "sick", "recovering"]
DEVICE_STATES: tuple[str, ...] = get_args(DeviceState)

#: Environment variable naming the worker's index for :func:`worker_index`.
DEVICE_INDEX_ENV = "SUTRA_DEVICE_INDEX"
PROBE_TEXT = "sutra health probe"
_DEVICE_FORMS = "all, cpu, cpu*N, cpu:N, cuda, cuda:N, cuda*N, or a comma-separated list such as cuda:0,cuda:1"


class DevicePoolError(SutraError, RuntimeError):
    """The pool cannot embed: no usable device is left, or it was closed."""


# ------------------------------------------------------------------ devices
@dataclass(frozen=True, order=True)
class DeviceSpec:
    """One device of a pool.

    Attributes:
        kind: ``"cuda"`` or ``"cpu"``.
        index: The CUDA ordinal (as this process sees it), or the number of a
            CPU session (``-1``: the pool's CPU fallback).
    """

    kind: Literal["cpu", "cuda"]
    index: int

    @property
    def name(self) -> str:
        """``cuda:0``, ``cpu:1``, or ``cpu:fallback``."""
        return f"{self.kind}:fallback" if self.index < 0 else f"{self.kind}:{self.index}"

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"


FALLBACK_DEVICE = DeviceSpec("cpu", -1)


@dataclass(frozen=True)
class MemoryInfo:
    """Memory of one GPU, in MiB (as ``nvidia-smi`` reports it)."""

    used_mb: float
    total_mb: float

    @property
    def free_mb(self) -> float:
        return self.total_mb - self.used_mb


def _nvidia_smi() -> str | None:
    return shutil.which("nvidia-smi")


def _visible_entries() -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` as CUDA reads it (up to the first invalid entry), or None if unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    entries: list[str] = []
    for entry in (v.strip() for v in visible.split(",")):
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return entries


def discover_cuda_devices() -> tuple[int, str]:
    """Count the CUDA devices this process can use, without torch.

    Reads ``CUDA_VISIBLE_DEVICES`` when it is set, else counts the lines of
    ``nvidia-smi -L``; either way only when onnxruntime has its CUDA provider.

    Returns:
        ``(count, how)``: how the count was found, or why it is 0.
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return 0, "this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)"
    smi = _nvidia_smi()
    physical: int | None = None
    smi_note = "nvidia-smi not found"
    if smi is not None:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
            physical = sum(1 for line in out.splitlines() if line.startswith("GPU "))
            smi_note = f"nvidia-smi -L lists {physical} GPU(s)"
        except (OSError, subprocess.SubprocessError) as exc:
            smi_note = f"nvidia-smi -L failed: {exc}"
    visible = _visible_entries()
    if visible is not None:
        count = len(visible) if physical is None else min(len(visible), physical)
        return count, f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}; {smi_note}"
    return physical or 0, smi_note


def nvidia_smi_memory(device: DeviceSpec) -> MemoryInfo | None:
    """Used and total memory of a CUDA device from ``nvidia-smi``; None on CPU or when unknown.

    The device's ordinal is mapped through ``CUDA_VISIBLE_DEVICES`` (indices or
    UUIDs) to the GPU ``nvidia-smi`` reports.
    """
    smi = _nvidia_smi()
    if not device.is_gpu or smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,uuid,memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvidia-smi memory query failed: %s", exc)
        return None
    visible = _visible_entries()
    wanted = str(device.index)
    if visible is not None:
        if device.index >= len(visible):
            return None
        wanted = visible[device.index]
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        if parts[0] == wanted or parts[1].startswith(wanted):
            try:
                return MemoryInfo(float(parts[2]), float(parts[3]))
            except ValueError:
                return None
    return None


def _parse_tokens(spec: str) -> list[DeviceSpec | Literal["all"]]:
    """Check the syntax of a devices spec; ``"all"`` is left for discovery."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("pool.devices", f"must be a non-empty string; valid forms: {_DEVICE_FORMS}")
    out: list[DeviceSpec | Literal["all"]] = []
    for raw in spec.split(","):
        token = raw.strip().lower()
        count = 1
        if "*" in token:
            token, _, times = token.partition("*")
            if not times.isdigit() or int(times) < 1:
                raise ConfigError("pool.devices", f"bad repeat in {raw.strip()!r}; valid forms: {_DEVICE_FORMS}")
            count = int(times)
        kind, _, number = token.partition(":")
        kind = "cuda" if kind == "gpu" else kind
        if token == "all" and count == 1:
            out.append("all")
        elif kind == "cpu" and not number:
            used = {d.index for d in out if isinstance(d, DeviceSpec) and not d.is_gpu}
            free = (k for k in range(len(used) + count + 1) if k not in used)
            out += [DeviceSpec("cpu", next(free)) for _ in range(count)]
        elif kind == "cuda" and not number:
            out += [DeviceSpec("cuda", k) for k in range(count)]
        elif kind in ("cpu", "cuda") and number.isdigit() and count == 1:
            out.append(DeviceSpec("cpu" if kind == "cpu" else "cuda", int(number)))
        elif token.isdigit() and count == 1:
            out.append(DeviceSpec("cuda", int(token)))
        else:
            raise ConfigError("pool.devices", f"unknown device {raw.strip()!r}; valid forms: {_DEVICE_FORMS}")
    named = [d for d in out if isinstance(d, DeviceSpec)]
    if len(named) != len(set(named)):
        raise ConfigError("pool.devices", f"{spec!r} names a device twice; one session per device")
    return out


def parse_devices(spec: str, discover: Callable[[], tuple[int, str]] = discover_cuda_devices) -> list[DeviceSpec]:
    """Turn a devices spec into the devices of a pool.

    Args:
        spec: ``"all"`` (every visible GPU, or the CPU when there is none),
            ``"cpu"``, ``"cpu*N"`` (N CPU sessions), ``"cpu:N"`` (CPU session
            N), ``"cuda"`` (``cuda:0``), ``"cuda*N"``, ``"cuda:N"`` or a list
            such as ``"cuda:0,cuda:1"``.
        discover: Counts the GPUs for ``"all"`` (see :func:`discover_cuda_devices`).

    Raises:
        ConfigError: The spec is malformed (field ``pool.devices``).
    """
    devices: list[DeviceSpec] = []
    for token in _parse_tokens(spec):
        if token == "all":
            count, how = discover()
            if count == 0:
                log.warning("devices='all': no usable CUDA device (%s); the pool runs on the CPU", how)
                token_devices = [DeviceSpec("cpu", 0)]
            else:
                log.info("devices='all': %d CUDA device(s) (%s)", count, how)
                token_devices = [DeviceSpec("cuda", k) for k in range(count)]
        else:
            token_devices = [token]
        devices += [d for d in token_devices if d not in devices]
    return devices


# ------------------------------------------------------------------ config
def _int_at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")


def _number_in(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(name, f"must be a number, got {type(value).__name__} {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ConfigError(name, f"must be in {bracket}{low}, {high}], got {value}")


@dataclass(frozen=True)
class PoolConfig:
    """Settings of an :class:`EmbedderPool`; validated on construction.

    Attributes:
        devices: Which devices get a session: ``"all"`` (every visible GPU, or
            the CPU when there is none, with the reason logged), ``"cpu"``,
            ``"cpu*N"``, ``"cuda:0,cuda:1"``... (see :func:`parse_devices`).
        strategy: How shares are routed: ``round_robin``, ``least_loaded``,
            ``performance`` or ``random`` (see the module docstring).
        max_retries: How many times a failed share is re-run on another device
            before its texts become ``inference_error`` dead letters.
        queue_size: Shares that may wait per device; callers block beyond it
            (back-pressure). Work moved by retries and drains is never refused.
        share_texts: Most texts in one share; a large call is cut into at
            least as many shares as there are usable devices.
        min_share_texts: A call is only cut into shares of at least this many
            texts (small calls go to one device whole).
        error_window: Calls over which a device's error rate is measured.
        max_error_rate: A device whose error rate reaches this is sick.
        min_health_calls: Calls a device must have made before its error rate
            and latency are judged; also how many calls in a row must be slow
            before latency counts (one stalled call is not a sick device), and
            the good calls a recovering device needs to count as healthy again.
        latency_factor: A device is sick when its latency EWMA (seconds per
            text) exceeds this multiple of its own baseline, after
            ``min_health_calls`` calls in a row that each did.
        ewma_alpha: Weight of the newest call in the latency EWMA; the baseline
            rises four times slower and ignores calls judged degraded.
        min_free_memory_mb: A GPU with less free memory than this (from
            ``nvidia-smi``) is sick; 0 turns the check off. Not checked on CPU.
        probe_interval_s: Seconds between health probes of a sick device (and
            between memory checks).
        cpu_fallback: When no device of the pool is usable, run on a CPU
            embedder created on first need instead of failing.
        seed: Seed of the ``random`` strategy.
    """

    devices: str = "all"
    strategy: Strategy = "least_loaded"
    max_retries: int = 2
    queue_size: int = 16
    share_texts: int = 512
    min_share_texts: int = 32
    error_window: int = 20
    max_error_rate: float = 0.5
    min_health_calls: int = 3
    latency_factor: float = 4.0
    ewma_alpha: float = 0.3
    min_free_memory_mb: int = 256
    probe_interval_s: float = 10.0
    cpu_fallback: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        _parse_tokens(self.devices)
        if self.strategy not in STRATEGIES:
            raise ConfigError("pool.strategy", f"got {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        _int_at_least("pool.max_retries", self.max_retries, 0)
        _int_at_least("pool.queue_size", self.queue_size, 1)
        _int_at_least("pool.share_texts", self.share_texts, 1)
        _int_at_least("pool.min_share_texts", self.min_share_texts, 1)
        if self.min_share_texts > self.share_texts:
            raise ConfigError("pool.min_share_texts", f"{self.min_share_texts} exceeds share_texts={self.share_texts}")
        _int_at_least("pool.error_window", self.error_window, 1)
        _number_in("pool.max_error_rate", self.max_error_rate, 0.0, 1.0, low_open=True)
        _int_at_least("pool.min_health_calls", self.min_health_calls, 1)
        _number_in("pool.latency_factor", self.latency_factor, 1.0, math.inf, low_open=True)
        _number_in("pool.ewma_alpha", self.ewma_alpha, 0.0, 1.0, low_open=True)
        _int_at_least("pool.min_free_memory_mb", self.min_free_memory_mb, 0)
        _number_in("pool.probe_interval_s", self.probe_interval_s, 0.0, math.inf, low_open=True)
        if not isinstance(self.cpu_fallback, bool):
            raise ConfigError("pool.cpu_fallback", f"must be true or false, got {self.cpu_fallback!r}")
        _int_at_least("pool.seed", self.seed, 0)


# ------------------------------------------------------------------ sessions
@runtime_checkable
class EmbedderLike(Protocol):
    """What a pool device holds: an :class:`~sutra_embedder.core.embedder.Embedder` or a stand-in."""

    @property
    def dim(self) -> int: ...

    def embed_records(self, items: Sequence[object], prompt: str | None = None) -> EmbedResult: ...


SessionFactory = Callable[[DeviceSpec], EmbedderLike]


def device_runtime(base: RuntimeConfig, device: DeviceSpec, cpu_sessions: int = 1) -> RuntimeConfig:
    """``base`` bound to one device.

    A GPU keeps ``base.device`` when it is ``cuda`` or ``tensorrt`` (else
    ``cuda``) with ``device_id`` set; a CPU session gets ``device="cpu"`` and,
    unless ``base`` fixes the threads, an equal part of the cores.
    """
    if device.is_gpu:
        kind = base.device if base.device in ("cuda", "tensorrt") else "cuda"
        return replace(base, device=kind, device_id=device.index)
    threads = base.intra_op_threads or max(1, (os.cpu_count() or 1) // max(1, cpu_sessions))
    return replace(base, device="cpu", intra_op_threads=threads)


def embedder_factory(config: EmbedderConfig | None = None, cpu_sessions: int = 1) -> SessionFactory:
    """The default session factory: one real :class:`Embedder` per device.

    Args:
        config: Settings shared by every device (``runtime`` is rebound per
            device with :func:`device_runtime`).
        cpu_sessions: CPU sessions sharing the cores (``cpu*N`` pools); the
            fallback CPU session always gets every core.
    """
    from .embedder import Embedder

    base = config or EmbedderConfig()

    def build(device: DeviceSpec) -> EmbedderLike:
        sessions = 1 if device == FALLBACK_DEVICE else cpu_sessions
        return Embedder(replace(base, runtime=device_runtime(base.runtime, device, sessions)))

    return build


# ------------------------------------------------------------------ internals
@dataclass(eq=False)
class _Task:
    """One share of a call (or a probe) on its way to a device."""

    items: list[object]
    positions: np.ndarray
    prompt: str | None
    future: Future[EmbedResult]
    attempts: int = 0
    tried: frozenset[str] = frozenset()
    retry: bool = False
    probe: bool = False
    last_error: str = ""


@dataclass(eq=False)
class _Device:
    spec: DeviceSpec
    cond: threading.Condition
    state: str = "healthy"
    reason: str | None = None
    embedder: EmbedderLike | None = None
    queue: deque[_Task] = field(default_factory=deque)
    queued_texts: int = 0
    inflight_texts: int = 0
    thread: threading.Thread | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    # stats
    requests: int = 0
    texts: int = 0
    tokens: int = 0
    errors: int = 0
    retries: int = 0
    moved: int = 0
    probes: int = 0
    busy_s: float = 0.0
    # health
    window: deque[bool] = field(default_factory=deque)
    ewma: float | None = None
    baseline: float | None = None
    samples: int = 0
    slow_streak: int = 0
    good_streak: int = 0
    next_probe_at: float = 0.0
    probing: bool = False
    next_memory_at: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def usable(self) -> bool:
        return self.state in ("healthy", "recovering") and self.embedder is not None

    @property
    def outstanding(self) -> int:
        return self.queued_texts + self.inflight_texts

    def error_rate(self) -> float:
        return (len(self.window) - sum(self.window)) / len(self.window) if self.window else 0.0


def _empty(dim: int) -> EmbedResult:
    return EmbedResult(
        vectors=np.zeros((0, dim), np.float32),
        ok=np.zeros(0, np.int64),
        n_tokens=np.zeros(0, np.int64),
        n_chunks=np.zeros(0, np.int64),
        truncated=np.zeros(0, bool),
        failures=[],
    )


def _select(res: EmbedResult, rows: np.ndarray, positions: np.ndarray) -> EmbedResult:
    """Rows ``rows`` of ``res``, with positions mapped to the call's (failures left out)."""
    return EmbedResult(
        vectors=res.vectors[rows],
        ok=positions[res.ok[rows]],
        n_tokens=res.n_tokens[rows],
        n_chunks=res.n_chunks[rows],
        truncated=res.truncated[rows],
        failures=[],
        chunks=[res.chunks[int(r)] for r in rows] if res.chunks is not None else None,
    )


def merge_results(parts: Iterable[EmbedResult], dim: int) -> EmbedResult:
    """Join partial results of one call into one, in input order (ascending positions)."""
    parts = [p for p in parts if p.n_inputs or len(p.vectors)]
    if not parts:
        return _empty(dim)
    joined = EmbedResult.concat(parts, dim)
    order = np.argsort(joined.ok, kind="stable")
    chunks: list[ChunkInfo] | None = None
    if joined.chunks is not None and len(joined.chunks) == len(order):
        chunks = [joined.chunks[int(i)] for i in order]
    return EmbedResult(
        vectors=joined.vectors[order] if len(order) else joined.vectors.reshape(0, dim),
        ok=joined.ok[order],
        n_tokens=joined.n_tokens[order],
        n_chunks=joined.n_chunks[order],
        truncated=joined.truncated[order],
        failures=sorted(joined.failures, key=lambda f: f.index),
        chunks=chunks,
    )


# ------------------------------------------------------------------ the pool
class EmbedderPool:
    """Embeds texts on several devices at once, one session per device.

    Use it instead of a single :class:`Embedder` when a machine has several
    GPUs, or when a sick GPU must not stop the job: large calls are split into
    shares embedded in parallel, failures are retried on another device (or on
    the CPU), and a sick device is drained and later probed back. The API
    mirrors the embedder's, plus :meth:`submit` for non-blocking calls and
    :meth:`stats` for per-device counters.

    Args:
        config: Pool settings (devices, strategy, health thresholds).
        embedder_config: Settings of every device's embedder (model, batching,
            chunking); the runtime device is set per device. Ignored when
            ``factory`` is given.
        factory: Builds the embedder of one device; tests inject fault-making
            stand-ins here. Default: :func:`embedder_factory`.
        memory_probe: Reads a device's memory; default :func:`nvidia_smi_memory`
            (GPUs only, never the CPU).
        discover: Counts the GPUs for ``devices="all"``.

    Raises:
        DevicePoolError: No device could load its embedder and ``cpu_fallback`` is off
            (or the fallback failed too).

    Example:
        >>> with EmbedderPool(PoolConfig(devices="all"), EmbedderConfig(model="minilm")) as pool:  # doctest: +SKIP
        ...     vectors = pool.embed(texts)
        ...     print(pool.stats()["cuda:0"]["texts"])
    """

    def __init__(
        self,
        config: PoolConfig | None = None,
        embedder_config: EmbedderConfig | None = None,
        *,
        factory: SessionFactory | None = None,
        memory_probe: Callable[[DeviceSpec], MemoryInfo | None] | None = None,
        discover: Callable[[], tuple[int, str]] = discover_cuda_devices,
    ) -> None:
        self.config = config or PoolConfig()
        specs = parse_devices(self.config.devices, discover)
        n_cpu = sum(1 for s in specs if not s.is_gpu)
        self._factory = factory or embedder_factory(embedder_config, cpu_sessions=max(1, n_cpu))
        self._memory_probe = memory_probe or nvidia_smi_memory
        self._check_all_memory = memory_probe is not None
        self._lock = threading.RLock()
        self._space = threading.Condition(self._lock)
        self._devices = [_Device(s, threading.Condition(self._lock)) for s in specs]
        self._fallback: _Device | None = None
        self._rng = random.Random(self.config.seed)
        self._turn = 0
        self._routes: deque[str] = deque(maxlen=10_000)
        self._closed = False
        self._stop = threading.Event()
        self._dim: int | None = None
        for dev in self._devices:
            self._start(dev)
        for dev in self._devices:
            dev.ready.wait()
        if not any(d.embedder is not None for d in self._devices):
            reasons = "; ".join(f"{d.name}: {d.reason}" for d in self._devices)
            if not self.config.cpu_fallback:
                self.close()
                raise DevicePoolError(f"no device could load its embedder ({reasons})")
            log.warning("no device could load its embedder (%s); using the CPU fallback", reasons)
            fb = self._fallback_device()
            fb.ready.wait()
            if fb.embedder is None:
                self.close()
                raise DevicePoolError(f"no device could load its embedder ({reasons}; cpu:fallback: {fb.reason})")
        self._monitor = threading.Thread(target=self._monitor_loop, name="sutra-pool-monitor", daemon=True)
        self._monitor.start()

    # ------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Dimension of the returned vectors."""
        if self._dim is None:
            raise DevicePoolError("no embedder is loaded")
        return self._dim

    @property
    def devices(self) -> list[str]:
        """Names of the pool's devices (the CPU fallback included once created)."""
        with self._lock:
            return [d.name for d in self._all_devices()]

    def _all_devices(self) -> list[_Device]:
        return [*self._devices, *([self._fallback] if self._fallback is not None else [])]

    # ------------------------------------------------------------ public API
    def embed(self, texts: Sequence[str], prompt: str | None = None) -> np.ndarray:
        """Embed texts on the pool's devices; raise on the first text that fails.

        Args:
            texts: The texts.
            prompt: A prompt name from the model's manifest or a literal prefix.

        Returns:
            ``(len(texts), dim)`` float32 array in input order.

        Raises:
            InputError: A text is unusable (its position is in the message).
            DevicePoolError: A share failed on every device it was tried on.
        """
        result = self.embed_records(texts, prompt=prompt)
        if result.failures:
            f = result.failures[0]
            if f.kind == "inference_error":
                raise DevicePoolError(f"text #{f.index}: {f.message}")
            raise InputError(f.kind, f"text #{f.index}: {f.message}")
        return result.vectors

    def embed_records(self, items: Sequence[object], prompt: str | None = None) -> EmbedResult:
        """Embed possibly bad inputs; failures come back as dead letters, in input order.

        Device faults are retried elsewhere; texts that failed on every device
        tried come back with kind ``inference_error``.
        """
        return self.submit(items, prompt=prompt).result()

    def submit(self, items: Sequence[object], prompt: str | None = None) -> Future[EmbedResult]:
        """Start embedding ``items`` and return at once with a future of the :class:`EmbedResult`.

        Use it to keep every device busy from one thread (submit several calls,
        then collect). Blocks only while the chosen devices' queues are full.

        Raises:
            DevicePoolError: The pool is closed.
        """
        if self._closed:
            raise DevicePoolError("the pool is closed")
        items = list(items)
        out: Future[EmbedResult] = Future()
        out.set_running_or_notify_cancel()
        if not items:
            out.set_result(_empty(self.dim))
            return out
        n_shares = self._share_count(len(items))
        parts: list[EmbedResult | None] = [None] * n_shares
        left = [n_shares]
        guard = threading.Lock()

        def collect(i: int, fut: Future[EmbedResult]) -> None:
            exc = fut.exception()
            with guard:
                if out.done():
                    return
                if exc is not None:
                    out.set_exception(exc)
                    return
                parts[i] = fut.result()
                left[0] -= 1
                if left[0]:
                    return
            try:
                out.set_result(merge_results([p for p in parts if p is not None], self.dim))
            except Exception as exc:  # pragma: no cover - a bug; never leave the caller waiting
                out.set_exception(exc)

        for i in range(n_shares):
            positions = np.arange(i, len(items), n_shares, dtype=np.int64)
            task = _Task([items[int(p)] for p in positions], positions, prompt, Future())
            task.future.add_done_callback(partial(collect, i))
            self._dispatch(task, fresh=True)
        return out

    def stats(self) -> dict[str, dict[str, Any]]:
        """Counters and health of every device, by device name.

        Per device: ``state`` (healthy, draining, sick, recovering), ``reason``
        (why it is sick), ``requests`` (shares run), ``texts`` and ``tokens``
        (embedded), ``errors`` (failed calls), ``retries`` (shares re-run here
        after failing elsewhere), ``moved`` (shares moved away by a drain),
        ``probes``, ``error_rate``, ``ewma_ms_per_text`` and
        ``baseline_ms_per_text``, ``queue_depth`` (shares waiting),
        ``queued_texts``, ``in_flight_texts`` and ``busy_s``.
        """
        with self._lock:
            return {d.name: self._device_stats(d) for d in self._all_devices()}

    def _device_stats(self, d: _Device) -> dict[str, Any]:
        info = getattr(d.embedder, "session_info", None)
        return {
            "device": d.name,
            "provider": getattr(info, "active", None),
            "state": d.state,
            "reason": d.reason,
            "requests": d.requests,
            "texts": d.texts,
            "tokens": d.tokens,
            "errors": d.errors,
            "retries": d.retries,
            "moved": d.moved,
            "probes": d.probes,
            "error_rate": round(d.error_rate(), 4),
            "ewma_ms_per_text": None if d.ewma is None else round(d.ewma * 1e3, 4),
            "baseline_ms_per_text": None if d.baseline is None else round(d.baseline * 1e3, 4),
            "queue_depth": len(d.queue),
            "queued_texts": d.queued_texts,
            "in_flight_texts": d.inflight_texts,
            "busy_s": round(d.busy_s, 4),
        }

    def routes(self) -> list[str]:
        """Device names in the order shares were routed (the last 10,000), for tests and debugging."""
        with self._lock:
            return list(self._routes)

    def mark_sick(self, device: str, reason: str = "marked sick by the caller") -> None:
        """Drain a device by hand (maintenance); it is probed back like any sick device."""
        with self._lock:
            dev = next((d for d in self._all_devices() if d.name == device), None)
            if dev is None:
                raise ConfigError("device", f"unknown device {device!r}; the pool has {', '.join(self.devices)}")
            moved = self._mark_sick(dev, reason)
        self._reroute(moved, dev)

    def close(self) -> None:
        """Finish the queued work, stop the workers and fail anything left."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for d in self._all_devices():
                d.cond.notify_all()
            self._space.notify_all()
        self._stop.set()
        monitor = getattr(self, "_monitor", None)
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join()
        for d in self._all_devices():
            if d.thread is not None and d.thread is not threading.current_thread():
                d.thread.join()
        with self._lock:
            left = [t for d in self._all_devices() for t in d.queue]
            for d in self._all_devices():
                d.queue.clear()
        for t in left:
            if not t.future.done():
                t.future.set_exception(DevicePoolError("the pool was closed"))
        for d in self._all_devices():  # the embedders' own threads and tokenizer processes
            close = getattr(d.embedder, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> EmbedderPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ routing
    def _share_count(self, n: int) -> int:
        cfg = self.config
        with self._lock:
            usable = sum(1 for d in self._devices if d.usable) or 1
        shares = max(usable, math.ceil(n / cfg.share_texts))
        return max(1, min(shares, n // cfg.min_share_texts))

    def _choose(self, candidates: list[_Device], n: int) -> _Device:
        strategy = self.config.strategy
        if strategy == "random":
            return self._rng.choice(candidates)
        order = {id(d): (i - self._turn) % len(self._devices) for i, d in enumerate(self._devices)}
        self._turn += 1

        def turn(d: _Device) -> int:
            return order.get(id(d), len(self._devices))

        if strategy == "round_robin":
            return min(candidates, key=turn)
        if strategy == "least_loaded":
            return min(candidates, key=lambda d: (d.outstanding, turn(d)))
        known = [d.ewma for d in candidates if d.ewma is not None]
        guess = min(known) if known else 1.0  # unknown devices are assumed fast: they get tried

        def finish(d: _Device) -> float:
            return (d.outstanding + n) * (d.ewma if d.ewma is not None else guess)

        return min(candidates, key=lambda d: (finish(d), d.outstanding, turn(d)))

    def _dispatch(self, task: _Task, fresh: bool = False) -> None:
        """Queue a task on a device chosen by the strategy (fallback, or fail, when none is usable)."""
        cfg = self.config
        with self._lock:
            while True:
                if self._closed:
                    break
                usable = [d for d in self._devices if d.usable]
                untried = [d for d in usable if d.name not in task.tried]
                candidates = untried
                if not candidates and cfg.cpu_fallback and FALLBACK_DEVICE.name not in task.tried:
                    fb = self._fallback_device()
                    if fb.state in ("healthy", "recovering"):
                        candidates = [fb]
                if not candidates:
                    candidates = usable
                if not candidates:
                    break
                if fresh:
                    roomy = [d for d in candidates if len(d.queue) < cfg.queue_size]
                    if not roomy:
                        self._space.wait(0.5)
                        continue
                    candidates = roomy
                dev = candidates[0] if len(candidates) == 1 else self._choose(candidates, len(task.items))
                dev.queue.append(task)
                dev.queued_texts += len(task.items)
                self._routes.append(dev.name)
                dev.cond.notify()
                return
        self._finish_failed(task, "the pool is closed" if self._closed else "no usable device")

    def _finish_failed(self, task: _Task, why: str) -> None:
        """Complete a task whose texts could not be embedded anywhere: all ``inference_error``."""
        tried = ", ".join(sorted(task.tried)) or "none"
        message = f"{why} (devices tried: {tried})" + (f"; last error: {task.last_error}" if task.last_error else "")
        failures = [Failure(int(p), "inference_error", message) for p in task.positions]
        result = _empty(self._dim or 0)
        result.failures = failures
        if not task.future.done():
            task.future.set_result(result)

    def _reroute(self, tasks: list[_Task], source: _Device) -> None:
        for t in tasks:
            if t.probe:
                continue
            self._dispatch(t)

    # ------------------------------------------------------------ devices
    def _start(self, dev: _Device) -> None:
        dev.thread = threading.Thread(target=self._worker, args=(dev,), name=f"sutra-pool-{dev.name}", daemon=True)
        dev.thread.start()

    def _fallback_device(self) -> _Device:
        with self._lock:
            if self._fallback is None:
                log.warning("no usable device in the pool: starting the CPU fallback")
                self._fallback = _Device(FALLBACK_DEVICE, threading.Condition(self._lock))
                self._start(self._fallback)
            return self._fallback

    def _load(self, dev: _Device) -> bool:
        try:
            emb = self._factory(dev.spec)
        except Exception as exc:
            with self._lock:
                dev.reason = f"could not load the embedder: {type(exc).__name__}: {exc}"
                dev.state = "sick"
                dev.next_probe_at = time.monotonic() + self.config.probe_interval_s
            log.warning("pool device %s: %s", dev.name, dev.reason)
            return False
        with self._lock:
            dev.embedder = emb
            if self._dim is None:
                self._dim = int(emb.dim)
        return True

    def _worker(self, dev: _Device) -> None:
        if dev.embedder is None:
            self._load(dev)
        dev.ready.set()
        while True:
            with self._lock:
                while not dev.queue and not self._closed:
                    dev.cond.wait()
                if not dev.queue:
                    return
                task = dev.queue.popleft()
                if not task.probe:
                    dev.queued_texts -= len(task.items)
                self._space.notify_all()
                runnable = task.probe or dev.state in ("healthy", "recovering")
                if runnable and not task.probe:
                    dev.inflight_texts += len(task.items)
            if task.probe:
                self._run_probe(dev)
            elif not runnable:
                self._dispatch(task)  # the device was drained after this task was queued
            else:
                self._run(dev, task)

    def _run(self, dev: _Device, task: _Task) -> None:
        emb = dev.embedder
        assert emb is not None
        start = time.perf_counter()
        error: str | None = None
        res: EmbedResult | None = None
        try:
            res = emb.embed_records(task.items, prompt=task.prompt)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - start
        n = len(task.items)
        good: EmbedResult | None = None
        bad_local: list[int] = list(range(n))
        final_failures: list[Failure] = []
        if res is not None:
            finite = np.isfinite(res.vectors).all(axis=1) if len(res.vectors) else np.zeros(0, bool)
            good_rows = np.flatnonzero(finite)
            good = _select(res, good_rows, task.positions)
            bad_local = [int(res.ok[r]) for r in np.flatnonzero(~finite)]
            device_fail = [f for f in res.failures if f.kind == "inference_error"]
            bad_local += [f.index for f in device_fail]
            final_failures = [
                Failure(int(task.positions[f.index]), f.kind, f.message)
                for f in res.failures
                if f.kind != "inference_error"
            ]
            if bad_local:
                error = device_fail[0].message if device_fail else "the model returned non-finite vectors"
        faulty = error is not None
        moved: list[_Task] = []
        with self._lock:
            dev.inflight_texts -= n
            dev.requests += 1
            dev.busy_s += elapsed
            if task.retry:
                dev.retries += 1
            if good is not None:
                dev.texts += len(good.ok)
                dev.tokens += int(good.n_tokens.sum())
            dev.window.append(not faulty)
            while len(dev.window) > self.config.error_window:
                dev.window.popleft()
            if faulty:
                dev.errors += 1
                dev.good_streak = 0
            else:
                self._record_latency(dev, elapsed / max(1, n))
                dev.good_streak += 1
            reason = self._health_problem(dev, faulty)
            if reason is not None and dev.state in ("healthy", "recovering"):
                moved = self._mark_sick(dev, reason)
            elif dev.state == "draining":
                dev.state = "sick"
            elif dev.state == "recovering" and dev.good_streak >= self.config.min_health_calls:
                dev.state, dev.reason = "healthy", None
                log.info("pool device %s is healthy again", dev.name)
        self._reroute(moved, dev)

        if not bad_local:
            assert good is not None
            good.failures = final_failures
            task.future.set_result(good)
            return
        log.debug("pool device %s failed %d of %d texts: %s", dev.name, len(bad_local), n, error)
        bad = np.asarray(sorted(set(bad_local)), dtype=np.int64)
        retry = _Task(
            [task.items[int(i)] for i in bad],
            task.positions[bad],
            task.prompt,
            Future(),
            attempts=task.attempts + 1,
            tried=task.tried | {dev.name},
            retry=True,
            last_error=error or "",
        )
        done_part = good if good is not None else _empty(self._dim or 0)
        done_part.failures = final_failures

        def finish(fut: Future[EmbedResult]) -> None:
            exc = fut.exception()
            if exc is not None:
                task.future.set_exception(exc)
            else:
                task.future.set_result(merge_results([done_part, fut.result()], self._dim or 0))

        retry.future.add_done_callback(finish)
        if retry.attempts > self.config.max_retries:
            self._finish_failed(retry, f"failed {retry.attempts} time(s), over max_retries={self.config.max_retries}")
        else:
            self._dispatch(retry)

    def _record_latency(self, dev: _Device, per_text: float) -> None:
        a = self.config.ewma_alpha
        dev.samples += 1
        if dev.ewma is None or dev.baseline is None:
            dev.ewma = dev.baseline = per_text
            return
        dev.ewma = a * per_text + (1 - a) * dev.ewma
        dev.slow_streak = dev.slow_streak + 1 if per_text > self.config.latency_factor * dev.baseline else 0
        if per_text <= dev.baseline:
            dev.baseline = a * per_text + (1 - a) * dev.baseline
        elif per_text <= self.config.latency_factor * dev.baseline:
            dev.baseline = (a / 4) * per_text + (1 - a / 4) * dev.baseline

    def _health_problem(self, dev: _Device, faulty: bool) -> str | None:
        cfg = self.config
        if faulty and dev.state == "recovering":
            return "failed while recovering"
        if len(dev.window) >= cfg.min_health_calls and dev.error_rate() >= cfg.max_error_rate:
            return f"error rate {dev.error_rate():.2f} over the last {len(dev.window)} calls"
        if (
            dev.samples >= cfg.min_health_calls
            and dev.slow_streak >= cfg.min_health_calls
            and dev.ewma is not None
            and dev.baseline is not None
            and dev.ewma > cfg.latency_factor * dev.baseline
        ):
            return (
                f"latency {dev.ewma * 1e3:.3f} ms/text is over {cfg.latency_factor:g}x "
                f"its baseline {dev.baseline * 1e3:.3f} ms/text"
            )
        return None

    def _mark_sick(self, dev: _Device, reason: str) -> list[_Task]:
        """Drain ``dev`` (lock held): no new work, queued shares returned to be moved."""
        if dev.state in ("sick", "draining"):
            return []
        dev.state = "draining" if dev.inflight_texts else "sick"
        dev.reason = reason
        dev.next_probe_at = time.monotonic() + self.config.probe_interval_s
        dev.good_streak = 0
        moved = [t for t in dev.queue if not t.probe]
        probes = [t for t in dev.queue if t.probe]
        dev.queue.clear()
        dev.queue.extend(probes)
        dev.queued_texts = 0
        dev.moved += len(moved)
        log.warning("pool device %s is sick (%s): drained, %d queued share(s) moved", dev.name, reason, len(moved))
        self._space.notify_all()
        return moved

    # ------------------------------------------------------------ probes
    def _monitor_loop(self) -> None:
        cfg = self.config
        tick = min(cfg.probe_interval_s / 4, 0.5)
        while not self._stop.wait(tick):
            now = time.monotonic()
            to_check: list[_Device] = []
            with self._lock:
                for dev in self._all_devices():
                    if dev.state == "sick" and not dev.probing and now >= dev.next_probe_at:
                        dev.probing = True
                        dev.queue.appendleft(_Task([PROBE_TEXT], np.zeros(1, np.int64), None, Future(), probe=True))
                        dev.cond.notify()
                    check_memory = cfg.min_free_memory_mb and (dev.spec.is_gpu or self._check_all_memory)
                    if check_memory and dev.usable and now >= dev.next_memory_at:
                        dev.next_memory_at = now + cfg.probe_interval_s
                        to_check.append(dev)
            for dev in to_check:  # nvidia-smi runs outside the lock
                problem = self._memory_problem(dev)
                if problem:
                    with self._lock:
                        moved = self._mark_sick(dev, problem)
                    self._reroute(moved, dev)

    def _memory_problem(self, dev: _Device) -> str | None:
        try:
            info = self._memory_probe(dev.spec)
        except Exception as exc:  # a broken probe must not stop the pool
            log.debug("memory probe of %s failed: %s", dev.name, exc)
            return None
        if info is not None and info.free_mb < self.config.min_free_memory_mb:
            return f"free memory {info.free_mb:.0f} MiB is under min_free_memory_mb={self.config.min_free_memory_mb}"
        return None

    def _run_probe(self, dev: _Device) -> None:
        """Try a sick device with one small text; on success it is ``recovering``."""
        problem: str | None = None
        if dev.embedder is None and not self._load(dev):
            problem = dev.reason
        emb = dev.embedder
        if problem is None and emb is not None:
            try:
                res = emb.embed_records([PROBE_TEXT])
                if res.failures or len(res.vectors) != 1 or not np.isfinite(res.vectors).all():
                    problem = "probe: " + (res.failures[0].message if res.failures else "bad vector")
            except Exception as exc:
                problem = f"probe: {type(exc).__name__}: {exc}"
        if problem is None and self.config.min_free_memory_mb and (dev.spec.is_gpu or self._check_all_memory):
            problem = self._memory_problem(dev)
        with self._lock:
            dev.probing = False
            dev.probes += 1
            if problem is None and dev.state == "sick":
                dev.state = "recovering"
                dev.reason = None
                dev.window.clear()
                dev.good_streak = 0
                dev.ewma = dev.baseline  # judge it afresh against its healthy baseline
                dev.slow_streak = 0
                log.info("pool device %s passed its probe: recovering", dev.name)
                self._space.notify_all()
            else:
                dev.reason = problem or dev.reason
                dev.next_probe_at = time.monotonic() + self.config.probe_interval_s


# ------------------------------------------------------------------ pinning
@dataclass(frozen=True)
class DevicePin:
    """The device of one worker process (one Beam SDK worker or Faust worker per GPU).

    Attributes:
        worker_index: The worker's index (see :func:`worker_index`).
        device: The device it uses.
    """

    worker_index: int
    device: DeviceSpec

    @property
    def env(self) -> dict[str, str]:
        """Environment for *starting* the worker process pinned to its GPU.

        The process then sees one GPU, as ``cuda:0``; a CPU worker sees none.
        ``SUTRA_DEVICE_INDEX`` is set too, so :func:`pinned_config` inside the
        process agrees.
        """
        env = {DEVICE_INDEX_ENV: str(self.worker_index)}
        if self.device.is_gpu:
            visible = _visible_entries()
            physical = visible[self.device.index] if visible and self.device.index < len(visible) else None
            env["CUDA_VISIBLE_DEVICES"] = physical or str(self.device.index)
        else:
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        return env

    def runtime(self, base: RuntimeConfig) -> RuntimeConfig:
        """``base`` bound to this device, for a process that sees every GPU."""
        return device_runtime(base, self.device) if self.device.is_gpu else replace(base, device="cpu")

    def apply(self, config: EmbedderConfig) -> EmbedderConfig:
        """``config`` with its runtime bound to this device."""
        return replace(config, runtime=self.runtime(config.runtime))


def pin_worker(index: int, devices: str | Sequence[DeviceSpec] = "all") -> DevicePin:
    """The device of worker ``index``: the devices in turn (worker ``i`` gets ``devices[i % n]``).

    Args:
        index: The worker's index, 0-based.
        devices: A devices spec (see :func:`parse_devices`) or the devices.

    Example:
        Launch one Faust worker per GPU (each sees only its own GPU)::

            for i in range(n_gpus):
                subprocess.Popen(["sutra", "worker", "--device", "cuda", ...], env=os.environ | pin_worker(i).env)
    """
    _int_at_least("worker_index", index, 0)
    devs = parse_devices(devices) if isinstance(devices, str) else list(devices)
    if not devs:
        raise ConfigError("devices", "no device to pin to")
    return DevicePin(index, devs[index % len(devs)])


_claimed: dict[str, tuple[int, int]] = {}
_claim_lock = threading.Lock()


def worker_index(env: Mapping[str, str] | None = None, slots: int | None = None, lock_dir: str | None = None) -> int:
    """This worker process's index, for :func:`pin_worker`.

    ``SUTRA_DEVICE_INDEX`` wins when set (launchers that start one process per
    GPU set it). Otherwise, with ``slots``, the process claims the lowest free
    slot with an exclusive lock on ``lock_dir/slot-K.lock`` held for the
    process's life, so worker processes that a runner starts without an index
    (Beam SDK workers) still spread one per GPU; when every slot is taken, the
    pid picks one. Without ``slots``: 0.

    Raises:
        ConfigError: ``SUTRA_DEVICE_INDEX`` is not a non-negative integer.
    """
    env = os.environ if env is None else env
    raw = env.get(DEVICE_INDEX_ENV)
    if raw is not None and raw.strip():
        if not raw.strip().isdigit():
            raise ConfigError(DEVICE_INDEX_ENV, f"must be a non-negative integer, got {raw!r}")
        return int(raw.strip())
    if not slots:
        return 0
    directory = lock_dir or os.path.join(tempfile.gettempdir(), f"sutra-device-slots-{os.getuid()}")
    with _claim_lock:
        held = _claimed.get(directory)
        if held is not None and held[1] < slots:
            return held[1]
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return os.getpid() % slots
        os.makedirs(directory, exist_ok=True)
        for k in range(slots):
            fd = os.open(os.path.join(directory, f"slot-{k}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if held is not None:
                with contextlib.suppress(OSError):
                    os.close(held[0])
            _claimed[directory] = (fd, k)
            return k
    index = os.getpid() % slots
    log.info("every one of %d device slots is taken; worker pid %d uses slot %d", slots, os.getpid(), index)
    return index


def pinned_config(
    config: EmbedderConfig,
    devices: str | Sequence[DeviceSpec] = "all",
    env: Mapping[str, str] | None = None,
    lock_dir: str | None = None,
) -> EmbedderConfig:
    """``config`` bound to this worker process's own device.

    Call it inside the worker process, before the embedder is built (a Beam
    ``DoFn.setup``, a Faust worker's start-up): worker ``i`` of ``n`` GPUs gets
    ``cuda:(i % n)``. A process started with ``CUDA_VISIBLE_DEVICES`` naming
    one GPU (:attr:`DevicePin.env`) sees that GPU as its only device.
    """
    devs = parse_devices(devices) if isinstance(devices, str) else list(devices)
    index = worker_index(env, slots=len(devs), lock_dir=lock_dir)
    pin = pin_worker(index, devs)
    log.info("worker %d pinned to %s", index, pin.device.name)
    return pin.apply(config)


def pinned_if_several_gpus(
    config: EmbedderConfig,
    env: Mapping[str, str] | None = None,
    discover: Callable[[], tuple[int, str]] = discover_cuda_devices,
) -> EmbedderConfig:
    """``config`` bound to this worker process's own GPU when the machine has several; else unchanged.

    What a Beam ``DoFn.setup`` or a Faust worker calls before building its
    embedder: with one GPU (or none, or ``device="cpu"``) there is nothing to
    spread, so the config is returned as it is.
    """
    if config.runtime.device not in ("auto", "cuda", "tensorrt"):
        return config
    count, _ = discover()
    if count < 2:
        return config
    return pinned_config(config, [DeviceSpec("cuda", i) for i in range(count)], env)


__all__ = [
    "DEVICE_INDEX_ENV",
    "DEVICE_STATES",
    "FALLBACK_DEVICE",
    "STRATEGIES",
    "DevicePin",
    "DevicePoolError",
    "DeviceSpec",
    "DeviceState",
    "EmbedderLike",
    "EmbedderPool",
    "MemoryInfo",
    "PoolConfig",
    "SessionFactory",
    "Strategy",
    "device_runtime",
    "discover_cuda_devices",
    "embedder_factory",
    "merge_results",
    "nvidia_smi_memory",
    "parse_devices",
    "pin_worker",
    "pinned_config",
    "pinned_if_several_gpus",
    "worker_index",
]
