"""Batch job: embed every record of a file into Parquet, bad records into dead letters."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TextIO

import numpy as np

from sutra_embedder.connectors.files import (
    DeadLetterWriter,
    ParquetEmbeddingWriter,
    ReadItem,
    SourceSpec,
    read_records,
)
from sutra_embedder.connectors.records import DeadLetter, InputRecord, describe_original
from sutra_embedder.core.config import PRECISIONS, EmbedderConfig, Precision
from sutra_embedder.core.embedder import Embedder
from sutra_embedder.core.errors import ConfigError
from sutra_embedder.core.quantization import CalibrationRanges, quantize_embeddings


@dataclass(frozen=True)
class EmbedFileJob:
    """One ``sutra embed`` run.

    Attributes:
        source: The input file and its fields.
        output: Parquet file to write.
        dead_letters: JSONL file for failed records (default: ``<output>.dead.jsonl``).
        embedder: Embedder settings.
        precision: Stored vector precision.
        calibration: Ranges file for int8/uint8 (default: the model's own, if any).
        block_size: Records embedded per call (one token-budget plan per block).
        progress: Show a progress bar on stderr.
    """

    source: SourceSpec
    output: str
    dead_letters: str | None = None
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    precision: Precision = "float32"
    calibration: str | None = None
    block_size: int = 2048
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"got {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.block_size < 1:
            raise ConfigError("block_size", "must be >= 1")

    @property
    def dead_letter_path(self) -> str:
        return self.dead_letters or f"{self.output}.dead.jsonl"


@dataclass
class JobSummary:
    """What a run did. ``inputs == embedded + failed`` always holds."""

    inputs: int = 0
    embedded: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0
    padding_efficiency: float = 1.0
    model: str = ""
    provider: str = ""
    output: str = ""
    dead_letters: str | None = None

    @property
    def texts_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "embedded": self.embedded,
            "failed": self.failed,
            "failures": self.failures,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "texts_per_second": round(self.texts_per_second, 1),
            "padding_efficiency": round(self.padding_efficiency, 4),
            "model": self.model,
            "provider": self.provider,
            "output": self.output,
            "dead_letters": self.dead_letters,
        }

    def render(self) -> str:
        fails = ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items())) or "none"
        return (
            f"embedded {self.embedded}/{self.inputs} texts ({self.tokens} tokens) in {self.seconds:.2f}s "
            f"= {self.texts_per_second:.1f} texts/s on {self.provider}; padding efficiency "
            f"{self.padding_efficiency:.1%}; failed {self.failed} ({fails})"
            + (f"; dead letters in {self.dead_letters}" if self.failed else "")
        )


def _blocks(items: Iterable[ReadItem], size: int) -> Iterator[list[ReadItem]]:
    it = iter(items)
    while block := list(islice(it, size)):
        yield block


def _progress(enabled: bool, stream: TextIO) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" texts", desc="embedding", file=stream, dynamic_ncols=True)


def run_embed_file(job: EmbedFileJob, embedder: Embedder | None = None,
                   progress_stream: TextIO = sys.stderr) -> JobSummary:
    """Run the job and return its summary (the dead-letter file only exists if something failed)."""
    emb = embedder or Embedder(job.embedder)
    calibration = None
    if job.precision in ("int8", "uint8"):
        if job.calibration:
            calibration = CalibrationRanges.load(job.calibration)
        elif emb.manifest.calibration:
            calibration = CalibrationRanges.from_dict(emb.manifest.calibration)
        else:
            raise ConfigError(
                "calibration",
                f"precision {job.precision} needs calibration ranges: pass --calibration FILE "
                "or calibrate the model with `sutra quantize --calibrate`",
            )
    summary = JobSummary(model=emb.model_id, provider=emb.session_info.active, output=job.output)
    writer = ParquetEmbeddingWriter(job.output, emb.dim, job.precision, emb.model_id)
    dead = DeadLetterWriter(job.dead_letter_path)
    bar = _progress(job.progress, progress_stream)
    start = time.perf_counter()
    padded0, tokens0 = emb.stats.padded_tokens, emb.stats.tokens
    try:
        for block in _blocks(read_records(job.source), job.block_size):
            _embed_block(block, emb, writer, dead, summary, job.precision, calibration)
            if bar is not None:
                bar.update(len(block))
                bar.set_postfix(texts=summary.embedded, failed=summary.failed)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        dead.close()
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - start
    padded = emb.stats.padded_tokens - padded0
    summary.padding_efficiency = (emb.stats.tokens - tokens0) / padded if padded else 1.0
    summary.failures = dict(dead.by_kind)
    summary.dead_letters = job.dead_letter_path if dead.count else None
    return summary


def _embed_block(
    block: list[ReadItem],
    emb: Embedder,
    writer: ParquetEmbeddingWriter,
    dead: DeadLetterWriter,
    summary: JobSummary,
    precision: Precision,
    calibration: CalibrationRanges | None,
) -> None:
    records: list[InputRecord] = []
    for item in block:
        summary.inputs += 1
        if isinstance(item, DeadLetter):
            dead.write(item)
            summary.failed += 1
        else:
            records.append(item)
    if not records:
        return
    result = emb.embed_records([r.text for r in records])
    for f in result.failures:
        rec = records[f.index]
        original, encoding = describe_original(rec.text)
        stage = "embed" if f.kind == "inference_error" else "validate"
        dead.write(DeadLetter(rec.id, stage, f.kind, f.message, emb.model_id, rec.source,
                              original, encoding))
    summary.failed += len(result.failures)
    ok = result.ok.tolist()
    vectors = quantize_embeddings(result.vectors, precision, calibration)
    writer.write(
        [records[i].id for i in ok],
        vectors,
        result.n_tokens,
        result.n_chunks,
        result.truncated,
        [records[i].metadata for i in ok],
    )
    summary.embedded += len(ok)
    summary.tokens += int(np.sum(result.n_tokens))
