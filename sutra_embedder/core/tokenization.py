"""Tokenization with Hugging Face ``tokenizers``.

The tokenizer encodes the *content* tokens of every text without special tokens
and without truncation; the embedder adds the model's special tokens itself
when it cuts texts into windows. This sidesteps a trap of many shipped
``tokenizer.json`` files, which carry a fixed padding (to 128) and a truncation
(at 128) that would otherwise silently cut every text.

Ids come back as one flat int64 buffer plus offsets (:class:`FlatTokens`), not
one array per text: on a GPU the host side of the embedder is the bottleneck,
and per-text arrays cost several microseconds each under the GIL, which no
number of cores can parallelise. ``encode_batch_fast`` is used where the
installed ``tokenizers`` has it: it skips computing character offsets, which
the embedder never reads.

ASCII texts take a faster road when the tokenizer's normalizer does nothing to
ASCII beyond lowercasing and dropping control characters (BERT's normalizer,
``Lowercase``, the Unicode normal forms, ``StripAccents`` and sequences of
them): Python lowercases them (a fraction of a microsecond) and a copy of the
tokenizer without its normalizer encodes them. The normalizer tracks an
alignment per character, which is about a third of ``tokenizers``' time on
English text; the ids are the same (the test suite compares them with the
stock tokenizer on real and random text). Texts that contain an added token
(``[CLS]``, ``<mask>``) keep the stock road, since those are matched before
normalization.
"""

from __future__ import annotations

import itertools
import json
import operator
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

_IDS = operator.attrgetter("ids")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # ASCII controls BERT's clean_text drops
_ASCII_IDENTITY = frozenset({"NFC", "NFD", "NFKC", "NFKD", "StripAccents"})  # no-ops on ASCII


def ascii_normalization(spec: dict[str, Any] | None) -> tuple[bool, bool] | None:
    """What a normalizer (its ``tokenizer.json`` entry) does to ASCII text.

    Returns:
        ``(lowercase, drop_controls)``, or None when it does anything else to
        ASCII (replacements, prefixes, stripping), which the fast road cannot
        reproduce.
    """
    if spec is None:
        return False, False
    kind = spec.get("type")
    if kind == "BertNormalizer":
        return bool(spec.get("lowercase", True)), bool(spec.get("clean_text", True))
    if kind == "Lowercase":
        return True, False
    if kind in _ASCII_IDENTITY:
        return False, False
    if kind == "Sequence":
        lower = drop = False
        for part in spec.get("normalizers", []):
            found = ascii_normalization(part)
            if found is None:
                return None
            lower, drop = lower or found[0], drop or found[1]
        return lower, drop
    return None


class _AsciiRoad:
    """Encodes ASCII texts with the normalizer's work done in Python."""

    def __init__(self, tok: Tokenizer, spec: dict[str, Any], lowercase: bool, drop_controls: bool) -> None:
        self.tok = Tokenizer.from_str(tok.to_str())
        self.tok.normalizer = None
        self.encode_batch = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        self.lowercase = lowercase
        self.drop_controls = drop_controls
        added = [t["content"] for t in spec.get("added_tokens", []) if t.get("content")]
        # A text holding an added token (any case) goes the stock road; the first
        # characters make a cheap test that is almost always negative.
        self.added_first = "".join(sorted({c for a in added for c in (a[0].lower(), a[0].upper())}))
        self.added = re.compile("|".join(re.escape(a) for a in added), re.IGNORECASE) if added else None

    def takes(self, text: str) -> bool:
        """Whether ``text`` may take this road."""
        if not text.isascii():
            return False
        if self.added is not None:
            for c in self.added_first:
                if c in text:
                    return self.added.search(text) is None
        return True

    def normalize(self, text: str) -> str:
        if self.lowercase:
            text = text.lower()
        if self.drop_controls and not text.isprintable():
            text = _CONTROL.sub("", text)
        return text


@dataclass(frozen=True)
class FlatTokens:
    """Content ids of many texts in one buffer.

    Attributes:
        ids: int64 ids of all texts, back to back.
        offsets: ``(n + 1,)`` int64; text ``i`` is ``ids[offsets[i]:offsets[i + 1]]``.
    """

    ids: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Content tokens of each text."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def split(self) -> list[np.ndarray]:
        """One array (a view) per text."""
        return np.split(self.ids, self.offsets[1:-1]) if len(self) else []


