"""Where embeddings go: one sink protocol for Parquet files, Postgres + pgvector and LanceDB.

A sink receives :class:`EmbeddingRow` values and stores them idempotently:
database sinks upsert by ``id``, the rolling Parquet sink names its files by
the first offset they hold. Replaying the same input after a crash therefore
never duplicates anything.

Life cycle (the same for every sink):

* :meth:`Sink.open` connects and creates the table or directory. Called once,
  before the first write (a Beam ``DoFn.setup``, an agent's start).
* :meth:`Sink.write` validates the rows and buffers them. When the buffer is
  full it stores a batch *before returning*, so a slow store slows the caller
  down instead of letting the buffer grow: that is the backpressure. Rows that
  can never be stored (wrong dimension, NaN values, another model) come back
  at once as :class:`DeadLetter` values with stage ``write``.
* :meth:`Sink.flush` stores whatever is buffered and returns when it is
  durable. Call it before committing input offsets (Kafka commit, Beam
  ``finish_bundle``): everything written before a flush survives a crash.
* :meth:`Sink.close` flushes and releases connections. Dead letters found by
  that last flush are logged; call ``flush()`` first to receive them.

Sinks are built from a URI, validated on construction::

    parquet:///data/embeddings?max_rows=50000&max_seconds=60
    postgresql://user:secret@db:5432/app?table=docs&batch_size=500
    pgvector+postgresql://user@db/app?table=docs&precision=float16
    lancedb:///data/lance?table=docs&index=hnsw

Example:
    >>> sink = open_sink("parquet:///tmp/out", dim=emb.dim, model=emb.model_id)  # doctest: +SKIP
    >>> dead = sink.write(rows_from_result(ids, emb.embed_records(texts), emb.model_id))  # doctest: +SKIP
    >>> dead += sink.flush()  # doctest: +SKIP
    >>> sink.close()  # doctest: +SKIP

A Beam DoFn wraps a sink in a few lines (open in ``setup``, flush in
``finish_bundle``)::

    class WriteEmbeddings(beam.DoFn):
        def __init__(self, uri, dim, model):
            self.uri, self.dim, self.model = uri, dim, model
        def setup(self):
            self.sink = open_sink(self.uri, self.dim, self.model)
        def process(self, row):
            for dead in self.sink.write([row]):
                yield beam.pvalue.TaggedOutput("dead_letters", dead)
        def finish_bundle(self):
            for dead in self.sink.flush():
                yield beam.pvalue.TaggedOutput(
                    "dead_letters", WindowedValue(dead, MAX_TIMESTAMP, [GlobalWindow()]))
        def teardown(self):
            self.sink.close()

An asyncio agent uses :class:`AsyncSink`, which runs the sink on a worker
thread behind a bounded queue::

    sink = AsyncSink(make_sink(uri, emb.dim, emb.model_id), max_pending_rows=4096)
    await sink.open()
    async for batch in stream.take(256, within=1.0):
        dead = await sink.write(rows_for(batch))   # waits while the store is behind
        ...
    dead = await sink.flush()                      # before committing offsets
    await sink.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import types
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import numpy as np

from sutra_embedder.core.config import PRECISIONS, Precision
from sutra_embedder.core.errors import ConfigError, SutraError
from sutra_embedder.core.records import EmbedResult

from .records import DeadLetter

log = logging.getLogger(__name__)

DEAD_LETTER_KINDS = (
    "dimension_mismatch",  # the vector's length differs from the table's dimension
    "invalid_vector",  # not a 1-D numeric vector, or NaN / infinite values
    "invalid_id",  # empty id, not a string, or holding NUL characters
    "invalid_metadata",  # metadata the store cannot hold (NUL characters for Postgres)
    "model_mismatch",  # the row was embedded by another model than the table's
    "rejected_by_store",  # the store refused this one row (found by splitting a failed batch)
)

SCHEMES = ("parquet", "postgresql", "postgres", "pgvector+postgresql", "pgvector", "lancedb", "lance")

EXTRA_HINTS = {
    "postgres": "pip install 'sutra-embedder[postgres]'",
    "lancedb": "pip install 'sutra-embedder[lancedb]'",
}


class SinkError(SutraError, RuntimeError):
    """A sink could not store rows (the store stayed unreachable, or refused the schema)."""


def missing_extra(extra: str, module: str) -> ImportError:
    """The ImportError raised when an optional adapter's package is not installed."""
    return ImportError(f"the {extra} sink needs the {module!r} package: {EXTRA_HINTS[extra]}")


