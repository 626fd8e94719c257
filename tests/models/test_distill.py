"""`sutra distill`: a pruned student trained end to end, projections, the JL head, reproducibility.

Every run is tiny (64 texts, a 2-layer student, a dozen steps): these tests check
the machinery, not the quality a full run reaches (benchmarks/bench_distill.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from sutra_embedder import cli
from sutra_embedder.core import ChunkingConfig, ConfigError, Embedder, EmbedderConfig, load_manifest
from sutra_embedder.models.distill import (
    Projection,
    StudentSpec,
    TrainConfig,
    export_student,
    fit_projection,
    jl_head,
    pruned_student,
    select_layers,
    train_student,
)
from sutra_embedder.pipelines.distill import DistillJob
from tests.fixtures.models import REPO, read_jsonl

N_TEXTS = 64


def _truncating(model: str) -> Embedder:
    return Embedder(EmbedderConfig(model=model, chunking=ChunkingConfig(policy="truncate")))


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@dataclass
class Run:
    """One shared end-to-end distillation: 64 texts, MiniLM pruned to 2 layers, 12 steps."""

    cache: Path
    work: Path
    corpus: Path
    eval_corpus: Path
    eval_queries: Path
    teacher: Path
    texts: list[str]
    rc: int


def _main(argv: list[str]) -> int:
    return cli.main(argv)


def _eval_args(run: Run) -> list[str]:
    return ["--eval-corpus", str(run.eval_corpus), "--eval-queries", str(run.eval_queries)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path, minilm_source: Path) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("distill")
    texts = [r["text"] for r in read_jsonl(REPO / "benchmarks/data/mixed_corpus.jsonl")[:N_TEXTS]]
    corpus = _write_jsonl(root / "corpus.jsonl", [{"id": f"t{i:03d}", "text": t} for i, t in enumerate(texts)])
    queries = read_jsonl(REPO / "examples/eval/stdlib_queries.jsonl")[:20]
    docs = read_jsonl(REPO / "examples/eval/stdlib_corpus.jsonl")
    wanted = {r for q in queries for r in q["relevant"]}
    docs = [d for d in docs if d["id"] in wanted] + [d for d in docs if d["id"] not in wanted][:40]
    eval_corpus, eval_queries = _write_jsonl(root / "ec.jsonl", docs), _write_jsonl(root / "eq.jsonl", queries)
    r = Run(root / "cache", root / "work", corpus, eval_corpus, eval_queries, minilm_dir, texts, -1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUTRA_CACHE_DIR", str(r.cache))
        r.rc = _main([
            "distill", "--teacher", str(minilm_dir), "--student", str(minilm_source), "--prune-layers", "2",
            "--corpus", str(corpus), "--name", "mini-l2", "--steps", "12", "--batch-size", "8",
            "--eval-batch-size", "16", "--eval-every", "1", "--lr", "2e-4", "--seed", "3", "--threads", "2",
            "--min-ndcg-ratio", "0", "--work-dir", str(r.work), "--no-progress", *_eval_args(r),
        ])
        yield r


@pytest.fixture()
def in_cache(run: Run, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("SUTRA_CACHE_DIR", str(run.cache))
    return run


# ------------------------------------------------------------------------------ end to end
def test_pruned_student_is_registered_and_loadable(in_cache: Run) -> None:
    run = in_cache
    assert run.rc == 0
    path = run.cache / "models" / "mini-l2"
    manifest = load_manifest(path)
    assert manifest.dim == 384 and manifest.extra["layers"] == 2
    assert manifest.extra["distillation"]["layers_kept"] == [0, 5]
    student_cfg = json.loads((run.work / "student" / "config.json").read_text())
    assert student_cfg["num_hidden_layers"] == 2
    vecs = _truncating("mini-l2").embed(["a first text", "and a second one"])
    assert vecs.shape == (2, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    report = json.loads((path / "quality_report.json").read_text())
    assert report["reference"]["name"] == "minilm" and report["candidate"]["name"] == "mini-l2"
    assert report["ndcg_ratio"] > 0.0 and -1.0 <= report["cosine_mean"] <= 1.0
    assert report["compression"] > 1.2  # 2 of 6 layers (the embedding table stays)
    assert (path / "quality_report.md").exists() and (path / "distill_log.json").exists()


def test_training_loss_improves_on_the_held_out_batch(in_cache: Run) -> None:
    log = json.loads((in_cache.work / "distill_log.json").read_text())
    evals = [h["eval_loss"] for h in log["history"] if "eval_loss" in h]
    assert len(evals) == 13  # before training, then after each of the 12 steps
    assert np.mean(evals[-3:]) < np.mean(evals[:3]) * 0.95, evals


def test_teacher_vectors_come_from_the_beam_job(in_cache: Run) -> None:
    files = sorted((in_cache.work / "teacher").glob("vectors-*.parquet"))
    table = pq.read_table(files[0])
    assert table.column_names == ["id", "text", "vector"] and table.num_rows == N_TEXTS
    assert table.schema.metadata[b"sutra.model"] == b"minilm"
    by_id = dict(zip(table.column("id").to_pylist(), table.column("vector").to_pylist()))
    got = np.asarray([by_id[f"t{i:03d}"] for i in range(N_TEXTS)], np.float32)
    want = _truncating(str(in_cache.teacher)).embed(in_cache.texts)
    assert np.abs(got - want).max() < 1e-5


def test_exported_student_matches_sentence_transformers(in_cache: Run) -> None:
    """Independent reference: sentence-transformers loads the saved student directory."""
    torch = pytest.importorskip("torch")
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    texts = in_cache.texts[:6]
    ref = SentenceTransformer(str(in_cache.work / "student"), device="cpu").encode(texts)
    assert np.abs(_truncating("mini-l2").embed(texts) - ref).max() < 1e-4


def test_gate_refuses_and_keeps_the_registered_model(in_cache: Run, capsys: pytest.CaptureFixture[str]) -> None:
    path = in_cache.cache / "models" / "mini-l2"
    before = (path / "model.onnx").stat().st_mtime_ns
    rc = _main([
        "distill", "--teacher", str(in_cache.teacher), "--prune-layers", "1", "--student",
        str(in_cache.work / "student"), "--corpus", str(in_cache.corpus), "--name", "mini-l2", "--force",
        "--steps", "1", "--batch-size", "4", "--eval-batch-size", "8", "--threads", "2", "--no-progress",
        "--min-ndcg-ratio", "1.5", "--work-dir", str(in_cache.work), *_eval_args(in_cache),
    ])
    assert rc == 3
    assert "refusing to register 'mini-l2'" in capsys.readouterr().err
    assert (path / "model.onnx").stat().st_mtime_ns == before
    assert (in_cache.work / "quality_report.json").exists()
    assert (in_cache.work / "student.candidate" / "model.safetensors").exists()
    assert json.loads((in_cache.work / "student" / "config.json").read_text())["num_hidden_layers"] == 2
    assert not [p for p in (in_cache.cache / "models").iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------ projection
def test_projection_beats_no_projection(in_cache: Run) -> None:
    rc = _main([
        "distill", "--teacher", str(in_cache.teacher), "--student", "mini-l2", "--projection-only",
        "--corpus", str(in_cache.corpus), "--name", "to-minilm", "--ridge", "0.1", "--holdout", "0.25",
        "--min-ndcg-ratio", "0", "--work-dir", str(in_cache.work), "--threads", "2", *_eval_args(in_cache),
    ])
    assert rc == 0
    model_dir = in_cache.cache / "models" / "mini-l2"
    projection = Projection.load(model_dir, "to-minilm")
    assert projection.matrix.shape == (384, 384) and projection.teacher == "minilm"

    # Rebuild the fit independently: teacher vectors from the Parquet (sorted by id), every 4th held out,
    # ridge towards the identity by its normal equations.
    table = pq.read_table(sorted((in_cache.work / "teacher").glob("vectors-*.parquet"))[0]).sort_by("id")
    T = np.asarray(table.column("vector").to_pylist(), np.float64)
    S = _truncating("mini-l2").embed(table.column("text").to_pylist()).astype(np.float64)
    held = np.arange(len(T)) % 4 == 0
    Sf, Tf = S[~held], T[~held]
    eye = np.eye(S.shape[1])
    W = eye + np.linalg.solve(Sf.T @ Sf + 0.1 * eye, Sf.T @ (Tf - Sf))
    assert np.abs(projection.matrix - W).max() < 1e-3

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())

    assert cos(S[held] @ W, T[held]) > cos(S[held], T[held]) + 0.02
    stored = projection.metrics
    assert stored["cosine_mean"] == pytest.approx(cos(S[held] @ W, T[held]), abs=1e-3)
    assert stored["unprojected_cosine_mean"] == pytest.approx(cos(S[held], T[held]), abs=1e-3)
    assert (model_dir / "projections" / "to-minilm.quality_report.json").exists()


def test_fit_projection_matches_numpy_least_squares() -> None:
    rng = np.random.default_rng(0)
    S, T = rng.standard_normal((80, 12)), rng.standard_normal((80, 20))
    assert np.allclose(fit_projection(S, T, 0.0), np.linalg.lstsq(S, T, rcond=None)[0], atol=1e-4)
    wide = rng.standard_normal((8, 12))  # fewer texts than dimensions: the minimum-norm solution
    assert np.allclose(fit_projection(wide, T[:8], 0.0), np.linalg.pinv(wide) @ T[:8], atol=1e-4)
    prior = rng.standard_normal((12, 20))
    want = prior + np.linalg.solve(S.T @ S + 2.5 * np.eye(12), S.T @ (T - S @ prior))
    assert np.allclose(fit_projection(S, T, 2.5, prior), want, atol=1e-4)
    assert _bad_field(lambda: fit_projection(S, T, -1.0)) == "ridge"


# ------------------------------------------------------------------------------ head and layers
@pytest.mark.parametrize(("in_dim", "out_dim"), [(384, 768), (768, 384)])
def test_jl_head_preserves_pairwise_distances(in_dim: int, out_dim: int) -> None:
    points = np.random.default_rng(2024).standard_normal((40, in_dim))  # independent of the heads
    i, j = np.triu_indices(len(points), 1)
    before = np.linalg.norm(points[i] - points[j], axis=1)
    for seed in range(3):
        mapped = points @ jl_head(in_dim, out_dim, seed).T
        ratio = np.linalg.norm(mapped[i] - mapped[j], axis=1) / before
        # Squared ratios follow chi2(out_dim) / out_dim: std sqrt(2 / out_dim) (0.05 and 0.07 here).
        assert abs(ratio.mean() - 1.0) < 0.03
        assert np.abs(ratio - 1.0).max() < 5 * np.sqrt(0.5 / out_dim)
    assert not np.array_equal(jl_head(in_dim, out_dim, 0), jl_head(in_dim, out_dim, 1))


def test_layer_selection() -> None:
    assert select_layers(6, 3) == (0, 2, 5)
    assert select_layers(6, 2) == (0, 5)
    assert select_layers(12, 4) == (0, 4, 7, 11)
    assert select_layers(6, 1) == (5,)
    assert select_layers(6, 6) == tuple(range(6))
    assert select_layers(12, 3, "first") == (0, 1, 2)
    assert _bad_field(lambda: select_layers(6, 7)) == "prune_layers"


def test_head_is_exported_into_the_graph(tmp_path: Path, minilm_source: Path) -> None:
    """A student whose dimension differs from its targets gets a head in ONNX and in 2_Dense."""
    torch = pytest.importorskip("torch")
    from sentence_transformers import SentenceTransformer

    texts = [r["text"] for r in read_jsonl(REPO / "examples/corpus.jsonl")[:20]]
    targets = np.random.default_rng(0).standard_normal((len(texts), 48)).astype(np.float32)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    cfg = TrainConfig(steps=1, batch_size=4, eval_batch_size=4, max_length=32, threads=2, progress=False)
    trained = train_student(StudentSpec(minilm_source, (0,)), texts, targets, cfg)
    assert trained.head is not None and trained.head.shape == (48, 384)
    student_dir = trained.save(tmp_path / "student")
    model_dir = export_student(student_dir, tmp_path / "model", "headed")
    assert load_manifest(model_dir).dim == 48
    got = _truncating(str(model_dir)).embed(texts[:5])
    torch.set_num_threads(2)
    ref = SentenceTransformer(str(student_dir), device="cpu").encode(texts[:5])
    assert got.shape == (5, 48) and np.abs(got - ref).max() < 1e-4


def test_pruned_copy_matches_sentence_transformers_with_layers_dropped(tmp_path: Path, minilm_source: Path) -> None:
    """The numpy-only pruning (no training) against torch: the same layers removed from the real model."""
    torch = pytest.importorskip("torch")
    from sentence_transformers import SentenceTransformer

    keep = (0, 2, 5)
    student_dir = pruned_student(StudentSpec(minilm_source, keep)).save(tmp_path / "pruned")
    model_dir = export_student(student_dir, tmp_path / "model", "pruned")
    assert load_manifest(model_dir).extra["layers"] == 3
    torch.set_num_threads(2)
    st = SentenceTransformer(str(minilm_source), device="cpu")
    encoder: Any = st[0].auto_model.encoder  # type: ignore[union-attr]
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in keep])
    texts = [r["text"] for r in read_jsonl(REPO / "examples/corpus.jsonl")[:6]]
    assert np.abs(_truncating(str(model_dir)).embed(texts) - st.encode(texts)).max() < 1e-4


# ------------------------------------------------------------------------------ reproducibility, config
def test_same_seed_gives_the_same_weights(minilm_source: Path, truncating_embedder: Embedder) -> None:
    texts = [r["text"] for r in read_jsonl(REPO / "examples/corpus.jsonl")[:24]]
    targets = truncating_embedder.embed(texts)
    spec = StudentSpec(minilm_source, (0, 5))

    def weights(seed: int) -> dict[str, np.ndarray]:
        cfg = TrainConfig(steps=3, batch_size=4, eval_batch_size=4, max_length=32, seed=seed, threads=2,
                          progress=False)
        return train_student(spec, texts, targets, cfg).weights

    a, b, c = weights(7), weights(7), weights(8)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def _bad_field(build: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as info:
        build()
    return info.value.field


def test_configs_name_the_bad_field() -> None:
    assert _bad_field(lambda: TrainConfig(alpha=1.5)) == "alpha"
    assert _bad_field(lambda: TrainConfig(temperature=0.0)) == "temperature"
    assert _bad_field(lambda: TrainConfig(head_init="zeros")) == "head_init"  # type: ignore[arg-type]
    assert _bad_field(lambda: TrainConfig(steps=0)) == "steps"
    assert _bad_field(lambda: DistillJob(teacher="minilm", corpus="c.jsonl", name="x")) == "student"
    assert _bad_field(lambda: DistillJob(teacher="minilm", corpus="c.jsonl", name="x", student="y",
                                         prune_layers=2, projection_only=True)) == "prune_layers"
    assert _bad_field(lambda: DistillJob(teacher="minilm", corpus="c.jsonl", name="a/b", prune_layers=2)) == "name"


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch, minilm_source: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"sutra-embedder\[convert\]"):
        train_student(StudentSpec(minilm_source), ["a", "b", "c", "d"], np.zeros((4, 384), np.float32),
                      TrainConfig(eval_batch_size=1, progress=False))
