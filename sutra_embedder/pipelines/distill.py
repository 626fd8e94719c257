"""``sutra distill``: teacher vectors with a Beam job, then a trained student or a projection.

Steps of a run (its files go to ``--work-dir``, default
``$SUTRA_CACHE_DIR/distill/<name>``):

1. A Beam batch job (Direct runner) reads the corpus (JSON lines of ``id`` and
   ``text``), embeds every text with the teacher through
   :class:`~sutra_embedder.transforms.EmbedText` and writes
   ``teacher/vectors-*.parquet`` (``id``, ``text``, ``vector``) and the
   records it could not embed to ``teacher/vectors.dead-*.jsonl``. A later run
   with the same teacher and corpus reuses these files.
2. Either a student is trained to reproduce those vectors
   (:func:`sutra_embedder.models.distill.train_student`), saved as a
   sentence-transformers directory, converted to ONNX, evaluated against the
   teacher and registered under ``--name`` if it passes the nDCG gate (its
   directory then becomes ``student/``, the registered model's source; a
   refused one stays in ``student.candidate/`` beside ``quality_report.*``);
   or (``--projection-only``) a linear map from an existing student model's
   vectors to the teacher's is fitted and stored in the student's model
   directory under ``projections/<name>.npy``.

Examples::

    sutra distill --teacher minilm --prune-layers 3 --corpus docs.jsonl --name minilm-l3
    sutra distill --teacher mpnet --student minilm --corpus docs.jsonl --name mini-for-mpnet
    sutra distill --teacher mpnet --student minilm --projection-only --corpus docs.jsonl --name to-mpnet
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sutra_embedder.core.config import ChunkingConfig, EmbedderConfig, RuntimeConfig
from sutra_embedder.core.errors import ConfigError
from sutra_embedder.core.manifest import load_manifest
from sutra_embedder.models.distill import (
    HEAD_INITS,
    LAYER_SELECTIONS,
    PROJECTIONS_DIR,
    LayerSelection,
    Projection,
    StudentSpec,
    TrainConfig,
    check_gate,
    cpu_embedder,
    evaluate_projection,
    fit_projection,
    projection_cosines,
    register_student,
    resolve_source,
    select_layers,
    train_config_dict,
    train_student,
    write_training_log,
)
from sutra_embedder.models.quality import EvalSet, QualityReport
from sutra_embedder.models.quantize import QualityGateError
from sutra_embedder.models.registry import cache_dir, model_path

log = logging.getLogger(__name__)

VECTORS_META = "teacher_vectors.json"


@dataclass(frozen=True)
class DistillJob:
    """One ``sutra distill`` run.

    Attributes:
        teacher: Teacher model (profile, cached name, model directory or hub id).
        corpus: JSON lines of ``{"id", "text"}`` to distil (or fit) on.
        name: Name to register the student (or the projection) under.
        student: Student model: a source directory or profile to train from,
            or, with ``projection_only``, any model the embedder can load.
            Defaults to the teacher itself (with ``prune_layers``).
        prune_layers: Keep this many of the student's layers.
        layer_selection: Which layers a pruned student keeps (``spread`` or ``first``).
        projection_only: Fit a linear map from the student's vectors to the
            teacher's instead of training.
        ridge: Ridge strength of the projection fit.
        holdout: Fraction of the corpus held out to measure a projection's
            teacher-space cosine (see :func:`holdout_split`).
        train: Training settings.
        min_ndcg_ratio: Refuse the result when its nDCG@10 is below this
            fraction of the teacher's (0 turns the gate off).
        eval_corpus, eval_queries: Retrieval set of the report (default: the stdlib set).
        limit_queries: Use only the first N queries.
        work_dir: Where the teacher vectors, the student directory and the
            logs go (default ``$SUTRA_CACHE_DIR/distill/<name>``).
        recompute_teacher: Embed the corpus again even when vectors of the
            same teacher and corpus are present.
        beam_args: Extra Beam pipeline options of the teacher job.
        force: Replace an existing model or projection of that name.
    """

    teacher: str
    corpus: str
    name: str
    student: str | None = None
    prune_layers: int | None = None
    layer_selection: LayerSelection = "spread"
    projection_only: bool = False
    ridge: float = 0.1
    holdout: float = 0.1
    train: TrainConfig = field(default_factory=TrainConfig)
    min_ndcg_ratio: float = 0.9
    eval_corpus: str | None = None
    eval_queries: str | None = None
    limit_queries: int | None = None
    work_dir: str | None = None
    recompute_teacher: bool = False
    beam_args: tuple[str, ...] = ()
    force: bool = False

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError("name", f"must be a plain model name, got {self.name!r}")
        if not self.teacher:
            raise ConfigError("teacher", "is required")
        if not self.corpus:
            raise ConfigError("corpus", "is required: a JSON lines file of {\"id\", \"text\"} records")
        if self.prune_layers is not None and (
            isinstance(self.prune_layers, bool) or not isinstance(self.prune_layers, int) or self.prune_layers < 1
        ):
            raise ConfigError("prune_layers", f"must be a positive integer, got {self.prune_layers!r}")
        if self.layer_selection not in LAYER_SELECTIONS:
            raise ConfigError("layer_selection",
                              f"got {self.layer_selection!r}; choose one of {', '.join(LAYER_SELECTIONS)}")
        if self.projection_only:
            if not self.student:
                raise ConfigError("student", "is required with projection_only: the model whose vectors are mapped")
            if self.prune_layers is not None:
                raise ConfigError("prune_layers", "does not apply to projection_only (nothing is trained)")
        elif self.student is None and self.prune_layers is None:
            raise ConfigError("student", "give a student model, prune_layers, or both")
        if not (isinstance(self.ridge, (int, float)) and not isinstance(self.ridge, bool) and self.ridge >= 0):
            raise ConfigError("ridge", f"must be a non-negative number, got {self.ridge!r}")
        if not (isinstance(self.holdout, float) and 0.0 < self.holdout < 1.0):
            raise ConfigError("holdout", f"must be a fraction in (0, 1), got {self.holdout!r}")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError("train", f"must be a TrainConfig, got {type(self.train).__name__}")
        if not (isinstance(self.min_ndcg_ratio, (int, float)) and 0.0 <= self.min_ndcg_ratio <= 1.5):
            raise ConfigError("min_ndcg_ratio", f"must be in [0, 1.5], got {self.min_ndcg_ratio!r}")
        if isinstance(self.beam_args, str) or not all(
            isinstance(a, str) and a.startswith("--") for a in self.beam_args
        ):
            raise ConfigError("beam_args", f"must be a tuple of --option=value strings, got {self.beam_args!r}")
        object.__setattr__(self, "beam_args", tuple(self.beam_args))
        if self.limit_queries is not None and (not isinstance(self.limit_queries, int) or self.limit_queries < 1):
            raise ConfigError("limit_queries", f"must be a positive integer, got {self.limit_queries!r}")

    @property
    def run_dir(self) -> Path:
        """Where this run's intermediate files go."""
        return Path(self.work_dir).expanduser() if self.work_dir else cache_dir() / "distill" / self.name


