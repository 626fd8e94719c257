"""Model import: ONNX graph from safetensors, manifest, cache, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sutra_embedder.cli import main
from sutra_embedder.core import Embedder, EmbedderConfig, ModelNotFoundError, load_manifest
from sutra_embedder.models.registry import ensure_model, import_into_cache
from sutra_embedder.models.safetensors_io import load_safetensors, save_safetensors


def test_safetensors_reader_matches_reference_library(minilm_source: Path, tmp_path: Path) -> None:
    ref_lib = pytest.importorskip("safetensors.numpy")
    ours = load_safetensors(minilm_source / "model.safetensors")
    ref = ref_lib.load_file(str(minilm_source / "model.safetensors"))
    assert sorted(ours) == sorted(ref)
    for name in ref:
        np.testing.assert_array_equal(ours[name], ref[name])
    # Round trip through our writer, read back by the reference library.
    small = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    save_safetensors(tmp_path / "x.safetensors", small)
    back = ref_lib.load_file(str(tmp_path / "x.safetensors"))
    for k, v in small.items():
        np.testing.assert_array_equal(back[k], v)


def test_import_writes_manifest_and_is_cached(minilm_source: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SUTRA_CACHE_DIR", str(tmp_path))
    src = tmp_path / "src"
    shutil.copytree(minilm_source, src)
    (src / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "passage": ""}}), encoding="utf-8")
    assert main(["models", "import", str(src), "--name", "mini-q"]) == 0
    path = tmp_path / "models" / "mini-q"
    m = load_manifest(path)
    assert (m.dim, m.max_tokens, m.pooling, m.normalize) == (384, 256, "mean", True)
    assert m.prompts == {"query": "query: "}
    assert len(m.source_sha256) == 64
    stamp = (path / "model.onnx").stat().st_mtime_ns
    assert ensure_model("mini-q") == path
    assert import_into_cache(src, "mini-q") == path
    assert (path / "model.onnx").stat().st_mtime_ns == stamp  # not converted again
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed["mini-q"]["dim"] == "384"
    emb = Embedder(EmbedderConfig(model="mini-q"))
    np.testing.assert_allclose(emb.embed(["x"], prompt="query"), emb.embed(["query: x"]), atol=1e-6)


def test_import_refuses_what_it_cannot_convert(tmp_path: Path, minilm_source: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTRA_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        import_into_cache(tmp_path, "empty")
    src = tmp_path / "other"
    shutil.copytree(minilm_source, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        import_into_cache(src, "gpt")
    assert main(["models", "import", "org/unreachable-model", "--name", "u"]) == 2


def test_cls_and_unnormalised_pooling(minilm_source: Path, tmp_path: Path, st_minilm: Any) -> None:
    """Another pooling config is honoured: CLS pooling, no Normalize module."""
    torch = pytest.importorskip("torch")
    src = tmp_path / "cls"
    shutil.copytree(minilm_source, src)
    pool = json.loads((src / "1_Pooling/config.json").read_text())
    pool.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (src / "1_Pooling/config.json").write_text(json.dumps(pool))
    modules = [m for m in json.loads((src / "modules.json").read_text()) if "Normalize" not in m["type"]]
    (src / "modules.json").write_text(json.dumps(modules))
    from sutra_embedder.models.importer import import_model

    path = import_model(src, tmp_path / "out", "cls")
    emb = Embedder(EmbedderConfig(model=str(path)))
    texts = ["first text here", "a second, longer text with more words in it"]
    ours = emb.embed(texts)
    tok = st_minilm.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = st_minilm[0].auto_model(**tok).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(ours, hidden, rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0)


def test_outdated_cached_profile_is_rebuilt(minilm_source: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTRA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("sutra_embedder.models.registry.locate_source", lambda profile: minilm_source)
    path = ensure_model("minilm")
    manifest = json.loads((path / "sutra_manifest.json").read_text())
    manifest["extra"]["converter"] = -1
    (path / "sutra_manifest.json").write_text(json.dumps(manifest))
    assert ensure_model("minilm") == path
    assert load_manifest(path).extra["converter"] != -1