# ------------------------------------------------------------------ rows
@dataclass(frozen=True, eq=False)
class EmbeddingRow:
    """One embedding to store.

    Attributes:
        id: Unique key of the document; database sinks upsert on it.
        vector: The embedder's float vector ``(dim,)``. Sinks convert it to
            their stored precision themselves (halfvec, bits, int8...).
        n_tokens: Tokens of the text, before truncation or chunking.
        n_chunks: Windows the text was embedded in (1 unless chunked).
        metadata: JSON-serialisable fields stored next to the vector.
        model: Model id that produced the vector; a row from another model
            than the sink's is refused (kind ``model_mismatch``). Empty skips
            the check.
        truncated: Whether the text was cut at the model's length.
        offset: Position of the input in its stream (a Kafka offset, a line
            number). The rolling Parquet sink names files by it and skips
            offsets it already committed; ``None`` lets the sink number rows.
        partition: The stream partition the offset belongs to (``"texts-3"``).
        source: Where the input came from, copied into dead letters.
    """

    id: str
    vector: np.ndarray
    n_tokens: int = 0
    n_chunks: int = 1
    metadata: Mapping[str, Any] = field(default_factory=dict)
    model: str = ""
    truncated: bool = False
    offset: int | None = None
    partition: str = ""
    source: str = ""


def rows_from_result(
    ids: Sequence[str],
    result: EmbedResult,
    model: str,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    offsets: Sequence[int] | None = None,
    partition: str = "",
) -> list[EmbeddingRow]:
    """Rows for the inputs of :meth:`Embedder.embed_records` that succeeded.

    Args:
        ids: Id of every input of the call (same order as the inputs).
        result: What ``embed_records`` returned for those inputs.
        model: The embedder's ``model_id``.
        metadata: Optional per-input metadata.
        offsets: Optional per-input stream offsets.
        partition: Stream partition of the offsets.

    Returns:
        One row per successful input, in input order. Failed inputs are in
        ``result.failures``; route them to dead letters separately.
    """
    rows = []
    for j, pos in enumerate(result.ok.tolist()):
        rows.append(
            EmbeddingRow(
                id=str(ids[pos]),
                vector=result.vectors[j],
                n_tokens=int(result.n_tokens[j]),
                n_chunks=int(result.n_chunks[j]),
                metadata=dict(metadata[pos]) if metadata is not None else {},
                model=model,
                truncated=bool(result.truncated[j]),
                offset=int(offsets[pos]) if offsets is not None else None,
                partition=partition,
            )
        )
    return rows


def metadata_json(metadata: Mapping[str, Any]) -> str | None:
    """Metadata as compact JSON (``None`` when empty); values JSON cannot hold become strings."""
    if not metadata:
        return None
    return json.dumps(dict(metadata), ensure_ascii=False, default=str, separators=(",", ":"))


def check_row(row: object, dim: int, model: str) -> tuple[str, str] | None:
    """Why ``row`` cannot be stored in a ``dim``-dimensional table of ``model``, or ``None``.

    Returns:
        ``(kind, message)`` with kind from :data:`DEAD_LETTER_KINDS`.
    """
    if not isinstance(row, EmbeddingRow):
        return "invalid_vector", f"expected an EmbeddingRow, got {type(row).__name__}"
    if not isinstance(row.id, str) or not row.id or "\x00" in row.id:
        return "invalid_id", f"id must be a non-empty string without NUL characters, got {row.id!r}"
    if row.model and row.model != model:
        return "model_mismatch", f"row was embedded by model {row.model!r} but this sink stores {model!r}"
    vec = row.vector
    if not isinstance(vec, np.ndarray) or vec.dtype.kind not in "fiu":
        return "invalid_vector", f"vector must be a numeric numpy array, got {type(vec).__name__}"
    if vec.ndim != 1:
        return "dimension_mismatch", f"vector must be 1-D, got shape {vec.shape}; the table stores {dim} dimensions"
    if vec.shape[0] != dim:
        return (
            "dimension_mismatch",
            f"vector has {vec.shape[0]} dimensions but the table stores {dim} (model {model!r})",
        )
    if vec.dtype.kind == "f" and not np.isfinite(vec).all():
        return "invalid_vector", "vector holds NaN or infinite values"
    return None