@dataclass
class TeacherVectors:
    """The teacher's vectors of a corpus, read back from the Beam job's Parquet.

    Rows are sorted by id (then text), so runs are reproducible whatever order
    the runner wrote them in.
    """

    ids: list[str]
    texts: list[str]
    vectors: np.ndarray
    model: str
    dead_letters: int
    reused: bool
    seconds: float


@dataclass
class DistillOutcome:
    """What a run produced.

    Attributes:
        path: The registered model directory, or the projection's ``.npy``.
        report: The quality report against the teacher.
        run_dir: Intermediate files (teacher vectors, student directory, logs).
        teacher_vectors: Facts about the teacher step.
        history: The training loss history (empty for a projection).
    """

    path: Path
    report: QualityReport
    run_dir: Path
    teacher_vectors: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- teacher vectors (Beam)
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _to_input(item: Any) -> Any:
    """Connector records become ``{"id", "text"}`` dicts; dead letters pass through."""
    from sutra_embedder.connectors.records import InputRecord

    if isinstance(item, InputRecord):
        return {"id": item.id, "text": item.text}
    return item


def _to_parquet_row(row: Any) -> dict[str, Any]:
    meta = json.loads(row.metadata) if row.metadata else {}
    return {"id": row.id, "text": str(meta.get("text", "")), "vector": list(row.vector)}


