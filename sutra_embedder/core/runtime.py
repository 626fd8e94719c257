"""ONNX Runtime sessions with honest provider selection.

ONNX Runtime silently falls back to CPU when a GPU provider cannot be loaded
(missing CUDA libraries, no device). After creating a session we read
``get_providers()``: a provider that was *required* and is missing raises
:class:`ProviderUnavailableError`; with ``device="auto"`` the fallback is
recorded in :class:`SessionInfo` and logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from .config import RuntimeConfig
from .errors import ProviderUnavailableError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class SessionInfo:
    """What the session actually runs on.

    Attributes:
        requested: The device asked for.
        providers: Providers the session reports, in priority order.
        active: The first (primary) provider.
        fallback: Why the session runs on something else than requested, if it does.
        model_path: The ONNX file loaded.
        attention_mask: The mask form the graph's ``Attention`` nodes were given:
            ``"key_lengths"`` as stored, or ``"varlen"`` (rewritten at load for
            the memory-efficient CUDA kernel, see :func:`wants_varlen_mask`).
    """

    requested: str
    providers: tuple[str, ...]
    active: str
    fallback: str | None
    model_path: str
    attention_mask: str = "key_lengths"

    @property
    def on_gpu(self) -> bool:
        return self.active in (CUDA, TENSORRT)


def _provider_list(cfg: RuntimeConfig, model_path: Path) -> list[Any]:
    available = set(ort.get_available_providers())
    cuda_opts: dict[str, Any] = {"device_id": cfg.device_id}
    if cfg.attention_kernels:
        cuda_opts["sdpa_kernel"] = cfg.attention_kernels
    trt_cache = cfg.trt_cache_dir or str(model_path.parent / "trt_cache")
    trt_opts = {
        "device_id": cfg.device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": trt_cache,
        "trt_fp16_enable": cfg.fp16,
    }
    wanted: list[Any] = []
    if cfg.device == "tensorrt":
        wanted = [(TENSORRT, trt_opts), (CUDA, cuda_opts)]
    elif cfg.device == "cuda" or (cfg.device == "auto" and CUDA in available):
        wanted = [(CUDA, cuda_opts)]
    if cfg.device in ("cuda", "tensorrt"):
        missing = [p for p, _ in wanted if p not in available]
        if missing:
            raise ProviderUnavailableError(
                f"device={cfg.device!r} needs {', '.join(missing)}, which this onnxruntime build "
                f"lacks (it offers {', '.join(sorted(available))}). Install onnxruntime-gpu "
                "instead of onnxruntime, or use device='auto' or 'cpu'."
            )
    return [*wanted, CPU]


def wants_varlen_mask(cfg: RuntimeConfig) -> bool:
    """Whether an fp16 graph should get the ``varlen`` attention mask on this GPU config.

    The stored graphs give ``Attention`` each row's key length. With those,
    ONNX Runtime's CUDA provider runs cuDNN flash attention when it may (it
    plans per shape: the fastest on long inputs of one length, the slowest on
    mixed lengths), else its unfused kernels on GPUs that its TensorRT fused
    kernels do not cover (Hopper among them): about a third of the device time
    of a MiniLM batch goes to a masked softmax. The memory-efficient (cutlass)
    kernel takes the mask only with row start offsets. So when the allowed
    kernels (``attention_kernels``) include memory-efficient attention but not
    cuDNN flash, as by default, the graph is rewritten at load to that form.
    """
    kernels = cfg.attention_kernels
    return (
        cfg.device in ("auto", "cuda", "tensorrt")
        and kernels != 0
        and bool(kernels & 2)
        and not kernels & 8
        and CUDA in ort.get_available_providers()
    )


def create_session(
    model_path: str | Path, cfg: RuntimeConfig, varlen_mask: bool = False
) -> tuple[ort.InferenceSession, SessionInfo]:
    """Create an inference session for ``model_path`` honouring ``cfg``.

    ``varlen_mask``: load the graph with its attention mask rewritten to the
    ``varlen`` form (see :func:`wants_varlen_mask`) where that applies.

    Raises:
        ProviderUnavailableError: ``cfg.device`` is ``cuda``/``tensorrt`` and that
            provider did not initialise (the message says what it got instead).
    """
    path = Path(model_path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = cfg.intra_op_threads
    opts.inter_op_num_threads = cfg.inter_op_threads
    opts.log_severity_level = 3
    providers = _provider_list(cfg, path)
    if cfg.device == "tensorrt":
        os.makedirs(cfg.trt_cache_dir or path.parent / "trt_cache", exist_ok=True)
    source: str | bytes = str(path)
    mask_form = "key_lengths"
    if varlen_mask:
        from sutra_embedder.models.onnx_builder import varlen_model_bytes  # needs onnx: GPU loads only

        rewritten = varlen_model_bytes(path)
        if rewritten is not None:
            source, mask_form = rewritten, "varlen"
    session = ort.InferenceSession(source, sess_options=opts, providers=providers)
    got = tuple(session.get_providers())
    primary = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    fallback: str | None = None
    if got[0] != primary:
        fallback = f"requested {primary} but the session runs on {got[0]}"
        if cfg.device in ("cuda", "tensorrt"):
            raise ProviderUnavailableError(
                f"device={cfg.device!r}: {fallback}. Check the CUDA/cuDNN libraries "
                "(LD_LIBRARY_PATH) and that a GPU is visible, or use device='auto'."
            )
        log.warning("GPU unavailable, running on CPU: %s", fallback)
    elif cfg.device == "auto" and CUDA not in ort.get_available_providers():
        fallback = "no GPU provider in this onnxruntime build; running on CPU"
    info = SessionInfo(cfg.device, got, got[0], fallback, str(path), mask_form)
    return session, info
