"""`sutra quantize`: a real INT8 model passes the gate; a broken one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sutra_embedder.cli import main
from sutra_embedder.core import CalibrationRanges, Embedder, EmbedderConfig, load_manifest
from sutra_embedder.models import quantize as qmod
from sutra_embedder.models.registry import ensure_model
from tests.fixtures.models import REPO, read_jsonl


@pytest.fixture()
def small_eval(tmp_path: Path) -> tuple[Path, Path]:
    queries = read_jsonl(REPO / "examples/eval/stdlib_queries.jsonl")[:30]
    docs = read_jsonl(REPO / "examples/eval/stdlib_corpus.jsonl")
    wanted = {r for q in queries for r in q["relevant"]}
    docs = [d for d in docs if d["id"] in wanted] + [d for d in docs if d["id"] not in wanted][:90]
    c, q = tmp_path / "c.jsonl", tmp_path / "q.jsonl"
    c.write_text("\n".join(json.dumps(d) for d in docs), encoding="utf-8")
    q.write_text("\n".join(json.dumps(x) for x in queries), encoding="utf-8")
    return c, q


def _args(minilm_dir: Path, small_eval: tuple[Path, Path], name: str, *extra: str) -> list[str]:
    return ["quantize", "--model", str(minilm_dir), "--to", "int8", "--name", name,
            "--eval-corpus", str(small_eval[0]), "--eval-queries", str(small_eval[1]), *extra]


def test_int8_passes_gate_and_is_registered(minilm_dir: Path, small_eval: tuple[Path, Path],
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTRA_CACHE_DIR", str(tmp_path / "cache"))
    assert main(_args(minilm_dir, small_eval, "mini-int8", "--calibrate", "--min-ndcg-ratio", "0.97")) == 0
    path = tmp_path / "cache" / "models" / "mini-int8"
    report = json.loads((path / "quality_report.json").read_text())
    assert report["ndcg_ratio"] >= 0.97
    assert report["candidate"]["size_mb"] < report["reference"]["size_mb"] / 2
    assert (path / "quality_report.md").exists()
    graph = onnx.load(str(path / "model.onnx"))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.graph.node)
    manifest = load_manifest(path)
    assert manifest.extra["precision"] == "int8" and manifest.calibration is not None
    # Independent check of the gate's input: vectors stay close to the float model's.
    texts = ["INT8 weights with per-channel scales.", "A second sentence about Kafka streams."]
    ref = Embedder(EmbedderConfig(model=str(minilm_dir))).embed(texts)
    got = Embedder(EmbedderConfig(model="mini-int8")).embed(texts)
    assert ((ref * got).sum(1) > 0.97).all()
    ranges = CalibrationRanges.from_dict(manifest.calibration)
    assert ranges.dim == 384 and (ranges.hi > ranges.lo).all()


def test_gate_refuses_a_broken_model(minilm_dir: Path, small_eval: tuple[Path, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Fault injection: the quantizer's output has its attention weights scrambled."""
    monkeypatch.setenv("SUTRA_CACHE_DIR", str(tmp_path / "cache"))
    real = qmod.quantize_int8_graph

    def broken(src: Path, dest: Path, per_channel: bool, keep_float: tuple[str, ...]) -> None:
        real(src, dest, per_channel, keep_float)
        model = onnx.load(str(dest))
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            if "qkv.weight" in init.name:
                arr = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array(rng.permutation(arr.reshape(-1)).reshape(arr.shape),
                                                      init.name))
        onnx.save_model(model, str(dest))

    monkeypatch.setattr(qmod, "quantize_int8_graph", broken)
    assert main(_args(minilm_dir, small_eval, "broken")) == 3
    err = capsys.readouterr().err
    assert "refusing to register 'broken'" in err and "below --min-ndcg-ratio 0.99" in err
    assert not (tmp_path / "cache" / "models" / "broken").exists()


# ------------------------------------------------------------------ fp16 attention mask
def _ragged(batch: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width + 1, size=batch)
    lengths[0] = width  # the longest row sets the width, as the embedder pads
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(1000, 20000, size=(batch, width)), 0).astype(np.int64)
    return ids, mask


