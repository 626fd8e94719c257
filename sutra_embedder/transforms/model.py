"""One embedder per worker process (or per machine), shared by every DoFn thread.

Beam runs several DoFn instances in one SDK worker process, one per thread.
Loading the ONNX model in each would multiply memory and start-up time, so the
DoFns acquire a :class:`SharedEmbedder` in ``setup()``:

* ``"process"`` sharing keeps one instance per process and per configuration
  with :class:`apache_beam.utils.shared.Shared`;
* ``"multi_process"`` sharing serves one instance to every process of the
  machine with :class:`apache_beam.utils.multi_process_shared.MultiProcessShared`
  (several SDK workers in front of one GPU); calls then go through a proxy, so
  everything crossing it is picklable.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from apache_beam.utils import multi_process_shared, shared

from sutra_embedder.core.config import EmbedderConfig, to_dict
from sutra_embedder.core.embedder import BatchTrace, Embedder
from sutra_embedder.core.records import EmbedResult

from .config import ModelSharing


@dataclass(frozen=True)
class ModelIdentity:
    """What the transforms need to know about the loaded model.

    Attributes:
        model_id: The model's registered name (written into dead letters).
        dim: Dimension of the returned vectors.
        provider: The ONNX Runtime execution provider actually in use.
    """

    model_id: str
    dim: int
    provider: str


@dataclass(frozen=True)
class TracedResult:
    """An :class:`EmbedResult` with the model calls that produced it.

    Attributes:
        result: Vectors and failures of the call.
        traces: One :class:`BatchTrace` per model call, for the metrics.
    """

    result: EmbedResult
    traces: tuple[BatchTrace, ...]


class EmbeddingModel(Protocol):
    """What a DoFn holds: a :class:`SharedEmbedder` or a proxy to one."""

    def embed(self, texts: Sequence[object], prompt: str | None = None) -> TracedResult: ...

    def identity(self) -> ModelIdentity: ...


class SharedEmbedder:
    """An :class:`Embedder` that reports each call's batches to that call only.

    The core reports every model call to a single ``observer``. Several threads
    share this object, so the observer files each trace under the calling
    thread; :meth:`embed` returns the traces of its own call.

    Args:
        config: The embedder settings.
    """

    def __init__(self, config: EmbedderConfig) -> None:
        self.embedder = Embedder(config)
        self._local = threading.local()
        self.embedder.observer = self._observe

    def _observe(self, trace: BatchTrace) -> None:
        traces = getattr(self._local, "traces", None)
        if traces is not None:
            traces.append(trace)

    def embed(self, texts: Sequence[object], prompt: str | None = None) -> TracedResult:
        """Embed texts with :meth:`Embedder.embed_records`; never raises for bad texts."""
        self._local.traces = []
        try:
            result = self.embedder.embed_records(texts, prompt=prompt)
            traces = tuple(self._local.traces)
        finally:
            self._local.traces = None
        return TracedResult(result, traces)

    def identity(self) -> ModelIdentity:
        """Model id, vector dimension and execution provider."""
        emb = self.embedder
        return ModelIdentity(emb.model_id, emb.dim, emb.session_info.active)

    def describe(self) -> dict[str, Any]:
        """Facts about the model and session (for logs)."""
        return self.embedder.describe()


def config_tag(config: EmbedderConfig) -> str:
    """A short, stable tag of a configuration: equal settings share one model."""
    text = json.dumps(to_dict(config), sort_keys=True, default=str)
    return "sutra-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


_handles: dict[str, shared.Shared] = {}
_handles_lock = threading.Lock()


def acquire_model(config: EmbedderConfig, sharing: ModelSharing = "process") -> EmbeddingModel:
    """Return this process's (or machine's) embedder for ``config``, loading it once.

    Call it from ``DoFn.setup()`` and keep the returned reference for the DoFn's
    life: the shared cache holds the model only weakly beyond the last user.

    Args:
        config: The embedder settings; equal settings give the same model.
        sharing: ``"process"`` or ``"multi_process"`` (see the module docstring).
    """
    tag = config_tag(config)

    def load() -> SharedEmbedder:
        return SharedEmbedder(config)

    if sharing == "multi_process":
        proxy: Any = multi_process_shared.MultiProcessShared(load, tag=tag).acquire()
        return proxy  # type: ignore[no-any-return]
    # Handles are created per process, not pickled with the DoFn, so every
    # transform with the same settings reuses one model in the process.
    with _handles_lock:
        handle = _handles.get(tag)
        if handle is None:
            handle = _handles[tag] = shared.Shared()
    model: SharedEmbedder = handle.acquire(load, tag=tag)
    return model
