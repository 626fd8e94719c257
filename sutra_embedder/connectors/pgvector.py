"""Postgres + pgvector sink: batched idempotent upserts, HNSW index, retries across restarts.

The table (created on :meth:`PgVectorSink.open` when missing)::

    id text PRIMARY KEY, embedding vector(dim) | halfvec(dim) | bit(dim),
    n_tokens integer, n_chunks integer, truncated boolean, metadata jsonb,
    model text, updated_at timestamptz

with an HNSW index on ``embedding`` (cosine distance for vector/halfvec,
Hamming distance for bit) and a table comment holding the model id, the
dimension and the precision, which :func:`sutra search` reads back.

Each batch is one transaction: ``COPY`` into a per-connection temporary table,
then ``INSERT ... SELECT ... ON CONFLICT (id) DO UPDATE`` (``method=copy``),
or one ``INSERT ... ON CONFLICT`` per row sent in a pipeline
(``method=executemany``). When the connection is lost the whole batch is
retried on a new connection with exponential backoff; that is safe because it
is an upsert. A batch the server refuses for a data error is split in halves
until the offending rows are found; they become dead letters.

Vectors travel as text literals (``'[0.1,0.2]'``, ``'0101'``) cast in SQL, so
no psycopg adapter is registered anywhere.

URI parameters (after ``?``; any others are passed to libpq, e.g. ``sslmode``):
``table``, ``batch_size``, ``method`` (copy, executemany), ``index`` (hnsw,
none), ``hnsw_m``, ``hnsw_ef_construction``, ``precision`` (float32, float16,
binary), ``retries``, ``retry_base_s``, ``retry_max_s``, ``retry_deadline_s``,
``connect_timeout_s``, ``max_seconds``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import numpy as np

from sutra_embedder.core.errors import ConfigError
from sutra_embedder.logs import Redactor

from .records import DeadLetter
from .sinks import (
    BufferedSink,
    EmbeddingRow,
    Hit,
    IndexInfo,
    RetryPolicy,
    SearchOptions,
    SinkConfig,
    SinkError,
    _check_choice,
    _check_int,
    _parse_float,
    _parse_int,
    check_table_name,
    dead_letter,
    metadata_json,
    missing_extra,
    redact_uri,
)

log = logging.getLogger(__name__)

METHODS = ("copy", "executemany")
INDEXES = ("hnsw", "none")
COMMENT_KEY = "sutra"
# Stored column type and HNSW operator class per precision.
_COLUMN = {"float32": "vector", "float16": "halfvec", "binary": "bit", "ubinary": "bit"}
_OPCLASS = {"vector": "vector_cosine_ops", "halfvec": "halfvec_cosine_ops", "bit": "bit_hamming_ops"}
_DISTANCE = {"vector": "<=>", "halfvec": "<=>", "bit": "<~>"}
# pgvector's HNSW index supports at most this many dimensions per type.
_HNSW_MAX_DIM = {"vector": 2000, "halfvec": 4000, "bit": 64000}

R = TypeVar("R")


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise missing_extra("postgres", "psycopg") from None
    return psycopg


def _secrets_of(dsn: str) -> list[str]:
    parts = urlsplit(dsn)
    secrets = []
    if parts.password:
        secrets += [parts.password, unquote(parts.password)]
    secrets += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() == "password"]
    return secrets


@dataclass(frozen=True, repr=False)
class PgVectorSinkConfig(SinkConfig):
    """Settings of the Postgres + pgvector sink.

    Attributes:
        dsn: libpq URI (``postgresql://user:pw@host:port/db?sslmode=...``).
            Never printed: :attr:`location` and ``repr`` show it redacted.
        table: Table name, ``name`` or ``schema.name``.
        batch_size: Rows per upsert transaction (and the buffer's bound).
        method: ``copy`` (COPY into a staging table, then one INSERT ... ON
            CONFLICT) or ``executemany`` (pipelined per-row INSERT ... ON CONFLICT).
        index: ``hnsw`` creates an HNSW index on open; ``none`` creates none.
        hnsw_m: HNSW graph degree.
        hnsw_ef_construction: HNSW build candidate list size.
        retries: Attempts per batch when the connection is lost (1 = no retry).
        retry_base_s: First backoff delay; doubles per attempt.
        retry_max_s: Longest backoff delay.
        retry_deadline_s: Give a batch up after this long.
        connect_timeout_s: libpq connect timeout.
    """

    dsn: str = field(default="", repr=False)
    table: str = "embeddings"
    batch_size: int = 500
    method: Literal["copy", "executemany"] = "copy"
    index: Literal["hnsw", "none"] = "hnsw"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64
    retries: int = 10
    retry_base_s: float = 0.1
    retry_max_s: float = 5.0
    retry_deadline_s: float = 120.0
    connect_timeout_s: int = 10

    SCHEME: ClassVar[str] = "postgresql"
    PRECISIONS: ClassVar[tuple[str, ...]] = ("float32", "float16", "binary", "ubinary")
    URI_PARAMS: ClassVar[dict[str, Callable[[str, str], object]]] = {
        "table": lambda _n, raw: raw,
        "batch_size": _parse_int,
        "method": lambda _n, raw: raw,
        "index": lambda _n, raw: raw,
        "hnsw_m": _parse_int,
        "hnsw_ef_construction": _parse_int,
        "retries": _parse_int,
        "retry_base_s": _parse_float,
        "retry_max_s": _parse_float,
        "retry_deadline_s": _parse_float,
        "connect_timeout_s": _parse_int,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.dsn.startswith("postgresql://"):
            raise ConfigError("dsn", "must be a postgresql:// URI")
        check_table_name(self.table, qualified=True)
        _check_int("batch_size", self.batch_size, 1)
        _check_choice("method", self.method, METHODS)
        _check_choice("index", self.index, INDEXES)
        _check_int("hnsw_m", self.hnsw_m, 2)
        _check_int("hnsw_ef_construction", self.hnsw_ef_construction, 4)
        _check_int("connect_timeout_s", self.connect_timeout_s, 1)
        RetryPolicy(self.retries, self.retry_base_s, self.retry_max_s, self.retry_deadline_s)  # validates
        limit = _HNSW_MAX_DIM[self.column_base]
        if self.index == "hnsw" and self.dim > limit:
            raise ConfigError(
                "index",
                f"pgvector's HNSW index takes at most {limit} dimensions for {self.column_base}, the table has "
                f"{self.dim}; use precision=float16 (halfvec, up to 4000) or index=none",
            )

    @classmethod
    def from_uri(cls, uri: str, dim: int, model: str, **overrides: object) -> PgVectorSinkConfig:
        """Config from ``postgresql://...?table=...`` (``pgvector+postgresql://`` works too)."""
        scheme, _, rest = uri.partition("://")
        if scheme.lower() not in ("postgresql", "postgres", "pgvector+postgresql", "pgvector") or not rest:
            raise ConfigError("uri", f"expected postgresql://..., got {redact_uri(uri)!r}")
        parts = urlsplit("postgresql://" + rest)
        from .sinks import parse_query

        values, libpq = parse_query(cls, parts.query, strict=False)
        dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(libpq), parts.fragment))
        kwargs: dict[str, Any] = {"dim": dim, "model": model, "dsn": dsn, **values, **overrides}
        return cls(**kwargs)

    @property
    def column_base(self) -> str:
        """``vector``, ``halfvec`` or ``bit``."""
        return _COLUMN[self.precision]

    @property
    def column_type(self) -> str:
        """The embedding column's SQL type, e.g. ``vector(384)``."""
        return f"{self.column_base}({self.dim})"

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, self.retry_base_s, self.retry_max_s, self.retry_deadline_s)

    @property
    def location(self) -> str:
        return f"{redact_uri(self.dsn)} table {self.table}"

    @property
    def secrets(self) -> list[str]:
        return _secrets_of(self.dsn)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={redact_uri(self.dsn) if f.name == 'dsn' else getattr(self, f.name)!r}" for f in fields(self)
        )
        return f"PgVectorSinkConfig({shown})"