def test_varlen_mask_has_the_cutlass_layout_and_changes_nothing_on_cpu(minilm_dir: Path, tmp_path: Path) -> None:
    """The (3B + 2) mask is [key lengths, row starts, row starts] (starts in tokens of B x S),
    built in the graph; the CPU kernel reads the key lengths only, so vectors stay exactly the same."""
    import onnxruntime as ort

    from sutra_embedder.models.onnx_builder import VARLEN_MASK, varlen_attention_mask

    src = minilm_dir / "model.onnx"
    model = onnx.load(str(src))
    varlen_attention_mask(model.graph)
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert attention and all(n.input[3] == VARLEN_MASK for n in attention)
    model.graph.output.append(onnx.helper.make_tensor_value_info(VARLEN_MASK, onnx.TensorProto.INT32, None))
    onnx.save(model, str(tmp_path / "varlen.onnx"))
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    new = ort.InferenceSession(str(tmp_path / "varlen.onnx"), providers=["CPUExecutionProvider"])
    for batch, width, seed in [(1, 5, 0), (7, 33, 1), (32, 128, 2)]:
        ids, mask = _ragged(batch, width, seed)
        expected_mask = np.concatenate([mask.sum(1), np.arange(batch + 1) * width, np.arange(batch + 1) * width])
        vecs, got_mask = new.run(["sentence_embedding", VARLEN_MASK], {"input_ids": ids, "attention_mask": mask})
        assert got_mask.dtype == np.int32
        np.testing.assert_array_equal(got_mask, expected_mask)
        (ref_vecs,) = ref.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})
        np.testing.assert_allclose(vecs, ref_vecs, atol=1e-6)


def test_fp16_graph_loads_with_the_varlen_mask_only_where_it_applies(
    minilm_dir: Path, mpnet_source: Path, tmp_path: Path
) -> None:
    from sutra_embedder.models.onnx_builder import VARLEN_MASK, varlen_model_bytes

    dest = tmp_path / "model.fp16.onnx"
    qmod.convert_fp16_graph(minilm_dir / "model.onnx", dest)
    stored = onnx.load(str(dest)).graph
    assert all(n.input[3] != VARLEN_MASK for n in stored.node if n.op_type == "Attention")  # on disk: key lengths
    data = varlen_model_bytes(dest)
    assert data is not None
    graph = onnx.load_from_string(data).graph
    attention = [n for n in graph.node if n.op_type == "Attention"]
    assert len(attention) == 6 and all(n.input[3] == VARLEN_MASK for n in attention)
    weights = {i.name: i for i in graph.initializer}
    assert weights[attention[0].input[1]].data_type == onnx.TensorProto.FLOAT16
    onnx.checker.check_model(onnx.load_from_string(data))
    # MPNet's Attention takes a relative position bias: left as it is.
    mpnet = ensure_model("mpnet")
    assert varlen_model_bytes(mpnet / "model.onnx") is None


def test_varlen_mask_follows_the_allowed_attention_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from sutra_embedder.core import RuntimeConfig
    from sutra_embedder.core.runtime import CUDA, wants_varlen_mask

    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu)  # a GPU build, on a CPU machine
    assert wants_varlen_mask(RuntimeConfig(device="cuda"))  # default kernels 23: efficient, no cuDNN
    assert wants_varlen_mask(RuntimeConfig(device="auto", attention_kernels=2))
    assert not wants_varlen_mask(RuntimeConfig(device="cuda", attention_kernels=0))  # ORT decides: cuDNN flash
    assert not wants_varlen_mask(RuntimeConfig(device="cuda", attention_kernels=31))  # cuDNN flash allowed
    assert not wants_varlen_mask(RuntimeConfig(device="cuda", attention_kernels=1))  # flash only: no mask support
    assert not wants_varlen_mask(RuntimeConfig(device="cpu"))
    monkeypatch.setattr(ort, "get_available_providers", lambda: [p for p in gpu if p != CUDA])
    assert not wants_varlen_mask(RuntimeConfig(device="auto"))
