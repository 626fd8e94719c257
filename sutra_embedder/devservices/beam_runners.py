"""Offline set-up of Apache Beam's local runners and of its Kafka expansion service.

Beam's Python SDK downloads several things the first time they are needed:
the Prism runner binary (from GitHub releases), the Flink job server jar and
the Java expansion service behind :class:`apache_beam.io.kafka.ReadFromKafka`
/ ``WriteToKafka`` (both from Maven Central). None of these downloads work on
a machine that only reaches package registries, so this module fetches them
ahead of time into the project cache and tells Beam where they are:

* **Prism** is built from Beam's Go module with ``go install`` (through the Go
  module proxy) into ``<cache>/beam/<version>/bin/prism`` and handed to Beam
  with ``--prism_location``.
* **Flink**: Beam's ``beam-runners-flink-<flink>-job-server`` fat jar is used
  when Maven can fetch it. When it cannot (the registry reachable here serves
  no job-server jars at all), the job server is assembled from its published
  components: ``beam-runners-flink-1.19`` and its runtime dependencies,
  resolved by Maven, plus a small launcher jar whose manifest names
  ``FlinkJobServerDriver`` and lists the dependency jars. Beam's FlinkRunner
  starts that launcher exactly like the fat jar (``--flink_job_server_jar``).
* **Kafka IO expansion service**: the published
  ``beam-sdks-java-io-expansion-service`` jar when available, else a launcher
  over ``beam-sdks-java-expansion-service`` + ``beam-sdks-java-io-kafka`` +
  ``kafka-clients``. The result is also staged under the file name Beam's
  Python SDK looks for in ``~/.apache_beam/cache/jars/``, so ``ReadFromKafka``
  finds it without any download and without extra options.

All network access happens in the ``ensure_*`` functions, which skip work that
is already cached and serialise concurrent callers with a file lock. Nothing
here imports Apache Beam at module import time.

Usage::

    python -m sutra_embedder.devservices.beam_runners fetch all
    python -m sutra_embedder.devservices.beam_runners options flink

    from apache_beam.options.pipeline_options import PipelineOptions
    options = PipelineOptions(base_args + runner_options("flink"))
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types
import urllib.parse
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from sutra_embedder.cache import cache_dir, find_java
from sutra_embedder.cache import exclusive_lock as _exclusive_lock

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "BEAM_VERSION",
    "DEFAULT_BEAM_VERSION",
    "DEFAULT_FLINK_VERSION",
    "FAST_STARTUP_JVM_ARGS",
    "RUNNERS",
    "BeamRunnerError",
    "BeamToolingError",
    "FlinkJobServer",
    "LocalJobServer",
    "PrismJobServer",
    "beam_cache_dir",
    "cache_dir",
    "ensure_expansion_service_jar",
    "ensure_flink_job_server_jar",
    "ensure_prism",
    "expansion_service_options",
    "main",
    "runner_options",
]

DEFAULT_BEAM_VERSION = "2.77.0"


def _installed_beam_version() -> str:
    """Version of the installed ``apache-beam`` distribution, else the default.

    Read from the package metadata so that importing this module does not
    import Apache Beam itself (which takes about a second).
    """
    try:
        return metadata.version("apache-beam")
    except metadata.PackageNotFoundError:
        return DEFAULT_BEAM_VERSION


BEAM_VERSION: str = _installed_beam_version()
"""Version of Apache Beam's Python SDK the runners are provisioned for."""

RUNNERS = ("direct", "prism", "flink")
"""Runner names accepted by :func:`runner_options`."""

DEFAULT_FLINK_VERSION = "1.19"
"""Flink line used by default.

1.19 is the only Flink line for which the reachable Maven registry holds a
complete Beam runner (``beam-runners-flink-1.19`` with a matching
``beam-runners-java-job-service``); it runs on Java 11 and 17 and Beam 2.77's
Python SDK still accepts ``--flink_version=1.19``.
"""

FAST_STARTUP_JVM_ARGS: tuple[str, ...] = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
"""JVM flags that cut the Flink job server's start-up and small-job latency
by roughly a third on a 2-core machine (C1 only, serial GC)."""

PRISM_PACKAGE = "github.com/apache/beam/sdks/v2/go/cmd/prism"

