"""GPU benchmarks (b), (d) and the runtime options: a BERT-base-size model, two GPUs, CUDA graphs, TensorRT.

(b) A BERT-base-size encoder (random weights: speed does not depend on them) with
    the BERT uncased tokenizer, end to end (raw text in, normalised vectors out,
    Embedder on the fused fp16 graph) against the same graph's raw throughput on
    pre-tokenized, pre-padded batches of the same token-budget plan.
(d) One GPU against two GPUs of the host, end to end, through ``EmbedderPool``
    (one session per device in one process) and as one pinned process per GPU.
(r) Runtime options on fixed-shape batches (all-MiniLM-L6-v2 size): the CUDA
    provider plain, with CUDA graphs, and TensorRT (fp16, engine cache), raw
    sequences/s plus TensorRT's first engine build time.

    python benchmarks/bench_gpu_models.py --source MINILM_ST_DIR [--part b,d,r] [--texts 200000]

Writes benchmarks/results/gpu_models_<device>.json (and a PNG with --plot).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_gpu import _random_bert, corpus, gpu_name, prepare_model  # noqa: E402
from benchmarks.common import machine, write_device_results  # noqa: E402
from sutra_embedder.core import BatchingConfig, ChunkingConfig, Embedder, EmbedderConfig, RuntimeConfig  # noqa: E402
from sutra_embedder.core.batching import pad_batch, plan_batches  # noqa: E402
from sutra_embedder.core.manifest import load_manifest, write_manifest  # noqa: E402


def build_bert_base(tokenizer_dir: Path, out: Path, max_positions: int = 512) -> Path:
    """A BERT-base-size model directory (random weights, fused fp16 + fp32 graphs, the given tokenizer)."""
    import onnx

    from sutra_embedder.models.onnx_builder import build_encoder
    from sutra_embedder.models.quantize import convert_fp16_graph

    spec, weights = _random_bert(max_positions)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_encoder(spec, weights, fused=True), str(out / "model.onnx"),
                    save_as_external_data=True, location="model.onnx.data")
    convert_fp16_graph(out / "model.onnx", out / "model.fp16.onnx")
    shutil.copy(tokenizer_dir / "tokenizer.json", out / "tokenizer.json")
    base = load_manifest(tokenizer_dir)
    write_manifest(out, replace(base, name="bert-base-random", dim=768, max_tokens=max_positions,
                                files={"default": "model.onnx", "fp16": "model.fp16.onnx"},
                                extra={**base.extra, "layers": 12, "heads": 12, "random_weights": True}))
    return out


def _config(model: Path, device_id: int = 0) -> EmbedderConfig:
    return EmbedderConfig(
        model=str(model),
        chunking=ChunkingConfig(policy="truncate"),
        batching=BatchingConfig(max_batch_tokens=65536, max_batch_size=1024, pipeline_block=16384),
        runtime=RuntimeConfig(device="cuda", device_id=device_id, fp16=True),
    )


# ---------------------------------------------------------------------- (b)
def part_b(model: Path, texts: list[str], label: str = "BERT-base size (12 x 768, random weights), fused fp16"
           ) -> dict[str, Any]:
    emb = Embedder(_config(model))
    emb.embed(texts[:4000])  # warm-up: kernels, allocator
    t0 = time.perf_counter()
    emb.embed(texts)
    e2e = time.perf_counter() - t0

    # The same batches, tokenized and padded beforehand: only the model runs in the timed loop.
    contents = emb.tokenizer.encode_content(texts)
    window = emb.max_content_tokens
    items = [emb.tokenizer.frame(c[:window]) for c in contents]
    sizes = emb.batching  # the sizes the embedder itself planned with
    plan = plan_batches(
        [len(x) for x in items], sizes.max_batch_tokens, sizes.max_batch_size, True, sizes.batch_overhead_tokens
    )
    batches = [pad_batch([items[i] for i in b], emb.tokenizer.pad_id) for b in plan.batches]
    raw = _model_seconds(emb, batches)
    shapes = {b[0].shape for b in batches}
    # The same batches with their length rounded up to a multiple of 64: far fewer distinct shapes.
    bucketed = [_pad_to(ids, mask, 64, emb.tokenizer.pad_id) for ids, mask in batches]
    raw_bucketed = _model_seconds(emb, bucketed)
    tokens = int(sum(len(x) for x in items))
    return {
        "distinct_shapes": len(shapes),
        "raw_bucketed64_texts_per_s": round(len(texts) / raw_bucketed, 1),
        "distinct_shapes_bucketed64": len({b[0].shape for b in bucketed}),
        "model": label,
        "texts": len(texts), "tokens": tokens, "mean_tokens": round(tokens / len(texts), 1),
        "batches": len(batches), "padding_efficiency": round(plan.padding_efficiency, 4),
        "end_to_end_texts_per_s": round(len(texts) / e2e, 1),
        "raw_pretokenized_texts_per_s": round(len(texts) / raw, 1),
        "ratio": round(raw / e2e, 3),
        "session": emb.describe(),
    }


def _model_seconds(emb: Embedder, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Seconds to run ``batches`` one after another, after three warm-up calls."""
    for ids, mask in batches[:3]:
        emb._run(ids, mask)
    t0 = time.perf_counter()
    for ids, mask in batches:
        emb._run(ids, mask)
    return time.perf_counter() - t0


