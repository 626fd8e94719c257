"""Frozen, validated configuration of the embedder.

Every dataclass validates itself on construction and raises
:class:`~sutra_embedder.core.errors.ConfigError` naming the field and the valid
choices, so a bad value fails at start-up rather than deep inside a pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal, TypeVar, get_args

from .errors import ConfigError

Device = Literal["auto", "cpu", "cuda", "tensorrt"]
LengthPolicy = Literal["truncate", "chunk", "reject"]
Aggregation = Literal["mean", "max", "weighted", "positional", "overlap"]
Precision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]

DEVICES: tuple[str, ...] = get_args(Device)
LENGTH_POLICIES: tuple[str, ...] = get_args(LengthPolicy)
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
PRECISIONS: tuple[str, ...] = get_args(Precision)


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(name, f"got {value!r}; choose one of {', '.join(choices)}")


def _int_at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class BatchingConfig:
    """How texts (and chunks of long texts) are grouped into model calls.

    Items are sorted by token length and packed greedily so that the padded
    size of a batch (``rows * longest row``) stays within ``max_batch_tokens``.

    Attributes:
        max_batch_tokens: Cap on padded tokens per model call. Larger batches
            amortise overhead; smaller ones bound memory and latency.
            ``None``: 8192 on CPU, 65536 on a GPU (where a call of 16384
            tokens ran the corpus of the GPU benchmark 20% slower).
        max_batch_size: Cap on rows per model call, whatever their length.
            ``None``: 256 on CPU, 1024 on a GPU.
        sort_by_length: Sort items by length before packing (less padding).
            Turn off only to measure what sorting buys.
        batch_overhead_tokens: The fixed cost of one model call, in tokens; the
            planner trades padding against extra calls with it. ``None``: 64 on
            CPU, 4096 on a GPU.
        pipeline_block: Texts per block of a large call; the next blocks are
            tokenized while the model runs the current one. The first blocks of
            a call are smaller (1024, 2048, ...) so the model starts sooner.
            ``None``: 4096 on CPU, 16384 on a GPU.
        prepare_workers: Threads that validate and tokenize blocks ahead of the
            model. Several workers let one block's Python work (under the GIL)
            overlap another's tokenization (in the tokenizer's own thread pool,
            outside the GIL). ``None``: ``min(4, usable cores)`` on a GPU, 1 on
            CPU, where the model itself needs the cores; at least
            ``tokenize_processes + 1`` when those are used.
        tokenize_processes: Worker processes that tokenize the blocks of large
            calls (of 1,024 texts or more; smaller ones tokenize in-process, for
            latency). They start with the embedder when ``runtime.warmup`` is
            on, else at the first large call. Each
            has its own GIL, so turning encodings into ids no longer stalls
            the threads driving the GPU. 0: tokenize in-process. ``None``: 2
            on a GPU with at least 8 usable cores (they share the cores not
            driving the model), otherwise 0.
        ascii_fast_path: Encode ASCII texts with the tokenizer's normalizer done
            in Python where that gives the same ids (BERT-style normalizers),
            about a third less tokenizer time. Off: always the stock tokenizer.
    """

    max_batch_tokens: int | None = None
    max_batch_size: int | None = None
    sort_by_length: bool = True
    batch_overhead_tokens: int | None = None
    pipeline_block: int | None = None
    prepare_workers: int | None = None
    tokenize_processes: int | None = None
    ascii_fast_path: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_batch_size", "pipeline_block"):
            if getattr(self, name) is not None:
                _int_at_least(f"batching.{name}", getattr(self, name), 1)
        if self.batch_overhead_tokens is not None:
            _int_at_least("batching.batch_overhead_tokens", self.batch_overhead_tokens, 0)
        if self.prepare_workers is not None:
            _int_at_least("batching.prepare_workers", self.prepare_workers, 1)
        if self.tokenize_processes is not None:
            _int_at_least("batching.tokenize_processes", self.tokenize_processes, 0)

    def for_device(self, on_gpu: bool) -> ResolvedBatching:
        """The sizes to batch with on a CPU or a GPU session (``None`` fields take that device's default)."""
        gpu = {"max_batch_tokens": 65536, "max_batch_size": 1024, "pipeline_block": 16384, "overhead": 4096}
        cpu = {"max_batch_tokens": 8192, "max_batch_size": 256, "pipeline_block": 4096, "overhead": 64}
        d = gpu if on_gpu else cpu
        return ResolvedBatching(
            max_batch_tokens=self.max_batch_tokens or d["max_batch_tokens"],
            max_batch_size=self.max_batch_size or d["max_batch_size"],
            pipeline_block=self.pipeline_block or d["pipeline_block"],
            batch_overhead_tokens=d["overhead"] if self.batch_overhead_tokens is None else self.batch_overhead_tokens,
        )


@dataclass(frozen=True)
class ResolvedBatching:
    """:class:`BatchingConfig`'s sizes settled for one device (see :meth:`BatchingConfig.for_device`)."""

    max_batch_tokens: int
    max_batch_size: int
    pipeline_block: int
    batch_overhead_tokens: int


@dataclass(frozen=True)
class ChunkingConfig:
    """What happens to texts longer than the model's maximum sequence length.

    Attributes:
        policy: ``"truncate"`` keeps the first tokens (what sentence-transformers
            does), ``"chunk"`` embeds overlapping windows and aggregates them,
            ``"reject"`` sends the text to the dead letters with kind ``too_long``.
        window: Tokens per window including the model's special tokens; ``None``
            uses the model's maximum sequence length.
        overlap: Content tokens shared by consecutive windows.
        max_chunks: Most windows per text; a text needing more is rejected with
            kind ``too_long`` (never silently cut).
        aggregation: How window vectors become one vector: ``mean``, ``max``,
            ``weighted`` (by window token count), ``positional`` (windows near the
            middle of the text weigh more) or ``overlap`` (each token counts once
            in total, shared tokens are split between the windows holding them).
        return_chunks: Also return each window's vector and token span.
    """

    policy: LengthPolicy = "chunk"
    window: int | None = None
    overlap: int = 32
    max_chunks: int = 64
    aggregation: Aggregation = "weighted"
    return_chunks: bool = False

    def __post_init__(self) -> None:
        _choice("chunking.policy", self.policy, LENGTH_POLICIES)
        _choice("chunking.aggregation", self.aggregation, AGGREGATIONS)
        if self.window is not None:
            _int_at_least("chunking.window", self.window, 8)
        _int_at_least("chunking.overlap", self.overlap, 0)
        _int_at_least("chunking.max_chunks", self.max_chunks, 1)
        if self.window is not None and self.overlap >= self.window - 4:
            raise ConfigError(
                "chunking.overlap",
                f"must be smaller than the window minus special tokens (window={self.window}, overlap={self.overlap})",
            )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how ONNX Runtime runs the model.

    Attributes:
        device: ``"auto"`` uses a GPU when one works and says when it fell back
            to CPU; ``"cpu"``; ``"cuda"`` or ``"tensorrt"`` *require* that
            provider and raise if it cannot be initialised.
        device_id: GPU ordinal for cuda/tensorrt.
        intra_op_threads: Threads per operator (0 lets ONNX Runtime decide).
        inter_op_threads: Threads across operators (0 lets ONNX Runtime decide).
        warmup: Run one small batch at load so the first real call is not slow.
        trt_cache_dir: Directory for TensorRT engine caches (``None``: beside the model).
        fp16: Prefer the model's fp16 variant when running on a GPU.
        attention_kernels: CUDA attention kernels ONNX Runtime may choose from, as
            its ``sdpa_kernel`` bit mask (1 flash, 2 memory-efficient, 4 TensorRT
            fused, 8 cuDNN flash, 16 math); 0 lets ONNX Runtime decide. The
            default, 23, allows all but cuDNN flash, which ONNX Runtime otherwise
            prefers and which plans per shape: on an H200 it halved the
            throughput of mixed-length batches, while on long inputs of one
            length (4,096 tokens) it is about twice as fast as the
            memory-efficient kernel: set 0 for such workloads. With the
            default, fp16 graphs get the attention mask form the
            memory-efficient kernel needs (see ``runtime.wants_varlen_mask``).
        inference_streams: Threads that run batches on the one session at the
            same time (each with its own IOBinding; ONNX Runtime's ``run`` is
            thread-safe), so that one batch's padding and host/device copies
            overlap another's compute. ``None``: 2 on a GPU, 1 on CPU (where
            one call already uses every core).
    """

    device: Device = "auto"
    device_id: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    warmup: bool = True
    trt_cache_dir: str | None = None
    fp16: bool = True
    attention_kernels: int = 23
    inference_streams: int | None = None

    def __post_init__(self) -> None:
        _choice("runtime.device", self.device, DEVICES)
        if self.inference_streams is not None:
            _int_at_least("runtime.inference_streams", self.inference_streams, 1)
        _int_at_least("runtime.attention_kernels", self.attention_kernels, 0)
        _int_at_least("runtime.device_id", self.device_id, 0)
        _int_at_least("runtime.intra_op_threads", self.intra_op_threads, 0)
        _int_at_least("runtime.inter_op_threads", self.inter_op_threads, 0)


@dataclass(frozen=True)
class EmbedderConfig:
    """Everything an :class:`~sutra_embedder.core.embedder.Embedder` needs.

    Attributes:
        model: A profile name (``"minilm"``, ``"mpnet"``), a registered model
            name, or a path to a model directory holding ``model.onnx``,
            ``tokenizer.json`` and ``sutra_manifest.json``.
        truncate_dim: Matryoshka truncation: keep the first ``truncate_dim``
            dimensions (renormalised when the model normalises).
        max_text_chars: Texts longer than this are rejected (kind ``too_large``)
            before tokenization, which bounds the cost of a pathological input.
        batching: See :class:`BatchingConfig`.
        chunking: See :class:`ChunkingConfig`.
        runtime: See :class:`RuntimeConfig`.
    """

    model: str = "minilm"
    truncate_dim: int | None = None
    max_text_chars: int = 1_000_000
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model", "must be a non-empty model name or path")
        if self.truncate_dim is not None:
            _int_at_least("truncate_dim", self.truncate_dim, 1)
        _int_at_least("max_text_chars", self.max_text_chars, 1)
        for name, cls in (
            ("batching", BatchingConfig),
            ("chunking", ChunkingConfig),
            ("runtime", RuntimeConfig),
        ):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(name, f"must be a {cls.__name__}")

    def with_overrides(self, **overrides: Any) -> EmbedderConfig:
        """Return a copy with dotted overrides, e.g. ``{"chunking.policy": "truncate"}``.

        Keys use ``__`` or ``.`` between levels; unknown keys raise ConfigError.
        """
        return config_from_dict(to_dict(self) | _undot(overrides))


_C = TypeVar("_C")


def _undot(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.replace("__", ".").split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain nested dict of a config dataclass (JSON-friendly)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = to_dict(value) if is_dataclass(value) else value
    return out


def _build(cls: type[_C], data: Mapping[str, Any], prefix: str) -> _C:
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            where = f"{prefix}{key}"
            raise ConfigError(where, f"unknown field; valid fields: {', '.join(sorted(known))}")
        kwargs[key] = value
    nested = {"batching": BatchingConfig, "chunking": ChunkingConfig, "runtime": RuntimeConfig}
    for key, sub in nested.items():
        if key in kwargs and isinstance(kwargs[key], Mapping):
            base = to_dict(sub())
            merged = base | dict(kwargs[key])
            kwargs[key] = _build(sub, merged, f"{prefix}{key}.")
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> EmbedderConfig:
    """Build an :class:`EmbedderConfig` from a (possibly partial) nested dict."""
    merged = to_dict(EmbedderConfig())
    for key, value in data.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merged[key] | dict(value)
        else:
            merged[key] = value
    return _build(EmbedderConfig, merged, "")


__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "BatchingConfig",
    "ChunkingConfig",
    "DEVICES",
    "Device",
    "EmbedderConfig",
    "LENGTH_POLICIES",
    "LengthPolicy",
    "PRECISIONS",
    "Precision",
    "RuntimeConfig",
    "config_from_dict",
    "replace",
    "to_dict",
]
