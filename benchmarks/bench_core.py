"""CPU texts/s of the Embedder vs sentence-transformers on the same texts, model and threads.

Also: padding efficiency of token-budget batching vs fixed-count batching on the
same mixed-length corpus. Writes benchmarks/results/core_cpu.json and .png.

    python benchmarks/bench_core.py [--limit N] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bar_plot, best_of, load_texts, machine, write_results
from sutra_embedder.core import (
    BatchingConfig,
    ChunkingConfig,
    Embedder,
    EmbedderConfig,
    RuntimeConfig,
    plan_batches,
    plan_fixed_count,
)
from sutra_embedder.models.registry import PROFILES, ensure_model, locate_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="minilm")
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    texts = load_texts(args.limit)
    src = locate_source(PROFILES[args.model])
    st = SentenceTransformer(str(src), device="cpu")
    emb = Embedder(EmbedderConfig(
        model=str(ensure_model(args.model)),
        chunking=ChunkingConfig(policy="truncate"),  # the same work as sentence-transformers
        batching=BatchingConfig(),
        runtime=RuntimeConfig(device="cpu", intra_op_threads=args.threads),
    ))
    # Warm both up, then time alternately so machine noise hits both alike.
    emb.embed(texts[:64])
    st.encode(texts[:64], batch_size=32)
    t_ours, t_st = [], []
    for _ in range(args.repeats):
        t_ours.append(best_of(lambda: emb.embed(texts), 1))
        t_st.append(best_of(lambda: st.encode(texts, batch_size=32, convert_to_numpy=True), 1))
    ours, ref = emb.embed(texts), st.encode(texts, batch_size=32, convert_to_numpy=True)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)

    lengths = [min(len(x), 254) + 2 for x in emb.tokenizer.encode_content(texts)]
    budget = plan_batches(lengths, BatchingConfig.max_batch_tokens, BatchingConfig.max_batch_size)
    fixed = plan_fixed_count(lengths, 32)
    order = np.argsort([-len(t) for t in texts], kind="stable")  # sentence-transformers sorts by characters
    st_like = plan_fixed_count(np.asarray(lengths)[order], 32)

    ours_tps = len(texts) / min(t_ours)
    st_tps = len(texts) / min(t_st)
    data = {
        "benchmark": "core_cpu",
        "machine": machine(),
        "model": args.model,
        "texts": len(texts),
        "mean_tokens": float(np.mean(lengths)),
        "threads": args.threads,
        "sutra_texts_per_s": round(ours_tps, 1),
        "sentence_transformers_texts_per_s": round(st_tps, 1),
        "ratio": round(ours_tps / st_tps, 3),
        "runs_s": {"sutra": [round(t, 3) for t in t_ours], "sentence_transformers": [round(t, 3) for t in t_st]},
        "cosine_to_sentence_transformers": {"min": float(cos.min()), "mean": float(cos.mean())},
        "padding_efficiency": {
            "token_budget": round(budget.padding_efficiency, 4),
            "fixed_count_32_input_order": round(fixed.padding_efficiency, 4),
            "fixed_count_32_sorted_by_chars": round(st_like.padding_efficiency, 4),
        },
        "batches": {"token_budget": len(budget.batches), "fixed_count_32": len(fixed.batches)},
    }
    print(write_results("core_cpu", data))
    bar_plot("core_cpu", f"all-MiniLM-L6-v2, {len(texts)} mixed texts, {args.threads} CPU threads "
             f"(ratio {data['ratio']}x)", ["sutra Embedder", "sentence-transformers"],
             [ours_tps, st_tps], "texts / second")
    print({k: data[k] for k in ("sutra_texts_per_s", "sentence_transformers_texts_per_s", "ratio")},
          data["padding_efficiency"], data["cosine_to_sentence_transformers"])


if __name__ == "__main__":
    main()
