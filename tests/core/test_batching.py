"""Token-budget batching: every item once, budget respected, minimal padding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sutra_embedder.core import plan_batches, plan_fixed_count


def _brute_force_best(lengths: list[int], budget: int, max_size: int, overhead: int) -> int:
    """Minimal padded tokens + overhead over every split of the length-sorted list."""
    sl = sorted(lengths, reverse=True)
    n = len(sl)
    best = None
    for mask in range(1 << (n - 1)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        cost, ok = 0, True
        for a, b in itertools.pairwise(cuts):
            rows, longest = b - a, max(sl[a:b])
            if rows > max_size or (rows > 1 and rows * longest > budget):
                ok = False
                break
            cost += rows * longest + overhead
        if ok and (best is None or cost < best):
            best = cost
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(12))
def test_plan_is_optimal_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=int(rng.integers(2, 11))).tolist()
    budget, max_size, overhead = int(rng.integers(60, 200)), int(rng.integers(2, 6)), int(rng.integers(0, 40))
    plan = plan_batches(lengths, budget, max_size, batch_overhead_tokens=overhead)
    cost = plan.padded_tokens + overhead * len(plan.batches)
    assert cost == _brute_force_best(lengths, budget, max_size, overhead)


def test_every_item_once_and_budget_respected() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 300, size=3000)
    lengths[17] = 5000  # longer than the budget: a batch of its own
    plan = plan_batches(lengths, max_batch_tokens=4096, max_batch_size=64)
    seen = np.concatenate(plan.batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for b in plan.batches:
        assert len(b) <= 64
        assert len(b) == 1 or len(b) * lengths[b].max() <= 4096
    padded = sum(len(b) * int(lengths[b].max()) for b in plan.batches)
    assert plan.padded_tokens == padded and plan.real_tokens == int(lengths.sum())


def test_token_budget_beats_fixed_count_on_mixed_lengths() -> None:
    rng = np.random.default_rng(2)
    lengths = np.concatenate([rng.integers(10, 40, 500), rng.integers(200, 300, 100)])
    rng.shuffle(lengths)
    sorted_plan = plan_batches(lengths, 8192, 256)
    fixed = plan_fixed_count(lengths, 32)
    assert sorted_plan.padding_efficiency > 0.95
    assert fixed.padding_efficiency < 0.6


@pytest.mark.parametrize("n,max_size,budget", [(5000, 256, 8192), (20000, 1024, 65536), (3000, 8, 300)])
def test_large_inputs_plan_fast_and_near_optimal(n: int, max_size: int, budget: int) -> None:
    import time

    rng = np.random.default_rng(n)
    lengths = rng.integers(10, 300, size=n)
    start = time.perf_counter()
    plan = plan_batches(lengths, budget, max_size, batch_overhead_tokens=64)
    assert time.perf_counter() - start < 5.0
    assert sorted(np.concatenate(plan.batches).tolist()) == list(range(n))
    for b in plan.batches:
        assert len(b) <= max_size and (len(b) == 1 or len(b) * lengths[b].max() <= budget)
    exact = plan_batches(lengths, budget, max_size, batch_overhead_tokens=64, exact_limit=n)
    cost = plan.padded_tokens + 64 * len(plan.batches)
    assert cost <= 1.01 * (exact.padded_tokens + 64 * len(exact.batches))
