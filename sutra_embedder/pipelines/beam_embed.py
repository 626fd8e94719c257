"""Beam job: embed txt/jsonl/csv/parquet files into Parquet, bad records into dead-letter JSONL.

The Beam counterpart of ``sutra embed`` (:mod:`sutra_embedder.pipelines.embed_file`):
the same parsing rules (a malformed JSON line or a record without its text
field becomes a dead letter, a record without an id gets its line number), the
same Parquet columns (``id``, ``vector`` fixed_size_list<float32>[dim],
``n_tokens``, ``n_chunks``, ``truncated``, ``metadata`` as JSON text) and the
same dead-letter JSON lines. It runs on any Beam runner and reads from any Beam
filesystem::

    python -m sutra_embedder.pipelines.beam_embed --runner=DirectRunner \\
        --input='docs/*.jsonl' --output=out/embeddings --model=minilm

writes ``out/embeddings-00000-of-0000N.parquet`` and
``out/embeddings.dead-00000-of-0000N.jsonl``. Every input record is counted
exactly once: as a Parquet row or as a dead letter.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from sutra_embedder.connectors.files import SourceSpec, embedding_schema, read_records
from sutra_embedder.connectors.records import DeadLetter, InputRecord
from sutra_embedder.core.config import EmbedderConfig
from sutra_embedder.core.embedder import resolve_model_dir
from sutra_embedder.core.errors import ConfigError
from sutra_embedder.core.manifest import load_manifest
from sutra_embedder.transforms import (
    NAMESPACE,
    EmbedderOptions,
    EmbeddingRow,
    EmbedText,
    EmbedTextOutputs,
    dead_letter_json,
)


@dataclass(frozen=True)
class OutputPaths:
    """Where the job writes.

    Attributes:
        embeddings: Path prefix of the Parquet shards (``<prefix>-SSSSS-of-NNNNN.parquet``).
        dead_letters: Path prefix of the dead-letter shards (``...jsonl``).
    """

    embeddings: str
    dead_letters: str

    @classmethod
    def from_options(cls, output: str, dead_letters: str | None) -> OutputPaths:
        prefix = output.removesuffix(".parquet")
        dead = (dead_letters or f"{prefix}.dead").removesuffix(".jsonl")
        return cls(prefix, dead)


def read_file(readable: fileio.ReadableFile, spec: SourceSpec) -> Iterator[InputRecord | DeadLetter]:
    """Parse one matched file with the connectors' rules (bad records become dead letters).

    Local files are read in place; files on other Beam filesystems are copied
    to a local temporary file first, and their records name the original path.
    """
    path = readable.metadata.path
    fmt = dataclasses.replace(spec, path=path).resolved_format
    if FileSystems.get_scheme(path) in (None, "file"):
        yield from read_records(dataclasses.replace(spec, path=path, format=fmt))
        return
    suffix = PurePosixPath(path).suffix
    with tempfile.TemporaryDirectory(prefix="sutra-beam-read-") as tmp:
        local = os.path.join(tmp, "input" + suffix)
        with readable.open(compression_type="uncompressed") as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        for item in read_records(dataclasses.replace(spec, path=local, format=fmt)):
            yield dataclasses.replace(item, source=item.source.replace(local, path, 1))


def embedding_dict(row: EmbeddingRow) -> dict[str, Any]:
    """A Parquet record (column name -> value) of an embedding row."""
    return {
        "id": row.id,
        "vector": row.vector,
        "n_tokens": row.n_tokens,
        "n_chunks": row.n_chunks,
        "truncated": row.truncated,
        "metadata": row.metadata,
    }


def model_facts(config: EmbedderConfig) -> tuple[str, int]:
    """The model's id and output dimension, read from its manifest (no model load)."""
    manifest = load_manifest(resolve_model_dir(config.model))
    return manifest.name, config.truncate_dim or manifest.dim


