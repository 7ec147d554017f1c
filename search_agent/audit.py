"""The non-anticipation audit: the guarantee that a controller used only what it had read.

For a sample of scored runs (slice, β, seed: the whole seed's sequence of questions, because one
controller object serves them all) the parent builds two versions of every episode, each in
opening order so the worker needs no permutation:

- *original*: the episode's branches as scored;
- *perturbed*: every cell the controller did not reveal in the scored run replaced by other real
  data — unopened branches by branches of other questions, an unfinished opened branch keeps its
  revealed probes and continues with another branch's later probes, length and final answer;
  finished branches and the pool size stay.

Both run in fresh sandbox processes. A controller that depends only on what it read makes the
same calls and gives the same answers on both; one that peeked (through any channel: the
static checks may miss some) or is nondeterministic does not, and is rejected. The original
re-run must also reproduce the scored run, and its reported costs must match the parent's own
replay of its calls.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from typing import Any

from ttsgym.env.question import BranchPool, Question

MAX_TRACE_EVENTS = 400


def choose_runs(slices: Sequence[tuple[str, str]], betas: Sequence[float], seeds: Sequence[int], n: int,
                rng: random.Random) -> list[tuple[tuple[str, str], float, int]]:
    """``n`` distinct (slice, β, seed) runs drawn at random (the first at the largest β, where
    controllers read most), with randomness the candidate cannot predict."""
    grid = [(s, b, seed) for s in slices for b in betas for seed in seeds]
    if n >= len(grid):
        return grid
    top = max(betas)
    first = rng.choice([g for g in grid if g[1] == top])
    rest = rng.sample([g for g in grid if g != first], n - 1) if n > 1 else []
    return [first, *rest]


def _tuple(probes: list, tokens: list, finals: list, interval: int, scores: list | None,
           confs: list | None) -> tuple:
    return (probes, tokens, finals, interval, scores, confs)


def original_episode(pool: BranchPool, order: Sequence[int]) -> tuple:
    """The episode's pool rearranged into opening order."""
    return _tuple([pool.probes[b] for b in order], [pool.tokens[b] for b in order],
                  [pool.finals[b] for b in order], pool.interval,
                  None if pool.scores is None else [pool.scores[b] for b in order],
                  None if pool.confidences is None else [pool.confidences[b] for b in order])


def donor_index(pools: Sequence[BranchPool]) -> tuple[list[tuple[int, int]], list[int]]:
    """Every (question, branch) of a slice sorted by probe count, built once per slice, so the
    donors deep enough for d revealed probes are a suffix found by bisection."""
    entries = sorted(((q, b) for q, p in enumerate(pools) for b in range(len(p))),
                     key=lambda x: len(pools[x[0]].probes[x[1]]))
    return entries, [len(pools[q].probes[b]) for q, b in entries]


def donor_index_from_arrays(arrays: Any) -> tuple[list[tuple[int, int]], list[int]]:
    """:func:`donor_index` from a slice's compiled arrays, without building its pools (the same
    order: question-major, stably sorted by probe count)."""
    import numpy as np

    n = np.asarray(arrays.n_branches)
    width = np.asarray(arrays.n_probes).shape[1]
    qs, bs = np.nonzero(np.arange(width)[None, :] < n[:, None])
    lengths = np.asarray(arrays.n_probes)[qs, bs]
    order = np.argsort(lengths, kind="stable")
    return list(zip(qs[order].tolist(), bs[order].tolist(), strict=True)), lengths[order].tolist()


