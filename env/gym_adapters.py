"""Bridges between the two faces of the replay engine.

- :class:`EnvQuestion` is a Question-API object backed by a :class:`WidthDepthEnv`'s engine, so
  controllers written against the Question API (and AutoTTS controllers, through the aliases)
  drive the Gymnasium environment: ``open`` = BRANCH + PROBE, ``extend`` = CONTINUE + PROBE,
  ``open_full`` = the engine's full read (cost T, as the Question API charges; BRANCH +
  CONTINUE… would cost max(T, Δ·L), which differs when a branch ended before its last probe
  point), ``prune`` = PRUNE. It holds the engine only, never the env, so the gold answer stays
  out of the controller's reach as with :class:`~ttsgym.env.question.Question`.
- :func:`solve_episode` runs one controller episode through the env and grades it there.
- :func:`evaluate_policy` runs a Gymnasium policy (or a Question-API controller) over every
  (seed, question) of a protocol and returns the result row ``ttsgym eval`` produces.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from ttsgym.env.episodes import EpisodeResults, fresh_controller
from ttsgym.env.gym_env import PRUNED, Engine, WidthDepthEnv
from ttsgym.env.question import BranchPruned, BudgetExhausted, PoolExhausted
from ttsgym.env.results import results_table, summarize
from ttsgym.store import ReplayArrays, Store

_INF = float("inf")


def _engine_of(env: Any) -> Engine:
    if isinstance(env, Engine):
        return env
    base = getattr(env, "unwrapped", env)
    if not isinstance(base, WidthDepthEnv):
        raise TypeError(f"EnvQuestion needs a WidthDepthEnv (or a wrapper of one), got {type(env).__name__}")
    return base.engine


class EnvQuestion:
    """The Question API over a :class:`WidthDepthEnv` episode (call ``env.reset`` first).

    Branch indices are slots (opening order), as in the Question API. ``pool_size`` is the
    most branches the episode may open: ``min(pool, max_branches)``.
    """

    __slots__ = ("_e",)

    def __init__(self, env: Any) -> None:
        self._e = _engine_of(env)

    # -- reading ---------------------------------------------------------------------------

    def open(self) -> tuple[str, int, bool]:
        """BRANCH + PROBE: open the next branch, read and reveal its first interval."""
        e = self._e
        k = e.opened
        if k >= e.limit:
            raise PoolExhausted(f"all {e.limit} branches of this episode are open already")
        b = e.order[k]
        cost = e.interval + e.kappa if e.pool.probes[b] else e.pool.tokens[b]
        if e.tokens + cost > e.budget:
            raise BudgetExhausted(f"opening a branch costs {cost} tokens, {e.budget - e.tokens} left")
        e.branch()
        if e.depth[k] <= e.sl_n[k]:
            e.probe(k)
            return e.names[e.latest[k]], k, False
        return e.names[e.latest[k]], k, True

    def extend(self, i: int) -> tuple[str, bool]:
        """CONTINUE + PROBE: read branch i's next interval and reveal its answer."""
        e = self._e
        if i < 0 or i >= e.opened:
            raise IndexError(f"branch {i} is not open ({e.opened} branches are)")
        if e.status[i] == PRUNED:
            raise BranchPruned(f"branch {i} was pruned")
        d = e.depth[i]
        n = e.sl_n[i]
        if d > n:
            return e.names[e.sl_final[i]], True
        cost = e.interval + e.kappa if d < n else e.sl_tail[i]
        if e.tokens + cost > e.budget:
            raise BudgetExhausted(f"reading branch {i} costs {cost} tokens, {e.budget - e.tokens} left")
        e.cont(i)
        if d < n:
            e.probe(i)
            return e.names[e.sl_probes[i][d]], False
        return e.names[e.sl_final[i]], True

    def open_full(self) -> str:
        """Open the next branch and read it whole (cost T); its final answer."""
        e = self._e
        k = e.opened
        if k >= e.limit:
            raise PoolExhausted(f"all {e.limit} branches of this episode are open already")
        cost = e.pool.tokens[e.order[k]]
        if e.tokens + cost > e.budget:
            raise BudgetExhausted(f"a full read costs {cost} tokens, {e.budget - e.tokens} left")
        e.full()
        return e.names[e.sl_final[k]]

    def prune(self, i: int) -> None:
        """PRUNE(i): branch i stops voting; its depth and answers stay."""
        e = self._e
        if i < 0 or i >= e.opened:
            raise IndexError(f"branch {i} is not open ({e.opened} branches are)")
        if e.status[i] != PRUNED:
            e.prune(i)

    # -- state -----------------------------------------------------------------------------

    @property
    def interval(self) -> int:
        return self._e.interval

    @property
    def n_opened(self) -> int:
        return self._e.opened

    @property
    def pool_size(self) -> int:
        return self._e.limit

    @property
    def kappa(self) -> int:
        return self._e.kappa

    @property
    def budget(self) -> float:
        return self._e.budget

    @property
    def total_tokens(self) -> int:
        return self._e.tokens

    @property
    def seq_tokens(self) -> int:
        return self._e.seq

    @property
    def tokens_left(self) -> float:
        return self._e.budget - self._e.tokens

    def depth(self, i: int) -> int:
        return self._e.depth[self._check(i)]

    def depths(self) -> list[int]:
        return self._e.depth[: self._e.opened].tolist()

    def tokens_of(self, i: int) -> int:
        return self._e.sl_spent[self._check(i)]

    def is_finished(self, i: int) -> bool:
        return self._e.is_finished(self._check(i))

    def is_pruned(self, i: int) -> bool:
        return self._e.status[self._check(i)] == PRUNED

    def active(self) -> list[int]:
        """Open branches that are neither pruned nor finished, in opening order."""
        e = self._e
        return [i for i in range(e.opened) if e.status[i] == 1]

    def answers(self, i: int) -> list[str]:
        """Answers revealed so far on branch i, shallowest first."""
        e = self._e
        return [e.names[c] for _, c in e.revealed(self._check(i))]

    def latest(self, i: int) -> str | None:
        c = self._e.latest[self._check(i)]
        return self._e.names[c] if c >= 0 else None

    def signals(self, i: int) -> list[tuple[float | None, float | None]]:
        """``(score, confidence)`` of each revealed probe of branch i (``None`` if absent)."""
        e = self._e
        n = e.sl_n[self._check(i)]
        out = []
        for d, _ in e.revealed(i):
            if d <= n:
                s = e.sl_score[i][d - 1] if e.has_score else None
                c = e.sl_conf[i][d - 1] if e.has_conf else None
                out.append((s, c))
        return out

    def majority(self) -> str | None:
        """Majority of the latest answers of non-pruned branches (ties: first seen)."""
        c = self._e.leader
        return self._e.names[c] if c >= 0 else None

    def trace(self, event: str, **data: Any) -> None:
        """Controllers' own trace events are not recorded by the env face."""

    def _check(self, i: int) -> int:
        if i < 0 or i >= self._e.opened:
            raise IndexError(f"branch {i} is not open ({self._e.opened} branches are)")
        return i

    # -- AutoTTS aliases -------------------------------------------------------------------

    probe_new = open
    probe_more = extend
    get_new_branch_final_answer = open_full

    def get_seq_and_total_tokens(self) -> tuple[int, int]:
        return self._e.seq, self._e.tokens

    def get_cost_per_branch_active(self) -> list[int]:
        return self._e.sl_spent[: self._e.opened]


