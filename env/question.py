"""The Question API: one replay episode as a controller sees it (DESIGN §3).

A controller receives a :class:`Question` and calls it to open branches, extend them one probe
interval at a time, read them in full and prune them. Answers come back as canonical strings.
The object holds only what the controller may see: the recorded answers and lengths of the
question's branches in the episode's order. The gold answer and correctness live in the
evaluator (:mod:`ttsgym.env.episodes`) and are never reachable from here.

Replay rules (Δ = probe interval, κ = per-probe overhead, branch b has probes p[1..L],
length T and final answer f):

- reading the next interval returns the next probe answer, costs Δ + κ, not finished;
- once the L probes are used, the next read returns f, costs max(0, T − Δ·L), finished
  (a branch with L = 0 finishes on its first read, costing T);
- a full read opens the next branch and returns f at once, costing T;
- reading a finished branch again returns f at no cost;
- a pruned branch keeps its depth and answers but cannot be read;
- with a token budget, a read that would exceed it raises :class:`BudgetExhausted` and
  changes nothing.

The AutoTTS method names (``probe_new``, ``probe_more``, ``get_new_branch_final_answer``,
``get_seq_and_total_tokens``, ``get_cost_per_branch_active``) are aliases, so AutoTTS
controllers run unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ttsgym.env.voting import majority


class BudgetExhausted(RuntimeError):
    """The read asked for would take the episode past its token budget."""


class PoolExhausted(ValueError):
    """Every branch of the question's pool is open already (a ValueError, as in AutoTTS)."""


class BranchPruned(ValueError):
    """The branch was pruned and cannot be read any more."""


class BranchPool:
    """One question's recorded branches as Python objects, built once and shared by episodes.

    ``probes[b]`` is the tuple of probe answers of pool branch ``b``, ``tokens[b]`` its
    length, ``finals[b]`` its final answer; ``scores``/``confidences`` hold per-probe step
    signals (``None`` when the store has none).
    """

    __slots__ = ("confidences", "finals", "interval", "probes", "scores", "tokens")

    def __init__(self, probes: list[tuple[str, ...]], tokens: list[int], finals: list[str],
                 interval: int, scores: list[tuple[float, ...]] | None = None,
                 confidences: list[tuple[float, ...]] | None = None) -> None:
        self.probes = probes
        self.tokens = tokens
        self.finals = finals
        self.interval = interval
        self.scores = scores
        self.confidences = confidences

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_arrays(cls, arrays: Any, q: int, *, class_ids: bool = False) -> BranchPool:
        """The pool of question ``q`` of a :class:`~ttsgym.store.ReplayArrays`; answers are
        canonical strings, or the question's class ids with ``class_ids=True``."""
        n = int(arrays.n_branches[q])
        counts = arrays.n_probes[q, :n].tolist()
        start = int(arrays.probe_start[q, 0])
        stop = start + sum(counts)
        probes = np.asarray(arrays.probe_cls[start:stop]).tolist()
        finals = np.asarray(arrays.final_cls[q, :n]).tolist()
        if not class_ids:
            names = arrays.class_names(q)
            probes = [names[c] for c in probes]
            finals = [names[c] for c in finals]

        def ragged(values: list) -> list[tuple]:
            out, pos = [], 0
            for c in counts:
                out.append(tuple(values[pos : pos + c]))
                pos += c
            return out

        signals = {}
        for name in ("score", "confidence"):
            column = getattr(arrays, name)
            signals[name] = None if column is None else ragged(np.asarray(column[start:stop]).tolist())
        return cls(probes=ragged(probes), tokens=arrays.tokens[q, :n].tolist(), finals=finals,
                   interval=int(arrays.interval[q]), scores=signals["score"],
                   confidences=signals["confidence"])


_INF = float("inf")


