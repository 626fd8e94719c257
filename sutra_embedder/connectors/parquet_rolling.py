"""Rolling Parquet sink for streams: one file per offset range, each committed atomically.

Rows are grouped per stream partition into *segments*. A segment becomes a
file when it reaches an offset boundary (offsets ``[j * max_rows, (j + 1) *
max_rows)`` share a file), when it holds ``max_bytes``, when its first row is
``max_seconds`` old, or at :meth:`RollingParquetSink.flush`. A file is written
under ``<name>.inprogress``, fsynced, then renamed, and the directory is
fsynced: no reader ever sees a partial file under a final ``.parquet`` name.

File names hold the segment's first offset::

    part-00000000000000000000.parquet          rows without a partition
    part-texts-3-00000000000000001024.parquet  partition "texts-3"

so the same input gives the same files. On open the sink reads the last
committed offset of each partition from the files' footers and drops replayed
rows at or below it (counted in ``stats.rows_skipped``): replaying a stream
from an earlier offset after a crash adds nothing twice. One sink instance
writes a given partition at a time (what a Kafka consumer group guarantees).

The columns are those of ``sutra embed`` (:func:`embedding_schema`) plus
``offset``; the schema metadata adds ``sutra.partition``,
``sutra.first_offset`` and ``sutra.last_offset``.

URI: ``parquet:///dir?max_rows=..&max_bytes=..&max_seconds=..&precision=..&prefix=..``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sutra_embedder.core.errors import ConfigError
from sutra_embedder.core.quantization import CalibrationRanges, quantize_embeddings

from .files import embedding_schema, vectors_to_arrow
from .records import DeadLetter
from .sinks import (
    BufferedSink,
    EmbeddingRow,
    Hit,
    IndexInfo,
    SearchOptions,
    SinkConfig,
    SinkError,
    _check_choice,
    _check_int,
    _parse_bool,
    _parse_int,
    check_row,
    cosine_top_k,
    dead_letter,
    metadata_json,
    parse_query,
    split_uri,
)

COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "none")
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SAFE_PART = re.compile(r"[^A-Za-z0-9_.-]")
INPROGRESS = ".inprogress"


@dataclass(frozen=True)
class ParquetSinkConfig(SinkConfig):
    """Settings of the rolling Parquet sink.

    Attributes:
        path: Directory of the files (created on open).
        max_rows: Offsets per file: rows of offsets ``[j * max_rows, (j + 1) *
            max_rows)`` go to one file. Also bounds the memory of a partition.
        max_bytes: Roll a file once its buffered rows reach about this size.
        prefix: File name prefix.
        calibration: Ranges file (JSON) for ``int8``/``uint8`` precision.
        compression: Parquet codec.
        fsync: fsync files and the directory on commit (turn off only for tests
            on throwaway data).
    """

    path: str = ""
    max_rows: int = 100_000
    max_bytes: int = 128 * 2**20
    prefix: str = "part"
    calibration: str | None = None
    compression: str = "zstd"
    fsync: bool = True

    SCHEME: ClassVar[str] = "parquet"
    URI_PARAMS: ClassVar[dict[str, Callable[[str, str], object]]] = {
        "max_rows": _parse_int,
        "max_bytes": _parse_int,
        "prefix": lambda _n, raw: raw,
        "calibration": lambda _n, raw: raw,
        "compression": lambda _n, raw: raw,
        "fsync": _parse_bool,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path:
            raise ConfigError("path", "name the directory to write, e.g. parquet:///data/embeddings")
        _check_int("max_rows", self.max_rows, 1)
        _check_int("max_bytes", self.max_bytes, 1)
        if not _PREFIX.match(self.prefix):
            raise ConfigError("prefix", f"{self.prefix!r}: use letters, digits, '_', '.', '-'")
        _check_choice("compression", self.compression, COMPRESSIONS)
        if self.precision in ("int8", "uint8") and not self.calibration:
            raise ConfigError("calibration", f"precision {self.precision} needs a calibration ranges file")

    @classmethod
    def from_uri(cls, uri: str, dim: int, model: str, **overrides: object) -> ParquetSinkConfig:
        """Config from ``parquet:///dir?max_rows=...``."""
        scheme, path, query = split_uri(uri)
        if scheme != "parquet":
            raise ConfigError("uri", f"expected parquet://..., got scheme {scheme!r}")
        values, _ = parse_query(cls, query)
        kwargs: dict[str, Any] = {"dim": dim, "model": model, "path": path, **values, **overrides}
        return cls(**kwargs)

    @property
    def location(self) -> str:
        return f"parquet://{self.path}"


def partition_tag(partition: str) -> str:
    """The file-name form of a partition: safe characters, plus a hash when any were replaced."""
    safe = _SAFE_PART.sub("_", partition)
    if safe != partition:
        safe += "-" + hashlib.sha1(partition.encode("utf-8")).hexdigest()[:8]
    return safe


