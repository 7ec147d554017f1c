"""The objective: exact piecewise-constant area, against hand-computed values and brute force."""

from __future__ import annotations

import math
import random

import pytest

from ttsgym.search_agent.objective import TOKEN_RANGE, frontier_area, objective

LO, HI = TOKEN_RANGE


def brute(points: list[dict], n: int = 20000) -> float:
    total = 0.0
    for k in range(n):
        x = math.exp(math.log(LO) + (k + 0.5) / n * (math.log(HI) - math.log(LO)))
        total += max([p["accuracy"] for p in points if p["avg_tokens"] <= x], default=0.0)
    return total / n


def test_range_is_the_documented_one() -> None:
    assert TOKEN_RANGE == (32_000, 1_024_000)


def test_single_point_below_range_counts_everywhere() -> None:
    assert frontier_area([{"accuracy": 60.0, "avg_tokens": 1000}]) == pytest.approx(60.0)


def test_point_above_range_scores_zero() -> None:
    assert frontier_area([{"accuracy": 90.0, "avg_tokens": 2_000_000}]) == 0.0


def test_point_at_geometric_middle_counts_half() -> None:
    mid = math.sqrt(LO * HI)  # 181k: half of the log range lies above it
    assert frontier_area([{"accuracy": 50.0, "avg_tokens": mid}]) == pytest.approx(25.0)


def test_dominated_point_does_not_lower_the_frontier() -> None:
    a = [{"accuracy": 70.0, "avg_tokens": 64_000}]
    b = [*a, {"accuracy": 40.0, "avg_tokens": 128_000}]
    assert frontier_area(a) == pytest.approx(frontier_area(b))
    assert frontier_area(a) == pytest.approx(70.0 * 4 / 5)  # 64k..1024k is 4 of 5 octaves


def test_matches_brute_force_on_random_curves() -> None:
    rng = random.Random(3)
    for _ in range(20):
        pts = [{"accuracy": rng.uniform(0, 100), "avg_tokens": math.exp(rng.uniform(9, 15))}
               for _ in range(rng.randint(1, 8))]
        assert frontier_area(pts) == pytest.approx(brute(pts), abs=0.02)


def test_objective_is_the_mean_over_slices() -> None:
    a = [{"accuracy": 60.0, "avg_tokens": 1000}]
    b = [{"accuracy": 90.0, "avg_tokens": 2_000_000}]
    assert objective({"m1/d": a, "m2/d": b}) == pytest.approx(30.0)
    with pytest.raises(ValueError):
        objective({})
