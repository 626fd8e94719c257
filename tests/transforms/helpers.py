"""Test helpers: write pipeline outputs to files, read them back, read metrics."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from sutra_embedder.transforms import DeadLetterRow, EmbeddingRow


def row_json(row: EmbeddingRow | DeadLetterRow, window: Any = None) -> str:
    data = row._asdict()
    data["_type"] = type(row).__name__
    if window is not None:
        data["_window"] = [float(window.start), float(window.end)] if hasattr(window, "start") else None
    return json.dumps(data, default=str)


class AppendLines(beam.DoFn):  # type: ignore[misc]
    """Appends each element (and its window) as a JSON line to a local file.

    Streaming tests assert on files after the run: ``assert_that`` after a
    stateful step has failed spuriously in streaming mode.
    """

    def __init__(self, path: Path) -> None:
        self._path = str(path)

    def process(self, element: Any, window: Any = beam.DoFn.WindowParam) -> Iterator[None]:
        line = row_json(element, window) + "\n"
        with open(self._path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            fh.write(line)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return iter(())


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def vectors_by_id(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {r["id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}


def counters(result: PipelineResult, namespace: str = "sutra") -> dict[str, int]:
    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out


def distributions(result: PipelineResult, namespace: str = "sutra") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in result.metrics().query(MetricsFilter().with_namespace(namespace))["distributions"]:
        out[d.key.metric.name] = d.committed if d.committed is not None else d.attempted
    return out
