"""Quality report shared by the quantization and distillation pipelines.

A report compares a candidate model with a reference model on a retrieval set
(``sutra eval`` format): nDCG@10, recall@10 and MRR@10 of both, cosine
agreement between their vectors (mean and 1st percentile), model file size and
texts/s on the same texts. It is written as JSON, Markdown and a PNG plot.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sutra_embedder.core.embedder import Embedder

from .evaluate import CorpusDoc, Query, evaluate_embeddings

DEFAULT_EVAL_DIR = Path(__file__).resolve().parents[2] / "examples" / "eval"


@dataclass(frozen=True)
class EvalSet:
    """A retrieval set: documents and queries with relevance judgements."""

    corpus: list[CorpusDoc]
    queries: list[Query]
    name: str = "stdlib"

    @classmethod
    def load(cls, corpus: str | Path | None = None, queries: str | Path | None = None,
             limit_queries: int | None = None) -> EvalSet:
        from .evaluate import load_corpus, load_queries

        c = load_corpus(corpus or DEFAULT_EVAL_DIR / "stdlib_corpus.jsonl")
        q = load_queries(queries or DEFAULT_EVAL_DIR / "stdlib_queries.jsonl")
        if limit_queries:
            q = q[:limit_queries]
        return cls(c, q, Path(corpus).stem if corpus else "stdlib")


@dataclass
class ModelScore:
    """One model's numbers in a report."""

    name: str
    metrics: dict[str, float]
    size_mb: float
    texts_per_s: float
    dim: int


@dataclass
class QualityReport:
    """Candidate vs reference on one retrieval set."""

    eval_set: str
    reference: ModelScore
    candidate: ModelScore
    cosine_mean: float
    cosine_p1: float
    ndcg_ratio: float
    speedup: float
    compression: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        r, c = self.reference, self.candidate
        rows = [
            "| | reference | candidate |",
            "|---|---|---|",
            f"| model | {r.name} | {c.name} |",
        ]
        for key in r.metrics:
            rows.append(f"| {key} | {r.metrics[key]:.4f} | {c.metrics.get(key, float('nan')):.4f} |")
        rows += [
            f"| dimension | {r.dim} | {c.dim} |",
            f"| size (MB) | {r.size_mb:.1f} | {c.size_mb:.1f} |",
            f"| texts/s | {r.texts_per_s:.1f} | {c.texts_per_s:.1f} |",
        ]
        summary = (
            f"nDCG@10 ratio {self.ndcg_ratio:.4f}, speed-up {self.speedup:.2f}x, "
            f"compression {self.compression:.2f}x, cosine to reference mean {self.cosine_mean:.4f} "
            f"/ 1st percentile {self.cosine_p1:.4f}"
        )
        return f"# Quality report ({self.eval_set})\n\n" + "\n".join(rows) + f"\n\n{summary}\n"

    def write(self, directory: str | Path, stem: str = "quality_report") -> dict[str, Path]:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        paths["md"].write_text(self.to_markdown(), encoding="utf-8")
        try:
            self._plot(paths["png"])
        except ImportError:  # matplotlib is optional: the JSON and Markdown still stand
            del paths["png"]
        return paths

    def _plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        r, c = self.reference, self.candidate
        keys = list(r.metrics)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        x = np.arange(len(keys))
        axes[0].bar(x - 0.2, [r.metrics[k] for k in keys], 0.4, label=r.name)
        axes[0].bar(x + 0.2, [c.metrics.get(k, 0.0) for k in keys], 0.4, label=c.name)
        axes[0].set_xticks(x, keys)
        axes[0].set_title("retrieval quality")
        axes[0].legend(fontsize=8)
        axes[1].bar([r.name, c.name], [r.texts_per_s, c.texts_per_s], color=["#4c72b0", "#dd8452"])
        axes[1].set_title(f"texts/s (speed-up {self.speedup:.2f}x)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _model_size_mb(emb: Embedder) -> float:
    return Path(emb.session_info.model_path).stat().st_size / 1e6


def score_model(emb: Embedder, eval_set: EvalSet, name: str, speed_texts: list[str]) -> tuple[ModelScore, np.ndarray]:
    """Metrics, speed and the document vectors of one model."""
    doc_vecs = emb.embed([d.text for d in eval_set.corpus])
    query_vecs = emb.embed([q.text for q in eval_set.queries])
    metrics = evaluate_embeddings(query_vecs, doc_vecs, [d.id for d in eval_set.corpus], eval_set.queries)
    emb.embed(speed_texts[:32])
    start = time.perf_counter()
    emb.embed(speed_texts)
    tps = len(speed_texts) / (time.perf_counter() - start)
    return ModelScore(name, metrics, _model_size_mb(emb), tps, emb.dim), doc_vecs


def compare(reference: Embedder, candidate: Embedder, eval_set: EvalSet, speed_texts: list[str] | None = None,
            names: tuple[str, str] = ("reference", "candidate"), candidate_vectors_comparable: bool = True,
            size_override_mb: float | None = None) -> QualityReport:
    """Build the report of ``candidate`` against ``reference``.

    Args:
        candidate_vectors_comparable: Whether both models' vectors live in the
            same space (false for a student with another dimension, unless it
            was trained to reproduce the teacher).
        size_override_mb: Candidate size when it is not one ONNX file.
    """
    texts = speed_texts or [d.text for d in eval_set.corpus[:512]]
    ref_score, ref_docs = score_model(reference, eval_set, names[0], texts)
    cand_score, cand_docs = score_model(candidate, eval_set, names[1], texts)
    if size_override_mb is not None:
        cand_score.size_mb = size_override_mb
    if candidate_vectors_comparable and ref_docs.shape == cand_docs.shape:
        cos = (ref_docs * cand_docs).sum(1) / (
            np.linalg.norm(ref_docs, axis=1) * np.linalg.norm(cand_docs, axis=1) + 1e-12)
        cos_mean, cos_p1 = float(cos.mean()), float(np.percentile(cos, 1))
    else:
        cos_mean = cos_p1 = float("nan")
    ndcg_key = "ndcg@10"
    return QualityReport(
        eval_set=eval_set.name,
        reference=ref_score,
        candidate=cand_score,
        cosine_mean=cos_mean,
        cosine_p1=cos_p1,
        ndcg_ratio=cand_score.metrics[ndcg_key] / max(ref_score.metrics[ndcg_key], 1e-12),
        speedup=cand_score.texts_per_s / max(ref_score.texts_per_s, 1e-12),
        compression=ref_score.size_mb / max(cand_score.size_mb, 1e-12),
    )