def dead_letter(row: object, kind: str, error: str, model: str) -> DeadLetter:
    """A write-stage dead letter for ``row``."""
    rid = getattr(row, "id", None)
    source = getattr(row, "source", "") or ""
    meta = getattr(row, "metadata", None)
    original = None
    if isinstance(meta, Mapping) and meta:
        original = metadata_json(meta)
    return DeadLetter(
        id=str(rid) if rid is not None else None,
        stage="write",
        kind=kind,
        error=error,
        model=model,
        source=source,
        original=original[:4096] if original else None,
    )


# ------------------------------------------------------------------ config
def _parse_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"expected true/false, got {raw!r}")


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None


def _parse_float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(name, f"expected a number, got {raw!r}") from None


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")


def _check_positive(name: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(name, f"must be a positive number, got {value!r}")


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(name, f"got {value!r}; choose one of {', '.join(choices)}")


T = TypeVar("T", bound="SinkConfig")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_table_name(name: str, qualified: bool = False) -> None:
    """Table names are plain identifiers (``schema.table`` where ``qualified``)."""
    parts = name.split(".") if qualified else [name]
    if len(parts) > 2 or not all(_IDENT.match(p) for p in parts):
        form = "name or schema.name " if qualified else ""
        raise ConfigError("table", f"{name!r} is not a valid table {form}(letters, digits, _; max 63 characters)")


@dataclass(frozen=True)
class SinkConfig:
    """Settings every sink shares.

    Attributes:
        dim: Vector dimension of the table (the embedder's ``dim``).
        model: Model id stored with the table; rows and searches must match it.
        precision: Stored precision; which values a sink supports is listed in
            its ``PRECISIONS``.
        max_seconds: Longest a buffered row waits before being stored, checked
            at each ``write`` call. ``None``: only size triggers and flushes.
    """

    dim: int
    model: str
    precision: Precision = "float32"
    max_seconds: float | None = None

    SCHEME: ClassVar[str] = ""
    PRECISIONS: ClassVar[tuple[str, ...]] = PRECISIONS
    # URI query parameters: field name -> parser of the raw string.
    URI_PARAMS: ClassVar[dict[str, Callable[[str, str], object]]] = {
        "precision": lambda _n, raw: raw,
        "max_seconds": _parse_float,
    }

    def __post_init__(self) -> None:
        _check_int("dim", self.dim, 1)
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("model", "must name the model whose vectors the sink stores")
        _check_choice("precision", self.precision, self.PRECISIONS)
        _check_positive("max_seconds", self.max_seconds, allow_none=True)

    @property
    def location(self) -> str:
        """Where the sink writes, safe to print (no secrets)."""
        raise NotImplementedError

    @classmethod
    def uri_params(cls) -> dict[str, Callable[[str, str], object]]:
        """Query parameters this sink's URI accepts, with their parsers (base ones included)."""
        return {**SinkConfig.URI_PARAMS, **cls.URI_PARAMS}

    def with_values(self: T, **values: Any) -> T:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **values)


def parse_query(
    cls: type[SinkConfig], query: str, known_extra: Sequence[str] = (), strict: bool = True
) -> tuple[dict[str, object], list[tuple[str, str]]]:
    """Split a URI query into typed config fields and the remaining raw pairs.

    Raises:
        ConfigError: A value does not parse, or (``strict``) a parameter is unknown.
    """
    parsers = cls.uri_params()
    values: dict[str, object] = {}
    rest: list[tuple[str, str]] = []
    for key, raw in parse_qsl(query, keep_blank_values=True):
        if key in parsers:
            values[key] = parsers[key](key, raw)
        elif not strict or key in known_extra:
            rest.append((key, raw))
        else:
            raise ConfigError(key, f"unknown {cls.SCHEME} sink parameter; valid: {', '.join(sorted(parsers))}")
    return values, rest


def split_uri(uri: str) -> tuple[str, str, str]:
    """``(scheme, path, query)`` of a sink URI; the scheme is lower-cased.

    ``parquet:///abs/dir`` gives ``/abs/dir``; ``parquet://rel/dir`` and
    ``parquet:rel/dir`` give ``rel/dir``.
    """
    if ":" not in uri:
        raise ConfigError("uri", f"{uri!r} has no scheme; use one of {', '.join(SCHEMES)}")
    scheme, rest = uri.split(":", 1)
    scheme = scheme.lower()
    if rest.startswith("//"):
        rest = rest[2:]
    path, _, query = rest.partition("?")
    return scheme, path, query