class TextTokenizer:
    """Turns texts into content-token id arrays and wraps windows in special tokens.

    Args:
        path: Path of a ``tokenizer.json`` file.
    """

    def __init__(self, path: str | Path, ascii_road: bool = True) -> None:
        self.path = Path(path)
        tok = Tokenizer.from_file(str(path))
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        # Same ids as encode_batch, without character offsets (tokenizers >= 0.20).
        self._encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
        self._ascii: _AsciiRoad | None = None
        if ascii_road:
            spec = json.loads(tok.to_str())
            found = ascii_normalization(spec.get("normalizer"))
            if found is not None:
                self._ascii = _AsciiRoad(tok, spec, *found)
        self.prefix, self.suffix = self._special_frame(tok)
        pad = tok.padding
        self.pad_id = int(pad["pad_id"]) if pad else self._guess_pad_id(tok)

    @staticmethod
    def _special_frame(tok: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
        """Find the special tokens the post-processor puts around one sequence."""
        probe = "hello"
        with_special = tok.encode(probe, add_special_tokens=True).ids
        content = tok.encode(probe, add_special_tokens=False).ids
        n = len(content)
        for start in range(len(with_special) - n + 1):
            if with_special[start : start + n] == content:
                return (
                    np.asarray(with_special[:start], dtype=np.int64),
                    np.asarray(with_special[start + n :], dtype=np.int64),
                )
        raise ValueError("cannot locate the content tokens inside the special-token template")

    @staticmethod
    def _guess_pad_id(tok: Tokenizer) -> int:
        for name in ("[PAD]", "<pad>", "<|padding|>"):
            idx = tok.token_to_id(name)
            if idx is not None:
                return int(idx)
        return 0

    @staticmethod
    def threads() -> int:
        """Threads ``encode_batch`` runs on: the rules of ``tokenizers`` and its rayon pool.

        ``TOKENIZERS_PARALLELISM`` set to a false value makes tokenization
        sequential (one core), which on a GPU host caps the embedder far below
        the device; ``RAYON_NUM_THREADS`` sizes the pool, by default all the
        cores the process may use. (``tokenizers`` also goes sequential by
        itself in a process forked after it used its pool; that is not visible
        from here.)
        """
        flag = os.environ.get("TOKENIZERS_PARALLELISM")
        if flag is not None and flag.lower() in ("", "off", "false", "f", "no", "n", "0"):
            return 1
        for name in ("RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS"):
            value = os.environ.get(name, "")
            if value.isdigit() and int(value) > 0:
                return int(value)
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1

    @property
    def n_special(self) -> int:
        """Special tokens added around each sequence (2 for BERT's [CLS] ... [SEP])."""
        return len(self.prefix) + len(self.suffix)

    def encode_flat(self, texts: Sequence[str]) -> FlatTokens:
        """Content token ids of all texts in one buffer (no special tokens, no truncation).

        The encodings are read with C-level iterators straight into one numpy
        buffer: no Python list per text survives, which keeps the time spent
        holding the GIL to about 3 microseconds per text.
        """
        encs = self._encodings(texts if isinstance(texts, list) else list(texts))
        n = len(encs)
        offsets = np.zeros(n + 1, dtype=np.int64)
        if n:
            np.cumsum(np.fromiter(map(len, encs), dtype=np.int64, count=n), out=offsets[1:])
        total = int(offsets[-1])
        ids = np.fromiter(itertools.chain.from_iterable(map(_IDS, encs)), dtype=np.int64, count=total)
        return FlatTokens(ids, offsets)

    @property
    def ascii_road(self) -> bool:
        """Whether ASCII texts skip the tokenizer's normalizer (see the module's notes)."""
        return self._ascii is not None

    def _encodings(self, texts: list[str]) -> list[Any]:
        road = self._ascii
        if road is None or not texts:
            return self._encode_batch(texts, add_special_tokens=False)
        takes = list(map(road.takes, texts))
        if all(takes):
            return road.encode_batch(list(map(road.normalize, texts)), add_special_tokens=False)
        fast = [i for i, ok in enumerate(takes) if ok]
        slow = [i for i, ok in enumerate(takes) if not ok]
        encs: list[Any] = [None] * len(texts)
        if fast:
            done = road.encode_batch([road.normalize(texts[i]) for i in fast], add_special_tokens=False)
            for i, enc in zip(fast, done):
                encs[i] = enc
        for i, enc in zip(slow, self._encode_batch([texts[i] for i in slow], add_special_tokens=False)):
            encs[i] = enc
        return encs

    def encode_content(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Content token ids of each text (no special tokens, no truncation)."""
        return self.encode_flat(texts).split()

    def frame(self, content: np.ndarray) -> np.ndarray:
        """Wrap content ids in the model's special tokens."""
        return np.concatenate((self.prefix, content, self.suffix))
