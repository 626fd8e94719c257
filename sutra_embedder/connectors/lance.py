"""LanceDB sink: an embedded vector store with upsert by id and an optional ANN index.

Each batch is one ``merge_insert`` on ``id`` (update when present, insert
otherwise), so replays leave one row per id holding the latest vector. The
table uses the columns of ``sutra embed`` (:func:`embedding_schema`) and its
schema metadata records the model id, dimension and precision, which
:func:`sutra search` reads back.

An ANN index (``hnsw``: IVF_HNSW_SQ, or ``ivf_pq``) is built at a flush once
the table holds ``index_min_rows`` rows; below that a flat scan is exact and
fast enough. Rows added later are searched by a flat scan until
:meth:`LanceSink.close` (or :meth:`LanceSink.optimize`) adds them to the index.

URI: ``lancedb:///dir?table=..&batch_size=..&index=hnsw|ivf_pq|none&index_min_rows=..&precision=..``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl

import numpy as np
import pyarrow as pa

from sutra_embedder.core.errors import ConfigError

from .files import embedding_schema, vectors_to_arrow
from .records import DeadLetter
from .sinks import (
    BufferedSink,
    EmbeddingRow,
    Hit,
    IndexInfo,
    SearchOptions,
    SinkConfig,
    _check_choice,
    _check_int,
    _parse_bool,
    _parse_int,
    check_table_name,
    metadata_json,
    missing_extra,
    parse_query,
    split_uri,
)

log = logging.getLogger(__name__)

INDEX_KINDS = ("hnsw", "ivf_pq", "none")
PQ_MIN_ROWS = 256  # below this LanceDB builds an IVF_PQ index that holds no rows


def _lancedb() -> Any:
    try:
        import lancedb
    except ImportError:
        raise missing_extra("lancedb", "lancedb") from None
    return lancedb


@dataclass(frozen=True)
class LanceSinkConfig(SinkConfig):
    """Settings of the LanceDB sink.

    Attributes:
        path: Database directory (created when missing).
        table: Table name.
        batch_size: Rows per ``merge_insert`` (and the buffer's bound). Each
            call writes a new table version, so larger batches mean fewer small
            fragments.
        index: ANN index to build once the table is large enough: ``hnsw``
            (IVF_HNSW_SQ), ``ivf_pq``, or ``none``.
        index_min_rows: Rows the table needs before the index is built.
        optimize: Compact fragments and add new rows to the index on close.
    """

    path: str = ""
    table: str = "embeddings"
    batch_size: int = 2000
    index: Literal["hnsw", "ivf_pq", "none"] = "hnsw"
    index_min_rows: int = 10_000
    optimize: bool = True

    SCHEME: ClassVar[str] = "lancedb"
    PRECISIONS: ClassVar[tuple[str, ...]] = ("float32", "float16")
    URI_PARAMS: ClassVar[dict[str, Callable[[str, str], object]]] = {
        "table": lambda _n, raw: raw,
        "batch_size": _parse_int,
        "index": lambda _n, raw: raw,
        "index_min_rows": _parse_int,
        "optimize": _parse_bool,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path:
            raise ConfigError("path", "name the database directory, e.g. lancedb:///data/lance?table=docs")
        check_table_name(self.table)
        _check_int("batch_size", self.batch_size, 1)
        _check_choice("index", self.index, INDEX_KINDS)
        _check_int("index_min_rows", self.index_min_rows, 1)
        if self.index == "ivf_pq" and self.index_min_rows < PQ_MIN_ROWS:
            raise ConfigError(
                "index_min_rows",
                f"IVF_PQ trains {PQ_MIN_ROWS} centroids per sub-vector and needs >= {PQ_MIN_ROWS} rows; "
                f"got {self.index_min_rows} (use index=hnsw for small tables)",
            )

    @classmethod
    def from_uri(cls, uri: str, dim: int, model: str, **overrides: object) -> LanceSinkConfig:
        """Config from ``lancedb:///dir?table=...``."""
        scheme, path, query = split_uri(uri)
        if scheme not in ("lancedb", "lance"):
            raise ConfigError("uri", f"expected lancedb://..., got scheme {scheme!r}")
        values, _ = parse_query(cls, query)
        kwargs: dict[str, Any] = {"dim": dim, "model": model, "path": path, **values, **overrides}
        return cls(**kwargs)

    @property
    def location(self) -> str:
        return f"lancedb://{self.path} table {self.table}"


def _schema_info(schema: pa.Schema) -> dict[str, str]:
    raw = schema.metadata or {}
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()}