def perturbed_episode(pools: Sequence[BranchPool], q: int, order: Sequence[int], depths: Sequence[int],
                      rng: random.Random, index: tuple[list, list[int]] | None = None) -> tuple:
    """Question ``q``'s episode in opening order with every unrevealed cell replaced by data
    from other questions' branches (``pools`` is the slice).

    ``depths[k]`` is how many reads the scored run made on the k-th opened branch; branches at
    or past ``len(depths)`` were never opened.
    """
    pool = pools[q]
    entries, lengths = index or donor_index(pools)
    probes, tokens, finals, scores, confs = [], [], [], [], []
    has_scores, has_confs = pool.scores is not None, pool.confidences is not None
    for k, b in enumerate(order):
        d = depths[k] if k < len(depths) else 0
        n = len(pool.probes[b])
        if d > n:  # finished: everything about it was revealed
            probes.append(pool.probes[b])
            tokens.append(pool.tokens[b])
            finals.append(pool.finals[b])
            scores.append(pool.scores[b] if has_scores else None)
            confs.append(pool.confidences[b] if has_confs else None)
            continue
        donor = _draw(entries, bisect.bisect_left(lengths, d), q, rng)
        if donor is None:  # no other question has a branch that deep: keep this one
            dp, db = pool, b
            probes.append(pool.probes[b])
        else:
            dp, db = pools[donor[0]], donor[1]
            probes.append(tuple(pool.probes[b][:d]) + tuple(dp.probes[db][d:]))
        tokens.append(dp.tokens[db])
        finals.append(dp.finals[db])
        scores.append(_signal(pool.scores, b, dp.scores, db, d) if has_scores else None)
        confs.append(_signal(pool.confidences, b, dp.confidences, db, d) if has_confs else None)
    return _tuple(probes, tokens, finals, pool.interval, scores if has_scores else None,
                  confs if has_confs else None)


def _draw(entries: list[tuple[int, int]], lo: int, q: int, rng: random.Random) -> tuple[int, int] | None:
    """A random entry at or after ``lo`` that belongs to another question than ``q``."""
    if lo >= len(entries):
        return None
    for _ in range(32):
        e = entries[rng.randrange(lo, len(entries))]
        if e[0] != q:
            return e
    others = [e for e in entries[lo:] if e[0] != q]
    return rng.choice(others) if others else None


def _signal(own: list, b: int, donor: list | None, db: int, d: int) -> tuple:
    tail = donor[db][d:] if donor is not None else (0.0,) * 0
    return tuple(own[b][:d]) + tuple(tail)


def _op(event: dict) -> str:
    op = event.get("op")
    if op == "event":
        return f"trace({event.get('event')!r})"
    return f"{op}({event['branch']})" if op in ("extend", "prune") else f"{op}()"


def first_difference(a_events: list, b_events: list) -> str | None:
    """Where two call sequences part: ``None`` when equal."""
    for k, (x, y) in enumerate(zip(a_events, b_events, strict=False)):
        if x != y:
            if _op(x) != _op(y):
                return f"call {k + 1} changed from {_op(x)} to {_op(y)}"
            return f"call {k + 1} ({_op(x)}) changed its result"
    if len(a_events) != len(b_events):
        return f"it made {len(b_events)} calls instead of {len(a_events)}"
    return None


def replay_costs(pool: tuple, events: list) -> str | None:
    """Replay the reported calls on a trusted Question; a mismatch in answers or costs means the
    worker's accounting cannot be trusted."""
    q = Question(BranchPool(*pool))
    for k, e in enumerate(events):
        op = e.get("op")
        before = q.total_tokens
        try:
            if op == "open":
                answer, i, finished = q.open()
                got = {"branch": i, "answer": answer, "finished": finished}
            elif op == "extend":
                answer, finished = q.extend(int(e["branch"]))
                got = {"branch": e["branch"], "answer": answer, "finished": finished}
            elif op == "open_full":
                got = {"branch": q.n_opened, "answer": q.open_full(), "finished": True}
            elif op == "prune":
                q.prune(int(e["branch"]))
                got = {"branch": e["branch"]}
            elif op == "event":
                continue
            else:
                return f"call {k + 1}: unknown operation {op!r}"
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            return f"call {k + 1} ({op}) cannot be replayed: {exc}"
        got["cost"] = q.total_tokens - before
        if any(e.get(key) != value for key, value in got.items()):
            return f"call {k + 1} ({op}) reported {e!r}, a replay gives {got!r}"
    return None


def compact_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trace of one episode without running totals, capped at :data:`MAX_TRACE_EVENTS`."""
    out = [{k: v for k, v in e.items() if k != "total"} for e in events[:MAX_TRACE_EVENTS]]
    if len(events) > MAX_TRACE_EVENTS:
        out.append({"op": "truncated", "more": len(events) - MAX_TRACE_EVENTS})
    return out
