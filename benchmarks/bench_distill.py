"""Distil a student from a teacher; compare retrieval quality (nDCG@10) and CPU texts/s.

Targets: the student keeps >= 95% of the teacher's nDCG@10 at >= 2x the teacher's texts/s.
The run goes through ``sutra distill`` (Beam teacher job, training, ONNX export,
quality report) and adds a baseline: the student before training (a pruned copy
of the teacher, or the student model with a ridge projection to the teacher).
Writes benchmarks/results/<out>.json and .png.

    # a 3-layer MiniLM distilled from the 6-layer one
    python benchmarks/bench_distill.py --teacher minilm --prune-layers 3
    # the 384-d MiniLM distilled into the 768-d MPNet space (with a linear head)
    python benchmarks/bench_distill.py --teacher mpnet --student minilm --out distill_mpnet_minilm
    # small and quick
    python benchmarks/bench_distill.py --teacher minilm --prune-layers 3 --corpus-limit 256 --steps 40 \\
        --queries 80 --distractors 400 --out distill_small
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import HERE, RESULTS, best_of, load_texts, machine, write_results
from sutra_embedder.models.distill import (
    StudentSpec,
    TrainConfig,
    apply_projection,
    cpu_embedder,
    export_student,
    fit_projection,
    pruned_student,
    resolve_source,
    select_layers,
)
from sutra_embedder.models.evaluate import evaluate_embeddings
from sutra_embedder.models.quality import DEFAULT_EVAL_DIR, EvalSet
from sutra_embedder.pipelines.distill import DistillJob, run_distill

TARGET_RATIO, TARGET_SPEEDUP = 0.95, 2.0


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def eval_files(tmp: Path, queries: int | None, distractors: int | None) -> tuple[str | None, str | None]:
    """The stdlib retrieval set, or a subset: the first N queries, their documents and M others."""
    if queries is None and distractors is None:
        return None, None
    qs = _jsonl(DEFAULT_EVAL_DIR / "stdlib_queries.jsonl")[:queries]
    docs = _jsonl(DEFAULT_EVAL_DIR / "stdlib_corpus.jsonl")
    wanted = {r for q in qs for r in q["relevant"]}
    others = [d for d in docs if d["id"] not in wanted]
    docs = [d for d in docs if d["id"] in wanted] + others[:distractors]
    return str(_write(tmp / "eval_corpus.jsonl", docs)), str(_write(tmp / "eval_queries.jsonl", qs))


def speed(models: dict[str, Any], texts: list[str], repeats: int) -> dict[str, float]:
    """texts/s of each embedder, timed alternately so machine noise hits all alike (best of ``repeats``)."""
    for emb in models.values():
        emb.embed(texts[:32])
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, emb in models.items():
            times[name].append(best_of(partial(emb.embed, texts), 1))
    return {name: len(texts) / min(t) for name, t in times.items()}


def baseline(args: argparse.Namespace, job: DistillJob, eval_set: EvalSet, teacher: Any, tmp: Path,
             vectors_dir: Path) -> dict[str, Any]:
    """nDCG@10 of the student before training.

    The untrained student (pruned if asked) searches its own index when its
    dimension is the teacher's; otherwise its queries, mapped by a ridge
    projection fitted on the corpus, search the teacher's index.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = resolve_source(args.student or args.teacher)
    n = int(json.loads((source / "config.json").read_text())["num_hidden_layers"])
    keep = select_layers(n, args.prune_layers) if args.prune_layers else None
    student_dir = pruned_student(StudentSpec(source, keep)).save(tmp / "untrained")
    emb = cpu_embedder(str(export_student(student_dir, tmp / "untrained-model", "untrained")), args.threads)
    ids = [d.id for d in eval_set.corpus]
    label = f"{args.student or args.teacher}" + (f" layers {list(keep)}" if keep else "") + ", not trained"
    queries = emb.embed([q.text for q in eval_set.queries])
    if emb.dim == teacher.dim:
        docs = emb.embed([d.text for d in eval_set.corpus])
        return {"kind": label, **evaluate_embeddings(queries, docs, ids, eval_set.queries)}
    table = pa.concat_tables([pq.read_table(f) for f in sorted(vectors_dir.glob("vectors-*.parquet"))])
    T = np.asarray(table.column("vector").to_pylist(), np.float32)
    W = fit_projection(emb.embed(table.column("text").to_pylist()), T, job.ridge)
    docs = teacher.embed([d.text for d in eval_set.corpus])
    return {"kind": f"{label}; queries through a ridge projection on the teacher's index",
            **evaluate_embeddings(apply_projection(queries, W), docs, ids, eval_set.queries)}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = [result["teacher"]["name"], "before training", result["student"]["name"]]
    ndcg = [result["teacher"]["ndcg@10"], result["baseline"]["ndcg@10"], result["student"]["ndcg@10"]]
    ax = axes[0]
    bars = ax.bar(labels, ndcg, color=["#4c72b0", "#999999", "#dd8452"])
    ax.axhline(TARGET_RATIO * ndcg[0], color="k", ls="--", lw=1, label="95% of teacher")
    for bar, v in zip(bars, ndcg):
        ax.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_title(f"nDCG@10 ({result['eval_set']['name']}, {result['eval_set']['queries']} queries)", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1]
    tps = [result["teacher"]["texts_per_s"], result["student"]["texts_per_s"]]
    bars = ax.bar([labels[0], labels[2]], tps, color=["#4c72b0", "#dd8452"])
    ax.axhline(TARGET_SPEEDUP * tps[0], color="k", ls="--", lw=1, label="2x teacher")
    for bar, v in zip(bars, tps):
        ax.annotate(f"{v:,.1f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_title(f"CPU texts/s, {result['config']['threads']} threads (speed-up {result['speedup']:.2f}x)",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[2]
    hist = result["training"]["eval_losses"]
    ax.plot([h[0] for h in hist], [h[1] for h in hist], marker="o", ms=3)
    ax.set_xlabel("step")
    ax.set_title("held-out distillation loss", fontsize=9)
    fig.suptitle(result["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="minilm")
    ap.add_argument("--student", default=None)
    ap.add_argument("--prune-layers", type=int, default=None)
    ap.add_argument("--corpus", default=str(HERE / "data" / "mixed_corpus.jsonl"))
    ap.add_argument("--corpus-limit", type=int, default=None, help="train on the first N texts")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--head-init", default="jl", choices=("jl", "ridge"))
    ap.add_argument("--relational-weight", type=float, default=TrainConfig.relational_weight)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=None, help="evaluate on the first N stdlib queries")
    ap.add_argument("--distractors", type=int, default=None, help="... their documents and M others")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speed-texts", type=int, default=256)
    ap.add_argument("--name", default=None, help="model name to register (default bench-<out>)")
    ap.add_argument("--out", default=None, help="result file stem (default distill_<teacher>_<student>)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if not args.student and not args.prune_layers:
        ap.error("give --student, --prune-layers or both")
    student_label = (args.student or args.teacher) + (f"-l{args.prune_layers}" if args.prune_layers else "")
    out = args.out or f"distill_{args.teacher}_{student_label}".replace("/", "_")
    name = args.name or f"bench-{out}".replace("_", "-")

    with tempfile.TemporaryDirectory(prefix="sutra-bench-distill-") as tmpdir:
        tmp = Path(tmpdir)
        corpus = Path(args.corpus)
        if args.corpus_limit:
            corpus = _write(tmp / "corpus.jsonl", _jsonl(corpus)[: args.corpus_limit])
        eval_corpus, eval_queries = eval_files(tmp, args.queries, args.distractors)
        train = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, head_init=args.head_init,
                            relational_weight=args.relational_weight, max_length=args.max_length, seed=args.seed,
                            threads=args.threads, progress=not args.no_progress)
        job = DistillJob(teacher=args.teacher, corpus=str(corpus), name=name, student=args.student,
                         prune_layers=args.prune_layers, train=train, min_ndcg_ratio=0.0,
                         eval_corpus=eval_corpus, eval_queries=eval_queries, work_dir=str(tmp / "work"), force=True)
        outcome = run_distill(job)
        report = outcome.report
        eval_set = EvalSet.load(eval_corpus, eval_queries)
        teacher = cpu_embedder(args.teacher, args.threads)
        student = cpu_embedder(str(outcome.path), args.threads)
        base = baseline(args, job, eval_set, teacher, tmp, tmp / "work" / "teacher")
        texts = load_texts(args.speed_texts)
        tps = speed({"teacher": teacher, "student": student}, texts, args.repeats)

    history = outcome.history
    t_ndcg, s_ndcg = report.reference.metrics["ndcg@10"], report.candidate.metrics["ndcg@10"]
    result: dict[str, Any] = {
        "title": f"distillation: {args.teacher} -> {name} ({args.steps} steps x {args.batch_size})",
        "machine": machine(),
        "config": {**vars(args), "corpus": str(args.corpus), "train": job.train.__dict__},
        "eval_set": {"name": report.eval_set, "queries": len(eval_set.queries), "docs": len(eval_set.corpus)},
        "teacher": {"name": report.reference.name, **report.reference.metrics, "dim": report.reference.dim,
                    "size_mb": report.reference.size_mb, "texts_per_s": tps["teacher"]},
        "student": {"name": name, **report.candidate.metrics, "dim": report.candidate.dim,
                    "size_mb": report.candidate.size_mb, "texts_per_s": tps["student"]},
        "baseline": base,
        "ndcg_ratio": s_ndcg / t_ndcg,
        "speedup": tps["student"] / tps["teacher"],
        "compression": report.compression,
        "cosine_to_teacher": {"mean": report.cosine_mean, "p1": report.cosine_p1},
        "targets": {"ndcg_ratio": TARGET_RATIO, "speedup": TARGET_SPEEDUP,
                    "met": bool(s_ndcg / t_ndcg >= TARGET_RATIO and tps["student"] / tps["teacher"] >= TARGET_SPEEDUP)},
        "training": {
            "n_train": report.extra.get("n_train"),
            "seconds": report.extra.get("train_seconds"),
            "layers_kept": report.extra.get("layers_kept"),
            "head": report.extra.get("head"),
            "eval_losses": [[int(h["step"]), h["eval_loss"]] for h in history if "eval_loss" in h],
            "teacher_vectors": outcome.teacher_vectors,
        },
    }
    path = write_results(out, result)
    plot(result, RESULTS / f"{out}.png")
    print(json.dumps({k: result[k] for k in ("ndcg_ratio", "speedup", "compression", "targets")}, indent=2))
    print(f"teacher nDCG@10 {t_ndcg:.4f} ({tps['teacher']:.1f} texts/s), student {s_ndcg:.4f} "
          f"({tps['student']:.1f} texts/s), before training {base['ndcg@10']:.4f}; results in {path}")


if __name__ == "__main__":
    main()