def sink_config_from_uri(uri: str, dim: int, model: str, **overrides: object) -> SinkConfig:
    """The validated config of the sink a URI names.

    Args:
        uri: ``parquet://``, ``postgresql://`` (or ``pgvector+postgresql://``)
            or ``lancedb://`` URI with sink parameters in the query string.
        dim: Vector dimension.
        model: Model id.
        **overrides: Config fields that take precedence over the URI's.

    Raises:
        ConfigError: Unknown scheme or parameter, or an invalid value.
    """
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme == "parquet":
        from .parquet_rolling import ParquetSinkConfig

        return ParquetSinkConfig.from_uri(uri, dim, model, **overrides)
    if scheme in ("postgresql", "postgres", "pgvector+postgresql", "pgvector"):
        from .pgvector import PgVectorSinkConfig

        return PgVectorSinkConfig.from_uri(uri, dim, model, **overrides)
    if scheme in ("lancedb", "lance"):
        from .lance import LanceSinkConfig

        return LanceSinkConfig.from_uri(uri, dim, model, **overrides)
    raise ConfigError("uri", f"unknown sink scheme {scheme!r} in {redact_uri(uri)!r}; use one of {', '.join(SCHEMES)}")


def make_sink(uri: str, dim: int, model: str, **overrides: object) -> Sink:
    """The sink a URI names, not yet opened (see :func:`sink_config_from_uri`)."""
    return sink_from_config(sink_config_from_uri(uri, dim, model, **overrides))


def sink_from_config(config: SinkConfig) -> Sink:
    """The sink for a config object."""
    from .lance import LanceSink, LanceSinkConfig
    from .parquet_rolling import ParquetSinkConfig, RollingParquetSink
    from .pgvector import PgVectorSink, PgVectorSinkConfig

    if isinstance(config, ParquetSinkConfig):
        return RollingParquetSink(config)
    if isinstance(config, PgVectorSinkConfig):
        return PgVectorSink(config)
    if isinstance(config, LanceSinkConfig):
        return LanceSink(config)
    raise ConfigError("config", f"no sink for {type(config).__name__}")


def open_sink(uri: str, dim: int, model: str, **overrides: object) -> Sink:
    """The sink a URI names, opened (tables and directories created).

    Example:
        >>> sink = open_sink("lancedb:///tmp/lance?table=docs", dim=384, model="minilm")  # doctest: +SKIP
    """
    sink = make_sink(uri, dim, model, **overrides)
    sink.open()
    return sink


# ------------------------------------------------------------------ secrets
def is_sink_uri(uri: str) -> bool:
    """Whether a string names a sink by one of :data:`SCHEMES` (``postgresql://``, ``lancedb://``...)."""
    scheme, sep, _ = uri.partition(":")
    return bool(sep) and scheme.lower() in SCHEMES