def file_name(prefix: str, partition: str, first_offset: int) -> str:
    """``<prefix>[-<partition>]-<first offset, 20 digits>.parquet``."""
    tag = f"-{partition_tag(partition)}" if partition else ""
    return f"{prefix}{tag}-{first_offset:020d}.parquet"


@dataclass
class _Segment:
    partition: str
    first: int
    bucket: int
    started: float
    rows: list[EmbeddingRow] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    nbytes: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RollingParquetSink(BufferedSink):
    """Writes rows into rolling, atomically committed Parquet files.

    Args:
        config: Directory, roll limits and precision.
    """

    config: ParquetSinkConfig

    def __init__(self, config: ParquetSinkConfig) -> None:
        super().__init__(config, config.max_rows)
        self.dir = Path(config.path)
        self._segments: dict[str, _Segment] = {}
        self._high: dict[str, int] = {}
        self._calibration: CalibrationRanges | None = None
        base = embedding_schema(config.dim, config.precision, config.model)
        self._schema = base.append(pa.field("offset", pa.int64(), nullable=False))
        self.committed: list[Path] = []

    # -- setup
    def _open(self) -> None:
        cfg = self.config
        self.dir.mkdir(parents=True, exist_ok=True)
        if cfg.calibration:
            self._calibration = CalibrationRanges.load(cfg.calibration)
        for stale in self.dir.glob(f"{cfg.prefix}-*.parquet{INPROGRESS}"):
            stale.unlink(missing_ok=True)  # left by a crash before its rename: never committed
        for path in self.files():
            meta = _file_meta(path)
            if "sutra.partition" not in meta:
                continue
            for key, want in (("sutra.model", cfg.model), ("sutra.dim", str(cfg.dim)),
                              ("sutra.precision", cfg.precision)):
                if meta.get(key) != want:
                    raise ConfigError(
                        key.split(".")[1],
                        f"{path} holds {key.split('.')[1]} {meta.get(key)!r}, this sink writes {want!r}; "
                        "use another directory",
                    )
            part = meta["sutra.partition"]
            self._high[part] = max(self._high.get(part, -1), int(meta["sutra.last_offset"]))

    def _close(self) -> None:
        pass

    def files(self) -> list[Path]:
        """Committed files of this sink's prefix, sorted by name."""
        return sorted(self.dir.glob(f"{self.config.prefix}-*.parquet"))

    def last_offset(self, partition: str = "") -> int | None:
        """Highest offset accepted for ``partition`` (committed or buffered), or ``None``."""
        return self._high.get(partition)

    # -- writing
    @property
    def buffered(self) -> int:
        return sum(len(s.rows) for s in self._segments.values())

    def _discard(self) -> None:
        self._segments.clear()

    def write(self, rows: Sequence[EmbeddingRow]) -> list[DeadLetter]:
        """Add rows to their partition's open segment, committing segments that are full or old.

        Rows at or below the partition's last accepted offset are replays and
        are dropped (``stats.rows_skipped``).
        """
        if not self._opened:
            raise SinkError(f"sink {self.config.location} is not open: call open() first")
        cfg = self.config
        dead: list[DeadLetter] = []
        for row in rows:
            self.stats.rows_in += 1
            problem = check_row(row, cfg.dim, cfg.model)
            if problem is not None:
                dead.append(dead_letter(row, problem[0], problem[1], cfg.model))
                continue
            high = self._high.get(row.partition, -1)
            offset = high + 1 if row.offset is None else int(row.offset)
            if offset <= high:
                self.stats.rows_skipped += 1  # a replay of an offset already accepted
                continue
            seg = self._segments.get(row.partition)
            bucket = offset // cfg.max_rows
            if seg is not None and seg.bucket != bucket:
                self._commit(seg)
                seg = None
            if seg is None:
                seg = _Segment(row.partition, offset, bucket, time.monotonic())
                self._segments[row.partition] = seg
            seg.rows.append(row)
            seg.offsets.append(offset)
            seg.nbytes += _row_bytes(row)
            self._high[row.partition] = offset
            if seg.nbytes >= cfg.max_bytes:
                self._commit(seg)
        if cfg.max_seconds is not None:
            now = time.monotonic()
            for seg in list(self._segments.values()):
                if now - seg.started >= cfg.max_seconds:
                    self._commit(seg)
        self.stats.count_dead(dead)
        return dead

    def flush(self) -> list[DeadLetter]:
        """Commit every open segment; all rows written so far are in committed files afterwards."""
        for seg in list(self._segments.values()):
            self._commit(seg)
        return []

    def _table(self, seg: _Segment) -> pa.Table:
        cfg = self.config
        vectors = quantize_embeddings(np.stack([r.vector for r in seg.rows]).astype(np.float32), cfg.precision,
                                      self._calibration)
        meta = dict(self._schema.metadata or {})
        meta.update({
            b"sutra.partition": seg.partition.encode("utf-8"),
            b"sutra.first_offset": str(seg.offsets[0]).encode(),
            b"sutra.last_offset": str(seg.offsets[-1]).encode(),
        })
        schema = self._schema.with_metadata(meta)
        return pa.Table.from_arrays(
            [
                pa.array([r.id for r in seg.rows], pa.string()),
                vectors_to_arrow(vectors, schema.field("vector").type),
                pa.array([int(r.n_tokens) for r in seg.rows], pa.int32()),
                pa.array([int(r.n_chunks) for r in seg.rows], pa.int32()),
                pa.array([bool(r.truncated) for r in seg.rows], pa.bool_()),
                pa.array([metadata_json(r.metadata) for r in seg.rows], pa.string()),
                pa.array(seg.offsets, pa.int64()),
            ],
            schema=schema,
        )

    def _commit(self, seg: _Segment) -> None:
        cfg = self.config
        start = time.perf_counter()
        table = self._table(seg)
        final = self.dir / file_name(cfg.prefix, seg.partition, seg.first)
        tmp = final.with_name(final.name + INPROGRESS)
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh, compression=None if cfg.compression == "none" else cfg.compression,
                               row_group_size=65536)
                fh.flush()
                if cfg.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if cfg.fsync:
            _fsync_dir(self.dir)
        del self._segments[seg.partition]
        self.committed.append(final)
        self.stats.batches += 1
        self.stats.rows_stored += len(seg.rows)
        self.stats.store_seconds += time.perf_counter() - start


