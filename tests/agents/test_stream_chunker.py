"""The streaming chunker gives the core's windows over the tokens of the whole text."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sutra_embedder.agents.streaming import StreamChunker, StreamingError, chunk_text
from sutra_embedder.core import Embedder, window_spans
from sutra_embedder.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    lines = (REPO / "examples/corpus.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def random_pieces(text: str, rng: random.Random, longest: int = 40) -> list[str]:
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, longest)
        pieces.append(text[i : i + n])
        i += n
    return pieces


def check_against_core(emb: Embedder, chunker: StreamChunker, text: str, pieces: list[str]) -> None:
    assert "".join(pieces) == text
    windows = chunk_text(chunker, pieces)
    full = emb.tokenizer.encode_content([text])[0]
    expected = window_spans(len(full), chunker.window, chunker.overlap)
    assert [w.span for w in windows] == expected
    for w in windows:
        np.testing.assert_array_equal(w.ids, full[w.start : w.end])
        assert text[w.char_start : w.char_start + len(w.text)] == w.text
    assert [w.index for w in windows] == list(range(len(windows)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windows_match_window_spans_for_random_pieces(
    make_embedder: Callable[..., Embedder], corpus: list[str], seed: int
) -> None:
    emb = make_embedder()
    rng = random.Random(seed)
    text = " ".join(rng.sample(corpus, 25))
    chunker = StreamChunker.for_embedder(emb, overlap=32)
    assert chunker.window == emb.max_content_tokens
    check_against_core(emb, chunker, text, random_pieces(text, rng))


@pytest.mark.parametrize(
    ("window", "overlap"), [(16, 0), (16, 5), (50, 49), (254, 32)]
)
def test_windows_match_for_other_geometries(
    make_embedder: Callable[..., Embedder], corpus: list[str], window: int, overlap: int
) -> None:
    emb = make_embedder()
    text = "\n\n".join(corpus[:12]) + "  trailing   spaces\t"
    chunker = StreamChunker(emb.model_dir / "tokenizer.json", window, overlap)
    check_against_core(emb, chunker, text, random_pieces(text, random.Random(window), longest=7))


def test_multilingual_and_punctuation(make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder()
    text = ("Grüße aus Zürich! 東京は日本の首都です。 ¿Qué tal? naïve café—déjà vu... "
            "e-mail: a.b@c.de, 3.14159; (paren) [bracket] {brace} ") * 12
    chunker = StreamChunker(emb.model_dir / "tokenizer.json", 24, 6)
    check_against_core(emb, chunker, text, random_pieces(text, random.Random(5), longest=11))
    check_against_core(emb, chunker, text, list(text))  # one character at a time


@pytest.mark.parametrize("n_words", [1, 10, 16, 17])
def test_short_texts_and_exact_window_lengths(make_embedder: Callable[..., Embedder], n_words: int) -> None:
    emb = make_embedder()
    text = " ".join(["hello"] * n_words)  # one token per word
    chunker = StreamChunker(emb.model_dir / "tokenizer.json", 16, 4)
    check_against_core(emb, chunker, text, [w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]])


def test_windows_are_emitted_as_soon_as_they_are_complete(make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder()
    chunker = StreamChunker(emb.model_dir / "tokenizer.json", 8, 2)
    emitted: list[list[tuple[int, int]]] = []
    for i in range(30):
        emitted.append([w.span for w in chunker.feed(f"w{i} ")])  # "w", "##N": two tokens a word
    assert emitted[3] == [(0, 8)]  # tokens 0..7 are final once "w3 " arrived
    assert emitted[6] == [(6, 14)]
    assert chunker.n_tokens == 60
    final = chunker.flush()
    assert final[-1].span == (52, 60)


def test_a_token_is_held_until_whitespace_follows(make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder()
    chunker = StreamChunker(emb.model_dir / "tokenizer.json", 4, 1)
    assert chunker.feed("one two three fo") == [] and chunker.n_tokens == 3
    assert [w.text for w in chunker.feed("ur five six")] == ["one two three four"]
    # The last window is shifted back to be full, as the core's window_spans does.
    assert [w.text for w in chunker.flush()] == ["three four five six"]


def test_long_runs_without_whitespace_are_cut(make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder()
    chunker = StreamChunker(emb.model_dir / "tokenizer.json", 32, 8, max_pending_chars=200)
    text = "😀東京" * 200
    windows = []
    for i in range(0, len(text), 50):
        windows += chunker.feed(text[i : i + 50])
    assert windows, "windows come out before the text ends"
    windows += chunker.flush()
    full = emb.tokenizer.encode_content([text])[0]
    assert windows[-1].end == len(full)
    np.testing.assert_array_equal(np.concatenate([w.ids for w in windows[:1]]), full[:32])


def test_reset_and_flush_rules(make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder()
    chunker = StreamChunker(emb.model_dir / "tokenizer.json", 8, 2)
    assert chunker.flush() == []
    with pytest.raises(StreamingError):
        chunker.feed("more")
    chunker.reset()
    assert [w.span for w in chunk_text(chunker, ["a b c"])] == [(0, 3)]
    chunker.reset()
    with pytest.raises(TypeError):
        chunker.feed(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"window": 0}, "window"), ({"window": 8, "overlap": 8}, "overlap"), ({"window": 8, "overlap": -1}, "overlap")],
)
def test_validation_names_the_field(make_embedder: Callable[..., Embedder], kwargs: dict[str, int], name: str) -> None:
    emb = make_embedder()
    with pytest.raises(ConfigError) as info:
        StreamChunker(emb.model_dir / "tokenizer.json", **kwargs)
    assert info.value.field == name