class Question:
    """One episode over a question's branch pool, in a fixed opening order.

    Branch indices are the order of opening: 0 is the first branch opened, and so on.
    """

    __slots__ = ("_budget", "_depth", "_fin", "_kappa", "_opened", "_order", "_pool_conf",
                 "_pool_fin", "_pool_probes", "_pool_score", "_pool_tok", "_probes", "_pruned",
                 "_seq", "_size", "_spent", "_step_cost", "_tok", "_total", "interval")

    def __init__(self, pool: BranchPool, order: tuple[int, ...] | list[int] | None = None, *,
                 kappa: int = 0, budget: int | None = None) -> None:
        self._pool_probes = pool.probes
        self._pool_tok = pool.tokens
        self._pool_fin = pool.finals
        self._pool_score = pool.scores
        self._pool_conf = pool.confidences
        self._order = tuple(range(len(pool))) if order is None else tuple(order)
        self._size = len(self._order)
        self.interval = pool.interval
        self._kappa = kappa
        self._step_cost = pool.interval + kappa
        self._budget = _INF if budget is None else budget
        self._probes: list[tuple[str, ...]] = []
        self._tok: list[int] = []
        self._fin: list[str] = []
        self._depth: list[int] = []
        self._spent: list[int] = []
        self._pruned: list[bool] = []
        self._opened = 0
        self._total = 0
        self._seq = 0

    # -- reading ---------------------------------------------------------------------------

    def _open_next(self) -> int:
        k = self._opened
        if k >= self._size:
            raise PoolExhausted(f"all {self._size} branches of this question are open already")
        b = self._order[k]
        self._probes.append(self._pool_probes[b])
        self._tok.append(self._pool_tok[b])
        self._fin.append(self._pool_fin[b])
        self._depth.append(0)
        self._spent.append(0)
        self._pruned.append(False)
        self._opened = k + 1
        return k

    def open(self) -> tuple[str, int, bool]:
        """Open the next branch and read its first interval: ``(answer, index, finished)``."""
        if self._opened < self._size:
            b = self._order[self._opened]
            probes = self._pool_probes[b]
            cost = self._step_cost if probes else self._pool_tok[b]
            if self._total + cost > self._budget:
                raise BudgetExhausted(f"opening a branch costs {cost} tokens, {self.tokens_left} left")
        i = self._open_next()
        answer, finished = Question.extend(self, i)  # the plain read: a traced open logs once
        return answer, i, finished

    def extend(self, i: int) -> tuple[str, bool]:
        """Read the next interval of open branch ``i``: ``(answer, finished)``."""
        if i < 0 or i >= self._opened:
            raise IndexError(f"branch {i} is not open ({self._opened} branches are)")
        if self._pruned[i]:
            raise BranchPruned(f"branch {i} was pruned")
        d = self._depth[i]
        probes = self._probes[i]
        n = len(probes)
        if d < n:
            cost = self._step_cost
            answer, finished = probes[d], False
        elif d == n:
            cost = self._tok[i] - self.interval * n
            if cost < 0:
                cost = 0
            answer, finished = self._fin[i], True
        else:
            return self._fin[i], True
        total = self._total + cost
        if total > self._budget:
            raise BudgetExhausted(f"reading branch {i} costs {cost} tokens, {self.tokens_left} left")
        self._total = total
        self._depth[i] = d + 1
        spent = self._spent[i] + cost
        self._spent[i] = spent
        if spent > self._seq:
            self._seq = spent
        return answer, finished

    def open_full(self) -> str:
        """Open the next branch and read it to its end at once (cost T); its final answer."""
        if self._opened < self._size:
            cost = self._pool_tok[self._order[self._opened]]
            if self._total + cost > self._budget:
                raise BudgetExhausted(f"a full read costs {cost} tokens, {self.tokens_left} left")
        i = self._open_next()
        cost = self._tok[i]
        self._depth[i] = len(self._probes[i]) + 1
        self._spent[i] = cost
        self._total += cost
        if cost > self._seq:
            self._seq = cost
        return self._fin[i]

    def prune(self, i: int) -> None:
        """Mark open branch ``i`` inactive; it keeps its depth and revealed answers."""
        if i < 0 or i >= self._opened:
            raise IndexError(f"branch {i} is not open ({self._opened} branches are)")
        self._pruned[i] = True

    # -- state -----------------------------------------------------------------------------

    @property
    def n_opened(self) -> int:
        return self._opened

    @property
    def pool_size(self) -> int:
        """How many branches the episode may open."""
        return self._size

    @property
    def kappa(self) -> int:
        return self._kappa

    @property
    def budget(self) -> float:
        """The token budget (``inf`` when there is none)."""
        return self._budget

    @property
    def total_tokens(self) -> int:
        return self._total

    @property
    def seq_tokens(self) -> int:
        """Tokens of the deepest branch: the latency proxy."""
        return self._seq

    @property
    def tokens_left(self) -> float:
        return self._budget - self._total

    def depth(self, i: int) -> int:
        """Reads done on branch ``i``; a finished branch has depth L + 1."""
        return self._depth[self._check(i)]

    def depths(self) -> list[int]:
        return list(self._depth)

    def tokens_of(self, i: int) -> int:
        """Tokens read so far on branch ``i``."""
        return self._spent[self._check(i)]

    def is_finished(self, i: int) -> bool:
        return self._depth[self._check(i)] > len(self._probes[i])

    def is_pruned(self, i: int) -> bool:
        return self._pruned[self._check(i)]

    def active(self) -> list[int]:
        """Open branches that are neither pruned nor finished, in opening order."""
        return [i for i in range(self._opened)
                if not self._pruned[i] and self._depth[i] <= len(self._probes[i])]

    def answers(self, i: int) -> list[str]:
        """Answers revealed so far on branch ``i``, in reading order."""
        d = self._depth[self._check(i)]
        probes = self._probes[i]
        return list(probes[:d]) if d <= len(probes) else [*probes, self._fin[i]]

    def latest(self, i: int) -> str | None:
        """The last revealed answer of branch ``i`` (``None`` before its first read)."""
        d = self._depth[self._check(i)]
        if d == 0:
            return None
        probes = self._probes[i]
        return probes[d - 1] if d <= len(probes) else self._fin[i]

    def signals(self, i: int) -> list[tuple[float | None, float | None]]:
        """``(score, confidence)`` of each revealed probe of branch ``i`` (``None`` if absent)."""
        d = min(self._depth[self._check(i)], len(self._probes[i]))
        b = self._order[i]
        scores = self._pool_score[b][:d] if self._pool_score is not None else (None,) * d
        confs = self._pool_conf[b][:d] if self._pool_conf is not None else (None,) * d
        return list(zip(scores, confs, strict=True))

    def majority(self) -> str | None:
        """Majority of the latest answers of non-pruned open branches (ties: first seen)."""
        return majority(self.latest(i) for i in range(self._opened) if not self._pruned[i])

    def trace(self, event: str, **data: Any) -> None:
        """Record a controller's own event in the episode trace (nothing when tracing is off)."""

    def _check(self, i: int) -> int:
        if i < 0 or i >= self._opened:
            raise IndexError(f"branch {i} is not open ({self._opened} branches are)")
        return i

    # -- AutoTTS aliases -------------------------------------------------------------------

    probe_new = open
    probe_more = extend
    get_new_branch_final_answer = open_full

    def get_seq_and_total_tokens(self) -> tuple[int, int]:
        return self._seq, self._total

    def get_cost_per_branch_active(self) -> list[int]:
        return list(self._spent)


class TracedQuestion(Question):
    """A :class:`Question` that records every call: the execution trace fed back to authors."""

    __slots__ = ("events",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[dict[str, Any]] = []

    def _log(self, op: str, before: int, **data: Any) -> None:
        self.events.append({"op": op, **data, "cost": self._total - before, "total": self._total})

    def open(self) -> tuple[str, int, bool]:
        before = self._total
        answer, i, finished = super().open()
        self._log("open", before, branch=i, answer=answer, finished=finished)
        return answer, i, finished

    def extend(self, i: int) -> tuple[str, bool]:
        before = self._total
        answer, finished = super().extend(i)
        self._log("extend", before, branch=i, answer=answer, finished=finished)
        return answer, finished

    def open_full(self) -> str:
        before = self._total
        answer = super().open_full()
        self._log("open_full", before, branch=self._opened - 1, answer=answer, finished=True)
        return answer

    def prune(self, i: int) -> None:
        super().prune(i)
        self._log("prune", self._total, branch=i)

    def trace(self, event: str, **data: Any) -> None:
        self.events.append({"op": "event", "event": event, **data})

    probe_new = open
    probe_more = extend
    get_new_branch_final_answer = open_full