def build_teacher_pipeline(pipeline: Any, corpus: str, embedder: EmbedderConfig, out_prefix: str,
                           model_id: str, dim: int) -> None:
    """Add read -> embed with the teacher -> write Parquet steps to a Beam pipeline.

    Args:
        pipeline: A ``beam.Pipeline``.
        corpus: Corpus file (or glob) of JSON lines.
        embedder: The teacher's embedder settings.
        out_prefix: Path prefix of the Parquet shards and the dead letters.
        model_id: Teacher model id (stored in the Parquet schema metadata).
        dim: Teacher dimension.
    """
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.io import fileio

    from sutra_embedder.connectors.files import SourceSpec, vector_type
    from sutra_embedder.pipelines.beam_embed import read_file
    from sutra_embedder.transforms import EmbedText, EmbedTextConfig, dead_letter_json

    spec = SourceSpec(path=corpus, format="jsonl")
    schema = pa.schema(
        [pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string(), nullable=False),
         pa.field("vector", vector_type(dim, "float32"), nullable=False)],
        metadata={"sutra.model": model_id, "sutra.dim": str(dim), "sutra.precision": "float32"},
    )
    # The text rides along as metadata, so each vector is written next to the exact text it embeds.
    config = EmbedTextConfig(embedder=embedder, metadata_fields=("text",))
    outputs = (
        pipeline
        | "MatchCorpus" >> fileio.MatchFiles(spec.path)
        | "OpenCorpus" >> fileio.ReadMatches()
        | "ParseRecords" >> beam.FlatMap(read_file, spec)
        | "ToDicts" >> beam.Map(_to_input)
        | "EmbedWithTeacher" >> EmbedText(config)
    )
    (
        outputs.embeddings
        | "ToRows" >> beam.Map(_to_parquet_row)
        | "WriteVectors" >> beam.io.WriteToParquet(out_prefix, schema=schema, codec="zstd",
                                                   file_name_suffix=".parquet", num_shards=1)
    )
    (
        outputs.dead_letters
        | "DeadToJson" >> beam.Map(dead_letter_json)
        | "WriteDead" >> beam.io.WriteToText(f"{out_prefix}.dead", file_name_suffix=".jsonl", num_shards=1)
    )


