"""Model quantization (INT8 for CPU, fp16 for GPU) behind a retrieval-quality gate,
and embedding quantization: calibration ranges and a quality-vs-bytes table.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sutra_embedder.core.config import ChunkingConfig, EmbedderConfig, Precision, RuntimeConfig
from sutra_embedder.core.embedder import Embedder
from sutra_embedder.core.errors import ConfigError, SutraError
from sutra_embedder.core.manifest import load_manifest, write_manifest
from sutra_embedder.core.quantization import CalibrationRanges, bytes_per_vector, quantize_embeddings

from .evaluate import evaluate_embeddings
from .quality import EvalSet, QualityReport, compare
from .registry import model_path

log = logging.getLogger(__name__)

Target = Literal["int8", "fp16"]
# Operators kept in float in INT8 models: the fused attention is sensitive and, on
# CPUs with fast fp32 GEMMs, not faster when quantized.
DEFAULT_KEEP_FLOAT = ("Attention",)


class QualityGateError(SutraError):
    """A quantized or distilled model scored below the gate; it was not registered."""

    def __init__(self, message: str, report: QualityReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class QuantizeJob:
    """One ``sutra quantize`` run.

    Attributes:
        model: Source model (name or directory).
        to: ``int8`` (dynamic, per-channel, CPU) or ``fp16`` (GPU).
        name: Name to register the result under.
        min_ndcg_ratio: Refuse the result when its nDCG@10 is below this
            fraction of the source model's.
        per_channel: Per-channel weight scales (int8).
        keep_float: Operator types left in float (int8).
        calibrate: Also compute int8/uint8 output-vector calibration ranges
            from the evaluation corpus and store them in the manifest.
        eval_corpus, eval_queries: Retrieval set (default: the stdlib set).
        limit_queries: Use only the first N queries (faster checks).
        force: Overwrite an existing model of that name.
    """

    model: str
    to: Target
    name: str
    min_ndcg_ratio: float = 0.99
    per_channel: bool = True
    keep_float: tuple[str, ...] = DEFAULT_KEEP_FLOAT
    calibrate: bool = False
    eval_corpus: str | None = None
    eval_queries: str | None = None
    limit_queries: int | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.to not in ("int8", "fp16"):
            raise ConfigError("to", f"got {self.to!r}; choose int8 or fp16")
        if not 0.0 < self.min_ndcg_ratio <= 1.5:
            raise ConfigError("min_ndcg_ratio", f"must be in (0, 1.5], got {self.min_ndcg_ratio}")
        if not self.name or "/" in self.name:
            raise ConfigError("name", f"must be a plain model name, got {self.name!r}")


def quantize_int8_graph(src: Path, dest: Path, per_channel: bool, keep_float: tuple[str, ...]) -> None:
    """Dynamic INT8 quantization of the MatMul weights of an ONNX graph."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    present = {n.op_type for n in model.graph.node}
    ops = sorted(op for op in ("MatMul", "Attention", "Gather") if op in present and op not in keep_float)
    quantize_dynamic(
        str(src),
        str(dest),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=ops,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def convert_fp16_graph(src: Path, dest: Path) -> None:
    """fp16 encoder for GPUs; pooling, normalisation, inputs and outputs stay float32.

    Works on the fused graphs this package writes: every float32 weight of the
    encoder becomes float16 (its inputs are integer ids, so fp16 then flows
    through every encoder operator), and one Cast brings the encoder's output
    back to float32 where pooling starts. Pooling stays in float32 because an
    fp16 mask sum loses precision and the 1e-9 / 1e-12 guards underflow.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .onnx_builder import FLOAT32_SCOPE

    model = onnx.load(str(src))
    graph = model.graph
    if not any(n.op_type == "Attention" for n in graph.node):
        raise ConfigError("model", f"{src} is not a fused graph; re-import it with `sutra models import`")
    pool_nodes = [n for n in graph.node if n.name.startswith(FLOAT32_SCOPE)]
    pool_inputs = {i for n in pool_nodes for i in n.input}
    encoder_inputs = {i for n in graph.node if not n.name.startswith(FLOAT32_SCOPE) for i in n.input}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name in encoder_inputs:
            if init.name in pool_inputs:
                raise ValueError(f"initializer {init.name} is shared by encoder and pooling")
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    encoder_outputs = {o for n in graph.node if not n.name.startswith(FLOAT32_SCOPE) for o in n.output}
    casts = []
    for name in sorted(pool_inputs & encoder_outputs):
        cast_out = f"{name}_float32"
        casts.append(helper.make_node("Cast", [name], [cast_out], name=f"{FLOAT32_SCOPE}cast_{name}",
                                      to=TensorProto.FLOAT))
        for n in pool_nodes:
            for k, inp in enumerate(n.input):
                if inp == name:
                    n.input[k] = cast_out
    first_pool = next(i for i, n in enumerate(graph.node) if n.name.startswith(FLOAT32_SCOPE)
                      and any(x.endswith("_float32") for x in n.input))
    for offset, node in enumerate(casts):
        graph.node.insert(first_pool + offset, node)
    del graph.value_info[:]
    onnx.save_model(model, str(dest))


def _embedder(model: str, device: str = "cpu") -> Embedder:
    return Embedder(EmbedderConfig(model=model, chunking=ChunkingConfig(policy="truncate"),
                                   runtime=RuntimeConfig(device=device)))  # type: ignore[arg-type]


def quantize_model(job: QuantizeJob) -> tuple[Path, QualityReport]:
    """Build, evaluate and (if it passes the gate) register the quantized model.

    Returns:
        The registered model directory and its report (also written beside it).

    Raises:
        QualityGateError: The candidate's nDCG@10 ratio is below ``min_ndcg_ratio``.
    """
    source = _embedder(job.model)
    src_dir = source.model_dir
    dest = model_path(job.name)
    if dest.exists() and not job.force:
        raise ConfigError("name", f"model {job.name!r} exists at {dest}; pass --force to replace it")
    eval_set = EvalSet.load(job.eval_corpus, job.eval_queries, job.limit_queries)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{job.name}-", dir=dest.parent))
    try:
        for f in ("tokenizer.json", "sutra_manifest.json"):
            shutil.copy2(src_dir / f, work / f)
        manifest = load_manifest(src_dir)
        src_graph = src_dir / manifest.files["default"]
        if job.to == "int8":
            quantize_int8_graph(src_graph, work / "model.onnx", job.per_channel, job.keep_float)
            files = {"default": "model.onnx"}
            device = "cpu"
        else:
            shutil.copy2(src_graph, work / "model.onnx")
            convert_fp16_graph(src_graph, work / "model.fp16.onnx")
            files = {"default": "model.onnx", "fp16": "model.fp16.onnx"}
            device = "auto"
        extra = dict(manifest.extra, precision=job.to, quantized_from=manifest.name)
        write_manifest(work, replace(manifest, name=job.name, files=files, extra=extra))
        candidate = _embedder(str(work), device)
        if job.to == "fp16" and not candidate.session_info.on_gpu:
            raise SutraError(
                "fp16 models are for GPUs and this machine has none to evaluate it on; "
                "run `sutra quantize --to fp16` where onnxruntime-gpu sees a GPU"
            )
        report = compare(source, candidate, eval_set, names=(manifest.name, job.name))
        report.extra.update(target=job.to, per_channel=job.per_channel, keep_float=list(job.keep_float),
                            min_ndcg_ratio=job.min_ndcg_ratio, provider=candidate.session_info.active)
        if report.ndcg_ratio < job.min_ndcg_ratio:
            raise QualityGateError(
                f"refusing to register {job.name!r}: its nDCG@10 is {report.candidate.metrics['ndcg@10']:.4f}, "
                f"{report.ndcg_ratio:.2%} of {manifest.name!r} ({report.reference.metrics['ndcg@10']:.4f}), "
                f"below --min-ndcg-ratio {job.min_ndcg_ratio}. Try keeping more operators in float "
                "(--keep-float) or per-channel scales.",
                report,
            )
        if job.calibrate:
            sample = candidate.embed([d.text for d in eval_set.corpus])
            ranges = CalibrationRanges.from_embeddings(sample)
            write_manifest(work, replace(load_manifest(work), calibration=ranges.to_dict()))
        report.write(work)
        if dest.exists():
            shutil.rmtree(dest)
        work.chmod(0o755)
        work.rename(dest)
        return dest, report
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def calibrate_model(model: str, texts: list[str]) -> CalibrationRanges:
    """Compute output-vector calibration ranges on ``texts`` and store them in the model's manifest."""
    emb = _embedder(model)
    ranges = CalibrationRanges.from_embeddings(emb.embed(texts))
    write_manifest(emb.model_dir, replace(emb.manifest, calibration=ranges.to_dict()))
    return ranges


def precision_table(
    emb: Embedder,
    eval_set: EvalSet,
    dims: tuple[int, ...] = (384, 256, 128, 64),
    precisions: tuple[Precision, ...] = ("float32", "float16", "int8", "binary"),
) -> list[dict[str, Any]]:
    """nDCG@10 vs bytes per vector across Matryoshka dimensions and precisions.

    int8 codes are scored as integers (calibrated on the corpus); binary codes
    by Hamming similarity (dot product of +-1 vectors).
    """
    docs = emb.embed([d.text for d in eval_set.corpus])
    queries = emb.embed([q.text for q in eval_set.queries])
    ids = [d.id for d in eval_set.corpus]
    rows = []
    for dim in dims:
        if dim > docs.shape[1]:
            continue
        d = docs[:, :dim] / np.linalg.norm(docs[:, :dim], axis=1, keepdims=True)
        q = queries[:, :dim] / np.linalg.norm(queries[:, :dim], axis=1, keepdims=True)
        for precision in precisions:
            if precision in ("binary", "ubinary"):
                dq, qq = np.where(d > 0, 1.0, -1.0), np.where(q > 0, 1.0, -1.0)
            elif precision in ("int8", "uint8"):
                cal = CalibrationRanges.from_embeddings(d)
                dq = quantize_embeddings(d, precision, cal).astype(np.float32)
                qq = quantize_embeddings(q, precision, cal).astype(np.float32)
            else:
                dq = quantize_embeddings(d, precision).astype(np.float32)
                qq = quantize_embeddings(q, precision).astype(np.float32)
            metrics = evaluate_embeddings(qq, dq, ids, eval_set.queries)
            rows.append({"dim": dim, "precision": precision, "bytes": bytes_per_vector(dim, precision),
                         **{k: round(v, 4) for k, v in metrics.items()}})
    return rows


def write_precision_table(rows: list[dict[str, Any]], directory: str | Path) -> Path:
    out = Path(directory) / "precision_table.json"
    out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    lines = ["| dim | precision | bytes/vector | nDCG@10 | recall@10 |", "|---|---|---|---|---|"]
    lines += [f"| {r['dim']} | {r['precision']} | {r['bytes']} | {r['ndcg@10']} | {r['recall@10']} |" for r in rows]
    (Path(directory) / "precision_table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