def _open_table(db: Any, name: str) -> Any | None:
    try:
        return db.open_table(name)
    except (ValueError, FileNotFoundError):
        return None


def _vector_indices(table: Any) -> list[Any]:
    return [i for i in table.list_indices() if "vector" in list(getattr(i, "columns", []))]


def index_config(kind: str, rows: int, dim: int) -> Any:
    """The LanceDB index config for ``kind`` sized for ``rows`` vectors of ``dim`` dimensions.

    IVF partitions: about one per 50,000 rows for HNSW (each partition is a
    graph), about ``sqrt(rows)`` for PQ. PQ sub-vectors of 8 dimensions (or the
    largest divisor of ``dim`` up to 16) keep enough detail for re-ranking.
    """
    from lancedb.index import IvfHnswSq, IvfPq

    if kind == "hnsw":
        return IvfHnswSq(distance_type="cosine", num_partitions=max(1, rows // 50_000))
    if kind == "ivf_pq":
        sub = next((d for d in (8, 16, 4, 12, 6, 2) if dim % d == 0), 1)
        partitions = max(1, min(int(math.sqrt(rows)), rows // 256 or 1))
        return IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=dim // sub)
    raise ConfigError("index", f"got {kind!r}; choose one of hnsw, ivf_pq")


class LanceSink(BufferedSink):
    """Upserts embedding rows into a LanceDB table.

    Args:
        config: Database, table, batching and index settings.

    Raises:
        ImportError: lancedb is missing (``pip install 'sutra-embedder[lancedb]'``).
    """

    config: LanceSinkConfig

    def __init__(self, config: LanceSinkConfig) -> None:
        super().__init__(config, config.batch_size)
        self._lancedb = _lancedb()
        self._schema = embedding_schema(config.dim, config.precision, config.model)
        self._db: Any = None
        self.table: Any = None
        self._dirty = False

    def _open(self) -> None:
        cfg = self.config
        self._db = self._lancedb.connect(cfg.path)
        table = _open_table(self._db, cfg.table)
        if table is None:
            try:
                table = self._db.create_table(cfg.table, schema=self._schema, exist_ok=True)
            except ValueError:  # created meanwhile by another writer, with another schema
                table = _open_table(self._db, cfg.table)
                if table is None:
                    raise
        self._check_schema(table.schema)
        self.table = table

    def _check_schema(self, schema: pa.Schema) -> None:
        cfg = self.config
        info = _schema_info(schema)
        for key, want in (("sutra.model", cfg.model), ("sutra.dim", str(cfg.dim)), ("sutra.precision", cfg.precision)):
            if info.get(key) != want:
                name = key.split(".")[1]
                raise ConfigError(
                    name if name != "model" else "model",
                    f"table {cfg.table} in {cfg.path} has {name} {info.get(key)!r}, this sink writes {want!r}; "
                    "use another table",
                )

    def _close(self) -> None:
        if self.config.optimize and self._dirty and self.table is not None:
            self.optimize()
        self.table = None
        self._db = None

    def _store(self, rows: list[EmbeddingRow]) -> list[DeadLetter]:
        vectors = np.stack([r.vector for r in rows])
        vectors = vectors.astype(np.float16 if self.config.precision == "float16" else np.float32)
        batch = pa.Table.from_arrays(
            [
                pa.array([r.id for r in rows], pa.string()),
                vectors_to_arrow(vectors, self._schema.field("vector").type),
                pa.array([int(r.n_tokens) for r in rows], pa.int32()),
                pa.array([int(r.n_chunks) for r in rows], pa.int32()),
                pa.array([bool(r.truncated) for r in rows], pa.bool_()),
                pa.array([metadata_json(r.metadata) for r in rows], pa.string()),
            ],
            schema=self._schema,
        )
        (self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(batch))
        self._dirty = True
        return []

    def flush(self) -> list[DeadLetter]:
        """Store buffered rows; then build the ANN index if the table just got large enough."""
        dead = super().flush()
        if self._opened and self.table is not None:
            self._maybe_index()
        return dead

    def _maybe_index(self) -> None:
        cfg = self.config
        if cfg.index == "none" or _vector_indices(self.table):
            return
        rows = self.table.count_rows()
        if rows >= cfg.index_min_rows:
            self.create_index()

    def create_index(self, kind: str | None = None) -> None:
        """Build (or rebuild) the ANN index on ``vector`` now.

        Args:
            kind: ``hnsw`` or ``ivf_pq``; default the config's ``index``.
        """
        kind = kind or self.config.index
        rows = self.table.count_rows()
        if kind == "ivf_pq" and rows < PQ_MIN_ROWS:
            raise ConfigError("index", f"IVF_PQ needs >= {PQ_MIN_ROWS} rows, the table has {rows}; use hnsw")
        log.info("building %s index on %s (%d rows)", kind, self.config.location, rows)
        self.table.create_index("vector", config=index_config(kind, rows, self.config.dim), replace=True)

    def optimize(self) -> None:
        """Compact small fragments and add unindexed rows to the index."""
        self.table.optimize()

    def index(self) -> LanceIndex:
        """A search handle on this sink's table."""
        return LanceIndex(self.config.path, self.config.table)


class LanceIndex:
    """Search over a LanceDB table written by :class:`LanceSink`.

    Raises:
        ConfigError: The table does not exist or carries no model id.
    """

    def __init__(self, path: str, table: str = "embeddings") -> None:
        lancedb = _lancedb()
        check_table_name(table)
        self._db = lancedb.connect(path)
        tbl = _open_table(self._db, table)
        if tbl is None:
            raise ConfigError("index", f"no table {table} in lancedb://{path}")
        meta = _schema_info(tbl.schema)
        if "sutra.model" not in meta:
            raise ConfigError("index", f"table {table} in {path} carries no sutra.model metadata")
        self.table = tbl
        self.info = IndexInfo(meta["sutra.model"], int(meta["sutra.dim"]), meta.get("sutra.precision", "float32"),
                              f"lancedb://{path} table {table}", int(tbl.count_rows()))

    @classmethod
    def from_uri(cls, uri: str) -> LanceIndex:
        """Open ``lancedb:///dir?table=name`` (other sink parameters are ignored)."""
        _, path, query = split_uri(uri)
        return cls(path, dict(parse_qsl(query)).get("table", "embeddings"))

    @property
    def has_ann_index(self) -> bool:
        return bool(_vector_indices(self.table))

    def search(self, vector: np.ndarray, k: int, options: SearchOptions | None = None) -> list[Hit]:
        """Top ``k`` ids by cosine similarity.

        Args:
            vector: Float query vector ``(dim,)``.
            k: Number of hits.
            options: ``exact`` bypasses the ANN index (a flat scan);
                ``nprobes``, ``ef_search`` and ``refine_factor`` (default 1: the
                hits' scores are recomputed exactly) tune the index search.
        """
        _check_int("k", k, 1)
        opts = options or SearchOptions()
        query = (self.table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
                 .distance_type("cosine").select(["id", "_distance"]).limit(k))
        if opts.exact:
            query = query.bypass_vector_index()
        else:
            if opts.nprobes is not None:
                query = query.nprobes(opts.nprobes)
            if opts.ef_search is not None:
                query = query.ef(opts.ef_search)
            # Quantized indexes (SQ, PQ) return approximate distances; re-ranking at least the k hits
            # with the stored vectors makes the scores exact cosine similarities.
            query = query.refine_factor(opts.refine_factor or 1)
        result = query.to_arrow()
        ids = result.column("id").to_pylist()
        dists = result.column("_distance").to_numpy()
        return [(str(i), 1.0 - float(d)) for i, d in zip(ids, dists)]

    def fetch(self, ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Stored vectors by id (all rows when ``ids`` is None), as float32."""
        table = self.table.to_arrow().select(["id", "vector"])
        width = table.schema.field("vector").type.list_size
        mat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        wanted = None if ids is None else set(ids)
        return {rid: mat[j].astype(np.float32) for j, rid in enumerate(table.column("id").to_pylist())
                if wanted is None or rid in wanted}

    def count(self) -> int:
        return int(self.table.count_rows())

    def close(self) -> None:
        self.table = None
        self._db = None


__all__ = ["INDEX_KINDS", "LanceIndex", "LanceSink", "LanceSinkConfig", "index_config"]
