"""The published baselines, written from their definitions against the Question API.

Definitions (as in shared/reference/autotts_aime24_reference.json):

- **SC@N** (self-consistency): N full reads, majority vote of the final answers.
- **ASC** (adaptive consistency): full reads one at a time, at most ``max_samples``; after each
  read from the second on, stop with the leading answer when
  ``1 - BetaCDF(0.5; top1 + 1, top2 + 1) > threshold`` (top1 ≥ top2 the two largest counts).
- **ESC** (early-stopping consistency): windows of ``window_size`` full reads; stop after a
  window whose answers are all equal, else the majority of everything read.
- **Parallel-Probe**: open ``num_chains`` branches and advance them in lockstep, one interval
  per step; prune branches whose latest answer disagrees with the majority ``prune_patience``
  steps running (after ``warm_up`` steps), stop once the majority has been stable for ``T``
  steps or nothing is left to read.

Ties in a majority go to the answer seen first. Each class also has a vectorised twin in
:mod:`ttsgym.controllers.batched` that runs all seeds of a slice at once; tests hold the two
to the same episode-by-episode results.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

from scipy.special import betainc

from ttsgym.controllers.base import Controller
from ttsgym.env.voting import majority


def _leader(counts: dict[str, int]) -> str | None:
    best, best_n = None, 0
    for answer, n in counts.items():
        if n > best_n:
            best, best_n = answer, n
    return best


@cache
def asc_confidence(top1: int, top2: int) -> float:
    """P(the leading answer is the true majority) under ASC's Beta model: 1 − I_½(top1+1, top2+1)."""
    return float(1.0 - betainc(top1 + 1, top2 + 1, 0.5))


class SelfConsistency(Controller):
    name: ClassVar[str] = "sc"
    summary: ClassVar[str] = "SC@N: N full reads, majority vote of their final answers"
    defaults: ClassVar[dict[str, Any]] = {"n": 64}

    def solve(self, question: Any) -> str | None:
        n = min(self.params["n"], question.pool_size)
        return majority([question.open_full() for _ in range(n)])


class AdaptiveConsistency(Controller):
    name: ClassVar[str] = "asc"
    summary: ClassVar[str] = "Adaptive-Consistency: full reads until a Beta-posterior stop rule fires"
    defaults: ClassVar[dict[str, Any]] = {"max_samples": 64, "threshold": 0.95}

    def solve(self, question: Any) -> str | None:
        threshold = self.params["threshold"]
        counts: dict[str, int] = {}
        for k in range(1, min(self.params["max_samples"], question.pool_size) + 1):
            answer = question.open_full()
            counts[answer] = counts.get(answer, 0) + 1
            if k >= 2:
                top = sorted(counts.values(), reverse=True)
                if asc_confidence(top[0], top[1] if len(top) > 1 else 0) > threshold:
                    return _leader(counts)
        return _leader(counts)


class EarlyStoppingConsistency(Controller):
    name: ClassVar[str] = "esc"
    summary: ClassVar[str] = "Early-Stopping Self-Consistency: stop after a unanimous window of full reads"
    defaults: ClassVar[dict[str, Any]] = {"max_samples": 64, "window_size": 8}

    def solve(self, question: Any) -> str | None:
        size = self.params["window_size"]
        if size < 1:
            raise ValueError("esc: window_size must be at least 1")
        limit = min(self.params["max_samples"], question.pool_size)
        seen: list[str] = []
        while len(seen) < limit:
            window = [question.open_full() for _ in range(min(size, limit - len(seen)))]
            seen += window
            if window.count(window[0]) == len(window):
                return window[0]
        return majority(seen)


class ParallelProbe(Controller):
    name: ClassVar[str] = "parallel_probe"
    summary: ClassVar[str] = (
        "Parallel-Probe: lockstep branches, prune persistent dissenters, stop on a stable majority"
    )
    defaults: ClassVar[dict[str, Any]] = {
        "num_chains": 64, "T": 14, "prune_patience": 8, "warm_up": 10, "max_steps": 100,
    }

    def solve(self, question: Any) -> str | None:
        p = self.params
        n = min(p["num_chains"], question.pool_size)
        latest: list[str] = []
        finished: list[bool] = []
        for _ in range(n):
            answer, _, done = question.probe_new()
            latest.append(answer)
            finished.append(done)
        pruned = [False] * n
        off_track = [0] * n
        previous: str | None = None
        stable = 0
        winner: str | None = None
        for step in range(p["max_steps"]):
            for i in range(n):
                if not pruned[i] and not finished[i]:
                    latest[i], finished[i] = question.probe_more(i)
            winner = majority([latest[i] for i in range(n) if not pruned[i]])
            if step >= p["warm_up"] and pruned.count(False) > 1:
                for i in range(n):
                    if not pruned[i] and not finished[i]:
                        off_track[i] = off_track[i] + 1 if latest[i] != winner else 0
                        if off_track[i] >= p["prune_patience"]:
                            pruned[i] = True
                            question.prune(i)
                winner = majority([latest[i] for i in range(n) if not pruned[i]])
            stable = stable + 1 if step > 0 and winner == previous else 0
            previous = winner
            if stable >= p["T"]:
                return winner
            if all(pruned[i] or finished[i] for i in range(n)):
                return winner
        return winner


# The configurations of the published reference table (shared/reference), as ttsgym specs.
PUBLISHED_SPECS: dict[str, str] = {
    "sc@64": "sc:n=64",
    "sc@16": "sc:n=16",
    "asc(64,0.95)": "asc:max_samples=64,threshold=0.95",
    "esc(64,8)": "esc:max_samples=64,window_size=8",
    "parallel_probe(64,K5,T40,pp7,wu15)": "parallel_probe:num_chains=64,T=40,prune_patience=7,warm_up=15",
    "parallel_probe(defaults)": "parallel_probe",
}

BASELINES: tuple[type[Controller], ...] = (
    SelfConsistency, AdaptiveConsistency, EarlyStoppingConsistency, ParallelProbe,
)
