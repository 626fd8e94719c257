"""A real Apache Kafka broker run as a local child process, for tests and demos.

The broker runs in KRaft combined mode (one JVM acting as both broker and
controller), so no ZooKeeper and no container runtime are needed. The Kafka
jars are resolved from Maven Central with ``mvn`` the first time they are
needed and cached under :func:`cache_dir`.

Only the standard library is imported at module import time. ``kafka-python``
is used by :meth:`KafkaBroker.create_topic` when it is installed; otherwise the
topic is created through Kafka's own command line tool on the JVM.

Example:
    >>> from sutra_embedder.devservices.kafka import KafkaBroker
    >>> with KafkaBroker() as broker:  # doctest: +SKIP
    ...     broker.create_topic("texts", partitions=3)
    ...     print(broker.bootstrap_servers)
    127.0.0.1:40123

From a shell::

    python -m sutra_embedder.devservices.kafka --port 9092
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self

from sutra_embedder.cache import cache_dir, find_java
from sutra_embedder.cache import exclusive_lock as _exclusive_lock

__all__ = [
    "KAFKA_VERSION",
    "KafkaBroker",
    "KafkaBrokerConfig",
    "KafkaDevServiceError",
    "KafkaToolchainError",
    "broker_properties",
    "cache_dir",
    "ensure_kafka_jars",
    "main",
    "random_cluster_id",
]

KAFKA_VERSION = "4.1.1"
"""Kafka release whose jars are fetched and run."""

SLF4J_SIMPLE_VERSION = "1.7.36"
"""slf4j-simple binding matching the slf4j 1.7 API that Kafka 4.x depends on."""

_MARKER_NAME = ".complete"
_LOG_FILE_NAME = "broker.log"
_PROPERTIES_FILE_NAME = "server.properties"
_KRAFT_DIR_NAME = "kraft-logs"
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_HEAP_PATTERN = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")
_TOPIC_PATTERN = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_MVN_TIMEOUT_S = 1800.0

# Kafka protocol API keys used by the readiness probe.
_API_METADATA = 3
_API_VERSIONS = 18


class KafkaDevServiceError(RuntimeError):
    """Raised when the local Kafka broker cannot be fetched, started or used."""


class KafkaToolchainError(KafkaDevServiceError):
    """Raised when Java or Maven, needed to run or fetch Kafka, is unavailable."""


# --------------------------------------------------------------------------
# Jar cache
# --------------------------------------------------------------------------


def _pom_xml(version: str) -> str:
    """Build a throw-away Maven project whose runtime classpath is a Kafka broker."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.sutra-embedder</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-server</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>{version}</version>
      <exclusions>
        <exclusion>
          <groupId>org.apache.kafka</groupId>
          <artifactId>connect-runtime</artifactId>
        </exclusion>
        <exclusion>
          <groupId>com.fasterxml.jackson.jakarta.rs</groupId>
          <artifactId>*</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>{SLF4J_SIMPLE_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""


def _libs_complete(libs: Path) -> bool:
    """Tell whether ``libs`` holds a finished download (marker plus every jar)."""
    marker = libs / _MARKER_NAME
    if not marker.is_file():
        return False
    names = [line.strip() for line in marker.read_text("utf-8").splitlines()]
    names = [name for name in names if name]
    return bool(names) and all((libs / name).is_file() for name in names)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def ensure_kafka_jars(version: str = KAFKA_VERSION) -> Path:
    """Make sure the jars needed to run a Kafka broker are cached locally.

    On the first call ``mvn dependency:copy-dependencies`` resolves the broker
    (``kafka_2.13``, ``kafka-server``, ``kafka-tools`` and an SLF4J binding)
    from Maven Central into ``<cache_dir()>/kafka/<version>/libs``. A marker
    file listing every jar is written last, so an interrupted download is
    detected and redone. Later calls return immediately. Concurrent callers
    are serialised with a file lock.

    Args:
        version: Kafka release, e.g. ``"4.1.1"``.

    Returns:
        The directory holding the jars (use ``<dir>/*`` as the Java classpath).

    Raises:
        KafkaToolchainError: If ``mvn`` is not on ``PATH``.
        KafkaDevServiceError: If Maven fails to resolve the artifacts.
        ValueError: If ``version`` is not a plausible version string.
    """
    if not re.fullmatch(r"[0-9A-Za-z.+-]+", version):
        raise ValueError(f"version: not a valid Kafka version string: {version!r}")
    root = cache_dir() / "kafka" / version
    libs = root / "libs"
    if _libs_complete(libs):
        return libs
    with _exclusive_lock(root / ".lock"):
        if _libs_complete(libs):
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaToolchainError(
                "Maven ('mvn') is needed once to download the Kafka "
                f"{version} jars from Maven Central but was not found on PATH; "
                "install Maven 3.6+ (and a Java 17+ runtime), or put the jars of a "
                f"Kafka distribution into {libs} and list them in {libs / _MARKER_NAME}."
            )
        if libs.exists():
            shutil.rmtree(libs)
        libs.mkdir(parents=True)
        with tempfile.TemporaryDirectory(prefix="sutra-kafka-pom-") as project:
            (Path(project) / "pom.xml").write_text(_pom_xml(version), "utf-8")
            command = [
                mvn,
                "-B",
                "-q",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
            ]
            try:
                result = subprocess.run(
                    command,
                    cwd=project,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=_MVN_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise KafkaDevServiceError(
                    f"mvn did not finish fetching the Kafka {version} jars within {_MVN_TIMEOUT_S:.0f} s"
                ) from exc
        jars = sorted(p.name for p in libs.glob("*.jar"))
        if result.returncode != 0 or not jars:
            output = _tail((result.stdout or "") + (result.stderr or ""))
            raise KafkaDevServiceError(
                f"mvn failed (exit code {result.returncode}) to fetch the Kafka "
                f"{version} jars into {libs}:\n{output}"
            )
        marker_tmp = libs / (_MARKER_NAME + ".tmp")
        marker_tmp.write_text("\n".join(jars) + "\n", "utf-8")
        marker_tmp.replace(libs / _MARKER_NAME)
    return libs


def _java_executable() -> str:
    """Locate the ``java`` launcher, preferring ``$JAVA_HOME``."""
    found = find_java()
    if found is None:
        raise KafkaToolchainError(
            "A Java runtime ('java', version 17 or newer) is needed to run the "
            "Kafka broker but was not found on PATH or under $JAVA_HOME."
        )
    return found


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def random_cluster_id() -> str:
    """Return a new KRaft cluster id (16 random bytes, URL-safe base64).

    Returns:
        A 22 character id in the form Kafka's ``random-uuid`` prints.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        # Kafka rejects ids that start with '-' on its command line.
        if not text.startswith("-"):
            return text


def _check_port(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if not 0 <= value <= 65535:
        raise ValueError(f"{name}: must be between 0 and 65535, got {value}")


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name}: must be positive, got {value}")


@dataclass(frozen=True)
class KafkaBrokerConfig:
    """Settings of a local single-node Kafka broker.

    Attributes:
        port: Client (PLAINTEXT) port on 127.0.0.1; 0 picks a free port when
            the broker first starts and keeps it across restarts.
        controller_port: KRaft controller port on 127.0.0.1; 0 picks a free one.
        data_dir: Directory for the broker's data, configuration and
            ``broker.log``. ``None`` uses a fresh temporary directory that is
            deleted when the broker is closed.
        heap: JVM maximum heap, e.g. ``"512m"`` or ``"1g"``.
        num_partitions: Partitions of topics created automatically.
        extra_properties: Broker properties that override or extend the
            defaults of :func:`broker_properties`.
        start_timeout: Seconds to wait for the broker to answer requests.
        stop_timeout: Seconds to wait after SIGTERM before sending SIGKILL.
        jvm_options: Extra JVM arguments, placed after the defaults (so they
            can override them) and before the main class.
        quick_start: Favour start-up time over peak throughput: limit the JIT
            to its fast C1 tier and reuse a class-data archive of the broker's
            classes (written to the cache when a broker is first stopped
            gracefully). Turn off for throughput benchmarks.
        log_level: Root log level of the broker (``trace`` .. ``error``).
        kafka_version: Kafka release to run.
        libs_dir: Directory of Kafka jars to use instead of the Maven cache.
        cluster_id: KRaft cluster id; ``None`` generates one at first start.
    """

    port: int = 0
    controller_port: int = 0
    data_dir: Path | None = None
    heap: str = "512m"
    num_partitions: int = 1
    extra_properties: Mapping[str, str] = field(default_factory=dict, hash=False)
    start_timeout: float = 90.0
    stop_timeout: float = 30.0
    jvm_options: tuple[str, ...] = ()
    quick_start: bool = True
    log_level: str = "info"
    kafka_version: str = KAFKA_VERSION
    libs_dir: Path | None = None
    cluster_id: str | None = None

    def __post_init__(self) -> None:
        """Validate and normalise the fields.

        Raises:
            TypeError: If a field has the wrong type.
            ValueError: If a field has an invalid value; the message starts
                with the field name.
        """
        _check_port("port", self.port)
        _check_port("controller_port", self.controller_port)
        if self.port and self.port == self.controller_port:
            raise ValueError(f"controller_port: must differ from port ({self.port})")
        if self.data_dir is not None:
            if not isinstance(self.data_dir, (str, os.PathLike)):
                raise TypeError("data_dir: expected a path or None")
            object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if self.libs_dir is not None:
            if not isinstance(self.libs_dir, (str, os.PathLike)):
                raise TypeError("libs_dir: expected a path or None")
            object.__setattr__(self, "libs_dir", Path(self.libs_dir).expanduser())
        if not isinstance(self.heap, str) or not _HEAP_PATTERN.match(self.heap):
            raise ValueError(f"heap: expected a JVM size such as '512m' or '1g', got {self.heap!r}")
        if isinstance(self.num_partitions, bool) or not isinstance(self.num_partitions, int):
            raise TypeError("num_partitions: expected an int")
        if self.num_partitions < 1:
            raise ValueError(f"num_partitions: must be at least 1, got {self.num_partitions}")
        if not isinstance(self.extra_properties, Mapping):
            raise TypeError("extra_properties: expected a mapping of str to str")
        cleaned: dict[str, str] = {}
        for key, value in self.extra_properties.items():
            if not isinstance(key, str) or not key.strip() or any(c in key for c in "=:\n\r"):
                raise ValueError(f"extra_properties: invalid property name {key!r}")
            text = str(value)
            if "\n" in text or "\r" in text:
                raise ValueError(f"extra_properties: value of {key!r} must be a single line")
            cleaned[key.strip()] = text
        object.__setattr__(self, "extra_properties", types.MappingProxyType(cleaned))
        _check_positive("start_timeout", self.start_timeout)
        _check_positive("stop_timeout", self.stop_timeout)
        if isinstance(self.jvm_options, str) or not all(isinstance(opt, str) for opt in self.jvm_options):
            raise TypeError("jvm_options: expected a sequence of strings")
        object.__setattr__(self, "jvm_options", tuple(self.jvm_options))
        if not isinstance(self.quick_start, bool):
            raise TypeError("quick_start: expected a bool")
        levels = ("trace", "debug", "info", "warn", "error", "off")
        if not isinstance(self.log_level, str) or self.log_level.lower() not in levels:
            raise ValueError(f"log_level: expected one of {', '.join(levels)}, got {self.log_level!r}")
        object.__setattr__(self, "log_level", self.log_level.lower())
        if not isinstance(self.kafka_version, str) or not self.kafka_version:
            raise ValueError("kafka_version: expected a non-empty version string")
        if self.cluster_id is not None and not re.fullmatch(r"[A-Za-z0-9_-]{22}", self.cluster_id):
            raise ValueError(
                "cluster_id: expected 22 URL-safe base64 characters "
                f"(see random_cluster_id()), got {self.cluster_id!r}"
            )


def broker_properties(
    *,
    port: int,
    controller_port: int,
    log_dir: Path,
    num_partitions: int = 1,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build the ``server.properties`` of a single-node KRaft broker tuned for tests.

    Args:
        port: Client (PLAINTEXT) port on 127.0.0.1.
        controller_port: Controller port on 127.0.0.1.
        log_dir: Directory holding the partition data (``log.dirs``).
        num_partitions: Partitions of automatically created topics.
        extra: Properties that override or extend the defaults.

    Returns:
        The broker properties in insertion order.
    """
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        # A single replica everywhere, including Kafka's internal topics.
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # A broker that was killed can re-register once its old session expires
        # (default 9 s); keep that short so crash/restart tests are quick.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "4000",
        # Fast consumer groups for tests.
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        "auto.create.topics.enable": "true",
        "num.partitions": str(num_partitions),
        # Room for 10 MB+ records.
        "message.max.bytes": str(_MAX_MESSAGE_BYTES),
        "replica.fetch.max.bytes": str(_MAX_MESSAGE_BYTES),
        "replica.fetch.response.max.bytes": str(_MAX_MESSAGE_BYTES),
        # Small footprint on a laptop or CI runner.
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        "log.cleaner.threads": "1",
    }
    if extra:
        props.update(extra)
    return props


def _render_properties(props: Mapping[str, str]) -> str:
    lines = ["# Generated by sutra_embedder.devservices.kafka; rewritten at every start."]
    lines.extend(f"{key}={value}" for key, value in props.items())
    return "\n".join(lines) + "\n"


def _port_is_free(port: int) -> bool:
    """Tell whether nothing listens on ``127.0.0.1:port`` (TIME_WAIT leftovers are fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _formatted_cluster_id(log_dir: Path) -> str | None:
    """Return the cluster id recorded in a formatted KRaft log directory, if any."""
    meta = log_dir / "meta.properties"
    try:
        text = meta.read_text("utf-8")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "cluster.id":
            return value.strip()
    raise KafkaDevServiceError(f"{meta} has no cluster.id; delete the data directory")


def _free_port(exclude: Sequence[int] = ()) -> int:
    """Ask the OS for a currently unused TCP port on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise KafkaDevServiceError("could not find a free TCP port on 127.0.0.1")


# --------------------------------------------------------------------------
# Minimal Kafka wire protocol, used to check readiness without extra packages
# --------------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks += chunk
    return bytes(chunks)


def _request(sock: socket.socket, api_key: int, api_version: int, correlation_id: int, body: bytes) -> bytes:
    """Send one request (header v1) and return the response body after its header v0."""
    client_id = b"sutra-devservices"
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
    response = _recv_exactly(sock, size)
    (received_id,) = struct.unpack(">i", response[:4])
    if received_id != correlation_id:
        raise ConnectionError("unexpected correlation id in broker response")
    return response[4:]


class _Reader:
    """Cursor over a non-flexible Kafka response body."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += struct.calcsize(fmt)
        return int(value)

    def int8(self) -> int:
        return self._take(">b")

    def int16(self) -> int:
        return self._take(">h")

    def int32(self) -> int:
        return self._take(">i")

    def string(self) -> str | None:
        size = self.int16()
        if size < 0:
            return None
        text = self._data[self._pos : self._pos + size].decode("utf-8")
        self._pos += size
        return text

    def int32_array(self) -> list[int]:
        return [self.int32() for _ in range(max(self.int32(), 0))]


@dataclass(frozen=True)
class _ClusterMetadata:
    cluster_id: str | None
    brokers: tuple[tuple[int, str, int], ...]
    # topic name -> (topic error code, leader id of each partition)
    topics: Mapping[str, tuple[int, tuple[int, ...]]]


def _fetch_metadata(host: str, port: int, topics: Sequence[str] | None, timeout: float) -> _ClusterMetadata:
    """Query a broker with ApiVersions and Metadata (v4) requests.

    Args:
        host: Broker host.
        port: Broker port.
        topics: Topics to describe; ``None`` for all.
        timeout: Socket timeout in seconds.

    Returns:
        The live brokers and the partition leaders of the requested topics.

    Raises:
        OSError: If the broker does not answer properly.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        versions = _Reader(_request(sock, _API_VERSIONS, 0, 1, b""))
        error = versions.int16()
        if error != 0:
            raise ConnectionError(f"ApiVersions failed with error code {error}")
        if topics is None:
            body = struct.pack(">i", -1)
        else:
            body = struct.pack(">i", len(topics))
            for name in topics:
                raw = name.encode("utf-8")
                body += struct.pack(">h", len(raw)) + raw
        body += b"\x00"  # allow_auto_topic_creation = false
        reader = _Reader(_request(sock, _API_METADATA, 4, 2, body))
    reader.int32()  # throttle_time_ms
    brokers = []
    for _ in range(reader.int32()):
        node_id = reader.int32()
        node_host = reader.string() or ""
        node_port = reader.int32()
        reader.string()  # rack
        brokers.append((node_id, node_host, node_port))
    cluster_id = reader.string()
    reader.int32()  # controller_id
    described: dict[str, tuple[int, tuple[int, ...]]] = {}
    for _ in range(reader.int32()):
        topic_error = reader.int16()
        name = reader.string() or ""
        reader.int8()  # is_internal
        leaders = []
        for _ in range(reader.int32()):
            reader.int16()  # partition error code
            reader.int32()  # partition index
            leaders.append(reader.int32())
            reader.int32_array()  # replicas
            reader.int32_array()  # in-sync replicas
        described[name] = (topic_error, tuple(leaders))
    return _ClusterMetadata(cluster_id=cluster_id, brokers=tuple(brokers), topics=described)


# --------------------------------------------------------------------------
# Broker process
# --------------------------------------------------------------------------


def _terminate(process: subprocess.Popen[bytes], grace: float) -> bool:
    """Send SIGTERM, wait up to ``grace`` seconds, then SIGKILL.

    Returns:
        True if the process ended without needing SIGKILL.
    """
    if process.poll() is not None:
        return process.returncode != -signal.SIGKILL
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        return False
    return process.returncode != -signal.SIGKILL


def _class_data_archive(java: str, libs: Path) -> Path:
    """Where the class-data archive for this JVM and classpath is cached."""
    java_real = Path(java).resolve()
    try:
        stamp = str(java_real.stat().st_mtime_ns)
    except OSError:
        stamp = "?"
    key = "\0".join([str(java_real), stamp, str(libs.resolve())])
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "kafka" / "jvm-class-data" / f"broker-{digest}.jsa"


class KafkaBroker:
    """A single-node Kafka broker (KRaft combined mode) in a child JVM process.

    The broker listens on 127.0.0.1 only. Its data, generated
    ``server.properties`` and ``broker.log`` live in :attr:`data_dir`; ports
    and data survive :meth:`restart`, :meth:`stop` followed by :meth:`start`,
    and :meth:`kill` followed by :meth:`start`.

    Use it as a context manager, or call :meth:`start` and :meth:`close`::

        with KafkaBroker(KafkaBrokerConfig(num_partitions=3)) as broker:
            run_pipeline(bootstrap_servers=broker.bootstrap_servers)
    """

    def __init__(self, config: KafkaBrokerConfig | None = None) -> None:
        """Prepare a broker; nothing is started or downloaded yet.

        Args:
            config: Broker settings; defaults to ``KafkaBrokerConfig()``.
        """
        self.config = config if config is not None else KafkaBrokerConfig()
        self._port = self.config.port or None
        self._controller_port = self.config.controller_port or None
        self._owns_data_dir = self.config.data_dir is None
        self._data_dir: Path | None = self.config.data_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._last_start_seconds: float | None = None
        # (temporary file being written by the JVM at exit, final location)
        self._pending_archive: tuple[Path, Path] | None = None
        # Shared with a finalizer (which runs at garbage collection or interpreter
        # exit) so that a broker whose owner forgot to stop it does not linger.
        self._cell: list[subprocess.Popen[bytes] | None] = [None]
        weakref.finalize(self, _finalize, self._cell)

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        """Client port; known once the broker has been started (or if configured)."""
        if self._port is None:
            raise KafkaDevServiceError("the broker port is chosen at start(); start the broker first")
        return self._port

    @property
    def controller_port(self) -> int:
        """KRaft controller port; known once the broker has been started."""
        if self._controller_port is None:
            raise KafkaDevServiceError("the controller port is chosen at start(); start the broker first")
        return self._controller_port

    @property
    def bootstrap_servers(self) -> str:
        """Address for Kafka clients, ``"127.0.0.1:<port>"``."""
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        """Directory with the broker's data, configuration and log file."""
        if self._data_dir is None:
            raise KafkaDevServiceError("the data directory is created at start(); start the broker first")
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """File receiving the broker's stdout and stderr."""
        return self.data_dir / _LOG_FILE_NAME

    @property
    def pid(self) -> int | None:
        """Process id of the running JVM, or ``None`` when not running."""
        return self._process.pid if self.is_running() and self._process else None

    @property
    def last_start_seconds(self) -> float | None:
        """Seconds the most recent :meth:`start` took until the broker was ready."""
        return self._last_start_seconds

    def is_running(self) -> bool:
        """Tell whether the broker process is alive (not necessarily ready)."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Self:
        """Start the broker and wait until it serves client requests.

        Fetches the jars on first use, picks ports, formats the storage the
        first time, writes ``server.properties`` and launches the JVM. Does
        nothing if the broker is already running.

        Returns:
            ``self``, for chaining.

        Raises:
            KafkaToolchainError: If Java (or Maven, for the first download) is missing.
            KafkaDevServiceError: If the broker exits or does not become ready
                within ``config.start_timeout``; the message ends with the
                tail of the broker log.
        """
        with self._lock:
            if self.is_running():
                return self
            began = time.monotonic()
            java = _java_executable()
            libs = self.config.libs_dir or ensure_kafka_jars(self.config.kafka_version)
            classpath = str(libs / "*")
            self._prepare_data_dir()
            if self._port is None:
                self._port = _free_port()
            if self._controller_port is None:
                self._controller_port = _free_port(exclude=(self._port,))
            for name, port in (("port", self._port), ("controller_port", self._controller_port)):
                if not _port_is_free(port):
                    raise KafkaDevServiceError(
                        f"{name} {port} on 127.0.0.1 is already in use (another Kafka broker?)"
                    )
            properties_file = self.data_dir / _PROPERTIES_FILE_NAME
            log_dir = self.data_dir / _KRAFT_DIR_NAME
            props = broker_properties(
                port=self._port,
                controller_port=self._controller_port,
                log_dir=log_dir,
                num_partitions=self.config.num_partitions,
                extra=self.config.extra_properties,
            )
            properties_file.write_text(_render_properties(props), "utf-8")
            cluster_id = _formatted_cluster_id(log_dir)
            if cluster_id is not None and self.config.cluster_id not in (None, cluster_id):
                raise KafkaDevServiceError(
                    f"cluster_id: {log_dir} is formatted for cluster {cluster_id}, "
                    f"not {self.config.cluster_id}"
                )
            if cluster_id is None:
                cluster_id = self.config.cluster_id or random_cluster_id()
                self._format_storage(java, classpath, properties_file, cluster_id)
            command = [
                java,
                *self._jvm_args(java, libs),
                "-cp",
                classpath,
                "kafka.Kafka",
                str(properties_file),
            ]
            with open(self.log_path, "ab") as log:
                log.write(f"\n==== starting broker on {self.bootstrap_servers} ====\n".encode())
                log.flush()
                self._process = subprocess.Popen(
                    command,
                    cwd=self.data_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._cell[0] = self._process
            try:
                self._wait_until_ready(began + self.config.start_timeout, cluster_id)
            except BaseException:
                self.kill()
                raise
            self._last_start_seconds = time.monotonic() - began
            return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the broker gracefully: SIGTERM, then SIGKILL after a timeout.

        Data and ports are kept, so :meth:`start` brings the same broker back.

        Args:
            timeout: Seconds to wait after SIGTERM; defaults to ``config.stop_timeout``.
        """
        with self._lock:
            if self._process is not None:
                grace = self.config.stop_timeout if timeout is None else timeout
                clean = _terminate(self._process, grace)
                self._process = None
                self._cell[0] = None
                self._settle_archive(keep=clean)

    def kill(self) -> None:
        """Kill the broker immediately with SIGKILL, like a crash. Data is kept."""
        with self._lock:
            if self._process is not None:
                if self._process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        self._process.kill()
                self._process.wait()
                self._process = None
                self._cell[0] = None
                self._settle_archive(keep=False)

    def restart(self, *, graceful: bool = True) -> Self:
        """Stop (or kill) the broker and start it again on the same ports and data.

        Args:
            graceful: Use :meth:`stop` when true, :meth:`kill` otherwise.

        Returns:
            ``self``, once the broker serves requests again.
        """
        with self._lock:
            if graceful:
                self.stop()
            else:
                self.kill()
            return self.start()

    def close(self) -> None:
        """Stop the broker and delete its data directory if it was temporary."""
        with self._lock:
            self.stop()
            if self._owns_data_dir and self._data_dir is not None:
                shutil.rmtree(self._data_dir, ignore_errors=True)
                self._data_dir = None

    def __enter__(self) -> Self:
        """Start the broker."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        """Stop the broker and remove temporary data."""
        self.close()

    def __repr__(self) -> str:
        """Describe the broker's address and state."""
        address = f"127.0.0.1:{self._port}" if self._port else "unassigned port"
        state = "running" if self.is_running() else "stopped"
        return f"KafkaBroker({address}, {state})"

    # -- helpers ------------------------------------------------------------

    def log_tail(self, lines: int = 60) -> str:
        """Return the last lines of the broker log.

        Args:
            lines: Number of lines to return.

        Returns:
            The text, or an empty string when there is no log yet.
        """
        if self._data_dir is None:
            return ""
        try:
            with open(self._data_dir / _LOG_FILE_NAME, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(handle.tell() - 256 * 1024, 0))
                text = handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return _tail(text, lines)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        config: Mapping[str, str] | None = None,
        exist_ok: bool = False,
        timeout: float = 30.0,
        via: Literal["auto", "kafka-python", "java"] = "auto",
    ) -> None:
        """Create a topic and wait until every partition has a leader.

        Args:
            name: Topic name.
            partitions: Number of partitions.
            config: Topic-level configuration, e.g. ``{"retention.ms": "60000"}``.
            exist_ok: Do not fail if the topic already exists.
            timeout: Seconds to wait for creation and leader election.
            via: ``"kafka-python"`` uses its admin client, ``"java"`` runs
                Kafka's topic command on the JVM, ``"auto"`` prefers kafka-python
                when it is installed.

        Raises:
            ValueError: If ``name`` or ``partitions`` is invalid.
            KafkaDevServiceError: If the broker is not running or creation fails.
        """
        if not _TOPIC_PATTERN.match(name) or name in (".", ".."):
            raise ValueError(f"name: invalid Kafka topic name {name!r}")
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"partitions: must be a positive int, got {partitions!r}")
        if not self.is_running():
            raise KafkaDevServiceError("create_topic: the broker is not running")
        if via not in ("auto", "kafka-python", "java"):
            raise ValueError(f"via: expected 'auto', 'kafka-python' or 'java', got {via!r}")
        topic_config = dict(config or {})
        use_python = via == "kafka-python"
        if via == "auto":
            try:
                import kafka.admin  # noqa: F401
            except ImportError:
                use_python = False
            else:
                use_python = True
        if use_python:
            self._create_topic_python(name, partitions, topic_config, exist_ok, timeout)
        else:
            self._create_topic_java(name, partitions, topic_config, exist_ok, timeout)
        # An existing topic (exist_ok) may have another partition count.
        self.wait_for_topic(name, None if exist_ok else partitions, timeout=timeout)

    def wait_for_topic(self, name: str, partitions: int | None = None, timeout: float = 30.0) -> None:
        """Wait until ``name`` exists and each of its partitions has a leader.

        Args:
            name: Topic name.
            partitions: Expected number of partitions, if known.
            timeout: Seconds to wait.

        Raises:
            KafkaDevServiceError: If the topic is not ready in time.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                meta = _fetch_metadata("127.0.0.1", self.port, [name], timeout=5.0)
                error, leaders = meta.topics.get(name, (-1, ()))
                if (
                    error == 0
                    and leaders
                    and all(leader >= 0 for leader in leaders)
                    and (partitions is None or len(leaders) == partitions)
                ):
                    return
                last = f"error code {error}, leaders {list(leaders)}"
            except (OSError, struct.error) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise KafkaDevServiceError(f"topic {name!r} not ready after {timeout} s ({last})")
            time.sleep(0.1)

    def topics(self) -> list[str]:
        """List the topic names known to the broker (internal ones included).

        Returns:
            Sorted topic names.
        """
        meta = _fetch_metadata("127.0.0.1", self.port, None, timeout=10.0)
        return sorted(meta.topics)

    # -- internals ----------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="sutra-kafka-"))
        self._data_dir.mkdir(parents=True, exist_ok=True)

    def _jvm_args(self, java: str, libs: Path) -> list[str]:
        quick: list[str] = []
        if self.config.quick_start:
            quick.append("-XX:TieredStopAtLevel=1")
            archive = _class_data_archive(java, libs)
            if archive.is_file():
                quick.append(f"-XX:SharedArchiveFile={archive}")
            elif self._pending_archive is None:
                # Let this JVM record the classes it loads when it exits, so
                # later brokers start faster. Kept only after a clean stop.
                archive.parent.mkdir(parents=True, exist_ok=True)
                for stale in archive.parent.glob(f"{archive.stem}.*.tmp"):
                    with contextlib.suppress(OSError):
                        if time.time() - stale.stat().st_mtime > 3600:
                            stale.unlink()
                partial = archive.with_name(f"{archive.stem}.{os.getpid()}-{id(self):x}.tmp")
                partial.unlink(missing_ok=True)
                self._pending_archive = (partial, archive)
                quick.append(f"-XX:ArchiveClassesAtExit={partial}")
            quick.append("-Xlog:cds=error,cds+dynamic=error")
        return [
            f"-Xmx{self.config.heap}",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-Xss512k",
            "-Djava.awt.headless=true",
            "-Dfile.encoding=UTF-8",
            f"-Dorg.slf4j.simpleLogger.defaultLogLevel={self.config.log_level}",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd HH:mm:ss,SSS",
            "-Dorg.slf4j.simpleLogger.showShortLogName=true",
            "-Dorg.slf4j.simpleLogger.logFile=System.out",
            "-Dlog4j2.statusLoggerLevel=OFF",
            *quick,
            *self.config.jvm_options,
        ]

    def _settle_archive(self, *, keep: bool) -> None:
        """Publish (or discard) a class-data archive written by the stopped JVM."""
        if self._pending_archive is None:
            return
        partial, archive = self._pending_archive
        self._pending_archive = None
        try:
            if keep and partial.is_file() and partial.stat().st_size > 0:
                partial.replace(archive)
        except OSError:
            pass
        finally:
            partial.unlink(missing_ok=True)

    def _run_tool(self, java: str, classpath: str, args: Sequence[str], timeout: float) -> str:
        command = [
            java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp",
            classpath,
            *args,
        ]
        try:
            result = subprocess.run(
                command,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaDevServiceError(f"{args[0]} did not finish within {timeout} s") from exc
        output = (result.stdout or "") + (result.stderr or "")
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"==== {' '.join(args)} (exit code {result.returncode}) ====\n{output}\n")
        if result.returncode != 0:
            raise KafkaDevServiceError(
                f"{args[0]} failed with exit code {result.returncode}:\n{_tail(output)}"
            )
        return output

    def _format_storage(self, java: str, classpath: str, properties_file: Path, cluster_id: str) -> None:
        self._run_tool(
            java,
            classpath,
            ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties_file)],
            timeout=max(self.config.start_timeout, 60.0),
        )

    def _wait_until_ready(self, deadline: float, cluster_id: str) -> None:
        """Poll until the broker answers ApiVersions and lists itself in Metadata."""
        last_error = "no connection attempt yet"
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise KafkaDevServiceError(
                    f"the Kafka broker exited during start-up (exit code {code}); "
                    f"log {self.log_path}:\n{self._failure_excerpt()}"
                )
            try:
                meta = _fetch_metadata("127.0.0.1", self.port, None, timeout=2.0)
            except (OSError, struct.error) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if meta.cluster_id != cluster_id:
                    raise KafkaDevServiceError(
                        f"a different Kafka cluster ({meta.cluster_id}) answers on "
                        f"{self.bootstrap_servers}; expected cluster {cluster_id}"
                    )
                if meta.brokers:
                    return
                last_error = "broker answered but is not registered yet"
            if time.monotonic() >= deadline:
                raise KafkaDevServiceError(
                    f"the Kafka broker on {self.bootstrap_servers} was not ready within "
                    f"{self.config.start_timeout} s (last probe: {last_error}); "
                    f"log {self.log_path}:\n{self._failure_excerpt()}"
                )
            time.sleep(0.2)

    def _failure_excerpt(self) -> str:
        """Error lines of the latest broker run followed by the end of the log."""
        tail = self.log_tail(400)
        marker = tail.rfind("==== starting broker")
        run = tail[marker:] if marker >= 0 else tail
        errors = [
            line
            for line in run.splitlines()
            if " ERROR " in line or "Exception" in line or line.startswith("Error")
        ][:12]
        parts = []
        if errors:
            parts.append("errors:\n" + "\n".join(errors))
        parts.append("last lines:\n" + _tail(run, 25))
        return "\n".join(parts)

    def _create_topic_python(
        self, name: str, partitions: int, config: dict[str, str], exist_ok: bool, timeout: float
    ) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id="sutra-devservices-admin",
            request_timeout_ms=int(timeout * 1000),
        )
        try:
            topic = NewTopic(
                name=name,
                num_partitions=partitions,
                replication_factor=1,
                topic_configs=config,
            )
            try:
                admin.create_topics([topic], timeout_ms=int(timeout * 1000))
            except TopicAlreadyExistsError:
                if not exist_ok:
                    raise KafkaDevServiceError(f"topic {name!r} already exists") from None
            except KafkaError as exc:
                raise KafkaDevServiceError(f"creating topic {name!r} failed: {exc}") from exc
        finally:
            admin.close()

    def _create_topic_java(
        self, name: str, partitions: int, config: dict[str, str], exist_ok: bool, timeout: float
    ) -> None:
        libs = self.config.libs_dir or ensure_kafka_jars(self.config.kafka_version)
        args = [
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            self.bootstrap_servers,
            "--create",
            "--topic",
            name,
            "--partitions",
            str(partitions),
            "--replication-factor",
            "1",
        ]
        if exist_ok:
            args.append("--if-not-exists")
        for key, value in config.items():
            args += ["--config", f"{key}={value}"]
        self._run_tool(_java_executable(), str(libs / "*"), args, timeout=timeout + 60.0)


def _finalize(cell: list[subprocess.Popen[bytes] | None]) -> None:
    """Kill a broker left running when its owner is garbage collected or at exit."""
    process = cell[0]
    if process is not None and process.poll() is None:
        _terminate(process, 10.0)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run a broker in the foreground until Ctrl-C or SIGTERM.

    Args:
        argv: Command line arguments (without the program name); defaults to
            ``sys.argv[1:]``.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m sutra_embedder.devservices.kafka",
        description="Run a local single-node Apache Kafka broker (KRaft mode) for demos and tests.",
    )
    parser.add_argument(
        "--port", type=int, default=9092, help="client port, 0 for any free port (default 9092)"
    )
    parser.add_argument(
        "--controller-port", type=int, default=0, help="controller port (default: any free port)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="keep data here (default: a temporary directory)"
    )
    parser.add_argument("--partitions", type=int, default=1, help="partitions of auto-created topics")
    parser.add_argument("--heap", default="512m", help="JVM max heap (default 512m)")
    parser.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="NAME[:PARTITIONS]",
        help="create this topic at start-up; repeatable",
    )
    parser.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra broker property; repeatable",
    )
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    parser.add_argument(
        "--kafka-version", default=KAFKA_VERSION, help=f"Kafka release (default {KAFKA_VERSION})"
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))

    extra: dict[str, str] = {}
    for item in args.property:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--property expects KEY=VALUE, got {item!r}")
        extra[key.strip()] = value
    topics: list[tuple[str, int]] = []
    for item in args.topic:
        name, _, count = item.partition(":")
        try:
            topics.append((name, int(count) if count else args.partitions))
        except ValueError:
            parser.error(f"--topic expects NAME[:PARTITIONS], got {item!r}")
    try:
        config = KafkaBrokerConfig(
            port=args.port,
            controller_port=args.controller_port,
            data_dir=args.data_dir,
            heap=args.heap,
            num_partitions=args.partitions,
            extra_properties=extra,
            start_timeout=args.start_timeout,
            kafka_version=args.kafka_version,
        )
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))

    stop_requested = threading.Event()

    def _on_signal(signum: int, _frame: types.FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    broker = KafkaBroker(config)
    try:
        print(f"Starting Kafka {config.kafka_version} ...", file=sys.stderr, flush=True)
        broker.start()
        for name, count in topics:
            broker.create_topic(name, count, exist_ok=True)
        print(broker.bootstrap_servers, flush=True)
        print(
            f"Kafka ready in {broker.last_start_seconds:.1f} s; data and broker.log in "
            f"{broker.data_dir}. Press Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
        while not stop_requested.wait(0.5):
            if not broker.is_running():
                print(f"Kafka exited unexpectedly:\n{broker.log_tail()}", file=sys.stderr)
                return 1
        print("Stopping Kafka ...", file=sys.stderr, flush=True)
        return 0
    except KafkaDevServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        broker.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
