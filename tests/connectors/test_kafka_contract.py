"""The Kafka message contract: pure functions, no broker."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sutra_embedder.connectors.kafka import (
    CONTENT_TYPE_VECTOR,
    DecodeOptions,
    KafkaConnection,
    KafkaSinkConfig,
    decode_embedding,
    decode_message,
    embedding_messages,
    encode_dead_letter,
    encode_embedding,
    parse_source,
    source_of,
)
from sutra_embedder.connectors.records import DeadLetter, InputRecord
from sutra_embedder.core.errors import ConfigError
from sutra_embedder.core.quantization import CalibrationRanges
from sutra_embedder.core.records import EmbedResult, Failure


def _decode(value: bytes | None, key: bytes | None = None, **opts: object) -> InputRecord | DeadLetter:
    return decode_message(key, value, "texts", 2, 41, DecodeOptions(**opts))  # type: ignore[arg-type]


# ------------------------------------------------------------------ input
def test_plain_text_value_uses_the_key_as_id() -> None:
    rec = _decode("héllo wörld".encode(), key=b"doc-7")
    assert rec == InputRecord("doc-7", "héllo wörld", {}, "texts/2/41")


def test_without_key_the_id_is_the_position() -> None:
    rec = _decode(b"some text")
    assert isinstance(rec, InputRecord)
    assert rec.id == "texts/2/41" and rec.source == "texts/2/41"


def test_json_value_gives_id_text_and_metadata() -> None:
    value = json.dumps({"id": 12, "text": "a text", "lang": "en", "tags": ["x"]}).encode()
    rec = _decode(value, key=b"ignored-key")
    assert rec == InputRecord("12", "a text", {"lang": "en", "tags": ["x"]}, "texts/2/41")


def test_json_without_id_falls_back_to_the_key() -> None:
    rec = _decode(b'  {"text": "t"}', key=b"k1")
    assert isinstance(rec, InputRecord) and rec.id == "k1" and rec.text == "t"


def test_custom_fields_and_text_format() -> None:
    rec = _decode(b'{"doc": "d1", "body": "b"}', id_field="doc", text_field="body")
    assert isinstance(rec, InputRecord) and (rec.id, rec.text) == ("d1", "b")
    as_text = _decode(b'{"text": "t"}', value_format="text")
    assert isinstance(as_text, InputRecord) and as_text.text == '{"text": "t"}'
    forced = _decode(b"[1, 2]", value_format="json")
    assert isinstance(forced, DeadLetter) and forced.kind == "malformed_json"


def test_a_json_array_in_auto_mode_is_text() -> None:
    rec = _decode(b"[not an object]")
    assert isinstance(rec, InputRecord) and rec.text == "[not an object]"


@pytest.mark.parametrize(
    ("value", "kind", "encoding"),
    [
        (None, "empty", "none"),
        (b"", "empty", "none"),
        (b"\xff\xfe\x00bad", "invalid_utf8", "base64"),
        (b'{"id": "a", "text": ', "malformed_json", "text"),
        (b'{"id": "a", "body": "no text"}', "missing_text", "text"),
        (b'{"id": "a", "text": null}', "missing_text", "text"),
    ],
)
def test_poison_messages_become_dead_letters(value: bytes | None, kind: str, encoding: str) -> None:
    letter = _decode(value, key=b"k")
    assert isinstance(letter, DeadLetter)
    assert (letter.stage, letter.kind, letter.original_encoding) == ("read", kind, encoding)
    assert letter.source == "texts/2/41"
    if encoding == "base64":
        assert letter.original is not None and base64.b64decode(letter.original) == value
    if encoding == "text":
        assert value is not None and letter.original == value.decode()


def test_missing_text_keeps_the_json_id() -> None:
    letter = _decode(b'{"id": "a7"}', key=b"k")
    assert isinstance(letter, DeadLetter) and letter.id == "a7"


def test_oversized_value_is_rejected_without_decoding() -> None:
    value = b"x" * (10 * 1024 * 1024)
    letter = _decode(value)
    assert isinstance(letter, DeadLetter) and letter.kind == "too_large"
    assert str(len(value)) in letter.error
    assert letter.original is not None and len(letter.original) == 4096


def test_oversized_value_cut_inside_a_character_stays_text() -> None:
    value = ("é" * 3_000_000).encode()
    letter = _decode(value)
    assert isinstance(letter, DeadLetter) and letter.original_encoding == "text"


def test_non_string_text_is_left_to_the_embedder() -> None:
    rec = _decode(b'{"id": "n", "text": 5}')
    assert isinstance(rec, InputRecord) and rec.text == 5


def test_source_round_trip() -> None:
    assert parse_source(source_of("my.topic-1", 3, 99)) == ("my.topic-1", 3, 99)
    assert parse_source("file.jsonl:12") is None
    assert parse_source("a/b/c") is None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"value_format": "xml"}, "value_format"),
        ({"max_value_bytes": 0}, "max_value_bytes"),
        ({"id_field": ""}, "id_field"),
        ({"id_field": "t", "text_field": "t"}, "text_field"),
    ],
)
def test_decode_options_validation_names_the_field(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        DecodeOptions(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == name


# ----------------------------------------------------------------- output
def _unit(dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_json_output_round_trip() -> None:
    vec = _unit(384, 1)
    msg = encode_embedding("id-1", vec, model="minilm", n_tokens=17, n_chunks=1, metadata={"lang": "de"})
    assert msg.key == b"id-1"
    body = json.loads(msg.value)
    assert set(body) == {"id", "vector", "model", "dim", "n_tokens", "n_chunks", "metadata", "precision"}
    assert (body["dim"], body["model"], body["n_tokens"], body["metadata"]) == (384, "minilm", 17, {"lang": "de"})
    back = decode_embedding(msg.key, msg.value, msg.headers)
    assert back.id == "id-1" and back.precision == "float32"
    np.testing.assert_array_equal(back.vector, vec)


@pytest.mark.parametrize("precision", ["float32", "float16", "int8", "uint8", "binary", "ubinary"])
@pytest.mark.parametrize("output_format", ["json", "binary"])
def test_every_precision_round_trips(precision: str, output_format: str) -> None:
    dim = 37  # not a multiple of 8: bit packing pads the last byte
    vec = _unit(dim, 2)
    calib = CalibrationRanges(np.full(dim, -0.3, np.float32), np.full(dim, 0.3, np.float32))
    msg = encode_embedding("x", vec, model="m", n_tokens=5, output_format=output_format,  # type: ignore[arg-type]
                           precision=precision, calibration=calib)  # type: ignore[arg-type]
    back = decode_embedding(msg.key, msg.value, msg.headers)
    assert (back.dim, back.precision, back.model, back.n_tokens) == (dim, precision, "m", 5)
    if precision == "float32":
        np.testing.assert_array_equal(back.vector, vec)
    elif precision == "float16":
        np.testing.assert_allclose(back.vector.astype(np.float32), vec, atol=1e-3)
    elif precision in ("binary", "ubinary"):
        bits = np.unpackbits(back.vector.view(np.uint8) if precision == "ubinary"
                             else (back.vector.astype(np.int16) + 128).astype(np.uint8))[:dim]
        np.testing.assert_array_equal(bits.astype(bool), vec > 0)
    else:  # int8/uint8: code = floor((x - lo) / step), step = 0.6 / 255, clipped
        levels = np.clip(np.floor((np.clip(vec, -0.3, 0.3) + 0.3) / (0.6 / 255)), 0, 255)
        expect = levels - 128 if precision == "int8" else levels
        np.testing.assert_allclose(back.vector.astype(np.float64), expect, atol=1)
    if output_format == "binary":
        from sutra_embedder.core.quantization import bytes_per_vector

        assert len(msg.value) == bytes_per_vector(dim, precision)  # type: ignore[arg-type]


def test_binary_output_is_little_endian_float32_with_headers() -> None:
    vec = np.array([1.0, -2.5, 0.125], dtype=np.float32)
    msg = encode_embedding("k", vec, model="mini", n_chunks=3, metadata={"a": 1}, output_format="binary")
    assert msg.value == struct.pack("<3f", 1.0, -2.5, 0.125)
    headers = dict(msg.headers)
    assert headers["content-type"] == CONTENT_TYPE_VECTOR.encode()
    assert (headers["sutra-dim"], headers["sutra-model"], headers["sutra-precision"]) == (b"3", b"mini", b"float32")
    assert json.loads(headers["sutra-metadata"]) == {"a": 1}
    back = decode_embedding(msg.key, msg.value, msg.headers)
    assert back.n_chunks == 3 and back.metadata == {"a": 1} and back.id == "k"


def test_decode_embedding_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        decode_embedding(b"k", b"not json")
    with pytest.raises(ValueError):
        decode_embedding(b"k", b"\x00" * 7, [("content-type", CONTENT_TYPE_VECTOR.encode()),
                                            ("sutra-dim", b"2"), ("sutra-precision", b"float32")])


def test_dead_letter_message_carries_the_kafka_position() -> None:
    letter = _decode(b"\xc3\x28", key=b"bad-1")
    assert isinstance(letter, DeadLetter)
    msg = encode_dead_letter(letter)
    body = json.loads(msg.value)
    assert msg.key == b"bad-1"
    assert (body["topic"], body["partition"], body["offset"]) == ("texts", 2, 41)
    assert (body["kind"], body["stage"], body["original_encoding"]) == ("invalid_utf8", "read", "base64")
    assert base64.b64decode(body["original"]) == b"\xc3\x28"
    assert body["error"]


def test_embedding_messages_split_results_and_failures() -> None:
    records = [InputRecord("a", "t1", {"m": 1}, "t/0/0"), InputRecord("b", "", {}, "t/0/1"),
               InputRecord("c", "t3", {}, "t/0/2")]
    result = EmbedResult(
        vectors=np.stack([_unit(4, 1), _unit(4, 2)]), ok=np.array([0, 2]), n_tokens=np.array([3, 4]),
        n_chunks=np.array([1, 1]), truncated=np.array([False, False]),
        failures=[Failure(1, "empty", "text is empty")],
    )
    messages, letters = embedding_messages(records, result, model="m")
    assert [m.key for m in messages] == [b"a", b"c"]
    assert json.loads(messages[0].value)["metadata"] == {"m": 1}
    assert [(d.id, d.stage, d.kind, d.model, d.source) for d in letters] == [("b", "validate", "empty", "m", "t/0/1")]


# ------------------------------------------------------------- configuration
def test_sasl_password_is_redacted() -> None:
    conn = KafkaConnection("broker:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                           sasl_username="svc", sasl_password="hunter2-secret")
    assert "hunter2-secret" not in repr(conn) and "hunter2-secret" not in str(conn)
    assert "***" in repr(conn)
    assert conn.kafka_python_kwargs()["sasl_plain_password"] == "hunter2-secret"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"bootstrap_servers": ""}, "bootstrap_servers"),
        ({"bootstrap_servers": "nohostport"}, "bootstrap_servers"),
        ({"bootstrap_servers": "h:1", "security_protocol": "TLS"}, "security_protocol"),
        ({"bootstrap_servers": "h:1", "security_protocol": "SASL_PLAINTEXT"}, "sasl_mechanism"),
        ({"bootstrap_servers": "h:1", "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
         "sasl_username"),
        ({"bootstrap_servers": "h:1", "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
          "sasl_username": "u"}, "sasl_password"),
        ({"bootstrap_servers": "h:1", "sasl_mechanism": "PLAIN"}, "sasl_mechanism"),
    ],
)
def test_connection_validation_names_the_field(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        KafkaConnection(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == name


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"topic": "bad topic"}, "topic"),
        ({"topic": "t", "dead_letter_topic": "t"}, "dead_letter_topic"),
        ({"topic": "t", "output_format": "avro"}, "output_format"),
        ({"topic": "t", "precision": "int4"}, "precision"),
        ({"topic": "t", "acks": 1}, "acks"),
        ({"topic": "t", "compression_type": "brotli"}, "compression_type"),
    ],
)
def test_sink_config_validation_names_the_field(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        KafkaSinkConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == name


def test_contract_imports_without_kafka_python() -> None:
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("kafka", "aiokafka", "faust", "mode"):
                    raise ImportError(f"blocked {name}")
                return None

        sys.meta_path.insert(0, Block())
        import numpy as np
        from sutra_embedder.connectors.kafka import decode_message, encode_embedding, decode_embedding
        from sutra_embedder.connectors.kafka import KafkaEmbeddingSink, KafkaSinkConfig
        rec = decode_message(b"k", b"text", "t", 0, 1)
        msg = encode_embedding("k", np.ones(3, np.float32), model="m")
        assert decode_embedding(msg.key, msg.value, msg.headers).dim == 3
        try:
            KafkaEmbeddingSink("h:1", KafkaSinkConfig("out"), model="m")
        except ImportError as exc:
            print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "pip install 'sutra-embedder[kafka]'" in out.stdout
