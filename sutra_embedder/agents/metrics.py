"""Prometheus metrics of a streaming worker.

:class:`WorkerMetrics` keeps its metrics in a registry of its own (nothing is
registered globally, so two workers in one process, or a test, never clash)
and serves them over HTTP with ``prometheus_client``::

    metrics = WorkerMetrics(handle)          # handle: an EmbeddingAgent
    metrics.serve(9108)                      # GET http://host:9108/metrics

Counters are read from the agent's own counters at scrape time, so a scrape
shows exactly what the agent counted: ``sutra_messages_received_total``
equals the messages the worker read, and ``sutra_texts_embedded_total`` plus
``sutra_dead_letters_total`` (summed over kinds) accounts for all of them.
Histograms are fed as results and model calls complete: queue time (waiting
for a micro-batch) is reported apart from inference time (one model call),
as are end-to-end latency and the size of every model batch.

Metric names are fixed; failures carry a ``kind`` label (``empty``,
``invalid_utf8``, ``malformed_json``, ``dimension_mismatch``...), per-device
series a ``device`` label.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sutra_embedder.core.embedder import BatchTrace

if TYPE_CHECKING:  # pragma: no cover
    from .faust_agent import EmbeddingAgent
    from .streaming import StreamResult

METRICS_EXTRA = "pip install 'sutra-embedder[metrics]'"

# Buckets: seconds for queue/inference/latency (1 ms .. 10 s), sizes in powers of two.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKENS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

DeviceStats = Callable[[], Mapping[str, Mapping[str, Any]]]


def _require_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"worker metrics need prometheus-client: {METRICS_EXTRA}") from exc
    return prometheus_client


class _AgentCollector:
    """Reads the agent's and the embedder's counters when Prometheus scrapes."""

    def __init__(self, agent: EmbeddingAgent, device_stats: DeviceStats) -> None:
        self.agent = agent
        self.device_stats = device_stats

    def describe(self) -> list[Any]:
        return []  # collected live; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counters = self.agent.counters
        emb = self.agent.embedder.stats
        simple = [
            ("sutra_messages_received", "Messages read from the source topic.", counters.received),
            ("sutra_texts_embedded", "Inputs that became an embedding.", counters.embedded),
            ("sutra_rows_stored", "Embeddings a store sink confirmed durable.", counters.stored),
            ("sutra_already_committed", "Messages skipped because a committed transaction holds their output.",
             counters.already_committed),
            ("sutra_transactions", "Kafka transactions committed (exactly_once).", counters.transactions),
            ("sutra_tokens", "Real (unpadded) tokens run through the model.", emb.tokens),
            ("sutra_padded_tokens", "Tokens run through the model including padding.", emb.padded_tokens),
            ("sutra_model_batches", "Model calls.", emb.batches),
            ("sutra_chunks", "Windows embedded (long texts are split into several).", emb.chunks),
        ]
        for name, doc, value in simple:
            yield CounterMetricFamily(name, doc, value=float(value))
        dead = CounterMetricFamily("sutra_dead_letters", "Inputs that became a dead letter, by kind.",
                                   labels=["kind"])
        for kind, n in sorted(counters.dead_letters_by_kind.items()):
            dead.add_metric([kind], float(n))
        yield dead
        yield CounterMetricFamily("sutra_tokenize_seconds", "Time spent tokenizing.", value=emb.tokenize_s)
        yield CounterMetricFamily("sutra_inference_seconds", "Time spent in model calls.", value=emb.inference_s)

        engine = self.agent.engine
        depth = GaugeMetricFamily("sutra_queue_depth", "Records waiting in the streaming embedder's queue.")
        in_flight = GaugeMetricFamily("sutra_in_flight", "Records submitted and not yet completed.")
        backpressure = CounterMetricFamily("sutra_backpressure_events",
                                           "Times a producer waited because the queue was full.")
        if engine is not None:
            snap = engine.stats()
            depth.add_metric([], float(snap.queue_depth))
            in_flight.add_metric([], float(snap.in_flight))
            backpressure.add_metric([], float(snap.backpressure_events))
        else:
            depth.add_metric([], 0.0)
            in_flight.add_metric([], 0.0)
            backpressure.add_metric([], 0.0)
        yield depth
        yield in_flight
        yield backpressure
        if self.agent.store is not None:
            yield GaugeMetricFamily("sutra_sink_pending_rows", "Rows queued for the store sink.",
                                    value=float(self.agent.store.pending_rows))

        yield from _device_families(self.device_stats())


def _device_families(devices: Mapping[str, Mapping[str, Any]]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    requests = CounterMetricFamily("sutra_device_requests", "Embedding calls per device.", labels=["device"])
    texts = CounterMetricFamily("sutra_device_texts", "Texts embedded per device.", labels=["device"])
    errors = CounterMetricFamily("sutra_device_errors", "Failed calls per device.", labels=["device"])
    latency = GaugeMetricFamily("sutra_device_latency_seconds",
                                "Recent (EWMA) seconds per call on the device.", labels=["device"])
    healthy = GaugeMetricFamily("sutra_device_healthy", "1 when the device takes work.", labels=["device"])
    for device, st in sorted(devices.items()):
        requests.add_metric([device], float(st.get("requests", 0)))
        texts.add_metric([device], float(st.get("texts", 0)))
        errors.add_metric([device], float(st.get("errors", 0)))
        latency.add_metric([device], float(st.get("ewma_latency_s", 0.0)))
        healthy.add_metric([device], 1.0 if st.get("state", "healthy") == "healthy" else 0.0)
    yield from (requests, texts, errors, latency, healthy)


def embedder_device_stats(agent: EmbeddingAgent) -> DeviceStats:
    """Per-device stats of a single embedder (one device: the one its session runs on).

    A pool exposes a ``stats()`` mapping of its own; pass that instead.
    """

    def stats() -> dict[str, dict[str, Any]]:
        emb = agent.embedder
        info = emb.session_info
        device = f"{info.requested}:{info.active}"
        st = emb.stats
        mean = st.inference_s / st.batches if st.batches else 0.0
        return {device: {"requests": st.batches, "texts": st.texts,
                         "errors": st.failures.get("inference_error", 0),
                         "ewma_latency_s": mean, "state": "healthy"}}

    return stats


class WorkerMetrics:
    """The worker's Prometheus metrics (see the module documentation).

    Creating it hooks the agent (every result) and the embedder (every model
    call); :meth:`serve` starts the HTTP endpoint on a daemon thread.

    Args:
        agent: The embedding agent to observe.
        device_stats: Per-device statistics (``{device: {requests, texts,
            errors, ewma_latency_s, state}}``); default the agent's embedder.
    """

    def __init__(self, agent: EmbeddingAgent, device_stats: DeviceStats | None = None) -> None:
        prometheus = _require_prometheus()
        self.registry = prometheus.CollectorRegistry(auto_describe=False)
        self.agent = agent
        self.registry.register(_AgentCollector(agent, device_stats or embedder_device_stats(agent)))
        hist = prometheus.Histogram
        self.queue_seconds = hist("sutra_queue_seconds", "Seconds a record waited for its micro-batch.",
                                  buckets=_SECONDS, registry=self.registry)
        self.latency_seconds = hist("sutra_latency_seconds", "Seconds from submission to result.",
                                    buckets=_SECONDS, registry=self.registry)
        self.batch_inference_seconds = hist("sutra_batch_inference_seconds", "Seconds of one model call.",
                                            buckets=_SECONDS, registry=self.registry)
        self.batch_size = hist("sutra_batch_size", "Sequences per model call.", buckets=_SIZES,
                               registry=self.registry)
        self.batch_tokens = hist("sutra_batch_tokens", "Padded tokens per model call.", buckets=_TOKENS,
                                 registry=self.registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        agent.result_observers.append(self.observe_result)
        previous = agent.embedder.observer

        def observe_batch(trace: BatchTrace) -> None:
            self.observe_batch(trace)
            if previous is not None:
                previous(trace)

        agent.embedder.observer = observe_batch

    def observe_result(self, result: StreamResult) -> None:
        """Record one record's queue time and latency (called by the agent)."""
        self.queue_seconds.observe(result.queue_s)
        self.latency_seconds.observe(result.latency_s)

    def observe_batch(self, trace: BatchTrace) -> None:
        """Record one model call (called by the embedder, from its worker thread)."""
        self.batch_inference_seconds.observe(trace.inference_s)
        self.batch_size.observe(trace.rows)
        self.batch_tokens.observe(trace.padded_tokens)

    def render(self) -> bytes:
        """The metrics in Prometheus' text format (what ``/metrics`` serves)."""
        prometheus = _require_prometheus()
        return bytes(prometheus.generate_latest(self.registry))

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the bound port."""
        prometheus = _require_prometheus()
        self._server, self._thread = prometheus.start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


__all__ = ["METRICS_EXTRA", "WorkerMetrics", "embedder_device_stats"]
