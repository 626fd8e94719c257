"""Token-budget batching: sort by length, cap padded tokens per batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchPlan:
    """Items grouped into model calls.

    Attributes:
        batches: Each batch is an array of item indices.
        real_tokens: Sum of the items' token lengths.
        padded_tokens: Sum over batches of ``rows * longest row``.
    """

    batches: list[np.ndarray]
    real_tokens: int
    padded_tokens: int

    @property
    def padding_efficiency(self) -> float:
        """Real tokens / padded tokens (1.0 means no padding at all)."""
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    max_batch_tokens: int,
    max_batch_size: int,
    sort_by_length: bool = True,
    batch_overhead_tokens: int = 64,
    exact_limit: int = 2048,
) -> BatchPlan:
    """Group items so that ``rows * longest`` stays within ``max_batch_tokens``.

    With ``sort_by_length`` the items are sorted longest first and cut into
    contiguous runs by dynamic programming, minimising padded tokens plus a
    fixed cost of ``batch_overhead_tokens`` per model call: a plain greedy
    fill would put a 256-token text and a 60-token text in one batch whenever
    the budget allows it. An item longer than the budget gets a batch of its
    own. Without sorting, items keep input order and are packed greedily
    (for comparison).
    """
    lens = np.asarray(lengths, dtype=np.int64)
    if lens.size == 0:
        return BatchPlan([], 0, 0)
    if not sort_by_length:
        return _greedy(lens, np.arange(lens.size), max_batch_tokens, max_batch_size)
    order = np.argsort(-lens, kind="stable")
    sl = lens[order]
    n = sl.size
    # Cut points: every position for small inputs (exact); for large ones, the starts of
    # runs of equal length plus every `quantum`-th position, which keeps planning fast
    # (a 16k-item block is planned in milliseconds) at a negligible loss of optimality.
    # Consecutive cut points are at most `quantum` rows apart, and `quantum` rows of the
    # longest item fit the budget, so a feasible plan always exists.
    quantum = 1 if n <= exact_limit else max(1, min(32, max_batch_size, max_batch_tokens // int(sl[0])))
    run_starts = np.flatnonzero(np.diff(sl, prepend=sl[0] + 1))
    cand = np.unique(np.concatenate([run_starts, np.arange(0, n, quantum), [n]]))
    best = np.full(cand.size, np.inf)
    best[0] = 0.0
    prev = np.zeros(cand.size, dtype=np.int64)
    for ci in range(1, cand.size):
        end = int(cand[ci])
        lo = int(np.searchsorted(cand, end - max_batch_size, side="left"))
        idx = np.arange(lo, ci)
        starts = cand[idx]
        rows = end - starts
        cost = rows * sl[starts]  # longest of a run is its first item (sorted desc)
        allowed = (cost <= max_batch_tokens) | (rows == 1)
        total = np.where(allowed, best[idx] + cost + batch_overhead_tokens, np.inf)
        k = int(np.argmin(total))
        best[ci], prev[ci] = total[k], idx[k]
    batches: list[np.ndarray] = []
    ci = cand.size - 1
    while ci > 0:
        pi = int(prev[ci])
        batches.append(order[int(cand[pi]) : int(cand[ci])])
        ci = pi
    batches.reverse()
    padded = sum(len(b) * int(lens[b].max()) for b in batches)
    return BatchPlan(batches, int(lens.sum()), padded)


def _greedy(lens: np.ndarray, order: np.ndarray, max_batch_tokens: int, max_batch_size: int) -> BatchPlan:
    batches: list[np.ndarray] = []
    current: list[int] = []
    longest = 0
    for idx in order.tolist():
        new_longest = max(longest, int(lens[idx]))
        if current and (len(current) + 1 > max_batch_size or (len(current) + 1) * new_longest > max_batch_tokens):
            batches.append(np.asarray(current, dtype=np.int64))
            current, new_longest = [], int(lens[idx])
        current.append(idx)
        longest = new_longest
    batches.append(np.asarray(current, dtype=np.int64))
    padded = sum(len(b) * int(lens[b].max()) for b in batches)
    return BatchPlan(batches, int(lens.sum()), padded)


def plan_fixed_count(lengths: Sequence[int] | np.ndarray, batch_size: int) -> BatchPlan:
    """Fixed-count batches in input order (what a naive loop does), for comparison."""
    lens = np.asarray(lengths, dtype=np.int64)
    batches = [np.arange(i, min(i + batch_size, lens.size)) for i in range(0, lens.size, batch_size)]
    padded = sum(int(len(b) * lens[b].max()) for b in batches)
    return BatchPlan(batches, int(lens.sum()), padded)


def pad_batch(seqs: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id arrays into ``(ids, attention_mask)`` int64 matrices (vectorised)."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    longest = int(lengths.max())
    cols = np.arange(longest)
    mask = (cols[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.full((len(seqs), longest), pad_id, dtype=np.int64)
    ids[mask.astype(bool)] = np.concatenate(seqs)
    return ids, mask


def pad_flat(
    flat: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    prefix: np.ndarray,
    suffix: np.ndarray,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Frame and right-pad rows of a flat id buffer into ``(ids, attention_mask)``.

    Row ``r`` is ``prefix + flat[starts[r] : starts[r] + lengths[r]] + suffix``
    followed by ``pad_id`` up to the longest row. This is what the embedder
    feeds the model; building it from one flat buffer with whole-matrix numpy
    operations costs a fraction of a microsecond per row, where a framed array
    per text plus :func:`pad_batch` cost several microseconds per row under the
    GIL (the host side, not the model, bounded GPU throughput).

    Every row is gathered over the full width (``mode="clip"`` keeps indices in
    bounds), then the cells past the row's end are overwritten with padding and
    the special tokens are written into their columns.

    Args:
        flat: int64 content ids of many texts, back to back.
        starts: int64 start of each row's content in ``flat``.
        lengths: int64 content tokens of each row (special tokens excluded).
        prefix: Special ids before the content (``[CLS]``).
        suffix: Special ids after the content (``[SEP]``).
        pad_id: The padding id.

    Returns:
        int64 ``ids`` and ``attention_mask``, both ``(rows, longest framed row)``.
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    n_pre, n_suf = len(prefix), len(suffix)
    framed = lengths + (n_pre + n_suf)
    width = int(framed.max())
    cols = np.arange(width, dtype=np.int64)
    index = (starts - n_pre)[:, None] + cols
    if flat.size:
        ids = np.take(flat, index, mode="clip")
    else:  # only special tokens: nothing to gather
        ids = np.empty(index.shape, dtype=np.int64)
    inside = cols < framed[:, None]
    np.copyto(ids, pad_id, where=~inside)
    if n_pre:
        ids[:, :n_pre] = prefix
    if n_suf:
        rows = np.arange(len(starts))
        end = lengths + n_pre
        for k in range(n_suf):
            ids[rows, end + k] = suffix[k]
    return ids, inside.astype(np.int64)
