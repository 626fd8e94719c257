"""Faust workers pinned one per device: each builds its embedder on its own device."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sutra_embedder.agents.pinning import worker_embedder
from sutra_embedder.core import Embedder, EmbedderConfig
from sutra_embedder.core.pool import DEVICE_INDEX_ENV, DeviceSpec


def test_worker_embedder_runs_on_the_workers_device(minilm_dir: Path, make_embedder: Callable[..., Embedder]) -> None:
    config = EmbedderConfig(model=str(minilm_dir))
    emb = worker_embedder(config, devices=[DeviceSpec("cpu", 0)], env={DEVICE_INDEX_ENV: "1"})
    assert emb.config.runtime.device == "cpu"
    assert emb.describe()["active_provider"] == "CPUExecutionProvider"
    texts = ["a Faust worker", "on its own device"]
    np.testing.assert_allclose(emb.embed(texts), make_embedder().embed(texts), atol=2e-5)