def build(pipeline: beam.Pipeline, options: EmbedderOptions) -> EmbedTextOutputs:
    """Add the read -> embed -> write steps to ``pipeline``.

    Returns:
        The embeddings and dead letters, for callers that add more steps.

    Raises:
        ConfigError: ``--input`` or ``--output`` is missing, or an option is invalid.
    """
    opts = options.get_all_options()
    if not opts.get("input"):
        raise ConfigError("--input", "is required: a file or glob of txt/jsonl/csv/parquet records")
    if not opts.get("output"):
        raise ConfigError("--output", "is required: the path prefix of the Parquet output")
    _check_input(opts["input"])
    config = options.embed_text_config()
    spec = SourceSpec(path=opts["input"], format=opts["input_format"],
                      id_field=config.id_field, text_field=config.text_field)
    paths = OutputPaths.from_options(opts["output"], opts.get("dead_letters"))
    model_id, dim = model_facts(config.embedder)
    num_shards = int(opts.get("num_shards") or 0)

    records = (
        pipeline
        | "MatchInput" >> fileio.MatchFiles(spec.path)
        | "OpenFiles" >> fileio.ReadMatches()
        | "ParseRecords" >> beam.FlatMap(read_file, spec)
        # A file is parsed by one worker; spread its records before embedding.
        | "Spread" >> beam.Reshuffle()
    )
    outputs: EmbedTextOutputs = records | "Embed" >> EmbedText(config)
    (
        outputs.embeddings
        | "ToParquetRecords" >> beam.Map(embedding_dict)
        | "WriteEmbeddings" >> beam.io.WriteToParquet(
            paths.embeddings,
            schema=embedding_schema(dim, "float32", model_id),
            codec="zstd",
            file_name_suffix=".parquet",
            num_shards=num_shards,
        )
    )
    (
        outputs.dead_letters
        | "ToJson" >> beam.Map(dead_letter_json)
        | "WriteDeadLetters" >> beam.io.WriteToText(
            paths.dead_letters, file_name_suffix=".jsonl", num_shards=num_shards
        )
    )
    return outputs


def _check_input(pattern: str) -> None:
    """Fail at launch, naming the option, when the input matches no file."""
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # a filesystem the launcher cannot reach: let the workers try
        return
    if not matched:
        raise ConfigError("--input", f"{pattern!r} matches no file")


def summarize(result: PipelineResult) -> dict[str, int]:
    """The job's ``sutra`` counters (inputs, texts, failures, failures_<kind>...)."""
    counters: dict[str, int] = {}
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except Exception:  # some runners report no metrics
        return counters
    for counter in query["counters"]:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[name] = counters.get(name, 0) + int(value or 0)
    return counters


def run(argv: Sequence[str] | None = None) -> PipelineResult:
    """Parse ``argv`` (pipeline options), run the job to completion and return its result."""
    options = PipelineOptions(list(argv) if argv is not None else sys.argv[1:])
    pipeline = beam.Pipeline(options=options)
    build(pipeline, options.view_as(EmbedderOptions))
    result = pipeline.run()
    result.wait_until_finish()
    counters = summarize(result)
    if counters:
        fails = ", ".join(
            f"{k.removeprefix('failures_')}={v}"
            for k, v in sorted(counters.items())
            if k.startswith("failures_")
        )
        print(
            f"embedded {counters.get('texts', 0)} of {counters.get('inputs', 0)} records "
            f"({counters.get('tokens', 0)} tokens); failed {counters.get('failures', 0)} ({fails or 'none'})",
            file=sys.stderr,
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = list(argv) if argv is not None else sys.argv[1:]
    if "-h" in args or "--help" in args:
        parser = argparse.ArgumentParser(
            prog="python -m sutra_embedder.pipelines.beam_embed",
            description=(__doc__ or "").split("\n\n")[0],
            epilog="Any Beam pipeline option (--runner, --streaming, --num_workers...) is accepted too.",
        )
        EmbedderOptions._add_argparse_args(parser)
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
