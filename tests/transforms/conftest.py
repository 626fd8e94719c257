"""Fixtures of the Beam transform tests: model settings and texts.

Runner arguments (``prism_args``, ``flink_args``) come from ``tests.fixtures.beam``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sutra_embedder.core import Embedder, EmbedderConfig
from tests.fixtures.models import REPO


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