def vector_literals(vectors: np.ndarray, column_base: str) -> list[str]:
    """pgvector text literals of a ``(n, dim)`` float matrix.

    ``vector``/``halfvec``: ``[x1,...,xd]`` with 9 significant digits, which
    round-trips float32 exactly (halfvec rounds on the server). ``bit``: one
    ``0``/``1`` per dimension, ``1`` where the value is positive (the sign bit
    quantization of :func:`~sutra_embedder.core.quantize_embeddings`).
    """
    mat = np.asarray(vectors)
    if column_base == "bit":
        bits = (mat > 0).astype(np.uint8) + ord("0")
        return [row.tobytes().decode("ascii") for row in bits]
    if column_base == "halfvec":
        mat = mat.astype(np.float16)
    fmt = "[" + ",".join(["%.9g"] * mat.shape[1]) + "]"
    return [fmt % tuple(row) for row in mat.astype(np.float64).tolist()]


def parse_vector_text(text: str) -> np.ndarray:
    """The float32 vector of pgvector's text output ``[1,2,3]`` (or of a bit string ``0101``)."""
    if text.startswith("["):
        return np.array(text[1:-1].split(","), dtype=np.float32)
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8) - ord("0")


class _Connection:
    """One psycopg connection with reconnect-and-retry around every operation."""

    def __init__(self, dsn: str, connect_timeout_s: int, retry: RetryPolicy, redact: Redactor) -> None:
        self._psycopg = _psycopg()
        self._dsn = dsn
        self._timeout = connect_timeout_s
        self._retry = retry
        self._redact = redact
        self._conn: Any = None
        self.retries = 0
        self._rng = np.random.default_rng()

    @property
    def transient_errors(self) -> tuple[type[BaseException], ...]:
        p = self._psycopg
        return (p.OperationalError, p.InterfaceError)

    def get(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._timeout)
        return self._conn

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # the connection is gone anyway
                log.debug("closing a broken connection failed", exc_info=True)

    def run(self, op: Callable[[Any], R], what: str) -> R:
        """Run ``op(connection)``, reconnecting and retrying it on connection errors."""
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return op(self.get())
            except self.transient_errors as exc:
                self.drop()
                attempt += 1
                delay = self._retry.delay(attempt - 1, self._rng)
                spent = time.monotonic() - start
                message = self._redact(exc).strip().replace("\n", " ")
                if attempt >= self._retry.attempts or spent + delay > self._retry.deadline_s:
                    raise SinkError(
                        f"{what} failed after {attempt} attempts in {spent:.1f}s: {message}"
                    ) from None
                self.retries += 1
                log.warning("%s: connection problem (%s); retry %d/%d in %.2fs", what, message, attempt,
                            self._retry.attempts - 1, delay)
                time.sleep(delay)


