"""Run a Question-API controller over episodes and grade it, out of the controller's reach.

The evaluator holds the slice's arrays (gold answers included); each episode hands the
controller a fresh :class:`~ttsgym.env.question.Question` that holds none of that, takes the
answer ``solve`` returns and grades it here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ttsgym.env.protocols import branch_order
from ttsgym.env.question import BranchPool, BudgetExhausted, Question, TracedQuestion


@dataclass
class EpisodeResults:
    """Per-episode outcomes, arrays shaped (seeds, questions)."""

    seeds: np.ndarray
    question_ids: np.ndarray
    correct: np.ndarray
    tokens: np.ndarray
    seq_tokens: np.ndarray
    opened: np.ndarray
    traces: list[list[dict[str, Any]]] | None = None

    @property
    def accuracy(self) -> float:
        """Percent correct over all episodes."""
        return float(self.correct.mean() * 100.0)

    @classmethod
    def empty(cls, seeds: Sequence[int], question_ids: np.ndarray) -> EpisodeResults:
        shape = (len(seeds), len(question_ids))
        return cls(
            seeds=np.asarray(seeds, dtype=np.int64), question_ids=np.asarray(question_ids),
            correct=np.zeros(shape, bool), tokens=np.zeros(shape, np.int64),
            seq_tokens=np.zeros(shape, np.int64), opened=np.zeros(shape, np.int32),
        )


class ControllerError(RuntimeError):
    """A controller's ``solve`` raised; the message names the question and seed, the cause is
    the controller's own exception."""


class Grader:
    """The gold side of a slice: which canonical answer is right for each question."""

    def __init__(self, arrays: Any) -> None:
        self._gold = [arrays.class_names(q)[int(arrays.gold_cls[q])] for q in range(arrays.n_questions)]

    def __call__(self, q: int, answer: object) -> bool:
        return isinstance(answer, str) and answer == self._gold[q]


class PoolCache:
    """Python branch pools of a slice, built on first use (a few hundred µs per question)."""

    def __init__(self, arrays: Any) -> None:
        self._arrays = arrays
        self._pools: dict[int, BranchPool] = {}

    def __getitem__(self, q: int) -> BranchPool:
        pool = self._pools.get(q)
        if pool is None:
            pool = self._pools[q] = BranchPool.from_arrays(self._arrays, q)
        return pool


def fresh_controller(make_controller: Callable[[], Any], seed: int) -> Any:
    """The controller for one seed, made after seeding Python's and NumPy's global random state
    with it, so results do not depend on how seeds are split across workers or faces."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    return make_controller()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def run_episodes(
    make_controller: Callable[[], Any],
    arrays: Any,
    seeds: Sequence[int],
    *,
    questions: Sequence[int] | None = None,
    protocol: str = "autotts",
    kappa: int = 0,
    budget: int | None = None,
    trace: bool = False,
    pools: PoolCache | None = None,
    on_episode: Callable[[], None] | None = None,
) -> EpisodeResults:
    """Evaluate a controller on ``seeds`` × ``questions`` of one slice.

    A fresh controller is made for every seed and Python's and NumPy's global random state are
    seeded with it, so results do not depend on how seeds are split across workers. A read
    that would break the budget ends the episode with the majority of the latest answers
    revealed so far.
    """
    qs = list(range(arrays.n_questions)) if questions is None else list(questions)
    out = EpisodeResults.empty(seeds, arrays.question_ids[qs])
    grade = Grader(arrays)
    pools = pools or PoolCache(arrays)
    cls = TracedQuestion if trace else Question
    traces: list[list[dict[str, Any]]] = []
    for si, seed in enumerate(seeds):
        controller = fresh_controller(make_controller, seed)
        for qi, q in enumerate(qs):
            pool = pools[q]
            question = cls(pool, branch_order(protocol, len(pool), seed), kappa=kappa, budget=budget)
            try:
                answer = controller.solve(question)
            except BudgetExhausted:
                answer = question.majority()
            except Exception as exc:
                raise ControllerError(
                    f"{type(controller).__name__}.solve failed on question {int(arrays.question_ids[q])} "
                    f"(seed {seed}): {type(exc).__name__}: {exc}"
                ) from exc
            if answer is not None and not isinstance(answer, str):
                raise TypeError(
                    f"{type(controller).__name__}.solve returned {type(answer).__name__} "
                    f"{_short(answer)} on question {int(arrays.question_ids[q])} (seed {seed}); "
                    "an answer must be a str or None"
                )
            out.correct[si, qi] = grade(q, answer)
            out.tokens[si, qi] = question.total_tokens
            out.seq_tokens[si, qi] = question.seq_tokens
            out.opened[si, qi] = question.n_opened
            if trace:
                traces.append(question.events)
            if on_episode is not None:
                on_episode()
    if trace:
        out.traces = traces
    return out
