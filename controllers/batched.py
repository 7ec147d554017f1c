"""Vectorised twins of the baselines: every seed × question of a slice in one NumPy pass.

Each kernel follows its Question-API definition in :mod:`ttsgym.controllers.baselines` rule for
rule, over arrays shaped (episodes, branches) instead of one episode at a time; the tests
hold both to identical per-episode answers and token counts. Episodes are (seed, question)
pairs, seed-major. Answers are compared as class keys: ``seed_index · C + class_start[q] +
class id``, unique per episode and class, so one ``bincount`` counts votes in every episode
at once.

Kernels apply to the replay rules without a token budget; :func:`run_batched` returns
``None`` where they do not apply and the caller falls back to the Question API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ttsgym.controllers.baselines import (
    AdaptiveConsistency,
    EarlyStoppingConsistency,
    ParallelProbe,
    SelfConsistency,
    asc_confidence,
)
from ttsgym.env.episodes import EpisodeResults
from ttsgym.env.protocols import order_matrix


class _Slice:
    """The gathered per-episode view: first ``n`` branches of each episode's order."""

    def __init__(self, arrays: Any, seeds: Sequence[int], protocol: str, n: int) -> None:
        qs = np.arange(arrays.n_questions)
        sizes = np.unique(arrays.n_branches)
        if len(sizes) != 1:
            raise _Unsupported("questions have different pool sizes")
        orders = order_matrix(protocol, int(sizes[0]), seeds)  # (S, B)
        n = min(n, orders.shape[1])
        n_s, n_q = len(seeds), len(qs)
        self.n_seeds, self.n_questions, self.n = n_s, n_q, n
        total_classes = int(arrays.n_classes.sum())
        self.key_space = n_s * total_classes
        seed_base = np.repeat(np.arange(n_s, dtype=np.int64) * total_classes, n_q)  # (E,)
        self.q = np.tile(qs, n_s)  # (E,)
        pool = np.repeat(orders[:, :n], n_q, axis=0)  # (E, n) pool index of the k-th opened
        q2 = self.q[:, None]
        self.class_base = (seed_base + arrays.class_start[self.q])[:, None]  # (E, 1)
        self.tokens = arrays.tokens[q2, pool]
        self.n_probes = arrays.n_probes[q2, pool].astype(np.int64)
        self.final_key = self.class_base + arrays.final_cls[q2, pool]
        self.probe_start = arrays.probe_start[q2, pool]
        self.interval = arrays.interval[self.q].astype(np.int64)[:, None]
        self.gold_key = self.class_base[:, 0] + arrays.gold_cls[self.q]
        # A plain view of the (memory-mapped) probes: np.memmap indexing goes through Python.
        self.probe_cls = np.asarray(arrays.probe_cls).view(np.ndarray)

    def results(self, seeds: Sequence[int], arrays: Any, answer_key: np.ndarray, tokens: np.ndarray,
                seq: np.ndarray, opened: np.ndarray) -> EpisodeResults:
        shape = (self.n_seeds, self.n_questions)
        return EpisodeResults(
            seeds=np.asarray(seeds, dtype=np.int64), question_ids=np.asarray(arrays.question_ids),
            correct=(answer_key == self.gold_key).reshape(shape),
            tokens=tokens.reshape(shape).astype(np.int64),
            seq_tokens=seq.reshape(shape).astype(np.int64),
            opened=np.broadcast_to(opened, answer_key.shape).reshape(shape).astype(np.int32),
        )


class _Unsupported(Exception):
    pass


def majority_keys(keys: np.ndarray, valid: np.ndarray | None, key_space: int) -> np.ndarray:
    """Row-wise majority of class keys, ties to the earliest column; -1 where a row is empty.

    Entries equal to ``key_space`` (or masked out by ``valid``) do not vote.
    """
    n = keys.shape[1]
    k = keys if valid is None else np.where(valid, keys, key_space)
    tally = np.bincount(k.ravel(), minlength=key_space + 1)
    tally[key_space] = 0
    counts = tally[k]
    pos = np.argmax(counts * (n + 1) - np.arange(n), axis=1)
    rows = np.arange(keys.shape[0])
    return np.where(counts[rows, pos] > 0, k[rows, pos], -1).astype(keys.dtype, copy=False)