class PgVectorSink(BufferedSink):
    """Upserts embedding rows into a pgvector table.

    Args:
        config: Connection, table and batching settings.

    Raises:
        ImportError: psycopg is missing (``pip install 'sutra-embedder[postgres]'``).
    """

    config: PgVectorSinkConfig

    def __init__(self, config: PgVectorSinkConfig) -> None:
        super().__init__(config, config.batch_size)
        self._psycopg = _psycopg()
        self._redact = Redactor(config.secrets)
        self._db = _Connection(config.dsn, config.connect_timeout_s, config.retry_policy, self._redact)
        self._sql = _Statements(self._psycopg, config)
        self._staged_on: Any = None  # the connection whose session has the staging table

    # -- setup
    def _open(self) -> None:
        self._db.run(self._ensure_table, f"creating table {self.config.table}")

    def _ensure_table(self, conn: Any) -> None:
        cfg = self.config
        sql = self._sql
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sutra:{cfg.table}",))
            has_ext = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
            if not has_ext:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            existing = read_table_info(conn, self._psycopg, cfg.table)
            if existing is None:
                conn.execute(sql.create_table)
                conn.execute(sql.comment)
            else:
                self._check_existing(conn, existing)
            if cfg.index == "hnsw":
                conn.execute(sql.create_index)

    def _check_existing(self, conn: Any, existing: _TableInfo) -> None:
        cfg = self.config
        if existing.column_type != cfg.column_type:
            raise ConfigError(
                "dim" if existing.column_type.split("(")[0] == cfg.column_base else "precision",
                f"table {cfg.table} stores {existing.column_type} vectors, this sink writes {cfg.column_type} "
                f"(dim {cfg.dim}, precision {cfg.precision}); use another table",
            )
        if existing.model is None:
            conn.execute(self._sql.comment)
        elif existing.model != cfg.model:
            raise ConfigError(
                "model",
                f"table {cfg.table} holds vectors of model {existing.model!r}, this sink writes {cfg.model!r}; "
                "vectors of different models are not comparable: use another table",
            )

    def _close(self) -> None:
        self._db.drop()

    # -- writing
    def _check_extra(self, row: EmbeddingRow) -> tuple[str, str] | None:
        meta = metadata_json(row.metadata)
        if meta is not None and ("\\u0000" in meta or "\x00" in meta):
            return "invalid_metadata", "metadata holds NUL characters, which Postgres jsonb cannot store"
        return None

    def _store(self, rows: list[EmbeddingRow]) -> list[DeadLetter]:
        params = self._params(rows)
        before = self._db.retries
        try:
            what = f"upserting {len(rows)} rows into {self.config.table}"
            self._db.run(lambda conn: self._upsert(conn, params), what)
        except (self._psycopg.DataError, self._psycopg.IntegrityError) as exc:
            if len(rows) == 1:
                return [dead_letter(rows[0], "rejected_by_store", self._redact(exc).strip(), self.config.model)]
            mid = len(rows) // 2
            return self._store(rows[:mid]) + self._store(rows[mid:])
        finally:
            self.stats.retries += self._db.retries - before
        return []

    def _params(self, rows: Sequence[EmbeddingRow]) -> list[tuple[Any, ...]]:
        literals = vector_literals(np.stack([r.vector for r in rows]), self.config.column_base)
        return [
            (r.id, lit, int(r.n_tokens), int(r.n_chunks), bool(r.truncated), metadata_json(r.metadata),
             r.model or self.config.model)
            for r, lit in zip(rows, literals)
        ]

    def _upsert(self, conn: Any, params: list[tuple[Any, ...]]) -> None:
        if self.config.method == "copy" and self._staged_on is not conn:
            conn.execute(self._sql.create_stage)  # a temporary table lives as long as its session
            self._staged_on = conn
        with conn.transaction(), conn.cursor() as cur:
            if self.config.method == "copy":
                with cur.copy(self._sql.copy_stage) as copy:
                    for p in params:
                        copy.write_row(p)
                cur.execute(self._sql.merge_stage)
            else:
                cur.executemany(self._sql.insert_row, params)

    def create_index(self) -> None:
        """Build the HNSW index now, if missing.

        For a bulk load, open the sink with ``index=none`` and call this at the
        end: building the graph once is several times faster than maintaining
        it on every insert (see benchmarks/bench_sinks.py).
        """
        self._db.run(lambda conn: conn.execute(self._sql.create_index), f"indexing {self.config.table}")

    # -- reading
    def index(self) -> PgVectorIndex:
        """A search handle on this sink's table (its own connection)."""
        return PgVectorIndex(self.config.dsn, self.config.table, self.config.connect_timeout_s)