def compute_teacher_vectors(corpus: str | Path, embedder: EmbedderConfig, out_dir: str | Path,
                            reuse: bool = True, beam_args: Sequence[str] = ()) -> TeacherVectors:
    """Run the teacher-embedding Beam job (Direct runner) and read its Parquet back.

    Vectors written earlier for the same teacher (model id and weights hash)
    and the same corpus bytes are reused when ``reuse``. ``beam_args`` are
    further pipeline options (``--direct_running_mode=multi_processing``...).

    Raises:
        ConfigError: The corpus does not exist or yields no embeddable text.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sutra_embedder.core.embedder import resolve_model_dir

    corpus = Path(corpus).expanduser().resolve()
    if not corpus.is_file():
        raise ConfigError("corpus", f"{corpus} does not exist")
    out = Path(out_dir)
    manifest = load_manifest(resolve_model_dir(embedder.model))
    dim = embedder.truncate_dim or manifest.dim
    facts = {"teacher": manifest.name, "teacher_sha256": manifest.source_sha256, "dim": dim,
             "corpus": str(corpus), "corpus_sha256": _file_sha256(corpus)}
    meta_path = out / VECTORS_META
    start = time.perf_counter()
    reused = False
    if reuse and meta_path.is_file() and sorted(out.glob("vectors-*.parquet")):
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        reused = all(old.get(k) == v for k, v in facts.items() if k != "corpus")
    if not reused:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions

        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        # Beam's DirectRunner tries Prism first; without the experiment, a failed
        # Prism start-up is kept as the process's job server and breaks later pipelines.
        options = PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=1",
                                   "--experiments=disable_prism_server_singleton", *beam_args])
        with beam.Pipeline(options=options) as pipeline:
            build_teacher_pipeline(pipeline, str(corpus), embedder, str(out / "vectors"), manifest.name, dim)
    files = sorted(out.glob("vectors-*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
    dead = sum(sum(1 for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
               for f in out.glob("vectors.dead-*.jsonl"))
    if table is None or table.num_rows == 0:
        raise ConfigError("corpus", f"{corpus}: no text could be embedded ({dead} dead letters in {out})")
    ids = [str(x) for x in table.column("id").to_pylist()]
    texts = [str(x) for x in table.column("text").to_pylist()]
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(len(ids), dim)
    order = sorted(range(len(ids)), key=lambda i: (ids[i], texts[i]))
    seconds = time.perf_counter() - start
    if not reused:
        meta_path.write_text(json.dumps(dict(facts, rows=len(ids), dead_letters=dead,
                                             seconds=round(seconds, 2)), indent=2) + "\n", encoding="utf-8")
    return TeacherVectors([ids[i] for i in order], [texts[i] for i in order], vectors[order],
                          manifest.name, dead, reused, seconds)


# --------------------------------------------------------------------------- runs
def _teacher_config(job: DistillJob) -> EmbedderConfig:
    return EmbedderConfig(model=job.teacher, chunking=ChunkingConfig(policy="truncate"),
                          runtime=RuntimeConfig(device="cpu", intra_op_threads=job.train.threads))


def _vector_facts(v: TeacherVectors) -> dict[str, Any]:
    return {"rows": len(v.ids), "dead_letters": v.dead_letters, "reused": v.reused,
            "seconds": round(v.seconds, 2), "model": v.model}


def run_distill(job: DistillJob) -> DistillOutcome:
    """Run ``job``: teacher vectors, then training (or a projection fit), evaluation and the gate.

    Raises:
        QualityGateError: The result is below the gate; its report is written
            to the run directory and nothing is registered.
        ConfigError: An option is invalid or the name exists without ``force``.
        ImportError: Training needs the ``convert`` extra.
    """
    if not job.projection_only and model_path(job.name).exists() and not job.force:
        raise ConfigError("name", f"model {job.name!r} exists at {model_path(job.name)}; "
                                  "pass --force to replace it")
    run_dir = job.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    vectors = compute_teacher_vectors(job.corpus, _teacher_config(job), run_dir / "teacher",
                                      reuse=not job.recompute_teacher, beam_args=job.beam_args)
    log.info("teacher vectors: %d rows (%s)", len(vectors.ids), "reused" if vectors.reused else "computed")
    eval_set = EvalSet.load(job.eval_corpus, job.eval_queries, job.limit_queries)
    if job.projection_only:
        return _run_projection(job, vectors, eval_set, run_dir)

    source = resolve_source(job.student or job.teacher)
    n_layers = int(json.loads((source / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"])
    keep = select_layers(n_layers, job.prune_layers, job.layer_selection) if job.prune_layers else None
    spec = StudentSpec(source, keep)
    trained = train_student(spec, vectors.texts, vectors.vectors, job.train)
    # The candidate replaces ``student/`` (the source of the registered model) only once it passed.
    candidate = trained.save(run_dir / "student.candidate")
    student_dir = run_dir / "student"
    write_training_log(trained, run_dir)
    evals = trained.eval_losses
    extra = {
        "teacher": vectors.model,
        "student_source": str(source),
        "student_dir": str(student_dir),
        "layers_kept": list(keep) if keep is not None else None,
        "head": None if trained.head is None else list(trained.head.shape),
        "train": train_config_dict(job.train),
        "corpus": str(Path(job.corpus).resolve()),
        "n_train": trained.n_train,
        "train_seconds": round(trained.seconds, 1),
        "eval_loss_first": evals[0][1],
        "eval_loss_last": evals[-1][1],
        "teacher_vectors": _vector_facts(vectors),
    }
    teacher = cpu_embedder(job.teacher, job.train.threads)
    try:
        path, report = register_student(candidate, job.name, teacher, eval_set, job.min_ndcg_ratio,
                                        extra, job.force, job.train.threads, source_label=str(student_dir))
    except QualityGateError as exc:
        exc.report.write(run_dir)
        raise
    if student_dir.exists():
        shutil.rmtree(student_dir)
    candidate.rename(student_dir)
    write_training_log(trained, path)
    return DistillOutcome(path, report, run_dir, _vector_facts(vectors), trained.history)


def holdout_split(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Held-out and fitting rows of ``n`` texts (sorted by id): every ``round(1 / fraction)``-th row is held out.

    A fixed rule rather than a random draw, so anyone can rebuild the split
    from the Parquet file alone.

    Raises:
        ConfigError: Too few texts to fit on.
    """
    stride = max(2, round(1.0 / fraction))
    rows = np.arange(n)
    hold, fit = rows[rows % stride == 0], rows[rows % stride != 0]
    if len(fit) < 2:
        raise ConfigError("corpus", f"has {n} texts; too few to fit a projection and hold out {len(hold)}")
    return hold, fit