def _full_read_costs(s: _Slice) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative tokens and running max over the first k full reads, k = 1..n."""
    return np.cumsum(s.tokens, axis=1), np.maximum.accumulate(s.tokens, axis=1)


def _sc(c: SelfConsistency, s: _Slice, kappa: int) -> tuple:
    answer = majority_keys(s.final_key, None, s.key_space)
    return answer, s.tokens.sum(1), s.tokens.max(1), s.n


def _stop_after(s: _Slice, stop_at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and sequential tokens of episodes that made ``stop_at`` full reads."""
    total, seq = _full_read_costs(s)
    rows = np.arange(len(stop_at))
    return total[rows, stop_at - 1], seq[rows, stop_at - 1]


def _asc(c: AdaptiveConsistency, s: _Slice, kappa: int) -> tuple:
    m, threshold = s.n, c.params["threshold"]
    table = np.array([[asc_confidence(a, b) > threshold for b in range(m + 1)] for a in range(m + 1)])
    e = len(s.q)
    counts = np.zeros(s.key_space, np.int32)
    first = np.full(s.key_space, m, np.int32)
    top1 = np.zeros(e, np.int32)
    top2 = np.zeros(e, np.int32)
    leader = np.full(e, -1, np.int64)
    leader_first = np.full(e, m, np.int32)
    stop_at = np.full(e, m, np.int64)
    answer = np.full(e, -1, np.int64)
    running = np.ones(e, bool)
    for k in range(m):
        key = s.final_key[:, k]
        counts[key] += 1  # one read per episode, so keys are distinct within this update
        n = counts[key]
        f = np.minimum(first[key], k)
        first[key] = f
        is_leader = key == leader
        beats = ~is_leader & ((n > top1) | ((n == top1) & (f < leader_first)))
        top2 = np.where(is_leader, top2,
                        np.where(n > top1, top1, np.where(n == top1, n, np.maximum(top2, n))))
        top1 = np.where(is_leader | (n > top1), n, top1)
        leader = np.where(beats, key, leader)
        leader_first = np.where(beats, f, leader_first)
        if k >= 1:
            stop = running & table[top1, top2]
            stop_at[stop] = k + 1
            answer[stop] = leader[stop]
            running &= ~stop
    answer[running] = leader[running]
    tokens, seq = _stop_after(s, stop_at)
    return answer, tokens, seq, stop_at


def _esc(c: EarlyStoppingConsistency, s: _Slice, kappa: int) -> tuple:
    size = c.params["window_size"]
    if size < 1:
        raise ValueError("esc: window_size must be at least 1")
    e = len(s.q)
    stop_at = np.full(e, s.n, np.int64)
    answer = majority_keys(s.final_key, None, s.key_space)
    running = np.ones(e, bool)
    for start in range(0, s.n, size):
        window = s.final_key[:, start : start + size]
        unanimous = running & (window == window[:, :1]).all(axis=1)
        stop_at[unanimous] = start + window.shape[1]
        answer[unanimous] = window[unanimous, 0]
        running &= ~unanimous
    tokens, seq = _stop_after(s, stop_at)
    return answer, tokens, seq, stop_at


