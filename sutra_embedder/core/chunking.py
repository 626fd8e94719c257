"""Overlapping token windows over long texts, and aggregation of window vectors.

Windows are expressed in *content* tokens (special tokens excluded). With a
window of ``w`` content tokens and an overlap of ``o``, window ``i`` starts at
``i * (w - o)``; the last window ends exactly at the end of the text (it is
shifted back so that it is full, which only increases its overlap with the
previous one).

Aggregation weights, for windows ``i`` covering tokens ``[s_i, e_i)`` of a text
of ``n`` tokens:

* ``mean``: 1 for every window.
* ``max``: element-wise maximum instead of a weighted sum.
* ``weighted``: ``e_i - s_i`` (the window's token count).
* ``positional``: ``1 - |c_i / n - 1/2|`` where ``c_i = (s_i + e_i) / 2``:
  windows near the middle of the text weigh up to twice as much as its ends.
* ``overlap``: ``sum over tokens t in the window of 1 / cover(t)`` where
  ``cover(t)`` is the number of windows holding token ``t``; every token of the
  text then contributes a total weight of exactly one.

The aggregate is L2-normalised when the model's vectors are.
"""

from __future__ import annotations

import numpy as np

from .config import Aggregation


def window_spans(n_tokens: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Spans ``[start, end)`` of overlapping windows covering ``n_tokens`` content tokens.

    Args:
        n_tokens: Content tokens of the text.
        window: Content tokens per window (> overlap).
        overlap: Tokens shared by consecutive windows.
    """
    if window <= overlap:
        raise ValueError(f"window ({window}) must be larger than overlap ({overlap})")
    if n_tokens <= window:
        return [(0, n_tokens)]
    stride = window - overlap
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = start + window
        if end >= n_tokens:
            spans.append((n_tokens - window, n_tokens))
            break
        spans.append((start, end))
        start += stride
    return spans


def count_windows(n_tokens: int, window: int, overlap: int) -> int:
    """Number of windows :func:`window_spans` would produce, without building them."""
    if n_tokens <= window:
        return 1
    stride = window - overlap
    return 1 + -(-(n_tokens - window) // stride)


def aggregation_weights(
    spans: list[tuple[int, int]], n_tokens: int, method: Aggregation
) -> np.ndarray:
    """The per-window weights of a weighted aggregation (see the module doc)."""
    starts = np.array([s for s, _ in spans], dtype=np.float64)
    ends = np.array([e for _, e in spans], dtype=np.float64)
    if method == "mean":
        return np.ones(len(spans))
    if method == "weighted":
        return ends - starts
    if method == "positional":
        centres = (starts + ends) / 2.0
        return 1.0 - np.abs(centres / max(n_tokens, 1) - 0.5)
    if method == "overlap":
        cover = np.zeros(max(n_tokens, 1))
        for s, e in spans:
            cover[s:e] += 1.0
        return np.array([(1.0 / cover[s:e]).sum() for s, e in spans])
    raise ValueError(f"no weights for aggregation {method!r}")


def aggregate(
    vectors: np.ndarray,
    spans: list[tuple[int, int]],
    n_tokens: int,
    method: Aggregation,
    normalize: bool,
) -> np.ndarray:
    """Combine window vectors ``(n_windows, dim)`` into one ``(dim,)`` float32 vector."""
    if len(vectors) == 1:
        out = vectors[0].astype(np.float64)
    elif method == "max":
        out = vectors.max(axis=0).astype(np.float64)
    else:
        weights = aggregation_weights(spans, n_tokens, method)
        out = (weights[:, None] * vectors.astype(np.float64)).sum(axis=0) / weights.sum()
    if normalize:
        norm = np.linalg.norm(out)
        if norm > 0:
            out = out / norm
    return out.astype(np.float32)
