"""Provider selection is honest: a required GPU that is missing is an error."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from sutra_embedder.core import Embedder, EmbedderConfig, ProviderUnavailableError, RuntimeConfig

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime build has CUDA")
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_required_gpu_missing_is_an_error(minilm_dir: Path, device: str) -> None:
    with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
        Embedder(EmbedderConfig(model=str(minilm_dir), runtime=RuntimeConfig(device=device)))  # type: ignore[arg-type]


def test_auto_reports_what_it_runs_on(minilm_dir: Path) -> None:
    emb = Embedder(EmbedderConfig(model=str(minilm_dir), runtime=RuntimeConfig(device="auto")))
    info = emb.describe()
    assert info["active_provider"] == emb.session.get_providers()[0]
    if not HAS_CUDA:
        assert info["active_provider"] == "CPUExecutionProvider"
        assert info["fallback"] and "CPU" in info["fallback"]


def test_cpu_threads_setting(minilm_dir: Path) -> None:
    emb = Embedder(EmbedderConfig(model=str(minilm_dir), runtime=RuntimeConfig(device="cpu", intra_op_threads=1)))
    assert emb.session.get_session_options().intra_op_num_threads == 1
    assert emb.describe()["fallback"] is None


def test_missing_model_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sutra_embedder.core import ModelNotFoundError

    monkeypatch.setenv("SUTRA_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="sutra models import"):
        Embedder(EmbedderConfig(model=str(tmp_path)))
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        Embedder(EmbedderConfig(model="nope"))
    with pytest.raises(ModelNotFoundError, match="Hugging Face hub"):
        Embedder(EmbedderConfig(model="some-org/some-model"))
