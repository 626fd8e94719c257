"""Every command in docs/deployment.md uses flags that exist.

The page's shell blocks are split into commands; ``sutra ...`` commands (and the
arguments after a ``sutra-worker`` image in ``docker run`` and in the Kubernetes
manifest) go through the real ``sutra`` parser; the Beam pipelines' flags must
be options of Beam, of the pipeline, or runner options the Flink job server
offers; ``python -m`` modules, Dockerfiles and compose files must exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from sutra_embedder.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "deployment.md"

# Options of Flink's Java runner: the Flink job server describes them to the Python SDK, which
# accepts them only when it submits to that server (PortableRunner --job_endpoint).
FLINK_JOB_SERVER_OPTIONS = {"checkpointing_interval"}


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)


def shell_commands() -> list[list[str]]:
    """Every command of the page's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
                argv = argv[1:]  # VAR=value prefixes
            if argv:
                commands.append(argv)
    return commands


def flags(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


@cache
def beam_options() -> set[str]:
    """Every option Beam's pipeline options define, with the pipelines' EmbedderOptions."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    import sutra_embedder.transforms.options  # noqa: F401  (registers EmbedderOptions)

    parser = _BeamArgumentParser(add_help=False, allow_abbrev=False, conflict_handler="resolve")
    pending = list(PipelineOptions.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        cls._add_argparse_args(parser)
    return {opt for action in parser._actions for opt in action.option_strings}


@cache
def module_help_flags(module: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"(--[a-z0-9][a-z0-9_-]*)", proc.stdout))


def parse_sutra(argv: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"sutra rejects: sutra {' '.join(argv)}")


def worker_args_of_docker_run(argv: list[str]) -> list[str] | None:
    """The arguments given to the worker image's entry point in a ``docker run``."""
    for i, arg in enumerate(argv):
        if re.search(r"(^|/)sutra-worker:[\w.-]+$", arg):
            return argv[i + 1 :]
    return None


def test_the_page_exists_and_the_readme_links_it() -> None:
    assert DOC.is_file()
    assert "(docs/deployment.md)" in (REPO / "README.md").read_text(encoding="utf-8")
    assert len(shell_commands()) > 20


def test_sutra_commands_parse() -> None:
    seen = set()
    for argv in shell_commands():
        if argv[0] == "sutra":
            args = parse_sutra(argv[1:])
            seen.add(args.command)
        worker = worker_args_of_docker_run(argv) if argv[:2] == ["docker", "run"] else None
        if worker is not None:
            parse_sutra(["worker", *worker])
            seen.add("docker run worker")
    assert {"produce", "models", "docker run worker"} <= seen


def test_worker_args_of_the_kubernetes_manifest_parse() -> None:
    found = 0
    for block in blocks("yaml"):
        doc: Any = yaml.safe_load(block)
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if "sutra-worker:" in container["image"]:
                args = parse_sutra(["worker", *container["args"]])
                from sutra_embedder.pipelines.kafka_worker import config_from_args

                config_from_args(args)  # values valid too (topics, sink URI, guarantee)
                assert str(args.metrics_port) in {str(p["containerPort"]) for p in container["ports"]}
                found += 1
    assert found == 1


@pytest.mark.parametrize("module", ["sutra_embedder.pipelines.beam_embed", "sutra_embedder.pipelines.beam_kafka"])
def test_beam_pipeline_flags_exist(module: str) -> None:
    commands = [argv for argv in shell_commands() if argv[:3] == ["python", "-m", module]]
    assert commands, f"no {module} command on the page"
    known = beam_options() | module_help_flags(module) | {f"--{o}" for o in FLINK_JOB_SERVER_OPTIONS}
    for argv in commands:
        unknown = [f for f in flags(argv[3:]) if f not in known]
        assert not unknown, f"{module}: unknown flags {unknown} in: {' '.join(argv)}"


def test_beam_options_catch_a_wrong_flag() -> None:
    assert "--sdk_container_image" in beam_options() and "--max_batch_tokens" in beam_options()
    assert "--sdk_container_img" not in beam_options()
    assert "--max-batch-tokens" not in beam_options()  # the pipelines spell their options with underscores


def test_python_modules_and_files_exist() -> None:
    modules = 0
    for argv in shell_commands():
        if argv[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(argv[2]) is not None, argv[2]
            modules += 1
        if argv[0] == "docker" and "-f" in argv:
            path = argv[argv.index("-f") + 1]
            assert (REPO / path).is_file(), f"{path} does not exist"
    assert modules >= 5


def test_dockerfiles_and_images_named_on_the_page_match() -> None:
    text = DOC.read_text(encoding="utf-8")
    for dockerfile in (REPO / "docker").glob("*.Dockerfile"):
        assert f"docker/{dockerfile.name}" in text, f"{dockerfile.name} is not documented"
        base = next(line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("FROM "))
        assert f"`{base}`" in text, f"the page names another base image than {dockerfile.name}'s {base}"
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert version is not None
    tags = set(re.findall(r"sutra-(?:beam-gpu|beam-cpu|worker):([\w.-]+)", text))
    assert tags == {version.group(1)}, f"image tags {tags} differ from the package version {version.group(1)}"
