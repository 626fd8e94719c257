"""Parsing elements of every shape into texts or dead letters (no runner needed)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import pytest

from sutra_embedder.connectors.records import DeadLetter, InputRecord
from sutra_embedder.core import EmbedderConfig
from sutra_embedder.transforms import DeadLetterRow, EmbedTextConfig, PendingText, content_id, parse_element

CFG = EmbedTextConfig(embedder=EmbedderConfig(model="minilm", max_text_chars=50))


class Doc(NamedTuple):
    key: str
    body: str
    lang: str


@dataclass
class Note:
    id: int
    text: str


def parse(element: object, config: EmbedTextConfig = CFG) -> PendingText | DeadLetterRow:
    return parse_element(element, config, "model-x")


def test_plain_text_gets_a_content_id() -> None:
    a, b = parse("hello world"), parse(b"hello world")
    assert isinstance(a, PendingText) and isinstance(b, PendingText)
    assert a.text == b.text == "hello world"
    assert a.id == b.id == content_id("hello world")
    assert a.metadata is None and parse("other text").id != a.id  # type: ignore[union-attr]


def test_dict_row_namedtuple_dataclass_and_input_record() -> None:
    d = parse({"id": 7, "text": "t", "lang": "en", "n": 2})
    assert d == PendingText("7", "t", json.dumps({"lang": "en", "n": 2}), "")
    r = parse(beam.Row(id="r", text="row text", score=0.5))
    assert r == PendingText("r", "row text", '{"score": 0.5}', "")
    nt = parse(Doc("k1", "body text", "fr"), EmbedTextConfig(id_field="key", text_field="body"))
    assert nt == PendingText("k1", "body text", '{"lang": "fr"}', "")
    dc = parse(Note(3, "note"))
    assert dc == PendingText("3", "note", None, "")
    rec = parse(InputRecord("i1", "from a file", {"page": 4}, "f.jsonl:9"))
    assert rec == PendingText("i1", "from a file", '{"page": 4}', "f.jsonl:9")


def test_metadata_fields_select_and_skip_missing() -> None:
    cfg = EmbedTextConfig(metadata_fields=("lang", "absent"))
    got = parse({"id": "a", "text": "t", "lang": "en", "other": 1}, cfg)
    assert isinstance(got, PendingText) and json.loads(got.metadata or "") == {"lang": "en"}


@pytest.mark.parametrize(
    ("element", "kind", "rid"),
    [
        (None, "none", None),
        (5, "not_a_string", None),
        (2.5, "not_a_string", None),
        ("", "empty", None),
        ("   \n", "empty", None),
        (b"\xff\xfe", "invalid_utf8", None),
        ("bad \ud800 surrogate", "invalid_utf8", None),
        ("x" * 51, "too_large", None),
        ({"id": "m", "body": "x"}, "missing_text", "m"),
        ({"id": "n", "text": None}, "none", "n"),
        ({"id": "o", "text": ["a"]}, "not_a_string", "o"),
        (beam.Row(id="p", title="no text"), "missing_text", "p"),
        (("a", "tuple"), "unsupported_element", None),
        (object(), "unsupported_element", None),
    ],
)
def test_bad_elements_become_dead_letters(element: object, kind: str, rid: str | None) -> None:
    got = parse(element)
    assert isinstance(got, DeadLetterRow)
    assert (got.kind, got.id, got.stage, got.model) == (kind, rid, "validate", "model-x")
    assert got.error


def test_dead_letter_keeps_the_original() -> None:
    got = parse({"id": "m", "body": "x"})
    assert isinstance(got, DeadLetterRow)
    assert json.loads(got.original or "") == {"id": "m", "body": "x"} and got.original_encoding == "text"
    raw = parse(b"\xff")
    assert isinstance(raw, DeadLetterRow) and raw.original_encoding == "base64"


def test_connector_dead_letters_pass_through() -> None:
    letter = DeadLetter("3", "read", "malformed_json", "bad json", "", "f.jsonl:3", "{x", "text")
    got = parse(letter)
    assert isinstance(got, DeadLetterRow)
    assert got._asdict() == letter.__dict__


def test_an_element_that_breaks_while_read_is_a_dead_letter() -> None:
    class Broken(Mapping[str, object]):
        def __getitem__(self, key: str) -> object:
            raise RuntimeError("boom")

        def __iter__(self) -> Iterator[str]:
            return iter(["text"])

        def __len__(self) -> int:
            return 1

    got = parse(Broken())
    assert isinstance(got, DeadLetterRow) and got.kind == "unsupported_element" and "boom" in got.error
