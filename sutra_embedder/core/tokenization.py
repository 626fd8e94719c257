"""Tokenization with Hugging Face ``tokenizers``.

The tokenizer encodes the *content* tokens of every text without special tokens
and without truncation; the embedder adds the model's special tokens itself
when it cuts texts into windows. This sidesteps a trap of many shipped
``tokenizer.json`` files, which carry a fixed padding (to 128) and a truncation
(at 128) that would otherwise silently cut every text.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


class TextTokenizer:
    """Turns texts into content-token id arrays and wraps windows in special tokens.

    Args:
        path: Path of a ``tokenizer.json`` file.
    """

    def __init__(self, path: str | Path) -> None:
        tok = Tokenizer.from_file(str(path))
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
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

    @property
    def n_special(self) -> int:
        """Special tokens added around each sequence (2 for BERT's [CLS] ... [SEP])."""
        return len(self.prefix) + len(self.suffix)

    def encode_content(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Content token ids of each text (no special tokens, no truncation)."""
        id_lists = [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
        lengths = [len(x) for x in id_lists]
        flat = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64, count=sum(lengths))
        return np.split(flat, np.cumsum(lengths)[:-1]) if id_lists else []

    def frame(self, content: np.ndarray) -> np.ndarray:
        """Wrap content ids in the model's special tokens."""
        return np.concatenate((self.prefix, content, self.suffix))
