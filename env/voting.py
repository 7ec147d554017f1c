"""Majority voting with the published tie rule: a tie goes to the answer seen first."""

from __future__ import annotations

from collections.abc import Iterable


def majority(answers: Iterable[str | None]) -> str | None:
    """The most frequent answer; among equals, the one that appeared first. ``None`` is skipped."""
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    best, best_n = None, 0
    for a, n in counts.items():  # dicts keep first-seen order, so `>` keeps the earliest
        if n > best_n:
            best, best_n = a, n
    return best


def vote_counts(answers: Iterable[str | None]) -> dict[str, int]:
    """Counts per answer in first-seen order."""
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return counts
