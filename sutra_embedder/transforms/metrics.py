"""Beam metrics of the embedding transforms, in the namespace ``"sutra"``.

Counters:
    ``inputs`` (elements seen), ``texts`` (embedded), ``tokens`` (tokens of
    the embedded texts), ``chunks`` (windows embedded), ``padded_tokens``
    (tokens fed to the model including padding), ``failures`` (dead letters)
    and ``failures_<kind>`` per failure kind (``failures_empty``,
    ``failures_missing_text``, ``failures_inference_error``...).

Distributions:
    ``batch_size`` (rows per model call), ``batch_tokens`` (real tokens per
    model call), ``inference_ms`` (milliseconds per model call) and
    ``flush_texts`` (texts per flush of the transform's buffer, i.e. per call
    of the core embedder: how well bundling or buffering filled batches).
"""

from __future__ import annotations

from apache_beam.metrics.metric import Metrics

from .model import TracedResult

NAMESPACE = "sutra"


class EmbedMetrics:
    """The metric cells one DoFn updates; create it in ``setup()``."""

    def __init__(self, namespace: str = NAMESPACE) -> None:
        self.namespace = namespace
        self.inputs = Metrics.counter(namespace, "inputs")
        self.texts = Metrics.counter(namespace, "texts")
        self.tokens = Metrics.counter(namespace, "tokens")
        self.chunks = Metrics.counter(namespace, "chunks")
        self.padded_tokens = Metrics.counter(namespace, "padded_tokens")
        self.failures = Metrics.counter(namespace, "failures")
        self.batch_size = Metrics.distribution(namespace, "batch_size")
        self.batch_tokens = Metrics.distribution(namespace, "batch_tokens")
        self.inference_ms = Metrics.distribution(namespace, "inference_ms")
        self.flush_texts = Metrics.distribution(namespace, "flush_texts")
        self._by_kind: dict[str, object] = {}

    def failure(self, kind: str, count: int = 1) -> None:
        """Count ``count`` dead letters of ``kind``."""
        cell = self._by_kind.get(kind)
        if cell is None:
            cell = self._by_kind[kind] = Metrics.counter(self.namespace, f"failures_{kind}")
        cell.inc(count)  # type: ignore[attr-defined]
        self.failures.inc(count)

    def embedded(self, traced: TracedResult) -> None:
        """Record one call of the core embedder (its texts, failures and model calls)."""
        result = traced.result
        n_ok = len(result.ok)
        self.flush_texts.update(n_ok + len(result.failures))
        if n_ok:
            self.texts.inc(n_ok)
            self.tokens.inc(int(result.n_tokens.sum()))
            self.chunks.inc(int(result.n_chunks.sum()))
        for kind, count in result.failure_counts().items():
            self.failure(kind, count)
        for trace in traced.traces:
            self.batch_size.update(trace.rows)
            self.batch_tokens.update(trace.tokens)
            self.inference_ms.update(round(trace.inference_s * 1000.0))
            self.padded_tokens.inc(trace.padded_tokens)
