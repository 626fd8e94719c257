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
    best = np.zeros(n + 1, dtype=np.float64)
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        lo = max(0, end - max_batch_size)
        starts = np.arange(lo, end)
        rows = end - starts
        cost = rows * sl[starts]  # longest of a run is its first item (sorted desc)
        allowed = (cost <= max_batch_tokens) | (rows == 1)
        total = np.where(allowed, best[lo:end] + cost + batch_overhead_tokens, np.inf)
        k = int(np.argmin(total))
        best[end], cut[end] = total[k], starts[k]
    batches: list[np.ndarray] = []
    end = n
    while end > 0:
        start = int(cut[end])
        batches.append(order[start:end])
        end = start
    batches.reverse()
    padded = sum(len(b) * int(lens[b].max()) for b in batches)
    return BatchPlan(batches, int(lens.sum()), padded)


def _greedy(lens: np.ndarray, order: np.ndarray, max_batch_tokens: int, max_batch_size: int) -> BatchPlan:
    batches: list[np.ndarray] = []
    current: list[int] = []
    longest = 0
    for idx in order.tolist():
        new_longest = max(longest, int(lens[idx]))
        if current and (
            len(current) + 1 > max_batch_size or (len(current) + 1) * new_longest > max_batch_tokens
        ):
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
    """Right-pad id arrays into ``(ids, attention_mask)`` int64 matrices."""
    longest = max(len(s) for s in seqs)
    ids = np.full((len(seqs), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), longest), dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask
