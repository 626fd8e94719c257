"""A ready Faust worker that embeds a Kafka topic into another topic.

Run it::

    python -m sutra_embedder.pipelines.kafka_worker --brokers 127.0.0.1:9092 \\
        --source texts --sink kafka:vectors --dead-letter-topic texts-dlq \\
        [--processing-guarantee at_least_once|exactly_once] [--metrics-port 9108]

``--sink`` is ``kafka:TOPIC`` or a store: ``postgresql://user@host/db?table=docs``
(libpq reads the password from ``$PGPASSWORD`` or the URI), ``lancedb:///path?table=docs``
or ``parquet:///path``. A store sink upserts by id and is flushed before the
input offsets are committed (at_least_once; a replay leaves one row per id).

or, once registered with the CLI, ``sutra worker ...`` with the same options.
Input and output messages follow :mod:`sutra_embedder.connectors.kafka`.

* ``at_least_once`` (default): every input yields its output or dead letter;
  after a crash the uncommitted tail is embedded again (outputs are keyed by
  id, so a compacted output topic keeps one vector per id).
* ``exactly_once``: outputs, dead letters and input offsets are committed in
  one Kafka transaction per input partition; consumers of the outputs must
  read with ``isolation_level=read_committed`` to see each output once.

The worker consumes in the group ``--app-id`` and resumes from its committed
offsets (new groups start at the earliest offset). Faust's web server is off
unless ``--web-port`` is given, and then binds to 127.0.0.1 only. A SASL
password is read from ``$SUTRA_KAFKA_SASL_PASSWORD``, never from the command
line, and never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.config
import os
import ssl
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from sutra_embedder.agents.faust_agent import (
    STORE_EXACTLY_ONCE,
    AgentConfig,
    EmbeddingAgent,
    embedding_agent,
    require_faust,
)
from sutra_embedder.agents.streaming import StreamingConfig
from sutra_embedder.connectors.kafka import (
    OUTPUT_FORMATS,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    DecodeOptions,
    KafkaConnection,
    check_topic,
)
from sutra_embedder.connectors.sinks import SCHEMES, is_sink_uri, redact_uri
from sutra_embedder.core.config import PRECISIONS, EmbedderConfig
from sutra_embedder.core.embedder import Embedder
from sutra_embedder.core.errors import ConfigError, SutraError
from sutra_embedder.core.pool import pinned_if_several_gpus
from sutra_embedder.core.quantization import CalibrationRanges
from sutra_embedder.logs import LOG_FORMATS, logging_config

log = logging.getLogger(__name__)

ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
PROCESSING_GUARANTEES: tuple[str, ...] = get_args(ProcessingGuarantee)
SINK_SCHEMES = ("kafka",)
PASSWORD_ENV = "SUTRA_KAFKA_SASL_PASSWORD"
LOG_LEVELS = ("debug", "info", "warning", "error")
# With exactly-once the agent commits its transactions itself; Faust's timer
# would otherwise commit concurrently with the agent's writes.
_EOS_TIMER_COMMIT_S = 24 * 3600.0


def parse_sink(sink: str) -> str | None:
    """The output topic of a ``kafka:<topic>`` sink; ``None`` for a store URI.

    Raises:
        ConfigError: An unknown scheme, or not a topic name.
    """
    if is_sink_uri(sink):
        return None
    scheme, sep, target = sink.partition(":")
    if not sep or scheme not in SINK_SCHEMES:
        raise ConfigError("sink", f"got {redact_uri(sink)!r}; expected kafka:TOPIC or a store URI with one of the "
                          f"schemes {', '.join(SCHEMES)}")
    check_topic("sink", target)
    return target


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker needs.

    Attributes:
        connection: The Kafka cluster.
        source_topic: Topic of texts.
        sink: ``kafka:<topic>`` for the embeddings.
        processing_guarantee: ``at_least_once`` or ``exactly_once``.
        app_id: Faust app id, also the consumer group and the prefix of
            transactional ids: workers sharing it share the work.
        embedder: Embedder settings.
        agent: Agent settings (dead-letter topic, output format, batching, commits).
        calibration: Ranges file for int8/uint8 output precision.
        session_timeout_s: Consumer group session timeout: how soon a crashed
            worker's partitions move to the others.
        stats_interval_s: Log throughput and latency this often (0: never).
        web_port: Serve Faust's web endpoints on 127.0.0.1 at this port (None: off).
        log_level: ``debug``, ``info``, ``warning`` or ``error``.
        metrics_port: Serve Prometheus metrics on ``metrics_host:metrics_port``
            at ``/metrics`` (None: off; 0: any free port).
        metrics_host: Address the metrics endpoint binds to.
        sink_max_pending_rows: Store sinks: rows queued for the store before
            the worker stops reading (backpressure).
        log_format: ``text`` or ``json`` (one object per line); passwords are
            redacted from every record either way.
    """

    connection: KafkaConnection
    source_topic: str
    sink: str
    processing_guarantee: ProcessingGuarantee = "at_least_once"
    app_id: str = "sutra-embedder"
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    calibration: str | None = None
    session_timeout_s: float = 10.0
    stats_interval_s: float = 30.0
    web_port: int | None = None
    log_level: str = "warning"
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    sink_max_pending_rows: int = 4096
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not isinstance(self.connection, KafkaConnection):
            raise ConfigError("connection", "must be a KafkaConnection")
        check_topic("source_topic", self.source_topic)
        output = parse_sink(self.sink)
        if output == self.source_topic:
            raise ConfigError("sink", "must differ from the source topic")
        if output is None and self.processing_guarantee == "exactly_once":
            raise ConfigError("processing_guarantee", STORE_EXACTLY_ONCE)
        if self.processing_guarantee not in PROCESSING_GUARANTEES:
            raise ConfigError(
                "processing_guarantee",
                f"got {self.processing_guarantee!r}; choose one of {', '.join(PROCESSING_GUARANTEES)}",
            )
        if not isinstance(self.app_id, str) or not self.app_id.strip() or " " in self.app_id:
            raise ConfigError("app_id", f"must be a non-empty id without spaces, got {self.app_id!r}")
        if isinstance(self.session_timeout_s, bool) or not isinstance(self.session_timeout_s, (int, float)) \
                or not 1.0 <= self.session_timeout_s <= 300.0:
            raise ConfigError("session_timeout_s", f"must be between 1 and 300 seconds, got {self.session_timeout_s!r}")
        if isinstance(self.stats_interval_s, bool) or not isinstance(self.stats_interval_s, (int, float)) \
                or self.stats_interval_s < 0:
            raise ConfigError("stats_interval_s", f"must be >= 0, got {self.stats_interval_s!r}")
        if self.web_port is not None and (
            isinstance(self.web_port, bool) or not isinstance(self.web_port, int) or not 0 < self.web_port < 65536
        ):
            raise ConfigError("web_port", f"must be a port number or None, got {self.web_port!r}")
        if self.metrics_port is not None and (
            isinstance(self.metrics_port, bool) or not isinstance(self.metrics_port, int)
            or not 0 <= self.metrics_port < 65536
        ):
            raise ConfigError("metrics_port", f"must be a port number (0: any free port) or None, got "
                              f"{self.metrics_port!r}")
        if isinstance(self.sink_max_pending_rows, bool) or not isinstance(self.sink_max_pending_rows, int) \
                or self.sink_max_pending_rows < 1:
            raise ConfigError("sink_max_pending_rows",
                              f"must be a positive integer, got {self.sink_max_pending_rows!r}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError("log_format", f"got {self.log_format!r}; choose one of {', '.join(LOG_FORMATS)}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError("log_level", f"got {self.log_level!r}; choose one of {', '.join(LOG_LEVELS)}")

    def secrets(self) -> list[str]:
        """Passwords this worker knows, to be redacted from its logs."""
        found = [self.connection.sasl_password or "", os.environ.get("PGPASSWORD", "")]
        with contextlib.suppress(ValueError):
            found.append(urlsplit(self.sink).password or "")
        return [s for s in found if s]

    def logging_config(self) -> dict[str, Any]:
        """The ``dictConfig`` of the worker's logs (format, level, redaction)."""
        return logging_config(self.log_level, self.log_format, self.secrets())  # type: ignore[arg-type]

    @property
    def output_topic(self) -> str | None:
        """The topic of the embeddings; ``None`` with a store sink."""
        return parse_sink(self.sink)


def _credentials(conn: KafkaConnection) -> Any:
    faust = require_faust()
    context = None
    if conn.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=conn.ssl_cafile)
    if conn.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=conn.sasl_username, password=conn.sasl_password,
            mechanism=conn.sasl_mechanism, ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _state_dir(app_id: str) -> str:
    """Faust's state directory for an app: under the system's temp dir, not the working directory."""
    parent = os.path.join(tempfile.gettempdir(), "sutra-faust")
    os.makedirs(parent, exist_ok=True)
    return os.path.join(parent, app_id)