_FLINK_JOB_SERVER_MAIN = "org.apache.beam.runners.flink.FlinkJobServerDriver"
_EXPANSION_SERVICE_MAIN = "org.apache.beam.sdk.expansion.service.ExpansionService"
_BEAM_GROUP = "org.apache.beam"
_IO_EXPANSION_ARTIFACT = "beam-sdks-java-io-expansion-service"
_IO_EXPANSION_GRADLE_TARGET = "sdks:java:io:expansion-service:shadowJar"
_LAUNCHER_ATTRIBUTE = "Sutra-Embedder-Launcher"
_SOURCE_FILE = "source.json"
_LIB_DIR = "lib"

_NO_PRISM_SINGLETON = "--experiments=disable_prism_server_singleton"

_GO_TIMEOUT_S = 1800.0
_MVN_TIMEOUT_S = 1800.0

# Beam Java release whose Flink runner components are assembled into a job
# server, per Flink line, when the published job-server jar is unavailable.
_FLINK_COMPONENT_BEAM_VERSIONS: Mapping[str, str] = types.MappingProxyType({"1.19": "2.62.0"})
_FLINK_SLF4J_BINDING = ("org.slf4j", "slf4j-simple", "1.7.30")  # Beam 2.62 uses slf4j-api 1.7.30
# The in-process ("EMBEDDED") Java SDK harness needs jamm, which Beam declares "provided".
_JAMM = ("com.github.jbellis", "jamm", "0.4.0")

# Beam Java release used to assemble the Kafka expansion service. Releases
# before about 2.64 reject the Kafka read configuration sent by Beam 2.77's
# Python SDK (unknown field ``dynamic_read_poll_interval_seconds``).
_EXPANSION_COMPONENT_BEAM_VERSION = "2.73.0"
_KAFKA_CLIENTS = ("org.apache.kafka", "kafka-clients", "3.9.1")
_EXPANSION_SLF4J_BINDING = ("org.slf4j", "slf4j-jdk14", "2.0.16")  # matches Beam 2.73's slf4j-api

_FLINK_LOGGING_PROPERTIES = (
    "# Read by slf4j-simple from the launcher jar; -D system properties override it.\n"
    "org.slf4j.simpleLogger.defaultLogLevel=warn\n"
    "org.slf4j.simpleLogger.log.org.apache.beam.runners.jobsubmission.JobServerDriver=info\n"
)


class BeamRunnerError(RuntimeError):
    """A Beam runner or one of its artifacts could not be prepared or started."""


class BeamToolingError(BeamRunnerError):
    """A tool needed to fetch or run a Beam runner (go, mvn, java) is missing."""


# --------------------------------------------------------------------------
# Cache layout
# --------------------------------------------------------------------------


def beam_cache_dir(version: str | None = None) -> Path:
    """Directory holding the runner artifacts for one Beam version."""
    return cache_dir() / "beam" / (version or BEAM_VERSION)


