"""Read texts from txt/jsonl/csv/parquet files; write embeddings to Parquet.

Readers never raise on a bad record: a line that is not valid UTF-8, JSON that
does not parse or is not an object, or a record without the text field comes
out as a :class:`DeadLetter` (stage ``read``), so a pipeline can count it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sutra_embedder.core.config import Precision
from sutra_embedder.core.errors import ConfigError

from .records import DeadLetter, InputRecord, describe_original

FORMATS = ("txt", "jsonl", "csv", "parquet")


@dataclass(frozen=True)
class SourceSpec:
    """Which file to read and how.

    Attributes:
        path: Input file.
        format: ``txt``, ``jsonl``, ``csv`` or ``parquet``; ``None`` infers it
            from the extension.
        id_field: Field holding the record id; missing ids fall back to the
            record's 1-based position.
        text_field: Field holding the text.
    """

    path: str
    format: str | None = None
    id_field: str = "id"
    text_field: str = "text"

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError("format", f"got {self.format!r}; choose one of {', '.join(FORMATS)}")

    @property
    def resolved_format(self) -> str:
        if self.format:
            return self.format
        ext = Path(self.path).suffix.lower().lstrip(".")
        aliases = {"json": "jsonl", "ndjson": "jsonl", "text": "txt", "pq": "parquet", "tsv": "csv"}
        fmt = aliases.get(ext, ext)
        if fmt not in FORMATS:
            raise ConfigError(
                "format", f"cannot infer the format of {self.path!r}; pass one of {', '.join(FORMATS)}"
            )
        return fmt


ReadItem = InputRecord | DeadLetter


def read_records(spec: SourceSpec) -> Iterator[ReadItem]:
    """Yield every record of the file in order, or a dead letter for each unreadable one."""
    fmt = spec.resolved_format
    if not os.path.exists(spec.path):
        raise FileNotFoundError(f"input file {spec.path!r} does not exist")
    if fmt == "txt":
        yield from _read_txt(spec)
    elif fmt == "jsonl":
        yield from _read_jsonl(spec)
    elif fmt == "csv":
        yield from _read_csv(spec)
    else:
        yield from _read_parquet(spec)


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            yield lineno, raw.rstrip(b"\r\n")


def _read_txt(spec: SourceSpec) -> Iterator[ReadItem]:
    for lineno, raw in _lines(spec.path):
        src = f"{spec.path}:{lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _dead(str(lineno), "invalid_utf8", f"line is not valid UTF-8: {exc}", src, raw)
            continue
        yield InputRecord(str(lineno), text, {}, src)


def _split_record(obj: dict[str, Any], spec: SourceSpec, position: int, src: str) -> ReadItem:
    rid = obj.get(spec.id_field)
    rid_s = str(position) if rid is None else str(rid)
    if spec.text_field not in obj:
        return _dead(rid_s, "missing_text", f"record has no {spec.text_field!r} field", src,
                     json.dumps(obj, ensure_ascii=False, default=str))
    meta = {k: v for k, v in obj.items() if k not in (spec.id_field, spec.text_field)}
    return InputRecord(rid_s, obj[spec.text_field], meta, src)


def _read_jsonl(spec: SourceSpec) -> Iterator[ReadItem]:
    for lineno, raw in _lines(spec.path):
        src = f"{spec.path}:{lineno}"
        if not raw.strip():
            continue  # blank separator lines are not records
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield _dead(str(lineno), "invalid_utf8", f"line is not valid UTF-8: {exc}", src, raw)
            continue
        except json.JSONDecodeError as exc:
            yield _dead(str(lineno), "malformed_json", f"line is not valid JSON: {exc}", src, raw)
            continue
        if isinstance(obj, str):
            yield InputRecord(str(lineno), obj, {}, src)
        elif isinstance(obj, dict):
            yield _split_record(obj, spec, lineno, src)
        else:
            yield _dead(str(lineno), "malformed_json",
                        f"expected a JSON object or string, got {type(obj).__name__}", src, raw)


def _read_csv(spec: SourceSpec) -> Iterator[ReadItem]:
    delimiter = "\t" if spec.path.endswith(".tsv") else ","
    with open(spec.path, "rb") as fh:
        stream = io.TextIOWrapper(fh, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.DictReader(stream, delimiter=delimiter)
        if reader.fieldnames is None or spec.text_field not in reader.fieldnames:
            raise ConfigError(
                "text_field",
                f"{spec.path} has no column {spec.text_field!r}; columns: {reader.fieldnames}",
            )
        for position, row in enumerate(reader, start=1):
            src = f"{spec.path}:row{position}"
            bad = [v for v in row.values() if isinstance(v, str) and _has_surrogates(v)]
            if bad:
                raw = bad[0].encode("utf-8", "surrogateescape")
                yield _dead(str(row.get(spec.id_field) or position), "invalid_utf8",
                            "row is not valid UTF-8", src, raw)
                continue
            yield _split_record(dict(row), spec, position, src)


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_parquet(spec: SourceSpec) -> Iterator[ReadItem]:
    pf = pq.ParquetFile(spec.path)
    names = pf.schema_arrow.names
    if spec.text_field not in names:
        raise ConfigError("text_field", f"{spec.path} has no column {spec.text_field!r}; columns: {names}")
    position = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            position += 1
            yield _split_record(row, spec, position, f"{spec.path}:row{position}")


def _dead(rid: str | None, kind: str, error: str, src: str, original: object) -> DeadLetter:
    text, encoding = describe_original(original)
    if isinstance(original, bytes):
        with contextlib.suppress(UnicodeDecodeError):
            text, encoding = describe_original(original.decode("utf-8"))
    return DeadLetter(rid, "read", kind, error, "", src, text, encoding)


# ---------------------------------------------------------------- writing
def vector_type(dim: int, precision: Precision) -> pa.DataType:
    """The Arrow type of one stored vector of ``dim`` dimensions at ``precision``."""
    if precision == "float32":
        return pa.list_(pa.float32(), dim)
    if precision == "float16":
        return pa.list_(pa.float16(), dim)
    if precision == "int8":
        return pa.list_(pa.int8(), dim)
    if precision == "uint8":
        return pa.list_(pa.uint8(), dim)
    width = (dim + 7) // 8
    return pa.list_(pa.int8() if precision == "binary" else pa.uint8(), width)


def embedding_schema(dim: int, precision: Precision, model: str) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("vector", vector_type(dim, precision), nullable=False),
        pa.field("n_tokens", pa.int32()),
        pa.field("n_chunks", pa.int32()),
        pa.field("truncated", pa.bool_()),
        pa.field("metadata", pa.string()),
    ]
    meta = {"sutra.model": model, "sutra.dim": str(dim), "sutra.precision": precision}
    return pa.schema(fields, metadata=meta)


def vectors_to_arrow(vectors: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """A fixed-size-list array from an ``(n, width)`` matrix, without copying rows."""
    assert isinstance(dtype, pa.FixedSizeListType)
    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=dtype.value_type)
    return pa.FixedSizeListArray.from_arrays(flat, dtype.list_size)


class ParquetEmbeddingWriter:
    """Writes embedding rows to a Parquet file, committed atomically on close.

    Rows go to ``<path>.inprogress`` and the file is renamed to ``path`` only
    by :meth:`close`, so no partial file is ever visible under the final name.
    """

    def __init__(self, path: str | Path, dim: int, precision: Precision, model: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.schema = embedding_schema(dim, precision, model)
        self._tmp = self.path.with_name(self.path.name + ".inprogress")
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self.rows = 0

    def write(
        self,
        ids: list[str],
        vectors: np.ndarray,
        n_tokens: np.ndarray,
        n_chunks: np.ndarray,
        truncated: np.ndarray,
        metadata: list[dict[str, Any]],
    ) -> None:
        if not ids:
            return
        table = pa.Table.from_arrays(
            [
                pa.array(ids, pa.string()),
                vectors_to_arrow(vectors, self.schema.field("vector").type),
                pa.array(n_tokens.astype(np.int32)),
                pa.array(n_chunks.astype(np.int32)),
                pa.array(truncated.astype(bool)),
                pa.array([json.dumps(m, ensure_ascii=False, default=str) if m else None for m in metadata],
                         pa.string()),
            ],
            schema=self.schema,
        )
        self._writer.write_table(table)
        self.rows += len(ids)

    def close(self) -> None:
        self._writer.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)


class DeadLetterWriter:
    """Appends dead letters as JSON lines; the file is created on the first one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: io.TextIOWrapper | None = None
        self.count = 0
        self.by_kind: dict[str, int] = {}

    def write(self, letter: DeadLetter) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._fh.write(letter.to_json() + "\n")
        self.count += 1
        self.by_kind[letter.kind] = self.by_kind.get(letter.kind, 0) + 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_dead_letters(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