def _row_bytes(row: EmbeddingRow) -> int:
    meta = metadata_json(row.metadata)
    return int(row.vector.nbytes) + len(row.id) + (len(meta) if meta else 0) + 24


def _file_meta(path: Path) -> dict[str, str]:
    raw = pq.read_metadata(path).metadata or {}
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()
            if not k.startswith(b"ARROW:")}


class ParquetIndex:
    """Exact search over the committed files of a Parquet sink directory (brute force, in memory).

    When an id occurs in several files, the row of the file that sorts last
    (the latest offset of its partition) is used.
    """

    def __init__(self, path: str, prefix: str = "part") -> None:
        self.dir = Path(path)
        files = sorted(self.dir.glob(f"{prefix}-*.parquet"))
        if not files:
            raise ConfigError("index", f"no {prefix}-*.parquet files in {path}")
        meta = _file_meta(files[0])
        if "sutra.model" not in meta:
            raise ConfigError("index", f"{files[0]} carries no sutra.model metadata")
        precision = meta.get("sutra.precision", "float32")
        if precision in ("int8", "uint8"):
            raise ConfigError("index", f"search over {precision} Parquet files is not supported; store float vectors")
        dim = int(meta["sutra.dim"])
        latest: dict[str, np.ndarray] = {}
        for f in files:
            table = pq.read_table(f, columns=["id", "vector"])
            width = table.schema.field("vector").type.list_size
            flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            mat = flat.reshape(-1, width)
            if precision in ("binary", "ubinary"):
                raw = mat.astype(np.int16) + (128 if precision == "binary" else 0)
                mat = np.unpackbits(raw.astype(np.uint8), axis=1)[:, :dim] * 2.0 - 1.0
            for rid, vec in zip(table.column("id").to_pylist(), mat):
                latest[rid] = vec
        self._ids = list(latest)
        self._matrix = np.stack(list(latest.values())).astype(np.float32)
        self.info = IndexInfo(meta["sutra.model"], dim, precision, f"parquet://{path}", len(self._ids))

    @classmethod
    def from_uri(cls, uri: str) -> ParquetIndex:
        _, path, query = split_uri(uri)
        params = dict(parse_qsl(query))
        return cls(path, params.get("prefix", "part"))

    def search(self, vector: np.ndarray, k: int, options: SearchOptions | None = None) -> list[Hit]:
        """Exact top-k by cosine similarity (``options`` are ignored: the scan is always exact)."""
        _check_int("k", k, 1)
        query = np.asarray(vector, dtype=np.float32)
        if self.info.precision in ("binary", "ubinary"):
            query = np.where(query > 0, 1.0, -1.0).astype(np.float32)
        return cosine_top_k(self._matrix, self._ids, query, k)

    def close(self) -> None:
        pass


def read_rows(path: str | Path, prefix: str = "part") -> pa.Table:
    """Every committed row of a sink directory, files in name order (a helper for checks and tests)."""
    files = sorted(Path(path).glob(f"{prefix}-*.parquet"))
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def describe(path: str | Path, prefix: str = "part") -> list[dict[str, Any]]:
    """Name, rows and offset range of each committed file."""
    out = []
    for f in sorted(Path(path).glob(f"{prefix}-*.parquet")):
        meta = _file_meta(f)
        out.append({"file": f.name, "rows": pq.read_metadata(f).num_rows,
                    "partition": meta.get("sutra.partition"), "first_offset": int(meta.get("sutra.first_offset", -1)),
                    "last_offset": int(meta.get("sutra.last_offset", -1))})
    return out


__all__ = [
    "ParquetIndex",
    "ParquetSinkConfig",
    "RollingParquetSink",
    "describe",
    "file_name",
    "partition_tag",
    "read_rows",
]
