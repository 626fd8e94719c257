"""Kafka message contract, a kafka-python sink and a bounded offset-range source.

The message contract
--------------------

**Input** (the topic a pipeline reads):

* value: UTF-8 text, or a JSON object ``{"id": ..., "text": ..., <metadata>}``
  (with ``value_format="auto"``, a value whose first non-blank byte is ``{``
  is read as JSON, anything else as plain text);
* key: the record id when the JSON value has no ``id``; without either, the
  id is ``"<topic>/<partition>/<offset>"``.

Poison messages never raise: an empty value or tombstone (kind ``empty``), a
value over ``max_value_bytes`` (``too_large``), invalid UTF-8
(``invalid_utf8``), a JSON value that does not parse or is not an object
(``malformed_json``) and a JSON object without text (``missing_text``) come
out of :func:`decode_message` as a :class:`DeadLetter` of stage ``read``.

**Output** (one message per embedded record; key = the record id):

* ``json`` (default): value ``{"id", "vector": [...], "model", "dim",
  "precision", "n_tokens", "n_chunks", "metadata"}``;
* ``binary``: value = the raw vector, little-endian, in the chosen precision
  (float32, float16, int8, uint8, or packed bits for binary/ubinary) and the
  facts in headers: ``sutra-dim``, ``sutra-model``, ``sutra-precision``,
  ``sutra-n-tokens``, ``sutra-n-chunks`` and ``sutra-metadata`` (JSON, only when
  there is metadata).

Every output message carries the header ``content-type``
(``application/json`` or ``application/x-sutra-vector``) so that
:func:`decode_embedding` reads either format.

**Dead letters** (the dead-letter topic; key = the record id when known):
a JSON object with the fields of :class:`DeadLetter` (``id``, ``stage``,
``kind``, ``error``, ``model``, ``source``, ``original`` and
``original_encoding``: ``text``, or ``base64`` when the original bytes are not
UTF-8; at most 4096 characters of it are kept) plus ``topic``, ``partition``
and ``offset`` of the input message.

The pure functions (:func:`decode_message`, :func:`encode_embedding`,
:func:`decode_embedding`, :func:`encode_dead_letter`) need only numpy;
:class:`KafkaEmbeddingSink` and :func:`read_offset_range` import kafka-python
when they are used.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import Any, Literal, get_args

import numpy as np

from sutra_embedder.core.config import PRECISIONS, Precision
from sutra_embedder.core.errors import ConfigError, SutraError
from sutra_embedder.core.quantization import CalibrationRanges, bytes_per_vector, quantize_embeddings
from sutra_embedder.core.records import EmbedResult

from .records import DeadLetter, InputRecord, describe_original

log = logging.getLogger(__name__)

KAFKA_EXTRA = "pip install 'sutra-embedder[kafka]'"

ValueFormat = Literal["auto", "json", "text"]
OutputFormat = Literal["json", "binary"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
IsolationLevel = Literal["read_committed", "read_uncommitted"]

VALUE_FORMATS: tuple[str, ...] = get_args(ValueFormat)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
SECURITY_PROTOCOLS: tuple[str, ...] = get_args(SecurityProtocol)
SASL_MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)
ISOLATION_LEVELS: tuple[str, ...] = get_args(IsolationLevel)

CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_VECTOR = "application/x-sutra-vector"
HEADER_CONTENT_TYPE = "content-type"
HEADER_DIM = "sutra-dim"
HEADER_MODEL = "sutra-model"
HEADER_PRECISION = "sutra-precision"
HEADER_N_TOKENS = "sutra-n-tokens"
HEADER_N_CHUNKS = "sutra-n-chunks"
HEADER_METADATA = "sutra-metadata"

DEFAULT_MAX_VALUE_BYTES = 4 * 1024 * 1024
REDACTED = "***"

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_VECTOR_DTYPES: dict[str, str] = {
    "float32": "<f4",
    "float16": "<f2",
    "int8": "i1",
    "uint8": "u1",
    "binary": "i1",
    "ubinary": "u1",
}

Headers = list[tuple[str, bytes]]


class KafkaConnectorError(SutraError, RuntimeError):
    """A Kafka client operation failed (delivery, timeout, unreachable broker)."""


def require_kafka_python() -> ModuleType:
    """Import kafka-python, or raise an ImportError naming the extra to install."""
    try:
        import kafka
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the Kafka connector needs kafka-python: {KAFKA_EXTRA}"
        ) from exc
    return kafka


def check_topic(name: str, value: object) -> None:
    """Raise ConfigError naming ``name`` unless ``value`` is a legal Kafka topic name."""
    if not isinstance(value, str) or not _TOPIC_RE.match(value) or value in (".", ".."):
        raise ConfigError(
            name, f"{value!r} is not a Kafka topic name (1-249 of letters, digits, '.', '_', '-')"
        )


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(name, f"got {value!r}; choose one of {', '.join(choices)}")


# ---------------------------------------------------------------- connection
@dataclass(frozen=True)
class KafkaConnection:
    """How to reach a Kafka cluster; shared by the sink, the source and the worker.

    The SASL password never appears in ``repr()``, ``str()`` or logs.

    Attributes:
        bootstrap_servers: Comma-separated ``host:port`` list.
        security_protocol: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
        sasl_mechanism: ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512`` (SASL only).
        sasl_username: SASL user name.
        sasl_password: SASL password (redacted when printed).
        ssl_cafile: CA bundle to verify the brokers (SSL protocols).
        client_id: Client id reported to the brokers.
    """

    bootstrap_servers: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    client_id: str = "sutra-embedder"

    def __post_init__(self) -> None:
        servers = self.bootstrap_servers
        if not isinstance(servers, str) or not servers.strip():
            raise ConfigError("bootstrap_servers", "must be a non-empty 'host:port[,host:port]' list")
        for part in servers.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError("bootstrap_servers", f"{part.strip()!r} is not host:port")
        _choice("security_protocol", self.security_protocol, SECURITY_PROTOCOLS)
        if self.security_protocol.startswith("SASL"):
            _choice("sasl_mechanism", self.sasl_mechanism, SASL_MECHANISMS)
            if not self.sasl_username:
                raise ConfigError("sasl_username", f"required with {self.security_protocol}")
            if not self.sasl_password:
                raise ConfigError("sasl_password", f"required with {self.security_protocol}")
        elif self.sasl_mechanism is not None:
            raise ConfigError(
                "sasl_mechanism", f"only used with SASL_PLAINTEXT or SASL_SSL, not {self.security_protocol}"
            )

    def __repr__(self) -> str:
        password = REDACTED if self.sasl_password else None
        return (
            f"KafkaConnection(bootstrap_servers={self.bootstrap_servers!r}, "
            f"security_protocol={self.security_protocol!r}, sasl_mechanism={self.sasl_mechanism!r}, "
            f"sasl_username={self.sasl_username!r}, sasl_password={password!r}, "
            f"ssl_cafile={self.ssl_cafile!r}, client_id={self.client_id!r})"
        )

    __str__ = __repr__

    def kafka_python_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's producer, consumer and admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",")],
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        if self.ssl_cafile:
            kwargs["ssl_cafile"] = self.ssl_cafile
        return kwargs


def as_connection(bootstrap: str | KafkaConnection) -> KafkaConnection:
    """Accept either a ``host:port`` string or a full :class:`KafkaConnection`."""
    return bootstrap if isinstance(bootstrap, KafkaConnection) else KafkaConnection(bootstrap)


# ------------------------------------------------------------------- input
@dataclass(frozen=True)
class DecodeOptions:
    """How input messages are read.

    Attributes:
        value_format: ``auto`` (JSON when the value starts with ``{``, else
            text), ``json`` (every value must be a JSON object) or ``text``.
        id_field: JSON field holding the record id.
        text_field: JSON field holding the text.
        max_value_bytes: Larger values become dead letters of kind ``too_large``
            without being decoded.
    """

    value_format: ValueFormat = "auto"
    id_field: str = "id"
    text_field: str = "text"
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES

    def __post_init__(self) -> None:
        _choice("value_format", self.value_format, VALUE_FORMATS)
        for name in ("id_field", "text_field"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(name, "must be a non-empty field name")
        if self.id_field == self.text_field:
            raise ConfigError("text_field", f"must differ from id_field ({self.id_field!r})")
        _positive_int("max_value_bytes", self.max_value_bytes)


DEFAULT_DECODE = DecodeOptions()


def source_of(topic: str, partition: int, offset: int) -> str:
    """The ``source`` string of a Kafka message: ``"<topic>/<partition>/<offset>"``."""
    return f"{topic}/{partition}/{offset}"


def parse_source(source: str) -> tuple[str, int, int] | None:
    """Split a ``"<topic>/<partition>/<offset>"`` source; ``None`` for other sources."""
    parts = source.rsplit("/", 2)
    if len(parts) != 3 or not _TOPIC_RE.match(parts[0]):
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        return None


def _key_id(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _original(value: bytes) -> tuple[str | None, str]:
    """The original value for a dead letter: text when it is UTF-8, else base64."""
    head = value[: 4 * 4096]
    try:
        return describe_original(head.decode("utf-8"))
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3 and len(value) > len(head):
            # The cut fell inside a multi-byte character of valid UTF-8.
            return describe_original(head[: exc.start].decode("utf-8"))
        return describe_original(head)


def decode_message(
    key: bytes | None,
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    options: DecodeOptions = DEFAULT_DECODE,
) -> InputRecord | DeadLetter:
    """Turn one Kafka message into a record to embed, or a dead letter.

    Never raises for bad content; see the module documentation for the contract.

    Args:
        key: Message key (the id when the value carries none).
        value: Message value.
        topic: Topic the message was read from.
        partition: Its partition.
        offset: Its offset.
        options: How to read the value.

    Returns:
        An :class:`InputRecord` whose ``source`` is ``topic/partition/offset``,
        or a :class:`DeadLetter` of stage ``read``.
    """
    source = source_of(topic, partition, offset)
    rid = _key_id(key) or source

    def dead(kind: str, error: str, raw: bytes | None, record_id: str | None = None) -> DeadLetter:
        original, encoding = _original(raw) if raw else (None, "none")
        return DeadLetter(record_id or rid, "read", kind, error, "", source, original, encoding)

    if value is None or len(value) == 0:
        return dead("empty", "message value is empty (or a tombstone)", None)
    raw = bytes(value)
    if len(raw) > options.max_value_bytes:
        return dead(
            "too_large",
            f"message value has {len(raw)} bytes, over max_value_bytes={options.max_value_bytes}",
            raw,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return dead("invalid_utf8", f"message value is not valid UTF-8: {exc}", raw)

    as_json = options.value_format == "json" or (
        options.value_format == "auto" and text.lstrip().startswith("{")
    )
    if not as_json:
        return InputRecord(rid, text, {}, source)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return dead("malformed_json", f"message value is not valid JSON: {exc}", raw)
    if not isinstance(obj, dict):
        return dead("malformed_json", f"expected a JSON object, got {type(obj).__name__}", raw)
    json_id = obj.get(options.id_field)
    if json_id is not None and not isinstance(json_id, (dict, list)):
        rid = str(json_id)
    text_value = obj.get(options.text_field)
    if text_value is None:
        return dead("missing_text", f"JSON object has no {options.text_field!r} field", raw, rid)
    metadata = {k: v for k, v in obj.items() if k not in (options.id_field, options.text_field)}
    return InputRecord(rid, text_value, metadata, source)


# ------------------------------------------------------------------ output
@dataclass(frozen=True)
class KafkaMessage:
    """A message ready to produce.

    Attributes:
        key: Message key.
        value: Message value.
        headers: Kafka headers as ``(name, bytes)`` pairs.
    """

    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True)
class EmbeddingMessage:
    """An output message read back with :func:`decode_embedding`.

    Attributes:
        id: The record id.
        vector: The vector in its stored precision (packed bits for binary/ubinary).
        model: Model id.
        dim: Dimensions of the embedding (before bit packing).
        precision: Stored precision.
        n_tokens: Tokens of the text (special tokens included).
        n_chunks: Windows embedded for the text.
        metadata: Metadata of the input record.
    """

    id: str
    vector: np.ndarray
    model: str
    dim: int
    precision: str
    n_tokens: int | None
    n_chunks: int
    metadata: dict[str, Any]


def encode_embedding(
    record_id: str,
    vector: np.ndarray,
    *,
    model: str,
    n_tokens: int | None = None,
    n_chunks: int = 1,
    metadata: Mapping[str, Any] | None = None,
    output_format: OutputFormat = "json",
    precision: Precision = "float32",
    calibration: CalibrationRanges | None = None,
) -> KafkaMessage:
    """Encode one embedding as an output message (see the module documentation).

    Args:
        record_id: The record id; becomes the key.
        vector: The float vector ``(dim,)``.
        model: Model id.
        n_tokens: Tokens of the text.
        n_chunks: Windows embedded for the text.
        metadata: Metadata of the input record (JSON-serialisable).
        output_format: ``json`` or ``binary``.
        precision: Stored precision; int8/uint8 need ``calibration``.
        calibration: Ranges for int8/uint8.

    Returns:
        The message to produce.
    """
    _choice("output_format", output_format, OUTPUT_FORMATS)
    _choice("precision", precision, PRECISIONS)
    vec = np.asarray(vector)
    if vec.ndim != 1:
        raise ValueError(f"vector must be 1-D, got shape {vec.shape}")
    dim = int(vec.shape[0])
    stored = quantize_embeddings(vec[None, :], precision, calibration)[0]
    meta = dict(metadata or {})
    key = record_id.encode("utf-8")
    if output_format == "json":
        values = stored.astype(np.float32).tolist() if precision == "float16" else stored.tolist()
        body = {
            "id": record_id,
            "vector": values,
            "model": model,
            "dim": dim,
            "precision": precision,
            "n_tokens": n_tokens,
            "n_chunks": int(n_chunks),
            "metadata": meta,
        }
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)
        return KafkaMessage(key, payload.encode("utf-8"), [(HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON.encode())])
    raw = np.ascontiguousarray(stored, dtype=np.dtype(_VECTOR_DTYPES[precision])).tobytes()
    headers: Headers = [
        (HEADER_CONTENT_TYPE, CONTENT_TYPE_VECTOR.encode()),
        (HEADER_DIM, str(dim).encode()),
        (HEADER_MODEL, model.encode("utf-8")),
        (HEADER_PRECISION, precision.encode()),
        (HEADER_N_CHUNKS, str(int(n_chunks)).encode()),
    ]
    if n_tokens is not None:
        headers.append((HEADER_N_TOKENS, str(int(n_tokens)).encode()))
    if meta:
        headers.append(
            (HEADER_METADATA, json.dumps(meta, ensure_ascii=False, default=str).encode("utf-8"))
        )
    return KafkaMessage(key, raw, headers)


def _header_map(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None) -> dict[str, bytes]:
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k).lower(): (v or b"") for k, v in items}


def decode_embedding(
    key: bytes | None,
    value: bytes,
    headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None = None,
) -> EmbeddingMessage:
    """Read an output message written by :func:`encode_embedding` (either format).

    Args:
        key: Message key.
        value: Message value.
        headers: Message headers.

    Returns:
        The decoded embedding.

    Raises:
        ValueError: The message is not an embedding in this contract.
    """
    hmap = _header_map(headers)
    content_type = hmap.get(HEADER_CONTENT_TYPE, b"").decode("utf-8", "replace")
    if content_type == CONTENT_TYPE_VECTOR or (not content_type and HEADER_DIM in hmap):
        try:
            dim = int(hmap[HEADER_DIM])
            precision = hmap[HEADER_PRECISION].decode()
            model = hmap.get(HEADER_MODEL, b"").decode("utf-8")
        except (KeyError, ValueError) as exc:
            raise ValueError(f"binary embedding message lacks a valid header: {exc}") from None
        if precision not in _VECTOR_DTYPES:
            raise ValueError(f"unknown precision header {precision!r}")
        width = bytes_per_vector(dim, precision)  # type: ignore[arg-type]
        dtype = np.dtype(_VECTOR_DTYPES[precision])
        if len(value) != width:
            raise ValueError(f"value has {len(value)} bytes; {dim}-d {precision} needs {width}")
        vector = np.frombuffer(value, dtype=dtype).copy()
        n_tokens = int(hmap[HEADER_N_TOKENS]) if HEADER_N_TOKENS in hmap else None
        meta = json.loads(hmap[HEADER_METADATA]) if HEADER_METADATA in hmap else {}
        rid = _key_id(key) or ""
        return EmbeddingMessage(rid, vector, model, dim, precision, n_tokens,
                                int(hmap.get(HEADER_N_CHUNKS, b"1")), meta)
    try:
        body = json.loads(value)
        precision = body.get("precision", "float32")
        wire = "float32" if precision == "float16" else precision
        vector = np.asarray(body["vector"], dtype=np.dtype(_VECTOR_DTYPES[wire]))
        if precision == "float16":
            vector = vector.astype(np.float16)
        return EmbeddingMessage(
            str(body["id"]), vector, str(body.get("model", "")), int(body["dim"]), precision,
            body.get("n_tokens"), int(body.get("n_chunks", 1)), dict(body.get("metadata") or {}),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a JSON embedding message: {exc}") from None


def encode_dead_letter(letter: DeadLetter) -> KafkaMessage:
    """Encode a dead letter for the dead-letter topic.

    The value is the dead letter's JSON plus ``topic``, ``partition`` and
    ``offset`` of the input message (``null`` when the source is not Kafka).
    """
    body: dict[str, Any] = dict(letter.__dict__)
    where = parse_source(letter.source)
    body["topic"], body["partition"], body["offset"] = where if where else (None, None, None)
    payload = json.dumps(body, ensure_ascii=False, default=str).encode("utf-8")
    key = letter.id.encode("utf-8") if letter.id else None
    return KafkaMessage(key, payload, [(HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON.encode())])


def embedding_messages(
    records: Sequence[InputRecord],
    result: EmbedResult,
    *,
    model: str,
    output_format: OutputFormat = "json",
    precision: Precision = "float32",
    calibration: CalibrationRanges | None = None,
) -> tuple[list[KafkaMessage], list[DeadLetter]]:
    """Split an :class:`EmbedResult` over ``records`` into output messages and dead letters.

    Returns:
        The output messages (input order) and the dead letters of the failures.
    """
    messages = [
        encode_embedding(
            records[int(i)].id, result.vectors[row], model=model, n_tokens=int(result.n_tokens[row]),
            n_chunks=int(result.n_chunks[row]), metadata=records[int(i)].metadata,
            output_format=output_format, precision=precision, calibration=calibration,
        )
        for row, i in enumerate(result.ok.tolist())
    ]
    letters = [failure_letter(records[f.index], f.kind, f.message, model) for f in result.failures]
    return messages, letters


def failure_letter(record: InputRecord, kind: str, message: str, model: str) -> DeadLetter:
    """The dead letter of a record the embedder rejected (stage ``validate`` or ``embed``)."""
    original, encoding = describe_original(record.text)
    stage = "embed" if kind == "inference_error" else "validate"
    return DeadLetter(record.id, stage, kind, message, model, record.source, original, encoding)


# -------------------------------------------------------------------- sink
@dataclass(frozen=True)
class KafkaSinkConfig:
    """Where and how :class:`KafkaEmbeddingSink` writes.

    Attributes:
        topic: Output topic.
        dead_letter_topic: Topic for dead letters; ``None`` logs and counts them only.
        output_format: ``json`` or ``binary`` (see the module documentation).
        precision: Stored vector precision.
        acks: ``"all"``, ``1`` or ``0``.
        linger_ms: How long the producer waits to fill a batch.
        compression_type: ``None``, ``gzip``, ``snappy``, ``lz4`` or ``zstd``.
        max_request_size: Largest request the producer sends, in bytes.
        enable_idempotence: No duplicates from producer retries.
        delivery_timeout_ms: Give up on a message after this long.
    """

    topic: str
    dead_letter_topic: str | None = None
    output_format: OutputFormat = "json"
    precision: Precision = "float32"
    acks: Literal["all", 0, 1] = "all"
    linger_ms: int = 5
    compression_type: str | None = None
    max_request_size: int = 4 * 1024 * 1024
    enable_idempotence: bool = True
    delivery_timeout_ms: int = 120_000

    def __post_init__(self) -> None:
        check_topic("topic", self.topic)
        if self.dead_letter_topic is not None:
            check_topic("dead_letter_topic", self.dead_letter_topic)
            if self.dead_letter_topic == self.topic:
                raise ConfigError("dead_letter_topic", "must differ from the output topic")
        _choice("output_format", self.output_format, OUTPUT_FORMATS)
        _choice("precision", self.precision, PRECISIONS)
        if self.acks not in ("all", 0, 1):
            raise ConfigError("acks", f"got {self.acks!r}; choose one of 'all', 1, 0")
        _positive_int("linger_ms", self.linger_ms, 0)
        if self.compression_type not in (None, "gzip", "snappy", "lz4", "zstd"):
            raise ConfigError(
                "compression_type", f"got {self.compression_type!r}; choose None, gzip, snappy, lz4, zstd"
            )
        _positive_int("max_request_size", self.max_request_size, 1024)
        _positive_int("delivery_timeout_ms", self.delivery_timeout_ms)
        if self.enable_idempotence and self.acks != "all":
            raise ConfigError("acks", "must be 'all' when enable_idempotence is on")


@dataclass
class SinkCounters:
    """What a sink has sent since it was created."""

    embeddings: int = 0
    dead_letters: int = 0
    dead_letters_by_kind: dict[str, int] = field(default_factory=dict)


class KafkaEmbeddingSink:
    """Produces embeddings (and dead letters) with kafka-python.

    Messages are keyed by record id, so a compacted output topic keeps one
    vector per id and a replay after a crash overwrites rather than adds.
    :meth:`flush` waits for every delivery and raises if any failed: call it
    before committing the input offsets.

    Args:
        connection: The cluster (or a ``host:port`` string).
        config: Topics and format.
        model: Model id written into every message.
        calibration: Ranges for int8/uint8 precision.
        producer: An existing ``kafka.KafkaProducer`` to use (not closed by the sink).
        producer_overrides: Extra kafka-python producer settings.

    Example:
        >>> sink = KafkaEmbeddingSink("127.0.0.1:9092", KafkaSinkConfig("vectors"),
        ...                           model=emb.model_id)                 # doctest: +SKIP
        >>> sink.write(records, emb.embed_records([r.text for r in records]))  # doctest: +SKIP
        >>> sink.flush()                                                   # doctest: +SKIP
    """

    def __init__(
        self,
        connection: str | KafkaConnection,
        config: KafkaSinkConfig,
        *,
        model: str,
        calibration: CalibrationRanges | None = None,
        producer: Any = None,
        producer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.connection = as_connection(connection)
        self.config = config
        self.model = model
        self.calibration = calibration
        if config.precision in ("int8", "uint8") and calibration is None:
            raise ConfigError("calibration", f"precision {config.precision} needs calibration ranges")
        self.counters = SinkCounters()
        self._pending: list[Any] = []
        self._owns_producer = producer is None
        if producer is None:
            kafka = require_kafka_python()
            settings: dict[str, Any] = {
                **self.connection.kafka_python_kwargs(),
                "acks": config.acks,
                "linger_ms": config.linger_ms,
                "compression_type": config.compression_type,
                "max_request_size": config.max_request_size,
                "enable_idempotence": config.enable_idempotence,
                "delivery_timeout_ms": config.delivery_timeout_ms,
                "reconnect_backoff_max_ms": 1000,
            }
            settings.update(producer_overrides or {})
            producer = kafka.KafkaProducer(**settings)
        self._producer = producer

    def __repr__(self) -> str:
        return f"KafkaEmbeddingSink({self.connection!r}, {self.config!r}, model={self.model!r})"

    def produce(self, topic: str, messages: Iterable[KafkaMessage]) -> int:
        """Send messages to ``topic`` without waiting; :meth:`flush` waits.

        Returns:
            How many messages were handed to the producer.
        """
        count = 0
        for msg in messages:
            future = self._producer.send(topic, key=msg.key, value=msg.value, headers=msg.headers or None)
            self._pending.append(future)
            count += 1
        return count

    def write(self, records: Sequence[InputRecord], result: EmbedResult) -> tuple[int, int]:
        """Send the embeddings of ``records`` and the dead letters of their failures.

        Args:
            records: The records that were embedded, in the order given to the embedder.
            result: The embedder's result for ``[r.text for r in records]``.

        Returns:
            ``(embeddings sent, dead letters)``.
        """
        messages, letters = embedding_messages(
            records, result, model=self.model, output_format=self.config.output_format,
            precision=self.config.precision, calibration=self.calibration,
        )
        self.counters.embeddings += self.produce(self.config.topic, messages)
        self.send_dead_letters(letters)
        return len(messages), len(letters)

    def send_dead_letters(self, letters: Iterable[DeadLetter]) -> int:
        """Send dead letters to the dead-letter topic (or log them when there is none)."""
        count = 0
        for letter in letters:
            count += 1
            self.counters.dead_letters += 1
            by_kind = self.counters.dead_letters_by_kind
            by_kind[letter.kind] = by_kind.get(letter.kind, 0) + 1
            if self.config.dead_letter_topic is None:
                log.warning("dead letter %s (%s/%s): %s", letter.id, letter.stage, letter.kind, letter.error)
                continue
            self.produce(self.config.dead_letter_topic, [encode_dead_letter(letter)])
        return count

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every message sent so far is acknowledged.

        Raises:
            KafkaConnectorError: A message could not be delivered (its error is chained).
        """
        pending, self._pending = self._pending, []
        self._producer.flush(timeout=timeout_s)
        failures = []
        for future in pending:
            if not future.is_done:
                failures.append(KafkaConnectorError("delivery still pending after flush"))
            elif future.failed():
                failures.append(future.exception)
        if failures:
            raise KafkaConnectorError(
                f"{len(failures)} of {len(pending)} messages were not delivered; first: {failures[0]!r}"
            ) from (failures[0] if isinstance(failures[0], BaseException) else None)

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Flush and close the producer (when the sink created it)."""
        try:
            self.flush(timeout_s)
        finally:
            if self._owns_producer:
                self._producer.close(timeout=timeout_s)

    def __enter__(self) -> KafkaEmbeddingSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        elif self._owns_producer:
            self._producer.close(timeout=5)


# ------------------------------------------------------------------ source
def read_offset_range(
    bootstrap: str | KafkaConnection,
    topic: str,
    start_offsets: Mapping[int, int],
    end_offsets: Mapping[int, int] | None = None,
    *,
    options: DecodeOptions = DEFAULT_DECODE,
    isolation_level: IsolationLevel = "read_committed",
    idle_timeout_s: float = 30.0,
    consumer_overrides: Mapping[str, Any] | None = None,
) -> Iterator[InputRecord | DeadLetter]:
    """Read a bounded range of offsets (a backfill), without a consumer group.

    Each partition is read from ``start_offsets[p]`` (inclusive) to
    ``end_offsets[p]`` (exclusive; default: the partition's end when the call
    starts). Nothing is committed, so the same range can be read again.
    Messages come out decoded by :func:`decode_message`, in offset order
    within each partition.

    Args:
        bootstrap: ``host:port`` list or a :class:`KafkaConnection`.
        topic: Topic to read.
        start_offsets: First offset per partition.
        end_offsets: Offset after the last one per partition.
        options: How to decode values.
        isolation_level: ``read_committed`` skips aborted transactional messages.
        idle_timeout_s: Raise if no progress is made for this long.
        consumer_overrides: Extra kafka-python consumer settings.

    Yields:
        Records and dead letters.

    Raises:
        KafkaConnectorError: The range could not be read within the timeout, or
            a start offset is out of the partition's range.
    """
    check_topic("topic", topic)
    _choice("isolation_level", isolation_level, ISOLATION_LEVELS)
    if not start_offsets:
        return
    for p, off in start_offsets.items():
        _positive_int(f"start_offsets[{p}]", off, 0)
    kafka = require_kafka_python()
    conn = as_connection(bootstrap)
    settings: dict[str, Any] = {
        **conn.kafka_python_kwargs(),
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "none",
        "isolation_level": isolation_level,
        "max_partition_fetch_bytes": max(options.max_value_bytes + 65536, 1024 * 1024),
        "reconnect_backoff_max_ms": 1000,
    }
    settings.update(consumer_overrides or {})
    consumer = kafka.KafkaConsumer(**settings)
    try:
        tps = [kafka.TopicPartition(topic, p) for p in sorted(start_offsets)]
        consumer.assign(tps)
        if end_offsets is None:
            ends = {tp.partition: int(off) for tp, off in consumer.end_offsets(tps).items()}
        else:
            ends = {p: int(end_offsets[p]) for p in start_offsets}
        firsts = {tp.partition: int(off) for tp, off in consumer.beginning_offsets(tps).items()}
        remaining = []
        for tp in tps:
            start, end = int(start_offsets[tp.partition]), ends[tp.partition]
            if start < firsts[tp.partition]:
                raise KafkaConnectorError(
                    f"{topic}/{tp.partition}: offset {start} was deleted; the first kept is "
                    f"{firsts[tp.partition]}"
                )
            consumer.seek(tp, start)
            if start < end:
                remaining.append(tp)
            else:
                consumer.pause(tp)
        last_progress = time.monotonic()
        while remaining:
            batch = consumer.poll(timeout_ms=500)
            for tp, messages in batch.items():
                end = ends[tp.partition]
                for m in messages:
                    if m.offset >= end:
                        break
                    yield decode_message(m.key, m.value, m.topic, m.partition, m.offset, options)
            done = [tp for tp in remaining if consumer.position(tp) >= ends[tp.partition]]
            if batch or done:
                last_progress = time.monotonic()
            if done:
                consumer.pause(*done)
                remaining = [tp for tp in remaining if tp not in done]
            elif time.monotonic() - last_progress > idle_timeout_s:
                where = ", ".join(f"{tp.partition}@{consumer.position(tp)}/{ends[tp.partition]}"
                                  for tp in remaining)
                raise KafkaConnectorError(
                    f"no progress reading {topic} for {idle_timeout_s:.0f} s "
                    f"(partition@position/end: {where})"
                )
    finally:
        consumer.close()


def end_offsets(bootstrap: str | KafkaConnection, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """Current end offset of every partition of ``topic`` (what a backfill reads up to)."""
    kafka = require_kafka_python()
    conn = as_connection(bootstrap)
    consumer = kafka.KafkaConsumer(**conn.kafka_python_kwargs(), group_id=None,
                                   bootstrap_timeout_ms=int(timeout_s * 1000))
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [kafka.TopicPartition(topic, p) for p in sorted(partitions)]
        return {tp.partition: int(o) for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


__all__ = [
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_VECTOR",
    "DEFAULT_DECODE",
    "HEADER_DIM",
    "HEADER_METADATA",
    "HEADER_MODEL",
    "HEADER_N_CHUNKS",
    "HEADER_N_TOKENS",
    "HEADER_PRECISION",
    "KAFKA_EXTRA",
    "DecodeOptions",
    "EmbeddingMessage",
    "KafkaConnection",
    "KafkaConnectorError",
    "KafkaEmbeddingSink",
    "KafkaMessage",
    "KafkaSinkConfig",
    "OutputFormat",
    "SinkCounters",
    "ValueFormat",
    "as_connection",
    "check_topic",
    "decode_embedding",
    "decode_message",
    "embedding_messages",
    "encode_dead_letter",
    "encode_embedding",
    "end_offsets",
    "failure_letter",
    "parse_source",
    "read_offset_range",
    "require_kafka_python",
    "source_of",
]