def redact_uri(uri: str) -> str:
    """A URI or libpq conninfo string with its password replaced by ``***``."""
    if "://" in uri:
        try:
            parts = urlsplit(uri)
        except ValueError:
            return re.sub(r":[^:@/]*@", ":***@", uri)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            if ":" in userinfo:
                user = userinfo.split(":", 1)[0]
                netloc = f"{user}:***@{hostport}"
        query = "&".join(
            f"{k}={'***' if k.lower() == 'password' else quote(v, safe='/,:')}"
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", uri, flags=re.IGNORECASE)


# ------------------------------------------------------------------ protocol
@dataclass
class SinkStats:
    """Counters of one sink. Names are fixed so that they can be exported as metrics.

    Attributes:
        rows_in: Rows passed to ``write``.
        rows_stored: Rows stored (upserted or committed to a file).
        rows_skipped: Rows dropped as replays of already committed offsets (Parquet).
        batches: Store calls (upsert statements, files).
        retries: Store attempts repeated after a lost connection.
        dead_letters: Dead letters by kind.
        store_seconds: Time spent storing batches.
    """

    rows_in: int = 0
    rows_stored: int = 0
    rows_skipped: int = 0
    batches: int = 0
    retries: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    store_seconds: float = 0.0

    def count_dead(self, letters: Sequence[DeadLetter]) -> None:
        for d in letters:
            self.dead_letters[d.kind] = self.dead_letters.get(d.kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@runtime_checkable
class Sink(Protocol):
    """What every sink does; see the module docstring for when each method is called."""

    stats: SinkStats

    def open(self) -> None:
        """Connect and create the table/directory; idempotent."""
        ...

    def write(self, rows: Sequence[EmbeddingRow]) -> list[DeadLetter]:
        """Buffer rows, storing full batches before returning; returns the rows refused."""
        ...

    def flush(self) -> list[DeadLetter]:
        """Store everything buffered; durable when this returns."""
        ...

    def close(self) -> None:
        """Flush and release connections."""
        ...


class BufferedSink:
    """Base of the sinks: validation, a bounded buffer, stats and the context manager.

    Subclasses implement :meth:`_open`, :meth:`_store` and :meth:`_close`.
    The buffer holds at most :attr:`batch_size` rows, keyed by id so that a
    batch never holds one id twice (the last write of an id wins, as it
    would in the store).
    """

    def __init__(self, config: SinkConfig, batch_size: int) -> None:
        self.config = config
        self.batch_size = batch_size
        self.stats = SinkStats()
        self._buffer: dict[str, EmbeddingRow] = {}
        self._oldest: float | None = None
        self._opened = False
        self._closed = False

    # -- hooks
    def _open(self) -> None:
        raise NotImplementedError

    def _store(self, rows: list[EmbeddingRow]) -> list[DeadLetter]:
        """Store one batch (unique ids); return the rows the store refused."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _check_extra(self, row: EmbeddingRow) -> tuple[str, str] | None:
        """Store-specific checks on a row that passed :func:`check_row`."""
        return None

    # -- protocol
    def open(self) -> None:
        if self._closed:
            raise SinkError(f"sink {self.config.location} is closed")
        if not self._opened:
            self._open()
            self._opened = True

    def write(self, rows: Sequence[EmbeddingRow]) -> list[DeadLetter]:
        """Validate and buffer ``rows``; store a batch whenever the buffer is full.

        Returns:
            Dead letters of the rows that can never be stored (and, for stores
            that find out only when storing, of earlier rows of the batch just stored).

        Raises:
            SinkError: The store stayed unreachable through every retry. Rows not
                yet flushed are not guaranteed: replay from the last committed offset.
        """
        if not self._opened:
            raise SinkError(f"sink {self.config.location} is not open: call open() first")
        dead: list[DeadLetter] = []
        for row in rows:
            self.stats.rows_in += 1
            problem = check_row(row, self.config.dim, self.config.model)
            if problem is None:
                problem = self._check_extra(row)
            if problem is not None:
                dead.append(dead_letter(row, problem[0], problem[1], self.config.model))
                continue
            if self._oldest is None:
                self._oldest = time.monotonic()
            self._buffer.pop(row.id, None)
            self._buffer[row.id] = row
            if len(self._buffer) >= self.batch_size:
                dead += self._drain()
        limit = self.config.max_seconds
        if limit is not None and self._oldest is not None and time.monotonic() - self._oldest >= limit:
            dead += self._drain()
        self.stats.count_dead(dead)
        return dead

    def flush(self) -> list[DeadLetter]:
        """Store everything buffered; the rows are durable when this returns."""
        if not self._opened:
            return []
        dead = self._drain()
        self.stats.count_dead(dead)
        return dead

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._opened and self.buffered:
                dead = self.flush()
                if dead:
                    log.warning("%d rows refused while closing sink %s: %s", len(dead),
                                self.config.location, _kinds(dead))
        finally:
            self._closed = True
            if self._opened:
                self._close()

    def abort(self) -> None:
        """Drop buffered rows and release resources, storing nothing more."""
        self._discard()
        self._closed = True
        if self._opened:
            self._close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def buffered(self) -> int:
        """Rows waiting in the buffer."""
        return len(self._buffer)

    def _discard(self) -> None:
        self._buffer.clear()
        self._oldest = None

    def _drain(self) -> list[DeadLetter]:
        if not self._buffer:
            return []
        rows = list(self._buffer.values())
        start = time.perf_counter()
        dead = self._store(rows)  # raises on failure: the rows stay buffered for a later retry
        self.stats.store_seconds += time.perf_counter() - start
        self.stats.batches += 1
        self.stats.rows_stored += len(rows) - len(dead)
        self._buffer.clear()
        self._oldest = None
        return dead

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def _kinds(dead: Sequence[DeadLetter]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dead:
        out[d.kind] = out.get(d.kind, 0) + 1
    return out


# ------------------------------------------------------------------ retry
@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between attempts: ``base * 2**n`` seconds, capped, with jitter.

    Attributes:
        attempts: Tries in all (1 = no retry).
        base_s: First delay.
        max_s: Longest delay.
        deadline_s: Give up once this much time has passed since the first try.
    """

    attempts: int = 10
    base_s: float = 0.1
    max_s: float = 5.0
    deadline_s: float = 120.0

    def __post_init__(self) -> None:
        _check_int("retries", self.attempts, 1)
        _check_positive("retry_base_s", self.base_s)
        _check_positive("retry_max_s", self.max_s)
        _check_positive("retry_deadline_s", self.deadline_s)

    def delay(self, attempt: int, rng: np.random.Generator | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        d = min(self.max_s, self.base_s * (2.0**attempt))
        jitter = (rng or np.random.default_rng()).uniform(0.5, 1.0)
        return float(d * jitter)


# ------------------------------------------------------------------ async
class AsyncSink:
    """Runs a blocking :class:`Sink` on a worker thread behind a bounded queue.

    ``await write(rows)`` returns as soon as the rows are queued, so the event
    loop keeps consuming and embedding while the store works. When
    ``max_pending_rows`` rows wait for the store, ``write`` waits too: memory
    stays bounded and a slow store slows the consumer (backpressure). Calls
    into the wrapped sink never overlap, so it needs no locking of its own.

    Dead letters found while storing come back from the next ``write`` or
    ``flush``, each exactly once. An error raised by the wrapped sink (the
    store unreachable after all retries) is raised by the next ``write`` or
    ``flush``.

    Args:
        sink: The blocking sink (not yet opened, or opened).
        max_pending_rows: Rows queued or being stored before ``write`` waits.
            A single larger batch is still accepted when nothing is pending.
        executor: Where the sink's calls run; default a private one-thread pool.
    """

    def __init__(self, sink: Sink, max_pending_rows: int = 10_000, executor: Executor | None = None) -> None:
        _check_int("max_pending_rows", max_pending_rows, 1)
        self.sink = sink
        self.max_pending_rows = max_pending_rows
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="sutra-sink")
        self._queue: asyncio.Queue[Sequence[EmbeddingRow] | None] | None = None
        self._space: asyncio.Condition | None = None
        self._call_lock: asyncio.Lock | None = None
        self._worker: asyncio.Task[None] | None = None
        self._pending = 0
        self._dead: list[DeadLetter] = []
        self._error: BaseException | None = None

    @property
    def pending_rows(self) -> int:
        """Rows queued or being stored right now."""
        return self._pending

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._call_lock is not None
        async with self._call_lock:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        """Open the wrapped sink (in the executor) and start the worker task."""
        if self._worker is not None:
            return
        self._queue = asyncio.Queue()
        self._space = asyncio.Condition()
        self._call_lock = asyncio.Lock()
        await self._call(self.sink.open)
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="sutra-sink-writer")

    async def _run(self) -> None:
        assert self._queue is not None and self._space is not None
        while True:
            rows = await self._queue.get()
            try:
                if rows is None:
                    return
                if self._error is None:
                    self._dead += await self._call(self.sink.write, rows)
            except Exception as exc:  # surfaced by the next write/flush
                self._error = exc
            finally:
                if rows is not None:
                    async with self._space:
                        self._pending -= len(rows)
                        self._space.notify_all()
                self._queue.task_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise SinkError(f"sink {self.sink!r} failed: {self._error}") from self._error

    def _take_dead(self) -> list[DeadLetter]:
        dead, self._dead = self._dead, []
        return dead

    async def write(self, rows: Sequence[EmbeddingRow]) -> list[DeadLetter]:
        """Queue rows for the store, waiting while ``max_pending_rows`` are pending.

        Returns:
            Dead letters found since the last call (possibly of earlier rows).
        """
        if self._queue is None or self._space is None:
            raise SinkError("AsyncSink is not open: await open() first")
        self._raise_error()
        rows = list(rows)
        if rows:
            async with self._space:
                await self._space.wait_for(
                    lambda: self._pending == 0 or self._pending + len(rows) <= self.max_pending_rows
                    or self._error is not None
                )
                self._raise_error()
                self._pending += len(rows)
            self._queue.put_nowait(rows)
        return self._take_dead()

    async def flush(self) -> list[DeadLetter]:
        """Wait for the queue to drain, then flush the sink; everything written is durable after it."""
        if self._queue is None:
            return []
        await self._queue.join()
        self._raise_error()
        dead = await self._call(self.sink.flush)
        return self._take_dead() + list(dead)

    async def close(self) -> None:
        """Flush, stop the worker and close the sink."""
        try:
            if self._queue is not None and self._worker is not None:
                with contextlib.suppress(SinkError):
                    await self.flush()
                self._queue.put_nowait(None)
                await self._worker
                await self._call(self.sink.close)
        finally:
            self._worker = None
            if self._own_executor:
                self._executor.shutdown(wait=False)

    async def __aenter__(self) -> AsyncSink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ------------------------------------------------------------------ search
@dataclass(frozen=True)
class IndexInfo:
    """What an index holds, read from the store (table comment, schema or file metadata).

    Attributes:
        model: Model id the vectors were embedded with; queries must use it.
        dim: Vector dimension.
        precision: Stored precision.
        location: Where the index is, safe to print.
        rows: Rows in the index.
    """

    model: str
    dim: int
    precision: str
    location: str
    rows: int


@dataclass(frozen=True)
class SearchOptions:
    """How hard an approximate search works; each store reads the fields it knows.

    Attributes:
        exact: Scan every vector instead of using the ANN index.
        ef_search: HNSW candidate list size (pgvector ``hnsw.ef_search``, LanceDB ``ef``).
        nprobes: IVF partitions to search (LanceDB).
        refine_factor: Re-rank ``k * refine_factor`` candidates with exact
            distances (LanceDB; recovers PQ recall).
    """

    exact: bool = False
    ef_search: int | None = None
    nprobes: int | None = None
    refine_factor: int | None = None

    def __post_init__(self) -> None:
        for name in ("ef_search", "nprobes", "refine_factor"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 1)


Hit = tuple[str, float]


@runtime_checkable
class VectorIndex(Protocol):
    """A stored index opened for reading."""

    info: IndexInfo

    def search(self, vector: np.ndarray, k: int, options: SearchOptions | None = None) -> list[Hit]:
        """The ``k`` nearest ids by cosine similarity (higher is closer), best first."""
        ...

    def close(self) -> None: ...


def open_index(uri: str) -> VectorIndex:
    """Open a stored index for search; the model id and dimension come from the store.

    Raises:
        ConfigError: Unknown scheme, or no index at that location.
    """
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme == "parquet":
        from .parquet_rolling import ParquetIndex

        return ParquetIndex.from_uri(uri)
    if scheme in ("postgresql", "postgres", "pgvector+postgresql", "pgvector"):
        from .pgvector import PgVectorIndex

        return PgVectorIndex.from_uri(uri)
    if scheme in ("lancedb", "lance"):
        from .lance import LanceIndex

        return LanceIndex.from_uri(uri)
    raise ConfigError(
        "index", f"unknown index scheme {scheme!r} in {redact_uri(uri)!r}; use one of {', '.join(SCHEMES)}"
    )


def cosine_top_k(matrix: np.ndarray, ids: Sequence[str], query: np.ndarray, k: int) -> list[Hit]:
    """Exact top-k by cosine similarity over an in-memory matrix (ties broken by position)."""
    mat = np.asarray(matrix, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    norms = np.linalg.norm(mat, axis=1) * max(float(np.linalg.norm(q)), 1e-12)
    scores = (mat @ q) / np.maximum(norms, 1e-12)
    k = min(k, len(scores))
    order = np.argsort(-scores, kind="stable")[:k]
    return [(str(ids[i]), float(scores[i])) for i in order]


__all__ = [
    "DEAD_LETTER_KINDS",
    "AsyncSink",
    "BufferedSink",
    "EmbeddingRow",
    "Hit",
    "IndexInfo",
    "RetryPolicy",
    "Sink",
    "SinkConfig",
    "SinkError",
    "SearchOptions",
    "SinkStats",
    "VectorIndex",
    "check_row",
    "cosine_top_k",
    "dead_letter",
    "make_sink",
    "metadata_json",
    "open_index",
    "open_sink",
    "redact_uri",
    "rows_from_result",
    "sink_config_from_uri",
    "sink_from_config",
]