def _beam_jar_cache() -> Path:
    """Directory where Beam's Python SDK caches (and looks for) downloaded jars."""
    return Path.home() / ".apache_beam" / "cache" / "jars"


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _require_tool(name: str, purpose: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BeamToolingError(f"'{name}' was not found on PATH; it is needed {purpose}.")
    return found


def _java_executable() -> str:
    """The ``java`` launcher (``$JAVA_HOME/bin/java`` first, as Beam does)."""
    return find_java() or _require_tool(
        "java", "to run Beam's Flink job server and Java expansion services (Java 11 or 17)")


# --------------------------------------------------------------------------
# Prism
# --------------------------------------------------------------------------


def _go_module_tag(version: str) -> str:
    """Git tag of Beam's Go module for a Python SDK version (``2.77.0rc1`` -> ``v2.77.0-RC1``)."""
    match = re.fullmatch(r"(\d+\.\d+\.\d+)(?:rc(\d+))?", version)
    if match is None:
        raise BeamRunnerError(
            f"Cannot derive a Go module tag from Beam version {version!r}; build Prism by hand "
            f"('go install {PRISM_PACKAGE}@<tag>') and pass --prism_location=PATH."
        )
    base, rc = match.groups()
    return f"v{base}-RC{rc}" if rc else f"v{base}"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def ensure_prism(version: str | None = None) -> Path:
    """Build Beam's Prism runner binary once and return its path.

    Runs ``go install github.com/apache/beam/sdks/v2/go/cmd/prism@v<version>``
    with ``GOBIN`` pointing into ``<cache>/beam/<version>/bin``; modules come
    from the Go module proxy. Skipped when the binary already exists.

    Args:
        version: Beam version; defaults to :data:`BEAM_VERSION`.

    Returns:
        Path of the ``prism`` executable (pass it as ``--prism_location``).

    Raises:
        BeamToolingError: ``go`` is not on ``PATH``.
        BeamRunnerError: The build failed.
    """
    version = version or BEAM_VERSION
    bin_dir = beam_cache_dir(version) / "bin"
    binary = bin_dir / "prism"
    if _is_executable(binary):
        return binary
    with _exclusive_lock(bin_dir / ".prism.lock"):
        if _is_executable(binary):
            return binary
        tag = _go_module_tag(version)
        go = _require_tool(
            "go",
            f"once to build Beam's Prism runner (go install {PRISM_PACKAGE}@{tag}); install Go 1.26 or newer",
        )
        with tempfile.TemporaryDirectory(prefix=".prism-build-", dir=bin_dir) as build_dir:
            env = {**os.environ, "GOBIN": build_dir, "GOWORK": "off"}
            command = [go, "install", "-trimpath", f"{PRISM_PACKAGE}@{tag}"]
            try:
                result = subprocess.run(
                    command,
                    cwd=build_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=_GO_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise BeamRunnerError(f"'{' '.join(command)}' did not finish within {_GO_TIMEOUT_S:.0f} s") from exc
            built = Path(build_dir) / "prism"
            if result.returncode != 0 or not _is_executable(built):
                raise BeamRunnerError(
                    f"'{' '.join(command)}' failed (exit code {result.returncode}):\n"
                    f"{_tail(result.stdout + result.stderr)}"
                )
            built.replace(binary)
    return binary


# --------------------------------------------------------------------------
# Maven-fetched Java services
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _MavenDependency:
    group: str
    artifact: str
    version: str
    exclusions: tuple[tuple[str, str], ...] = ()

    @property
    def coordinates(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version}"

    def pom_xml(self) -> str:
        excluded = "".join(
            f"<exclusion><groupId>{group}</groupId><artifactId>{artifact}</artifactId></exclusion>"
            for group, artifact in self.exclusions
        )
        exclusions = f"<exclusions>{excluded}</exclusions>" if excluded else ""
        return (
            f"    <dependency><groupId>{self.group}</groupId><artifactId>{self.artifact}</artifactId>"
            f"<version>{self.version}</version>{exclusions}</dependency>\n"
        )


@dataclass(frozen=True)
class _JavaService:
    """How to obtain one runnable Java service jar."""

    name: str
    directory: Path
    published: _MavenDependency
    main_class: str
    components: tuple[_MavenDependency, ...] = ()
    resources: Mapping[str, str] = field(default_factory=dict)

    @property
    def jar(self) -> Path:
        return self.directory / f"{self.name}.jar"


def _mvn() -> str:
    return _require_tool(
        "mvn",
        "once to download Beam's Java artifacts from Maven Central; install Maven 3.6+",
    )


def _run_mvn(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [_mvn(), "-B", "-q", *args]
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_MVN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BeamRunnerError(f"'{' '.join(command)}' did not finish within {_MVN_TIMEOUT_S:.0f} s") from exc


def _manifest(jar: Path) -> dict[str, str]:
    """Main attributes of a jar's manifest (continuation lines joined)."""
    with zipfile.ZipFile(jar) as archive:
        text = archive.read("META-INF/MANIFEST.MF").decode("utf-8")
    attributes: dict[str, str] = {}
    last: str | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            if attributes:
                break  # end of the main section
            continue
        if line.startswith(" ") and last is not None:
            attributes[last] += line[1:]
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip()
            attributes[last] = value.strip()
    return attributes


def _class_path(jar: Path) -> list[Path]:
    """Files named by a jar's ``Class-Path`` manifest attribute."""
    entries = _manifest(jar).get("Class-Path", "").split()
    paths = []
    for entry in entries:
        parsed = urllib.parse.urlparse(entry)
        if parsed.scheme == "file":
            paths.append(Path(urllib.parse.unquote(parsed.path)))
        else:
            paths.append(jar.parent / urllib.parse.unquote(entry))
    return paths


def _is_runnable_jar(jar: Path) -> bool:
    """A readable jar with a ``Main-Class`` whose ``Class-Path`` files all exist."""
    try:
        if "Main-Class" not in _manifest(jar):
            return False
        return all(path.is_file() for path in _class_path(jar))
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
        return False


def _manifest_line(name: str, value: str) -> bytes:
    """One manifest attribute, wrapped at 72 bytes as the jar specification requires."""
    data = f"{name}: {value}".encode()
    chunks = [data[:70]]
    data = data[70:]
    while data:
        chunks.append(b" " + data[:69])
        data = data[69:]
    return b"\r\n".join(chunks) + b"\r\n"


def _write_launcher_jar(
    target: Path,
    main_class: str,
    class_path: Sequence[str],
    kind: str,
    resources: Mapping[str, str] | None = None,
) -> None:
    """Write (atomically) a jar that only names a main class and a classpath."""
    manifest = (
        _manifest_line("Manifest-Version", "1.0")
        + _manifest_line("Main-Class", main_class)
        + _manifest_line("Class-Path", " ".join(class_path))
        + _manifest_line(_LAUNCHER_ATTRIBUTE, kind)
        + b"\r\n"
    )
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("META-INF/MANIFEST.MF", manifest)
        for name, text in (resources or {}).items():
            archive.writestr(name, text)
    tmp.replace(target)


def _fetch_published_jar(dependency: _MavenDependency, workdir: Path) -> Path | None:
    """Copy one published jar with Maven; ``None`` when the registry lacks it."""
    out = workdir / "published"
    out.mkdir()
    result = _run_mvn(
        ["dependency:copy", f"-Dartifact={dependency.coordinates}", f"-DoutputDirectory={out}"],
        cwd=workdir,
    )
    jar = out / f"{dependency.artifact}-{dependency.version}.jar"
    if result.returncode != 0 or not jar.is_file():
        return None
    return jar


def _assemble(service: _JavaService, workdir: Path) -> list[str]:
    """Resolve the components' runtime classpath into ``workdir/lib``."""
    pom = (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        f"  <groupId>dev.sutra-embedder</groupId><artifactId>{service.name}-classpath</artifactId>"
        "<version>1</version><packaging>pom</packaging>\n"
        "  <dependencies>\n" + "".join(dep.pom_xml() for dep in service.components) + "  </dependencies>\n"
        "</project>\n"
    )
    (workdir / "pom.xml").write_text(pom, "utf-8")
    lib = workdir / _LIB_DIR
    result = _run_mvn(
        ["dependency:copy-dependencies", f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
        cwd=workdir,
    )
    jars = sorted(path.name for path in lib.glob("*.jar")) if lib.is_dir() else []
    if result.returncode != 0 or not jars:
        wanted = ", ".join(dep.coordinates for dep in service.components)
        raise BeamRunnerError(
            f"mvn failed (exit code {result.returncode}) to resolve {wanted}:\n{_tail(result.stdout + result.stderr)}"
        )
    return jars


def _ensure_java_service(service: _JavaService) -> Path:
    """Fetch ``service`` into its cache directory (once) and return its jar."""
    if _is_runnable_jar(service.jar):
        return service.jar
    service.directory.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(service.directory.parent / f".{service.name}.lock"):
        if _is_runnable_jar(service.jar):
            return service.jar
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f".{service.name}-", dir=service.directory.parent) as tmp:
            workdir = Path(tmp)
            staged = workdir / "staged"
            staged.mkdir()
            source: dict[str, object]
            published = _fetch_published_jar(service.published, workdir)
            if published is not None and _is_runnable_jar(published):
                published.replace(staged / service.jar.name)
                source = {"kind": "published", "artifacts": [service.published.coordinates]}
            elif service.components:
                jars = _assemble(service, workdir)
                (workdir / _LIB_DIR).replace(staged / _LIB_DIR)
                _write_launcher_jar(
                    staged / service.jar.name,
                    service.main_class,
                    [f"{_LIB_DIR}/{urllib.parse.quote(name)}" for name in jars],
                    kind=service.name,
                    resources=service.resources,
                )
                source = {
                    "kind": "assembled",
                    "published_unavailable": service.published.coordinates,
                    "artifacts": [dep.coordinates for dep in service.components],
                    "jars": len(jars),
                }
            else:
                raise BeamRunnerError(
                    f"Maven could not fetch {service.published.coordinates} and no fallback is known for it."
                )
            source["fetch_seconds"] = round(time.monotonic() - started, 1)
            (staged / _SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", "utf-8")
            if service.directory.exists():
                shutil.rmtree(service.directory)
            staged.replace(service.directory)
    return service.jar


def _flink_service(flink_version: str) -> _JavaService:
    published = _MavenDependency(_BEAM_GROUP, f"beam-runners-flink-{flink_version}-job-server", BEAM_VERSION)
    components: tuple[_MavenDependency, ...] = ()
    java_version = _FLINK_COMPONENT_BEAM_VERSIONS.get(flink_version)
    if java_version is not None:
        components = (
            _MavenDependency(_BEAM_GROUP, f"beam-runners-flink-{flink_version}", java_version),
            _MavenDependency(*_FLINK_SLF4J_BINDING),
            _MavenDependency(*_JAMM),
        )
    return _JavaService(
        name=f"flink-{flink_version}-job-server",
        directory=beam_cache_dir() / f"flink-{flink_version}-job-server",
        published=published,
        main_class=_FLINK_JOB_SERVER_MAIN,
        components=components,
        resources={"simplelogger.properties": _FLINK_LOGGING_PROPERTIES},
    )


def ensure_flink_job_server_jar(flink_version: str = DEFAULT_FLINK_VERSION) -> Path:
    """Fetch a Flink job server for :data:`BEAM_VERSION` once and return its jar.

    Tries Beam's published ``beam-runners-flink-<flink_version>-job-server``
    fat jar first. If Maven cannot fetch it, assembles the job server from
    Beam's Flink runner components (known for Flink ``1.19``: Beam Java
    2.62.0, Flink 1.19.0) and returns a launcher jar that Beam starts with
    ``java -jar`` like the fat jar. Stored under
    ``<cache>/beam/<version>/flink-<flink_version>-job-server/`` together with
    a ``source.json`` describing what was used.

    Args:
        flink_version: Flink line, e.g. ``"1.19"``.

    Returns:
        Path for ``--flink_job_server_jar``.

    Raises:
        BeamToolingError: ``mvn`` is not on ``PATH`` (and nothing is cached).
        BeamRunnerError: Maven could not provide the job server.
    """
    if not re.fullmatch(r"\d+\.\d+", flink_version):
        raise ValueError(f"flink_version: expected a Flink line such as '1.19', got {flink_version!r}")
    return _ensure_java_service(_flink_service(flink_version))


def _expansion_service() -> _JavaService:
    version = _EXPANSION_COMPONENT_BEAM_VERSION
    return _JavaService(
        name="io-expansion-service",
        directory=beam_cache_dir() / "io-expansion-service",
        published=_MavenDependency(_BEAM_GROUP, _IO_EXPANSION_ARTIFACT, BEAM_VERSION),
        main_class=_EXPANSION_SERVICE_MAIN,
        components=(
            _MavenDependency(_BEAM_GROUP, "beam-sdks-java-expansion-service", version),
            # The Confluent schema-registry artifacts live outside Maven Central
            # and are only needed for Confluent Avro deserialisers.
            _MavenDependency(_BEAM_GROUP, "beam-sdks-java-io-kafka", version, (("io.confluent", "*"),)),
            _MavenDependency(*_KAFKA_CLIENTS),
            _MavenDependency(*_EXPANSION_SLF4J_BINDING),
            # For the Java worker the expansion service also starts in-process
            # (--alsoStartLoopbackWorker), which Prism uses to run the Java steps.
            _MavenDependency(*_JAMM),
        ),
    )


def _beam_cached_expansion_jar_name() -> str:
    release = BEAM_VERSION.split("rc")[0]
    return f"{_IO_EXPANSION_ARTIFACT}-{release}.jar"


def _stage_for_beam(jar: Path) -> Path:
    """Put ``jar`` where Beam's Python SDK looks before downloading the IO expansion service.

    A jar already there that this module did not write (e.g. one Beam
    downloaded itself) is left alone.
    """
    target = _beam_jar_cache() / _beam_cached_expansion_jar_name()
    if target.exists() and _LAUNCHER_ATTRIBUTE not in _manifest_or_empty(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if _LAUNCHER_ATTRIBUTE in _manifest(jar):
        # Launchers list their classpath relative to their own directory;
        # the staged copy lives elsewhere, so it names the jars by absolute URL.
        class_path = [path.resolve().as_uri() for path in _class_path(jar)]
        if target.exists() and [p.as_uri() for p in _class_path(target)] == class_path:
            return target
        _write_launcher_jar(target, _EXPANSION_SERVICE_MAIN, class_path, kind="io-expansion-service")
    else:
        tmp = target.with_name(target.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            tmp.symlink_to(jar.resolve())
        except OSError:
            shutil.copyfile(jar, tmp)
        tmp.replace(target)
    return target


def _manifest_or_empty(jar: Path) -> dict[str, str]:
    try:
        return _manifest(jar)
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
        return {}


def ensure_expansion_service_jar(*, stage_for_beam: bool = True) -> Path:
    """Fetch the Java expansion service behind Beam's Kafka IO once; return its jar.

    Tries Beam's published ``beam-sdks-java-io-expansion-service`` jar for
    :data:`BEAM_VERSION`; if Maven cannot fetch it, assembles an expansion
    service from ``beam-sdks-java-expansion-service`` and
    ``beam-sdks-java-io-kafka`` (Beam Java 2.73.0) plus ``kafka-clients``.

    With ``stage_for_beam`` (the default) the jar is also made available as
    ``~/.apache_beam/cache/jars/beam-sdks-java-io-expansion-service-<version>.jar``,
    the file Beam's ``ReadFromKafka``/``WriteToKafka`` use before they try to
    download, so they work offline without any option. Alternatively pass
    :func:`expansion_service_options` to the pipeline, or
    ``expansion_service=JavaJarExpansionService(str(path))`` to the transform.

    Returns:
        Path of the runnable expansion-service jar in the project cache.

    Raises:
        BeamToolingError: ``mvn`` is not on ``PATH`` (and nothing is cached).
        BeamRunnerError: Maven could not provide the expansion service.
    """
    jar = _ensure_java_service(_expansion_service())
    if stage_for_beam:
        _stage_for_beam(jar)
    return jar


def expansion_service_options() -> list[str]:
    """Pipeline arguments that point Beam's IO expansion service at the cached jar.

    Beam honours ``--beam_services`` for transforms applied inside a
    ``with Pipeline(options=...)`` block.
    """
    jar = ensure_expansion_service_jar()
    return ["--beam_services=" + json.dumps({_IO_EXPANSION_GRADLE_TARGET: str(jar)})]


# --------------------------------------------------------------------------
# Pipeline options
# --------------------------------------------------------------------------


def runner_options(runner: str, *, flink_version: str = DEFAULT_FLINK_VERSION) -> list[str]:
    """Extra pipeline arguments that run a pipeline on ``runner`` offline.

    Fetches what the runner needs first (see the ``ensure_*`` functions).

    * ``"direct"``: ``--runner=DirectRunner``. Beam 2.77's DirectRunner first
      tries Prism, whose download fails at once without internet access, and
      then runs the pipeline in-process (FnApiRunner / BundleBasedDirectRunner).
    * ``"prism"``: Prism built from source, LOOPBACK Python workers.

    Both pass ``--experiments=disable_prism_server_singleton``: Beam keeps one
    Prism job server per process and reuses it even when a later pipeline
    names another ``--prism_location``. Without the flag, a DirectRunner
    pipeline (whose Prism download failed) leaves a broken server behind that
    makes every later Prism pipeline in the process fail, and a DirectRunner
    pipeline run after a Prism one silently runs on Prism. The price: each
    Prism pipeline leaves its idle Prism process (about 40 MB) running until
    the interpreter exits; :class:`PrismJobServer` avoids that.
    * ``"flink"``: an embedded Flink mini-cluster (``--flink_master=[local]``)
      started by Beam through the cached job server, LOOPBACK Python workers,
      parallelism 1. Each pipeline starts its own job server JVM (5-10 s),
      which Beam keeps until the interpreter exits; use
      :class:`FlinkJobServer` to share one between pipelines.

    Args:
        runner: ``"direct"``, ``"prism"`` or ``"flink"`` (case-insensitive,
            a ``Runner`` suffix is accepted).
        flink_version: Flink line for ``"flink"``.

    Returns:
        Arguments for ``PipelineOptions(base_args + runner_options(...))``.

    Raises:
        ValueError: Unknown runner.
        BeamToolingError / BeamRunnerError: The runner cannot be provisioned.
    """
    name = runner.strip().lower()
    name = name.removesuffix("runner")
    if name == "direct":
        return ["--runner=DirectRunner", _NO_PRISM_SINGLETON]
    if name == "prism":
        return [
            "--runner=PrismRunner",
            f"--prism_location={ensure_prism()}",
            "--environment_type=LOOPBACK",
            _NO_PRISM_SINGLETON,
        ]
    if name == "flink":
        _java_executable()
        jar = ensure_flink_job_server_jar(flink_version)
        return [
            "--runner=FlinkRunner",
            f"--flink_job_server_jar={jar}",
            "--flink_master=[local]",
            f"--flink_version={flink_version}",
            "--environment_type=LOOPBACK",
            "--parallelism=1",
        ]
    raise ValueError(f"runner: expected one of {', '.join(RUNNERS)}, got {runner!r}")


# --------------------------------------------------------------------------
# Long-lived job servers shared by several pipelines
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class LocalJobServer:
    """A job service process on ``localhost`` that pipelines reach with ``--job_endpoint``."""

    _label = "job server"

    def __init__(self, *, log_path: Path | None, startup_timeout: float) -> None:
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    def _command(self, port: int, workdir: Path) -> list[str]:
        raise NotImplementedError

    def pipeline_options(self) -> list[str]:
        """Pipeline arguments that submit to this server."""
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        """``localhost:<port>`` of the job service (only while running)."""
        if self._port is None or self._process is None:
            raise BeamRunnerError(f"the {self._label} is not running")
        return f"localhost:{self._port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        """Last lines of the server's output."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return _tail(self.log_path.read_text("utf-8", errors="replace"), lines)

    def start(self) -> Self:
        """Fetch what the server needs, start it and wait until it accepts jobs."""
        if self._process is not None:
            return self
        self._workdir = tempfile.TemporaryDirectory(prefix="sutra-job-server-")
        workdir = Path(self._workdir.name)
        if self.log_path is None:
            self.log_path = workdir / "server.log"
        started = time.monotonic()
        try:
            for _attempt in range(3):  # the picked port may be taken before the server binds it
                port = _free_port()
                command = self._command(port, workdir)
                with open(self.log_path, "ab") as log:
                    process = subprocess.Popen(
                        command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
                    )
                self._process, self._port = process, port
                deadline = started + self.startup_timeout
                while process.poll() is None and time.monotonic() < deadline:
                    if _accepts_connections(port):
                        self.startup_seconds = time.monotonic() - started
                        return self
                    time.sleep(0.1)
                if process.poll() is None:
                    raise BeamRunnerError(
                        f"the {self._label} did not listen on port {port} within "
                        f"{self.startup_timeout:.0f} s:\n{self.log_tail()}"
                    )
                self._process = None
                if not re.search(r"BindException|address already in use", self.log_tail(), re.IGNORECASE):
                    break
            raise BeamRunnerError(f"the {self._label} exited during start-up:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        process, self._process, self._port = self._process, None, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._workdir is not None:
            if self.log_path is not None and self.log_path.parent == Path(self._workdir.name):
                self.log_path = None
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class FlinkJobServer(LocalJobServer):
    """A Flink job server process shared by several pipelines.

    Beam's FlinkRunner normally starts a job server JVM for every pipeline
    and keeps it until the Python process exits. Running one server and
    pointing pipelines at it with ``--job_endpoint`` (:meth:`pipeline_options`)
    saves that start-up and memory. Each job still gets its own embedded
    Flink mini-cluster (``--flink-master [local]``).

    Use as a context manager::

        with FlinkJobServer() as server:
            PipelineOptions(base_args + server.pipeline_options())
    """

    _label = "Flink job server"

    def __init__(
        self,
        flink_version: str = DEFAULT_FLINK_VERSION,
        *,
        jvm_args: Sequence[str] = FAST_STARTUP_JVM_ARGS,
        log_path: Path | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        super().__init__(log_path=log_path, startup_timeout=startup_timeout)
        self.flink_version = flink_version
        self.jvm_args = tuple(jvm_args)

    def _command(self, port: int, workdir: Path) -> list[str]:
        java = _java_executable()
        jar = ensure_flink_job_server_jar(self.flink_version)
        return [
            java,
            *self.jvm_args,
            "-jar",
            str(jar),
            "--flink-master",
            "[local]",
            "--job-port",
            str(port),
            "--artifact-port",
            "0",
            "--expansion-port",
            "0",
            "--artifacts-dir",
            str(workdir / "artifacts"),
        ]

    def pipeline_options(self) -> list[str]:
        return [
            "--runner=FlinkRunner",
            f"--job_endpoint={self.endpoint}",
            f"--flink_version={self.flink_version}",
            "--environment_type=LOOPBACK",
            "--parallelism=1",
        ]


class PrismJobServer(LocalJobServer):
    """A Prism process shared by several pipelines (``--job_endpoint``).

    Unlike ``runner_options("prism")`` this neither depends on Beam's
    process-wide Prism singleton nor leaves one Prism process per pipeline
    running until the interpreter exits.
    """

    _label = "Prism job server"

    def __init__(self, *, log_level: str = "warn", log_path: Path | None = None, startup_timeout: float = 60.0) -> None:
        super().__init__(log_path=log_path, startup_timeout=startup_timeout)
        self.log_level = log_level

    def _command(self, port: int, workdir: Path) -> list[str]:
        return [
            str(ensure_prism()),
            f"--job_port={port}",
            f"--log_level={self.log_level}",
            "--log_kind=text",
            "--serve_http=false",
        ]

    def pipeline_options(self) -> list[str]:
        return [
            "--runner=PrismRunner",
            f"--job_endpoint={self.endpoint}",
            "--environment_type=LOOPBACK",
        ]


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _describe(jar: Path) -> str:
    source_file = jar.parent / _SOURCE_FILE
    size = sum(path.stat().st_size for path in [jar, *_class_path(jar)] if path.is_file())
    detail = ""
    if source_file.is_file():
        source = json.loads(source_file.read_text("utf-8"))
        detail = f", {source.get('kind')}: {', '.join(source.get('artifacts', []))}"
    return f"{jar} ({size / 2**20:.0f} MiB{detail})"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``fetch [prism|flink|kafka-io|all]`` and ``options RUNNER``."""
    parser = argparse.ArgumentParser(
        prog="python -m sutra_embedder.devservices.beam_runners",
        description=f"Fetch and configure Apache Beam {BEAM_VERSION} runners for offline use.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download/build runner artifacts into the cache")
    fetch.add_argument("what", nargs="?", default="all", choices=["prism", "flink", "kafka-io", "all"])
    fetch.add_argument("--flink-version", default=DEFAULT_FLINK_VERSION)
    options = commands.add_parser("options", help="print the pipeline arguments for a runner, one per line")
    options.add_argument("runner", choices=RUNNERS)
    options.add_argument("--flink-version", default=DEFAULT_FLINK_VERSION)
    args = parser.parse_args(argv)
    try:
        if args.command == "options":
            print("\n".join(runner_options(args.runner, flink_version=args.flink_version)))
            return 0
        steps = ["prism", "flink", "kafka-io"] if args.what == "all" else [args.what]
        for step in steps:
            started = time.monotonic()
            if step == "prism":
                path = ensure_prism()
                description = f"{path} ({path.stat().st_size / 2**20:.0f} MiB)"
            elif step == "flink":
                description = _describe(ensure_flink_job_server_jar(args.flink_version))
            else:
                description = _describe(ensure_expansion_service_jar())
            print(f"{step}: {description} [{time.monotonic() - started:.1f} s]", flush=True)
    except BeamRunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