def _run_projection(job: DistillJob, vectors: TeacherVectors, eval_set: EvalSet, run_dir: Path) -> DistillOutcome:
    assert job.student is not None  # checked by DistillJob
    student = cpu_embedder(job.student, job.train.threads)
    teacher = cpu_embedder(job.teacher, job.train.threads)
    out_dir = student.model_dir / PROJECTIONS_DIR
    if (out_dir / f"{job.name}.npy").exists() and not job.force:
        raise ConfigError("name", f"projection {job.name!r} exists in {out_dir}; pass --force to replace it")
    S = student.embed(vectors.texts)
    T = vectors.vectors
    hold, fit = holdout_split(len(T), job.holdout)
    same_dim = S.shape[1] == T.shape[1]
    prior = np.eye(S.shape[1], dtype=np.float32) if same_dim else None
    W = fit_projection(S[fit], T[fit], job.ridge, prior)
    cosines = projection_cosines(W, S[hold], T[hold])
    report = evaluate_projection(teacher, student, W, eval_set, job.name)
    report.cosine_mean, report.cosine_p1 = cosines["cosine_mean"], cosines["cosine_p1"]
    report.extra.update(
        mode="projection", ridge=job.ridge, prior="identity" if same_dim else "zero", n_fit=len(fit),
        n_holdout=len(hold), holdout_cosines=cosines, min_ndcg_ratio=job.min_ndcg_ratio,
        teacher_vectors=_vector_facts(vectors), corpus=str(Path(job.corpus).resolve()),
    )
    try:
        check_gate(report, job.name, job.min_ndcg_ratio, "Fit on a larger corpus or adjust --ridge.")
    except QualityGateError:
        report.write(run_dir, stem=f"{job.name}.quality_report")
        raise
    metrics = {"ndcg@10": report.candidate.metrics["ndcg@10"], "ndcg_ratio": report.ndcg_ratio,
               "teacher_ndcg@10": report.reference.metrics["ndcg@10"], **cosines}
    projection = Projection(W, student.model_id, teacher.model_id, float(job.ridge), True, metrics)
    paths = projection.save(out_dir, job.name)
    report.write(out_dir, stem=f"{job.name}.quality_report")
    return DistillOutcome(paths["npy"], report, run_dir, _vector_facts(vectors))


# --------------------------------------------------------------------------- command line
def job_from_args(args: argparse.Namespace) -> DistillJob:
    """The job described by parsed ``sutra distill`` arguments."""
    train = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr, alpha=args.alpha,
        temperature=args.temperature, relational_weight=args.relational_weight, warmup_ratio=args.warmup_ratio,
        max_length=args.max_length, seed=args.seed, eval_batch_size=args.eval_batch_size,
        eval_every=args.eval_every, head_init=args.head_init, threads=args.threads,
        progress=not args.no_progress,
    )
    return DistillJob(
        teacher=args.teacher, corpus=args.corpus, name=args.name, student=args.student,
        prune_layers=args.prune_layers, layer_selection=args.layer_selection,
        projection_only=args.projection_only, ridge=args.ridge, holdout=args.holdout, train=train,
        min_ndcg_ratio=args.min_ndcg_ratio, eval_corpus=args.eval_corpus, eval_queries=args.eval_queries,
        limit_queries=args.limit_queries, work_dir=args.work_dir, recompute_teacher=args.recompute_teacher,
        beam_args=tuple(args.beam_arg), force=args.force,
    )


