"""``WriteEmbeddings``: store EmbedText's rows in any sink URI (pgvector, LanceDB, Parquet).

The sink is opened once per DoFn instance in ``setup()``, written to per
element (it batches and upserts by id itself, and blocks when the store is
slow), flushed at the end of every bundle so a bundle is durable when Beam
commits it, and closed in ``teardown()``. Rows the store refuses (a dimension
that does not match the table...) come out as dead letters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MAX_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from sutra_embedder.connectors.records import DeadLetter
from sutra_embedder.connectors.sinks import EmbeddingRow as SinkRow
from sutra_embedder.connectors.sinks import Sink, open_sink, redact_uri

from .records import DEAD_LETTERS, EmbeddingRow, from_dead_letter, metadata_dict

STORED = "stored"


class WriteEmbeddingsOutputs(NamedTuple):
    """``dead_letters``: rows the sink refused, as :class:`DeadLetterRow`."""

    dead_letters: beam.PCollection


def to_sink_row(row: EmbeddingRow, model: str) -> SinkRow:
    """EmbedText's output row as a sink row."""
    return SinkRow(id=row.id, vector=np.asarray(row.vector, dtype=np.float32), n_tokens=row.n_tokens,
                   n_chunks=row.n_chunks, metadata=metadata_dict(row) or {}, model=model,
                   truncated=row.truncated)


class _WriteDoFn(beam.DoFn):  # type: ignore[misc]
    def __init__(self, uri: str, dim: int, model: str) -> None:
        self.uri, self.dim, self.model = uri, dim, model
        self._sink: Sink | None = None
        self._written = beam.metrics.Metrics.counter("sutra", "rows_written")
        self._refused = beam.metrics.Metrics.counter("sutra", "rows_refused")

    def setup(self) -> None:
        self._sink = open_sink(self.uri, self.dim, self.model)

    def process(self, row: EmbeddingRow) -> Iterator[Any]:
        assert self._sink is not None
        for letter in self._sink.write([to_sink_row(row, self.model)]):
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, self._dead(letter))
        self._written.inc()

    def finish_bundle(self) -> Iterator[Any]:
        assert self._sink is not None
        for letter in self._sink.flush():
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS, WindowedValue(self._dead(letter), MAX_TIMESTAMP, (GlobalWindow(),)))

    def teardown(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def _dead(self, letter: DeadLetter) -> Any:
        self._refused.inc()
        return from_dead_letter(letter)


class WriteEmbeddings(beam.PTransform):  # type: ignore[misc]
    """Upsert EmbedText's ``embeddings`` into the sink named by ``uri``.

    Args:
        uri: ``postgresql://...?table=...``, ``lancedb:///path?table=...`` or
            ``parquet:///dir?...`` (see :func:`sutra_embedder.connectors.sinks.open_sink`).
        dim: Vector dimension (the embedder's ``dim``).
        model: Model id stored with the index and checked on every row.

    Example:
        >>> out = texts | EmbedText(cfg)                                   # doctest: +SKIP
        >>> refused = out.embeddings | WriteEmbeddings("lancedb:///idx?table=docs", 384, "minilm")
    """

    def __init__(self, uri: str, dim: int, model: str) -> None:
        super().__init__(label=f"WriteEmbeddings({redact_uri(uri)})")
        self.uri, self.dim, self.model = uri, dim, model

    def expand(self, rows: beam.PCollection) -> WriteEmbeddingsOutputs:
        out = rows | "Write" >> beam.ParDo(_WriteDoFn(self.uri, self.dim, self.model)).with_outputs(
            DEAD_LETTERS, main=STORED)
        return WriteEmbeddingsOutputs(out[DEAD_LETTERS])