def build_app(config: WorkerConfig, embedder: Embedder | None = None) -> tuple[Any, EmbeddingAgent]:
    """Create the Faust app and register the embedding agent on it.

    Args:
        config: Worker settings.
        embedder: A loaded embedder to use instead of loading ``config.embedder``.

    Returns:
        ``(app, agent state)``; run the app with :func:`run_worker` or ``app.main()``.
    """
    faust = require_faust()
    conn = config.connection
    eos = config.processing_guarantee == "exactly_once"
    session = float(config.session_timeout_s)
    max_fetch = max(1024 * 1024, config.agent.decode.max_value_bytes + 64 * 1024)
    settings: dict[str, Any] = {
        "broker": [f"kafka://{s.strip()}" for s in conn.bootstrap_servers.split(",")],
        "broker_client_id": conn.client_id,
        "processing_guarantee": config.processing_guarantee,
        "store": "memory://",
        # Faust keeps a small state directory; out of the working directory.
        "datadir": _state_dir(config.app_id),
        "web_enabled": config.web_port is not None,
        "web_bind": "127.0.0.1",
        "web_host": "127.0.0.1",
        "web_port": config.web_port or 6066,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": _EOS_TIMER_COMMIT_S if eos else config.agent.commit_interval_s,
        "broker_commit_every": 10**9 if eos else 10_000,
        "broker_session_timeout": session,
        "broker_heartbeat_interval": max(0.3, session / 4.0),
        "broker_rebalance_timeout": max(60.0, session * 2),
        "broker_request_timeout": max(90.0, session * 2),
        "consumer_max_fetch_size": max_fetch,
        "producer_acks": -1,
        # A delivery that cannot complete fails (and stops the worker, to be
        # restarted) within minutes instead of Faust's default 20.
        "producer_request_timeout": 120.0,
        "producer_linger_ms": 2,
        "producer_max_request_size": max(1024 * 1024, max_fetch),
        # On a rebalance, write and acknowledge everything read before handing over.
        "stream_wait_empty": True,
        "topic_disable_leader": True,
        "topic_partitions": 1,
        "worker_redirect_stdouts": False,
    }
    credentials = _credentials(conn)
    if credentials is not None:
        settings["broker_credentials"] = credentials
    app = faust.App(config.app_id, **settings)
    # Several GPUs: each worker process takes its own (worker i -> cuda:i % n).
    emb = embedder or Embedder(pinned_if_several_gpus(config.embedder))
    calibration = None
    if config.calibration:
        calibration = CalibrationRanges.load(config.calibration)
    elif config.agent.precision in ("int8", "uint8") and emb.manifest.calibration:
        calibration = CalibrationRanges.from_dict(emb.manifest.calibration)
    handle = embedding_agent(app, config.source_topic, config.sink, config.agent,
                             embedder=emb, calibration=calibration, connection=conn,
                             max_pending_rows=config.sink_max_pending_rows)
    if config.stats_interval_s > 0:

        @app.timer(config.stats_interval_s)
        async def sutra_stats() -> None:
            log.info("sutra worker stats %s", json.dumps(handle.stats()))

    return app, handle


