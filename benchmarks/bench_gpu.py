"""GPU benchmarks: end-to-end texts/s vs sentence-transformers fp16, and long sequences.

(a) all-MiniLM-L6-v2, raw text in, normalised vectors out, on a mixed-length corpus,
    Embedder (fused fp16 graph, IOBinding, tokenization in ``prepare_workers``
    threads overlapped with inference on ``inference_streams`` concurrent
    streams) vs sentence-transformers fp16 on the same GPU and texts, in one
    run. ``--prepare-workers`` and ``--streams`` take comma-separated values
    (``auto``: the embedder's defaults), as do ``--tokenize-processes`` and
    ``--ascii`` (on,off), and every combination is timed; each
    prints its time split (tokenize, pad and inference seconds, summed over
    threads, so they can exceed the wall time).
(c) 4096-token inputs on a BERT-base-size encoder with random weights (speed does
    not depend on the weights): fused fp16 vs unfused fp32, time and peak GPU memory.
    The fused graph runs as stored under ONNX Runtime's kernel choice (cuDNN
    flash) and with the mask the embedder gives it by default (memory-efficient).

    python benchmarks/bench_gpu.py --source MINILM_ST_DIR [--texts 100000] [--part a|c|all]
        [--prepare-workers auto,2,4] [--streams auto,1,2,3]

Writes benchmarks/results/gpu_<device>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import load_texts, machine, write_device_results  # noqa: E402
from sutra_embedder.core import BatchingConfig, ChunkingConfig, Embedder, EmbedderConfig, RuntimeConfig  # noqa: E402
from sutra_embedder.core.manifest import load_manifest, write_manifest  # noqa: E402


def gpu_name() -> str:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown GPU"


def prepare_model(source: Path, work: Path) -> Path:
    from dataclasses import replace

    from sutra_embedder.models.importer import import_model
    from sutra_embedder.models.quantize import convert_fp16_graph

    path = import_model(source, work / "minilm", "minilm")
    convert_fp16_graph(path / "model.onnx", path / "model.fp16.onnx")
    m = load_manifest(path)
    write_manifest(path, replace(m, files={"default": "model.onnx", "fp16": "model.fp16.onnx"}))
    return path


def corpus(n: int) -> list[str]:
    """Mixed-length texts, cut to ~80 tokens on average (max 256), repeated to n."""
    base = []
    for t in load_texts():
        words = t.split()
        base.append(" ".join(words[: max(8, int(len(words) * 0.6))]))
    return [base[i % len(base)] for i in range(n)]


def _knob(value: str) -> int | None:
    return None if value == "auto" else int(value)


def part_a(
    source: Path,
    n: int,
    kernels: int = 0,
    workers: tuple[int | None, ...] = (None,),
    streams: tuple[int | None, ...] = (None,),
    procs: tuple[int | None, ...] = (None,),
    ascii_paths: tuple[bool, ...] = (True,),
) -> dict[str, Any]:
    import gc
    import itertools

    import torch
    from sentence_transformers import SentenceTransformer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = prepare_model(source, Path(tmp))
        texts = corpus(n)
        # The peer first, on a fresh GPU and an idle host, best of two runs.
        st = SentenceTransformer(str(source), device="cuda")
        st.half()
        st.encode(texts[:5000], batch_size=256)
        t_st = float("inf")
        for _ in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            ref = st.encode(texts, batch_size=256, convert_to_numpy=True)
            torch.cuda.synchronize()
            t_st = min(t_st, time.perf_counter() - t0)
        ref32 = SentenceTransformer(str(source), device="cuda").encode(texts[:2000], batch_size=256)
        del st
        gc.collect()
        torch.cuda.empty_cache()
        variants: list[dict[str, Any]] = []
        best: tuple[float, np.ndarray, dict[str, Any], dict[str, Any]] | None = None
        for w, k, p, fast in itertools.product(workers, streams, procs, ascii_paths):
            emb = Embedder(
                EmbedderConfig(
                    model=str(model_dir),
                    chunking=ChunkingConfig(policy="truncate"),
                    batching=BatchingConfig(  # batch sizes: the library's GPU defaults
                        prepare_workers=w,
                        tokenize_processes=p,
                        ascii_fast_path=fast,
                    ),
                    runtime=RuntimeConfig(device="cuda", fp16=True, attention_kernels=kernels, inference_streams=k),
                )
            )
            info = emb.describe()
            emb.embed(texts[:20000])
            emb.stats = type(emb.stats)()
            t0 = time.perf_counter()
            vecs = emb.embed(texts)
            wall = time.perf_counter() - t0
            st = emb.stats.as_dict()
            row = {
                "defaults": (w, k, p, fast) == (None, None, None, True),
                "prepare_workers": info["prepare_workers"],
                "inference_streams": info["inference_streams"],
                "tokenize_processes": info["tokenize_processes"],
                "ascii_fast_path": info["ascii_fast_path"],
                "texts_per_s": round(n / wall, 1),
                "wall_s": round(wall, 3),
                "tokenize_s": st["tokenize_s"],
                "pad_s": st["pad_s"],
                "inference_s": st["inference_s"],
                "batches": st["batches"],
                "padding_efficiency": st["padding_efficiency"],
            }
            print("  (a)", json.dumps(row), flush=True)
            variants.append(row)
            if best is None or wall < best[0]:
                best = (wall, vecs, info, st)
            lens = [min(len(x), 254) + 2 for x in emb.tokenizer.encode_content(texts[:5000])]
            emb.close()
            del emb
            gc.collect()
        assert best is not None
        t_ours, ours, info, stats = best
    cos16 = (ours * ref).sum(1) / np.linalg.norm(ref, axis=1)
    cos32 = (ours[:2000] * ref32).sum(1) / np.linalg.norm(ref32, axis=1)
    return {
        "texts": n,
        "mean_tokens": float(np.mean(lens)),
        "max_tokens": int(np.max(lens)),
        "sutra_texts_per_s": round(n / t_ours, 1),
        "sutra_default_texts_per_s": next((v["texts_per_s"] for v in variants if v["defaults"]), None),
        "st_fp16_texts_per_s": round(n / t_st, 1),
        "st_note": "sentence-transformers fp16, batch_size=256, run before the embedder, best of two",
        "ratio": round(t_st / t_ours, 2),
        "session": info,
        "stats": stats,
        "variants": variants,
        "cosine_vs_st_fp16": {"min": float(cos16.min()), "mean": float(cos16.mean())},
        "cosine_vs_st_fp32": {"min": float(cos32.min()), "mean": float(cos32.mean())},
    }


def _random_bert(max_positions: int) -> tuple[Any, dict[str, np.ndarray]]:
    from sutra_embedder.models.onnx_builder import EncoderSpec

    rng = np.random.default_rng(0)
    h, inter, layers = 768, 3072, 12
    spec = EncoderSpec("bert", h, 12, layers, inter, 1e-12, max_positions, 0)
    w: dict[str, np.ndarray] = {}

    def rnd(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w["embeddings.word_embeddings.weight"] = rnd(30522, h)
    w["embeddings.position_embeddings.weight"] = rnd(max_positions, h)
    w["embeddings.token_type_embeddings.weight"] = rnd(2, h)
    w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"] = np.ones(h, np.float32), np.zeros(h, np.float32)
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[p + f"attention.self.{name}.weight"], w[p + f"attention.self.{name}.bias"] = rnd(h, h), rnd(h)
        w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"] = rnd(h, h), rnd(h)
        w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"] = rnd(inter, h), rnd(inter)
        w[p + "output.dense.weight"], w[p + "output.dense.bias"] = rnd(h, inter), rnd(h)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + ln + ".weight"], w[p + ln + ".bias"] = np.ones(h, np.float32), np.zeros(h, np.float32)
    return spec, w


def _long_run(variant: str, seq: int, batch: int, out: str) -> None:
    """One variant in its own process so its peak GPU memory is its own."""
    import onnx
    import onnxruntime as ort
    import torch

    from sutra_embedder.models.onnx_builder import build_encoder
    from sutra_embedder.models.quantize import convert_fp16_graph

    spec, weights = _random_bert(seq)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        onnx.save_model(
            build_encoder(spec, weights, fused=variant != "unfused_fp32"), str(path), save_as_external_data=True
        )
        source: str | bytes = str(path)
        cuda: dict[str, Any] = {}
        if variant != "unfused_fp32":
            convert_fp16_graph(path, Path(tmp) / "m16.onnx")
            source = str(Path(tmp) / "m16.onnx")
        if variant == "fused_fp16_efficient":  # what the embedder loads with its default attention_kernels
            from sutra_embedder.models.onnx_builder import varlen_model_bytes

            source = varlen_model_bytes(source) or source
            cuda["sdpa_kernel"] = 23
        sess = ort.InferenceSession(source, providers=[("CUDAExecutionProvider", cuda)])
        ids = np.random.default_rng(1).integers(1000, 30000, (batch, seq)).astype(np.int64)
        mask = np.ones_like(ids)
        base = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]
        peak = [0]
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                free, total = torch.cuda.mem_get_info()
                peak[0] = max(peak[0], total - free - base)
                time.sleep(0.002)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        sess.run(None, {"input_ids": ids, "attention_mask": mask})
        reps = 3
        t0 = time.perf_counter()
        for _ in range(reps):
            sess.run(None, {"input_ids": ids, "attention_mask": mask})
        elapsed = (time.perf_counter() - t0) / reps
        stop.set()
        th.join()
    Path(out).write_text(
        json.dumps(
            {
                "variant": variant,
                "seq": seq,
                "batch": batch,
                "seconds_per_batch": elapsed,
                "seq_per_s": batch / elapsed,
                "peak_gpu_mb": peak[0] / 2**20,
            }
        )
    )


def part_c(seq: int, batch: int) -> dict[str, Any]:
    results = {}
    for variant in ("fused_fp16", "fused_fp16_efficient", "unfused_fp32"):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            out = fh.name
        env = dict(os.environ, ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO="1")
        proc = subprocess.run(
            [sys.executable, __file__, "--long-run", variant, "--seq", str(seq), "--batch", str(batch), "--out", out],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            results[variant] = {"error": proc.stderr[-3000:]}
            continue
        results[variant] = json.loads(Path(out).read_text())
        kernel_lines = sorted(
            {
                ln.strip()
                for ln in (proc.stdout + proc.stderr).splitlines()
                if "Attention" in ln and ("Flash" in ln or "Efficient" in ln or "Kernel" in ln)
            }
        )
        results[variant]["attention_kernel_info"] = kernel_lines[:5]
    f, e, u = (results.get(k, {}) for k in ("fused_fp16", "fused_fp16_efficient", "unfused_fp32"))
    if "seq_per_s" in f and "seq_per_s" in u:
        results["speedup"] = round(f["seq_per_s"] / u["seq_per_s"], 2)
        results["memory_ratio"] = round(u["peak_gpu_mb"] / max(f["peak_gpu_mb"], 1e-6), 2)
    if "seq_per_s" in e and "seq_per_s" in u:
        results["speedup_efficient"] = round(e["seq_per_s"] / u["seq_per_s"], 2)
        results["memory_ratio_efficient"] = round(u["peak_gpu_mb"] / max(e["peak_gpu_mb"], 1e-6), 2)
    return results


def plot(data: dict[str, Any], path: Path) -> None:
    """Bars: every (a) variant and sentence-transformers fp16; (c) time and memory when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for key, run in data.get("a_end_to_end_minilm", {}).items():
        if "variants" not in run:
            continue
        labels = [
            f"sutra w={v['prepare_workers']} s={v['inference_streams']} p={v.get('tokenize_processes', 0)}"
            + ("" if v.get("ascii_fast_path", False) else " stock-tok")
            for v in run["variants"]
        ]
        values = [v["texts_per_s"] for v in run["variants"]]
        axes[0].bar(
            [*labels, "sentence-transformers fp16"],
            [*values, run["st_fp16_texts_per_s"]],
            color=["C0"] * len(values) + ["C7"],
        )
        axes[0].set_title(f"(a) all-MiniLM-L6-v2 end to end, {run['texts']:,} texts ({key}): {run['ratio']}x")
        axes[0].set_ylabel("texts/s")
        axes[0].tick_params(axis="x", labelsize=7, rotation=20)
        break
    c = data.get("c_long_sequences", {})
    if "speedup" in c:
        names = [n for n in ("fused_fp16", "fused_fp16_efficient", "unfused_fp32") if "peak_gpu_mb" in c.get(n, {})]
        axes[1].bar(names, [c[n]["peak_gpu_mb"] for n in names], color=["C2", "C1", "C3"][: len(names)])
        axes[1].set_title(f"(c) 4096 tokens: {c['speedup']}x faster, {c['memory_ratio']}x less memory")
        axes[1].set_ylabel("peak GPU MB")
    else:
        axes[1].axis("off")
    fig.suptitle(data["device"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", type=Path)
    ap.add_argument("--texts", type=int, default=100_000)
    ap.add_argument("--part", default="all", choices=("a", "c", "all"))
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--kernels", default="23", help="comma-separated sdpa_kernel masks to compare in (a)")
    ap.add_argument(
        "--prepare-workers",
        default="auto",
        help="comma-separated batching.prepare_workers to compare in (a); auto = default",
    )
    ap.add_argument(
        "--streams", default="auto", help="comma-separated runtime.inference_streams to compare in (a); auto = default"
    )
    ap.add_argument(
        "--tokenize-processes",
        default="auto",
        help="comma-separated batching.tokenize_processes to compare in (a); auto = default",
    )
    ap.add_argument("--ascii", default="on", help="comma-separated batching.ascii_fast_path (on,off) to compare in (a)")
    ap.add_argument("--long-run", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.long_run:
        _long_run(args.long_run, args.seq, args.batch, args.out)
        return
    data: dict[str, Any] = {"benchmark": "gpu", "device": gpu_name(), "machine": machine()}
    if args.part in ("a", "all"):
        runs = {}
        for k in (int(x) for x in args.kernels.split(",")):
            try:
                runs[f"attention_kernels={k}"] = part_a(
                    args.source,
                    args.texts,
                    k,
                    tuple(_knob(w) for w in args.prepare_workers.split(",")),
                    tuple(_knob(s) for s in args.streams.split(",")),
                    tuple(_knob(p) for p in args.tokenize_processes.split(",")),
                    tuple(a == "on" for a in args.ascii.split(",")),
                )
            except Exception as exc:  # a kernel choice the GPU rejects is a result too
                runs[f"attention_kernels={k}"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(
                k,
                json.dumps(
                    {
                        kk: v
                        for kk, v in runs[f"attention_kernels={k}"].items()
                        if kk in ("sutra_texts_per_s", "st_fp16_texts_per_s", "ratio", "error")
                    }
                ),
                flush=True,
            )
        data["a_end_to_end_minilm"] = runs
    if args.part in ("c", "all"):
        data["c_long_sequences"] = part_c(args.seq, args.batch)
        print(json.dumps(data["c_long_sequences"], indent=1), flush=True)
    out = write_device_results("gpu", data, args.part)
    plot(data, out.with_suffix(".png"))
    print(out)


if __name__ == "__main__":
    main()