def _run(args: argparse.Namespace) -> int:
    job = job_from_args(args)
    try:
        outcome = run_distill(job)
    except QualityGateError as exc:
        print(exc.report.to_markdown(), file=sys.stderr)
        print(f"sutra: quality gate: {exc} (report and student kept in {job.run_dir})", file=sys.stderr)
        return 3
    print(outcome.report.to_markdown())
    if job.projection_only:
        print(f"projection {job.name!r} saved to {outcome.path} (report beside it)")
    else:
        print(f"registered {job.name!r} in {outcome.path} (report: {outcome.path / 'quality_report.md'}; "
              f"student source: {job.run_dir / 'student'})")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add the ``distill`` subcommand to the ``sutra`` command line."""
    d = TrainConfig()
    p = subparsers.add_parser(
        "distill", help="train a smaller student (or fit a projection) to reproduce a teacher's vectors",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--teacher", required=True, help="teacher model (profile, cached name, model dir)")
    p.add_argument("--student", default=None,
                   help="student: a source directory or profile to train, or with --projection-only any model")
    p.add_argument("--prune-layers", type=int, default=None, metavar="K",
                   help="keep K layers of the student (default student: the teacher)")
    p.add_argument("--layer-selection", default="spread", choices=LAYER_SELECTIONS,
                   help="spread: first, last and evenly spaced layers; first: layers 0..K-1")
    p.add_argument("--corpus", required=True, help='JSON lines of {"id", "text"} to distil on')
    p.add_argument("--name", required=True, help="name of the student model (or of the projection)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--head-lr", type=float, default=d.head_lr, help="learning rate of the 384->768-style head")
    t.add_argument("--alpha", type=float, default=d.alpha, help="weight of MSE; 1 - alpha weighs 1 - cosine")
    t.add_argument("--temperature", type=float, default=d.temperature,
                   help="softmax temperature of the in-batch similarity (relational) term")
    t.add_argument("--relational-weight", type=float, default=d.relational_weight,
                   help="weight of the relational term (0: off)")
    t.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    t.add_argument("--max-length", type=int, default=d.max_length, help="tokens per training text")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="held-out texts for the loss")
    t.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between held-out losses (0: auto)")
    t.add_argument("--head-init", default=d.head_init, choices=HEAD_INITS,
                   help="jl: Johnson-Lindenstrauss random projection; ridge: least-squares fit")
    t.add_argument("--threads", type=int, default=d.threads, help="CPU threads (0: default)")
    t.add_argument("--no-progress", action="store_true")
    pr = p.add_argument_group("projection")
    pr.add_argument("--projection-only", action="store_true",
                    help="fit a linear map student -> teacher space instead of training")
    pr.add_argument("--ridge", type=float, default=0.1, help="ridge strength of the projection fit")
    pr.add_argument("--holdout", type=float, default=0.1, help="corpus fraction held out to measure it")
    g = p.add_argument_group("evaluation")
    g.add_argument("--min-ndcg-ratio", type=float, default=0.9,
                   help="refuse results below this fraction of the teacher's nDCG@10 (0: no gate)")
    g.add_argument("--eval-corpus", default=None)
    g.add_argument("--eval-queries", default=None)
    g.add_argument("--limit-queries", type=int, default=None)
    p.add_argument("--work-dir", default=None, help="intermediate files (default $SUTRA_CACHE_DIR/distill/NAME)")
    p.add_argument("--recompute-teacher", action="store_true", help="embed the corpus again")
    p.add_argument("--beam-arg", action="append", default=[], metavar="--OPTION=VALUE",
                   help="extra Beam pipeline option of the teacher job, as --beam-arg=--opt=value (repeatable)")
    p.add_argument("--force", action="store_true", help="replace an existing model or projection")
    p.set_defaults(func=_run)


__all__ = [
    "DistillJob",
    "DistillOutcome",
    "TeacherVectors",
    "build_teacher_pipeline",
    "compute_teacher_vectors",
    "holdout_split",
    "job_from_args",
    "register_cli",
    "run_distill",
]