def run_worker(config: WorkerConfig, embedder: Embedder | None = None) -> int:
    """Run the worker in the foreground until SIGTERM or SIGINT (then stop cleanly).

    Returns:
        The process exit status.
    """
    faust = require_faust()
    app, handle = build_app(config, embedder)
    log.info(
        "sutra worker: %s -> %s (dead letters: %s), %s, model %s, %r",
        config.source_topic, redact_uri(config.sink), config.agent.dead_letter_topic,
        config.processing_guarantee, handle.embedder.model_id, config.connection,
    )
    metrics = None
    if config.metrics_port is not None:
        from sutra_embedder.agents.metrics import WorkerMetrics

        metrics = WorkerMetrics(handle)
        port = metrics.serve(config.metrics_port, config.metrics_host)
        log.warning("sutra worker: metrics on http://%s:%d/metrics", config.metrics_host, port)
    worker = faust.Worker(app, loglevel=config.log_level, quiet=True, redirect_stdouts=False,
                          logging_config=config.logging_config())
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        if metrics is not None:
            metrics.close()
    return 0


# ---------------------------------------------------------------- command line
def add_worker_args(parser: argparse.ArgumentParser) -> None:
    """The worker's options (the embedder's options come from the main CLI)."""
    from sutra_embedder.cli import add_embedder_args

    k = parser.add_argument_group("kafka")
    k.add_argument("--brokers", required=True, help="bootstrap servers, host:port[,host:port]")
    k.add_argument("--source", required=True, help="topic of texts")
    k.add_argument("--sink", required=True,
                   help="kafka:TOPIC, or a store: postgresql://USER@HOST/DB?table=T, lancedb:///PATH?table=T, "
                        "parquet:///PATH")
    k.add_argument("--dead-letter-topic", default=None, help="topic for dead letters (default: log only)")
    k.add_argument("--processing-guarantee", default="at_least_once", choices=PROCESSING_GUARANTEES)
    k.add_argument("--app-id", default="sutra-embedder", help="Faust app id and consumer group")
    k.add_argument("--security-protocol", default="PLAINTEXT", choices=SECURITY_PROTOCOLS)
    k.add_argument("--sasl-mechanism", default=None, choices=SASL_MECHANISMS)
    k.add_argument("--sasl-username", default=None, help=f"password from ${PASSWORD_ENV}")
    k.add_argument("--ssl-cafile", default=None)
    k.add_argument("--session-timeout", type=float, default=10.0, help="consumer session timeout, seconds")
    o = parser.add_argument_group("output")
    o.add_argument("--output-format", default="json", choices=OUTPUT_FORMATS)
    o.add_argument("--precision", default="float32", choices=PRECISIONS)
    o.add_argument("--calibration", default=None, help="int8/uint8 ranges file")
    o.add_argument("--value-format", default="auto", choices=("auto", "json", "text"),
                   help="how input values are read")
    o.add_argument("--max-value-bytes", type=int, default=DecodeOptions.max_value_bytes,
                   help="larger input values become dead letters")
    s = parser.add_argument_group("streaming")
    s.add_argument("--stream-batch-size", type=int, default=StreamingConfig.max_batch_size)
    s.add_argument("--stream-batch-tokens", type=int, default=StreamingConfig.max_batch_tokens)
    s.add_argument("--max-wait-ms", type=float, default=StreamingConfig.max_wait_ms)
    s.add_argument("--queue-size", type=int, default=StreamingConfig.queue_size)
    s.add_argument("--commit-interval", type=float, default=AgentConfig.commit_interval_s,
                   help="seconds between offset commits (transactions with exactly_once)")
    s.add_argument("--stats-interval", type=float, default=30.0, help="log stats every N seconds (0: never)")
    s.add_argument("--web-port", type=int, default=None, help="serve Faust's web UI on 127.0.0.1:PORT")
    s.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    s.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="json: one object per line; passwords are redacted either way")
    s.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)")
    s.add_argument("--metrics-host", default="0.0.0.0", help="address of the metrics endpoint")
    s.add_argument("--sink-max-pending-rows", type=int, default=4096,
                   help="store sinks: rows queued for the store before reading pauses")
    add_embedder_args(parser)


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    """Build a :class:`WorkerConfig` from parsed command line options."""
    from sutra_embedder.cli import embedder_config

    connection = KafkaConnection(
        bootstrap_servers=args.brokers,
        security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism,
        sasl_username=args.sasl_username,
        sasl_password=os.environ.get(PASSWORD_ENV) or None,
        ssl_cafile=args.ssl_cafile,
    )
    agent = AgentConfig(
        dead_letter_topic=args.dead_letter_topic,
        output_format=args.output_format,
        precision=args.precision,
        decode=DecodeOptions(value_format=args.value_format, max_value_bytes=args.max_value_bytes),
        streaming=StreamingConfig(
            max_batch_size=args.stream_batch_size,
            max_batch_tokens=args.stream_batch_tokens,
            max_wait_ms=args.max_wait_ms,
            queue_size=args.queue_size,
        ),
        commit_interval_s=args.commit_interval,
    )
    return WorkerConfig(
        connection=connection,
        source_topic=args.source,
        sink=args.sink,
        processing_guarantee=args.processing_guarantee,
        app_id=args.app_id,
        embedder=embedder_config(args),
        agent=agent,
        calibration=args.calibration,
        session_timeout_s=args.session_timeout,
        stats_interval_s=args.stats_interval,
        web_port=args.web_port,
        log_level=args.log_level,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        sink_max_pending_rows=args.sink_max_pending_rows,
        log_format=args.log_format,
    )


def _cli_worker(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    logging.config.dictConfig(config.logging_config())
    return run_worker(config)


def register_cli(subparsers: Any) -> None:
    """Add the ``worker`` subcommand to the ``sutra`` command line."""
    parser = subparsers.add_parser(
        "worker",
        help="embed a Kafka topic continuously (Faust agent)",
        description=(__doc__ or "").split("\n\n")[0],
    )
    add_worker_args(parser)
    parser.set_defaults(func=_cli_worker)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m sutra_embedder.pipelines.kafka_worker``."""
    parser = argparse.ArgumentParser(
        prog="python -m sutra_embedder.pipelines.kafka_worker",
        description="Embed a Kafka topic continuously with a Faust agent.",
    )
    add_worker_args(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except SutraError as exc:
        parser.error(str(exc))
    logging.config.dictConfig(config.logging_config())
    try:
        return run_worker(config)
    except SutraError as exc:
        print(f"sutra worker: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