def _pp(c: ParallelProbe, s: _Slice, kappa: int) -> tuple:
    p = c.params
    e, n = len(s.q), s.n
    no_vote = s.key_space
    # Keys fit int32 here, and branch-free blends (a + mask * (b - a)) over int32 run several
    # times faster than np.where or masked assignment with the irregular masks of this loop.
    kt = np.int32 if no_vote < np.iinfo(np.int32).max else np.int64
    has_probe = s.n_probes >= 1
    first_probe = s.class_base + s.probe_cls[np.where(has_probe, s.probe_start, 0)]
    # Per running episode, compacted together whenever episodes stop. nxt/end: position of a
    # branch's next probe in probe_cls and one past its last.
    st = {
        "nxt": s.probe_start + has_probe,
        "end": s.probe_start + s.n_probes,
        "final": s.final_key.astype(kt),
        "base": np.broadcast_to(s.class_base, (e, n)).astype(kt),
        "step_cost": np.broadcast_to(s.interval + kappa, (e, n)).astype(np.int64),
        "tail_cost": np.maximum(0, s.tokens - s.interval * s.n_probes),
        # Opening: every branch reads its first interval (a branch without probes finishes).
        "latest": np.where(has_probe, first_probe, s.final_key).astype(kt),
        "finished": ~has_probe,
        "spent": np.where(has_probe, s.interval + kappa, s.tokens).astype(np.int64),
        "pruned": np.zeros((e, n), bool),
        "off": np.zeros((e, n), np.int32),
        "previous": np.full(e, -2, kt),
        "stable": np.zeros(e, np.int32),
        "rows": np.arange(e),
    }
    last_probe = len(s.probe_cls) - 1
    answer = np.full(e, -1, np.int64)
    spent_out = np.zeros((e, n), np.int64)
    for step in range(p["max_steps"]):
        latest, finished, pruned = st["latest"], st["finished"], st["pruned"]
        advance = ~(pruned | finished)
        read_probe = advance & (st["nxt"] < st["end"])
        read_final = advance & ~read_probe
        probe = st["base"] + s.probe_cls[np.minimum(st["nxt"], last_probe)]
        latest += read_probe * (probe - latest) + read_final * (st["final"] - latest)
        finished |= read_final
        st["nxt"] += read_probe
        st["spent"] += st["step_cost"] * read_probe + st["tail_cost"] * read_final
        winner = majority_keys(latest, None, no_vote)  # pruned branches hold the non-voting key
        if step >= p["warm_up"]:
            unfinished = ((~pruned).sum(1) > 1)[:, None] & ~(pruned | finished)
            off = st["off"]
            off += unfinished
            off *= ~unfinished | (latest != winner[:, None])  # reset where on track
            newly = unfinished & (off >= p["prune_patience"])
            if newly.any():
                pruned |= newly
                latest += newly * (no_vote - latest)
                changed = newly.any(axis=1)
                winner[changed] = majority_keys(latest[changed], None, no_vote)
        stable = st["stable"]
        stable += 1
        stable *= (winner == st["previous"]) & (step > 0)
        st["previous"] = winner
        stop = (stable >= p["T"]) | (pruned | finished).all(axis=1)
        if step == p["max_steps"] - 1:
            stop[:] = True
        if stop.any():
            done = st["rows"][stop]
            answer[done] = winner[stop]
            spent_out[done] = st["spent"][stop]
            keep = ~stop
            st = {k: v[keep] for k, v in st.items()}
            if not len(st["rows"]):
                break
    if len(st["rows"]):  # only when max_steps <= 0: no step ran, so there is no winner
        spent_out[st["rows"]] = st["spent"]
    return answer, spent_out.sum(1), spent_out.max(1), n


_KERNELS = {
    SelfConsistency: (_sc, "n"),
    AdaptiveConsistency: (_asc, "max_samples"),
    EarlyStoppingConsistency: (_esc, "max_samples"),
    ParallelProbe: (_pp, "num_chains"),
}


def run_batched(controller: Any, arrays: Any, seeds: Sequence[int], *, protocol: str = "autotts",
                kappa: int = 0, budget: int | None = None) -> EpisodeResults | None:
    """All episodes of a built-in baseline at once; ``None`` when no kernel applies."""
    entry = _KERNELS.get(type(controller))
    if entry is None or budget is not None:
        return None
    kernel, width = entry
    try:
        s = _Slice(arrays, seeds, protocol, controller.params[width])
    except _Unsupported:
        return None
    answer, tokens, seq, opened = kernel(controller, s, kappa)
    return s.results(seeds, arrays, answer, tokens, seq, opened)
