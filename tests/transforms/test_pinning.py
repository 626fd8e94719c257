"""Beam worker processes pinned one per device: the DoFn-side helper loads the model on the worker's device."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sutra_embedder.core import Embedder, EmbedderConfig
from sutra_embedder.core.pool import DEVICE_INDEX_ENV
from sutra_embedder.transforms.pinning import acquire_pinned_model


def test_acquire_pinned_model_uses_the_workers_device(minilm_dir: Path, reference: Embedder) -> None:
    config = EmbedderConfig(model=str(minilm_dir))
    model = acquire_pinned_model(config, devices="cpu*2", env={DEVICE_INDEX_ENV: "3"})
    assert model.identity().provider == "CPUExecutionProvider"
    shared = model.embedder  # type: ignore[attr-defined]
    assert shared.config.runtime.device == "cpu"
    traced = model.embed(["pinned worker", "second text"])
    np.testing.assert_allclose(traced.result.vectors, reference.embed(["pinned worker", "second text"]), atol=2e-5)