class _Statements:
    """The SQL of one table, composed once with quoted identifiers."""

    def __init__(self, psycopg: Any, cfg: PgVectorSinkConfig) -> None:
        sql = psycopg.sql
        table = _table_ident(sql, cfg.table)
        ctype = sql.SQL(cfg.column_type)
        cols = sql.SQL("id, embedding, n_tokens, n_chunks, truncated, metadata, model")
        update = sql.SQL(
            "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, n_tokens = EXCLUDED.n_tokens, "
            "n_chunks = EXCLUDED.n_chunks, truncated = EXCLUDED.truncated, metadata = EXCLUDED.metadata, "
            "model = EXCLUDED.model, updated_at = EXCLUDED.updated_at"
        )
        self.create_table = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} (id text PRIMARY KEY, embedding {ct} NOT NULL, n_tokens integer, "
            "n_chunks integer, truncated boolean, metadata jsonb, model text, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(t=table, ct=ctype)
        # COMMENT takes no bind parameters: the JSON goes in as a quoted literal.
        self.comment = sql.SQL("COMMENT ON TABLE {t} IS {c}").format(
            t=table, c=sql.Literal(json.dumps({COMMENT_KEY: {"model": cfg.model, "dim": cfg.dim,
                                                             "precision": cfg.precision}})))
        name = cfg.table.split(".")[-1][:48] + "_embedding_hnsw"
        self.create_index = sql.SQL(
            "CREATE INDEX IF NOT EXISTS {n} ON {t} USING hnsw (embedding {ops}) WITH (m = {m}, ef_construction = {ef})"
        ).format(n=sql.Identifier(name), t=table, ops=sql.SQL(_OPCLASS[cfg.column_base]),
                 m=sql.Literal(cfg.hnsw_m), ef=sql.Literal(cfg.hnsw_ef_construction))
        self.create_stage = sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS sutra_stage (id text, embedding {ct}, n_tokens integer, "
            "n_chunks integer, truncated boolean, metadata jsonb, model text) ON COMMIT DELETE ROWS"
        ).format(ct=ctype)
        self.copy_stage = sql.SQL("COPY sutra_stage ({c}) FROM STDIN").format(c=cols)
        self.merge_stage = sql.SQL(
            "INSERT INTO {t} ({c}, updated_at) SELECT {c}, now() FROM sutra_stage {u}"
        ).format(t=table, c=cols, u=update)
        self.insert_row = sql.SQL(
            "INSERT INTO {t} ({c}, updated_at) VALUES (%s, %s::{ct}, %s, %s, %s, %s::jsonb, %s, now()) {u}"
        ).format(t=table, c=cols, ct=ctype, u=update)


def _table_ident(sql: Any, table: str) -> Any:
    return sql.Identifier(*table.split("."))


@dataclass(frozen=True)
class _TableInfo:
    column_type: str
    model: str | None
    dim: int
    precision: str | None


def read_table_info(conn: Any, psycopg: Any, table: str) -> _TableInfo | None:
    """The embedding column type and the stored model of ``table``, or ``None`` when it does not exist."""
    regname = _table_ident(psycopg.sql, table).as_string(conn)
    row = conn.execute(
        "SELECT format_type(a.atttypid, a.atttypmod), obj_description(c.oid, 'pg_class') "
        "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.oid = to_regclass(%s) AND a.attname = 'embedding' AND NOT a.attisdropped",
        (regname,),
    ).fetchone()
    if row is None:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (regname,)).fetchone()
        if exists and exists[0]:
            raise ConfigError("table", f"table {table} exists but has no embedding column; use another table")
        return None
    column_type, comment = row
    info: dict[str, Any] = {}
    if comment:
        try:
            info = json.loads(comment).get(COMMENT_KEY, {})
        except (ValueError, AttributeError):
            info = {}
    dim = int(column_type.split("(")[1].rstrip(")")) if "(" in column_type else 0
    return _TableInfo(column_type, info.get("model"), dim, info.get("precision"))