def solve_episode(env: Any, controller: Any, *, question: int | None = None,
                  permutation_seed: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Reset ``env``, let ``controller.solve`` play it through :class:`EnvQuestion`, submit its
    answer with ``answer_with`` and return the final ``info`` (a read past the budget ends the
    episode with the majority so far, as :func:`~ttsgym.env.episodes.run_episodes` does)."""
    options = {k: v for k, v in (("question", question), ("permutation_seed", permutation_seed))
               if v is not None}
    env.reset(seed=seed, options=options or None)
    q = EnvQuestion(env)
    try:
        answer = controller.solve(q)
    except BudgetExhausted:
        answer = q.majority()
    return env.unwrapped.answer_with(answer)[4]


def evaluate_policy(
    policy: Any,
    store: str | os.PathLike | Store | ReplayArrays,
    model: str | None = None,
    dataset: str | None = None,
    seeds: Iterable[int] = range(100),
    *,
    questions: Iterable[int] | None = None,
    name: str | None = None,
    **env_kwargs: Any,
) -> pa.Table:
    """Every (seed, question) of the protocol through a :class:`WidthDepthEnv`; one result row.

    ``policy`` is one of: a Gymnasium policy ``policy(obs, info) -> action`` (or an object
    with ``act(obs, info)``; its ``reset()``, if any, is called before each episode); a
    Question-API controller instance (anything with ``solve``); or a controller class, made
    fresh for every seed. For controllers Python's and NumPy's global random state are seeded
    per seed, as :func:`~ttsgym.env.episodes.run_episodes` does, so the rows agree with
    ``ttsgym eval``'s. Episode (seed s, question q) uses ``reset(options={"question": q,
    "permutation_seed": s})``: the ``autotts`` order of seed s. Returns a one-row table in
    :data:`ttsgym.env.results.RESULTS` form.
    """
    start = time.perf_counter()
    env = WidthDepthEnv(store, model, dataset, **env_kwargs)
    arrays = env._arrays
    qs = list(range(arrays.n_questions)) if questions is None else [int(q) for q in questions]
    seed_list = [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("no seeds to evaluate")
    res = EpisodeResults.empty(seed_list, np.asarray(arrays.question_ids)[qs])

    proto = policy
    make: Callable[[], Any] | None = None
    if isinstance(policy, type):
        make = policy
    elif hasattr(policy, "solve"):
        make = lambda: policy  # noqa: E731 - one shared instance, as the caller passed it
    act = getattr(policy, "act", policy) if make is None else None
    reset_hook = getattr(policy, "reset", None) if make is None else None
    if make is None and not callable(act):
        raise TypeError("policy must be callable(obs, info), have act(obs, info), or be a controller")

    for si, seed in enumerate(seed_list):
        controller = fresh_controller(make, seed) if make is not None else None
        for qi, q in enumerate(qs):
            if controller is not None:
                try:
                    info = solve_episode(env, controller, question=q, permutation_seed=seed)
                except Exception as exc:
                    raise RuntimeError(f"controller failed on question {int(arrays.question_ids[q])} "
                                       f"(seed {seed}): {type(exc).__name__}: {exc}") from exc
            else:
                if reset_hook is not None:
                    reset_hook()
                obs, info = env.reset(options={"question": q, "permutation_seed": seed})
                done = False
                while not done:
                    obs, _, terminated, truncated, info = env.step(act(obs, info))
                    done = terminated or truncated
            res.correct[si, qi] = info["correct"]
            res.tokens[si, qi] = info["tokens"]
            res.seq_tokens[si, qi] = info["seq_tokens"]
            res.opened[si, qi] = info["branches_opened"]

    if name is None:
        if make is not None:
            describe = getattr(proto if not isinstance(proto, type) else make(), "description", None)
            name = describe() if callable(describe) else getattr(proto, "name", type(proto).__name__)
        else:
            name = getattr(proto, "name", None) or getattr(proto, "__name__", None) or type(proto).__name__
    kind = getattr(proto, "kind", None) if make is not None else "gym-policy"
    beta = getattr(proto, "beta", None)
    row = summarize(
        res, model=env.arrays_model, dataset=env.arrays_dataset, controller=str(name),
        name=str(getattr(proto, "name", name)), kind=str(kind or "user"),
        beta=float(beta) if isinstance(beta, int | float) else None, protocol=env.protocol,
        kappa=env.kappa, budget=env.budget, synthetic=env.synthetic,
        seconds=time.perf_counter() - start,
    )
    return results_table([row])
