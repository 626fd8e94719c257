"""Where the GPU's own time goes on the end-to-end corpus: batch shapes, sessions, threads.

Model calls only (texts tokenized and padded beforehand), all-MiniLM-L6-v2 fused
fp16 with IOBinding, the corpus of ``bench_gpu.py`` part (a):

* ``plan``: the token-budget batches of the corpus under several
  ``max_batch_tokens`` x ``max_batch_size`` caps, run one after another.
* ``overlap``: the default plan's batches run by 1-3 threads on one session
  (ONNX Runtime's CUDA provider runs one session's calls on one CUDA stream) or
  on one session per thread (one stream each, so copies and kernels of
  different calls can overlap on the device).
* ``fixed``: fixed shapes of the same token count, sequences/s and tokens/s.

    python benchmarks/bench_gpu_shapes.py --source MINILM_ST_DIR [--texts 100000]

Writes benchmarks/results/gpu_shapes_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_gpu import corpus, gpu_name, prepare_model  # noqa: E402
from benchmarks.common import machine, write_device_results  # noqa: E402
from sutra_embedder.core import ChunkingConfig, Embedder, EmbedderConfig, RuntimeConfig  # noqa: E402
from sutra_embedder.core.batching import pad_batch, plan_batches  # noqa: E402


def _embedder(model: Path) -> Embedder:
    return Embedder(
        EmbedderConfig(
            model=str(model),
            chunking=ChunkingConfig(policy="truncate"),
            runtime=RuntimeConfig(device="cuda", fp16=True, attention_kernels=23),
        )
    )


def _batches(emb: Embedder, items: list[np.ndarray], tokens: int, rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
    plan = plan_batches([len(x) for x in items], tokens, rows, True, 4096)
    return [pad_batch([items[i] for i in b], emb.tokenizer.pad_id) for b in plan.batches]


def _timed(runs: list[Any], batches: list[tuple[np.ndarray, np.ndarray]], threads: int) -> float:
    """Seconds for ``threads`` threads to run all batches (thread ``t`` takes every ``threads``-th)."""

    def work(t: int) -> None:
        run = runs[t % len(runs)]
        for ids, mask in batches[t::threads]:
            run(ids, mask)

    for t in range(threads):  # warm every session on every shape
        work(t)
    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--texts", type=int, default=100_000)
    args = ap.parse_args()
    texts = corpus(args.texts)
    data: dict[str, Any] = {"benchmark": "gpu_shapes", "device": gpu_name(), "machine": machine(), "texts": len(texts)}
    with tempfile.TemporaryDirectory() as tmp:
        model = prepare_model(args.source, Path(tmp))
        embs = [_embedder(model) for _ in range(3)]
        emb = embs[0]
        window = emb.max_content_tokens
        items = [emb.tokenizer.frame(c[:window]) for c in emb.tokenizer.encode_content(texts)]
        n_tokens = sum(len(x) for x in items)
        data["tokens"] = n_tokens

        plans = []
        for tokens, rows in [(16384, 256), (32768, 512), (65536, 1024), (65536, 4096), (131072, 2048)]:
            batches = _batches(emb, items, tokens, rows)
            wall = _timed([emb._run], batches, 1)
            row = {
                "max_batch_tokens": tokens,
                "max_batch_size": rows,
                "batches": len(batches),
                "texts_per_s": round(len(texts) / wall, 1),
                "tokens_per_s": round(n_tokens / wall),
            }
            print("plan", json.dumps(row), flush=True)
            plans.append(row)
        data["plan"] = plans

        batches = _batches(emb, items, 65536, 1024)
        overlap = []
        for threads in (1, 2, 3):
            for sessions in sorted({1, threads}):
                wall = _timed([e._run for e in embs[:sessions]], batches, threads)
                row = {"threads": threads, "sessions": sessions, "texts_per_s": round(len(texts) / wall, 1)}
                print("overlap", json.dumps(row), flush=True)
                overlap.append(row)
        data["overlap"] = overlap

        fixed = []
        for rows, width in [(2048, 32), (1024, 64), (512, 128), (256, 256), (256, 128)]:
            ids = np.random.default_rng(0).integers(1000, 20000, size=(rows, width)).astype(np.int64)
            mask = np.ones_like(ids)
            reps = max(5, 2_000_000 // ids.size)
            wall = _timed([emb._run], [(ids, mask)] * reps, 1)
            row = {
                "rows": rows,
                "width": width,
                "seq_per_s": round(rows * reps / wall),
                "tokens_per_s": round(ids.size * reps / wall),
            }
            print("fixed", json.dumps(row), flush=True)
            fixed.append(row)
        data["fixed"] = fixed
    out = write_device_results("gpu_shapes", data)
    print(out)


if __name__ == "__main__":
    main()