class PgVectorIndex:
    """Search over a pgvector table written by :class:`PgVectorSink`.

    Args:
        dsn: libpq URI.
        table: Table name.
        connect_timeout_s: libpq connect timeout.

    Raises:
        ConfigError: The table does not exist or carries no model id.
    """

    def __init__(self, dsn: str, table: str, connect_timeout_s: int = 10) -> None:
        check_table_name(table, qualified=True)
        self._psycopg = _psycopg()
        self._redact = Redactor(_secrets_of(dsn))
        self._db = _Connection(dsn, connect_timeout_s, RetryPolicy(attempts=3), self._redact)
        self.table = table
        where = f"{redact_uri(dsn)} table {table}"
        table_info = self._db.run(lambda c: read_table_info(c, self._psycopg, table), f"reading {table}")
        if table_info is None:
            raise ConfigError("index", f"no table {table} at {redact_uri(dsn)}")
        if table_info.model is None:
            raise ConfigError("index", f"table {table} has no sutra model comment; pass the model explicitly")
        self._column_base = table_info.column_type.split("(")[0]
        self._ctype = table_info.column_type
        rows = self._db.run(lambda c: c.execute(self._fmt("SELECT count(*) FROM {t}")).fetchone()[0], "counting")
        precision = table_info.precision or {"vector": "float32", "halfvec": "float16", "bit": "binary"}.get(
            self._column_base, self._column_base)
        self.info = IndexInfo(table_info.model, table_info.dim, precision, where, int(rows))

    @classmethod
    def from_uri(cls, uri: str) -> PgVectorIndex:
        """Open ``postgresql://...?table=name`` (other sink parameters are ignored)."""
        rest = uri.partition("://")[2]
        parts = urlsplit("postgresql://" + rest)
        table = "embeddings"
        libpq = []
        sink_params = set(PgVectorSinkConfig.uri_params())
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "table":
                table = value
            elif key not in sink_params:
                libpq.append((key, value))
        dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(libpq), parts.fragment))
        return cls(dsn, table)

    def _fmt(self, template: str, **parts: Any) -> Any:
        sql = self._psycopg.sql
        return sql.SQL(template).format(t=_table_ident(sql, self.table), **parts)

    def search(self, vector: np.ndarray, k: int, options: SearchOptions | None = None) -> list[Hit]:
        """Top ``k`` ids by cosine similarity (bit tables: 1 - Hamming distance / dim).

        Args:
            vector: Float query vector ``(dim,)``.
            k: Number of hits.
            options: ``exact`` scans the whole table (no index); ``ef_search``
                sets ``hnsw.ef_search`` for this query (pgvector's default is 40,
                which also caps the number of hits).
        """
        _check_int("k", k, 1)
        opts = options or SearchOptions()
        literal = vector_literals(np.asarray(vector, dtype=np.float32).reshape(1, -1), self._column_base)[0]
        op = _DISTANCE[self._column_base]
        query = self._fmt(
            "SELECT id, embedding {op} %s::{ct} AS d FROM {t} ORDER BY embedding {op} %s::{ct} LIMIT %s",
            op=self._psycopg.sql.SQL(op), ct=self._psycopg.sql.SQL(self._ctype),
        )
        ef = opts.ef_search if opts.ef_search is not None else max(40, k)

        def run(conn: Any) -> list[tuple[str, float]]:
            with conn.transaction():
                if opts.exact:
                    conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
                else:
                    conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(min(ef, 1000)),))
                return list(conn.execute(query, (literal, literal, k)).fetchall())

        hits = self._db.run(run, f"searching {self.table}")
        if self._column_base == "bit":
            return [(str(i), 1.0 - float(d) / self.info.dim) for i, d in hits]
        return [(str(i), 1.0 - float(d)) for i, d in hits]

    def fetch(self, ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Stored vectors by id (all rows when ``ids`` is None), as float32 (bits as 0/1)."""
        if ids is None:
            query = self._fmt("SELECT id, embedding::text FROM {t}")
            rows = self._db.run(lambda c: c.execute(query).fetchall(), f"reading {self.table}")
        else:
            query = self._fmt("SELECT id, embedding::text FROM {t} WHERE id = ANY(%s)")
            rows = self._db.run(lambda c: c.execute(query, (list(ids),)).fetchall(), f"reading {self.table}")
        return {str(i): parse_vector_text(v) for i, v in rows}

    def count(self) -> int:
        return int(self._db.run(lambda c: c.execute(self._fmt("SELECT count(*) FROM {t}")).fetchone()[0], "counting"))

    def close(self) -> None:
        self._db.drop()

    def __enter__(self) -> PgVectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["PgVectorIndex", "PgVectorSink", "PgVectorSinkConfig", "parse_vector_text", "vector_literals"]