def _pad_to(ids: np.ndarray, mask: np.ndarray, multiple: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = -(-ids.shape[1] // multiple) * multiple
    out_ids = np.full((ids.shape[0], width), pad_id, dtype=ids.dtype)
    out_mask = np.zeros((ids.shape[0], width), dtype=mask.dtype)
    out_ids[:, : ids.shape[1]], out_mask[:, : ids.shape[1]] = ids, mask
    return out_ids, out_mask


# ---------------------------------------------------------------------- (d)
def _pool_run(model: Path, texts: list[str], devices: str) -> dict[str, Any]:
    from sutra_embedder.core.pool import EmbedderPool, PoolConfig

    cfg = PoolConfig(devices=devices, strategy="least_loaded", share_texts=4096, cpu_fallback=False)
    with EmbedderPool(cfg, _config(model)) as pool:
        pool.embed(texts[:8000])
        t0 = time.perf_counter()
        pool.embed(texts)
        dt = time.perf_counter() - t0
        stats = pool.stats()
    return {"devices": devices, "texts_per_s": round(len(texts) / dt, 1),
            "per_device_texts": {k: v.get("texts") for k, v in stats.items()}}


def _process_run(model: Path, n: int, device: int, out: str) -> None:
    """One pinned process: the GPU named by CUDA_VISIBLE_DEVICES, started together with the others."""
    texts = corpus(n)
    emb = Embedder(_config(model))
    emb.embed(texts[:8000])
    start_at = float(os.environ["SUTRA_BENCH_START_AT"])
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    emb.embed(texts)
    Path(out).write_text(json.dumps({"device": device, "start": t0, "end": time.time(), "texts": n}))


def _processes_run(model: Path, n: int, gpus: list[int]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp())
    start_at = time.time() + 30.0  # every process loaded and warm before the clock starts
    procs = []
    for g in gpus:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(g), SUTRA_BENCH_START_AT=str(start_at))
        procs.append(subprocess.Popen([sys.executable, __file__, "--process-run", str(model), "--texts", str(n),
                                       "--device", str(g), "--out", str(tmp / f"{g}.json")], env=env))
    for p in procs:
        p.wait()
    runs = [json.loads((tmp / f"{g}.json").read_text()) for g in gpus]
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    return {"gpus": gpus, "texts_per_s": round(sum(r["texts"] for r in runs) / wall, 1)}


def part_d(model: Path, texts: list[str], label: str, processes: bool) -> dict[str, Any]:
    one = _pool_run(model, texts, "cuda:0")
    two = _pool_run(model, texts, "cuda:0,cuda:1")
    out: dict[str, Any] = {"model": label, "texts": len(texts), "one_gpu": one, "two_gpus_pool": two,
                           "pool_scaling": round(two["texts_per_s"] / one["texts_per_s"], 3)}
    if processes:
        p1 = _processes_run(model, len(texts) // 2, [0])
        p2 = _processes_run(model, len(texts) // 2, [0, 1])
        out |= {"one_process": p1, "two_processes": p2,
                "process_scaling": round(p2["texts_per_s"] / p1["texts_per_s"], 3)}
    return out


# ---------------------------------------------------------------------- (r)
def _fixed_batch(batch: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(0).integers(1000, 30000, (batch, seq)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.ones_like(ids)


def _time_binding(sess: Any, binding: Any, reps: int) -> float:
    sess.run_with_iobinding(binding)
    t0 = time.perf_counter()
    for _ in range(reps):
        sess.run_with_iobinding(binding)
    binding.synchronize_outputs()
    return (time.perf_counter() - t0) / reps


def _bound(sess: Any, ids: np.ndarray, mask: np.ndarray, dim: int) -> Any:
    import onnxruntime as ort

    binding = sess.io_binding()
    values = [ort.OrtValue.ortvalue_from_numpy(ids, "cuda", 0), ort.OrtValue.ortvalue_from_numpy(mask, "cuda", 0)]
    binding.bind_ortvalue_input("input_ids", values[0])
    binding.bind_ortvalue_input("attention_mask", values[1])
    out = ort.OrtValue.ortvalue_from_shape_and_type((ids.shape[0], dim), np.float32, "cuda", 0)
    binding.bind_ortvalue_output("sentence_embedding", out)
    binding._keep = (values, out)  # the device buffers live as long as the binding
    return binding


def part_r(minilm: Path, batch: int, seq: int, reps: int) -> dict[str, Any]:
    import onnxruntime as ort

    m = load_manifest(minilm)
    fp16 = minilm / m.files.get("fp16", "model.fp16.onnx")
    ids, mask = _fixed_batch(batch, seq)
    out: dict[str, Any] = {"batch": batch, "seq": seq, "model": "all-MiniLM-L6-v2"}
    variants: list[tuple[str, Path, list[Any]]] = [
        ("cuda_fp16", fp16, [("CUDAExecutionProvider", {})]),
        ("cuda_fp16_cuda_graph", fp16, [("CUDAExecutionProvider", {"enable_cuda_graph": "1"})]),
    ]
    trt_cache = Path(tempfile.mkdtemp(prefix="trt-"))
    shapes = f"input_ids:{batch}x{seq},attention_mask:{batch}x{seq}"
    trt_opts = {"trt_fp16_enable": "1", "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(trt_cache),
                "trt_profile_min_shapes": shapes, "trt_profile_opt_shapes": shapes, "trt_profile_max_shapes": shapes}
    variants.append(("tensorrt_fp16", minilm / m.files["default"],
                     [("TensorrtExecutionProvider", trt_opts), ("CUDAExecutionProvider", {})]))
    for name, path, providers in variants:
        try:
            t0 = time.perf_counter()
            sess = ort.InferenceSession(str(path), providers=providers)
            binding = _bound(sess, ids, mask, m.dim)
            sess.run_with_iobinding(binding)  # builds the TensorRT engine / captures the graph
            first = time.perf_counter() - t0
            sec = _time_binding(sess, binding, reps)
            out[name] = {"seq_per_s": round(batch / sec, 1), "ms_per_batch": round(sec * 1e3, 3),
                         "first_run_s": round(first, 2), "providers": sess.get_providers()}
        except Exception as exc:  # an option this graph or GPU does not support is a result too
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
        print(name, out[name], flush=True)
    base = out.get("cuda_fp16", {}).get("seq_per_s")
    for name in ("cuda_fp16_cuda_graph", "tensorrt_fp16"):
        if base and "seq_per_s" in out.get(name, {}):
            out[name]["vs_cuda_fp16"] = round(out[name]["seq_per_s"] / base, 3)
    return out


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    b = data.get("b_bert_base")
    if not b:
        axes[0].axis("off")
    if b:
        axes[0].bar(["end to end", "raw (pre-tokenized)"],
                    [b["end_to_end_texts_per_s"], b["raw_pretokenized_texts_per_s"]], color=["C0", "C7"])
        axes[0].set_title(f"(b) BERT-base size, fused fp16: {b['ratio']:.0%} of raw")
        axes[0].set_ylabel("texts/s")
    labels, values = [], []
    for key in ("d_two_gpus_bert_base", "d_two_gpus_minilm"):
        d = data.get(key)
        if not d:
            continue
        short = "BERT-base" if "bert" in key else "MiniLM"
        labels += [f"{short} 1 GPU", f"{short} 2 GPUs, pool"]
        values += [d["one_gpu"]["texts_per_s"], d["two_gpus_pool"]["texts_per_s"]]
        if "two_processes" in d:
            labels += [f"{short} 1 process", f"{short} 2 processes"]
            values += [d["one_process"]["texts_per_s"], d["two_processes"]["texts_per_s"]]
    if labels:
        axes[1].barh(labels, values, color="C1")
        axes[1].set_title("(d) one GPU vs two (end to end)")
        axes[1].set_xlabel("texts/s")
        axes[1].tick_params(axis="y", labelsize=8)
    else:
        axes[1].axis("off")
    r = data.get("r_runtime_options")
    if r:
        names = [n for n in ("cuda_fp16", "cuda_fp16_cuda_graph", "tensorrt_fp16") if "seq_per_s" in r.get(n, {})]
        axes[2].bar(names, [r[n]["seq_per_s"] for n in names], color="C2")
        axes[2].set_title(f"runtime options, {r['batch']} x {r['seq']} tokens (raw)")
        axes[2].tick_params(axis="x", labelsize=8)
    else:
        axes[2].axis("off")
    fig.suptitle(f"{data['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=False,
                    help="the all-MiniLM-L6-v2 sentence-transformers directory (its tokenizer serves BERT-base too)")
    ap.add_argument("--part", default="b,d,r")
    ap.add_argument("--texts", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--processes", action="store_true", help="(d): also one pinned process per GPU")
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--process-run", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.process_run:
        _process_run(args.process_run, args.texts, args.device, args.out)
        return
    parts = set(args.part.split(","))
    data: dict[str, Any] = {"benchmark": "gpu_models", "device": gpu_name(), "machine": machine()}
    texts = corpus(args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        minilm = prepare_model(args.source, Path(tmp))
        bert = build_bert_base(minilm, Path(tmp) / "bert-base") if parts & {"b", "d"} else None
        if "b" in parts and bert is not None:
            data["b_bert_base"] = part_b(bert, texts[: args.texts // 2])
            print(json.dumps(data["b_bert_base"], indent=1, default=str), flush=True)
        if "m" in parts:
            data["m_minilm_end_to_end_vs_raw"] = part_b(minilm, texts, "all-MiniLM-L6-v2 fused fp16")
            print(json.dumps(data["m_minilm_end_to_end_vs_raw"], indent=1, default=str), flush=True)
        if "d" in parts and bert is not None:
            data["d_two_gpus_bert_base"] = part_d(bert, texts[: args.texts // 2], "BERT-base size fp16",
                                                  args.processes)
            print(json.dumps(data["d_two_gpus_bert_base"], indent=1), flush=True)
            data["d_two_gpus_minilm"] = part_d(minilm, texts, "all-MiniLM-L6-v2 fp16", args.processes)
            print(json.dumps(data["d_two_gpus_minilm"], indent=1), flush=True)
        if "r" in parts:
            data["r_runtime_options"] = part_r(minilm, args.batch, args.seq, args.reps)
    out = write_device_results("gpu_models", data, args.part.replace(",", ""))
    if args.plot:
        plot(data, out.with_suffix(".png"))
    print(out)


if __name__ == "__main__":
    main()
