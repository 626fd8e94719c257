"""Fixtures of the Beam transform tests: model settings, texts, runner arguments."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sutra_embedder.core import Embedder, EmbedderConfig
from tests.fixtures.models import REPO

try:  # runner fixtures (Prism, Flink) shared by the whole test suite
    from tests.fixtures.beam import flink_args, prism_args  # noqa: F401
except ImportError:  # pragma: no cover - until the shared fixtures exist

    def _runner_args(runner: str) -> list[str]:
        try:
            from sutra_embedder.devservices.beam_runners import runner_options
        except ImportError as exc:
            pytest.skip(f"Beam runner tooling unavailable: {exc}")
        try:
            return list(runner_options(runner))
        except Exception as exc:  # missing toolchain or offline: skip, as the shared fixtures do
            pytest.skip(f"{runner} runner unavailable: {exc}")

    @pytest.fixture(scope="session")
    def prism_args() -> list[str]:
        return _runner_args("prism")

    @pytest.fixture(scope="session")
    def flink_args() -> list[str]:
        return _runner_args("flink")


@pytest.fixture(scope="session")
def embedder_config(minilm_dir: Path) -> EmbedderConfig:
    """The real MiniLM model, as the core tests use it."""
    return EmbedderConfig(model=str(minilm_dir))


@pytest.fixture(scope="session")
def reference(make_embedder: Callable[..., Embedder]) -> Embedder:
    """The core embedder alone: expected vectors come from ``Embedder.embed``."""
    return make_embedder()


@pytest.fixture(scope="session")
def corpus_records() -> list[dict[str, str]]:
    """Forty real records of varied length, up to about 80 tokens (ids and texts)."""
    lines = (REPO / "examples/corpus.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()][:40]
    return [{"id": f"doc-{i:03d}", "text": r["text"][:400]} for i, r in enumerate(records)]
