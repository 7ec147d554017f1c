"""The scalar that ranks candidate controllers: area under the accuracy frontier over log tokens.

For one slice, the frontier at budget x is the best accuracy among the curve's points that spend
at most x tokens on average (0 when none does). The objective is the mean of that frontier over
budgets x drawn log-uniformly from ``TOKEN_RANGE``, averaged over slices. A log axis values a
doubling of the budget the same everywhere, so a controller is rewarded both for being accurate
cheaply and for reaching the top accuracy at all. The frontier is piecewise constant, so the mean
is computed exactly as a sum over the pieces, not by sampling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

TOKEN_RANGE: tuple[int, int] = (32_000, 1_024_000)


def frontier_area(points: Sequence[Mapping[str, float]],
                  token_range: tuple[float, float] = TOKEN_RANGE) -> float:
    """Mean over log-uniform x in ``token_range`` of the best accuracy with avg_tokens ≤ x."""
    lo, hi = float(token_range[0]), float(token_range[1])
    if not 0 < lo < hi:
        raise ValueError(f"token range must satisfy 0 < lo < hi, got {token_range}")
    pts = sorted((float(p["avg_tokens"]), float(p["accuracy"])) for p in points)
    span = math.log(hi) - math.log(lo)
    area, best = 0.0, 0.0
    for k, (tokens, accuracy) in enumerate(pts):
        best = max(best, accuracy)
        start = max(tokens, lo)
        stop = pts[k + 1][0] if k + 1 < len(pts) else hi
        stop = min(stop, hi)
        if stop > start:
            area += best * (math.log(stop) - math.log(start))
    return area / span


def objective(curves_per_slice: Mapping[str, Sequence[Mapping[str, float]]]) -> float:
    """Mean over slices of :func:`frontier_area`; points carry ``accuracy`` (%) and ``avg_tokens``."""
    if not curves_per_slice:
        raise ValueError("objective needs at least one slice")
    return sum(frontier_area(c) for c in curves_per_slice.values()) / len(curves_per_slice)
