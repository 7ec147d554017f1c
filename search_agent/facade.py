"""The Question facade a candidate controller holds: the public Question API and nothing else.

The facade's slots hold the *bound methods* of the real :class:`~ttsgym.env.question.Question`
and its fixed values, so a call through it costs what a call on the Question costs (one slot
read, then the same bound method). The dynamic counters (tokens, branches opened) are
properties. The facade has no ``__dict__``, and no public attribute leads to the pool.

What it does not do is make the real object unreachable: Python has no such boundary (a bound
method knows its ``__self__``). The static checks forbid the syntax that reaches it and the
non-anticipation audit catches any controller that used it anyway; the process the facade
lives in holds no gold answers or correctness at all (the parent grades).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from ttsgym.env.question import Question

# The public Question API: methods (bound in slots) and values fixed for the episode.
METHODS = ("open", "extend", "open_full", "prune", "depth", "depths", "tokens_of", "is_finished",
           "is_pruned", "active", "answers", "latest", "signals", "majority", "trace",
           "probe_new", "probe_more", "get_new_branch_final_answer", "get_seq_and_total_tokens",
           "get_cost_per_branch_active")
CONSTANTS = ("interval", "pool_size", "kappa", "budget")
COUNTERS = ("n_opened", "total_tokens", "seq_tokens", "tokens_left")


class QuestionView:
    """A controller's view of one episode (see :data:`METHODS`, :data:`CONSTANTS`, :data:`COUNTERS`)."""

    __slots__ = (*METHODS, *CONSTANTS, "_q")

    def __init__(self, question: Question) -> None:
        for name in METHODS:
            object.__setattr__(self, name, getattr(question, name))
        for name in CONSTANTS:
            object.__setattr__(self, name, getattr(question, name))
        object.__setattr__(self, "_q", question)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the question is read-only (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"the question is read-only (cannot delete {name!r})")

    # Counters read the Question's slots through C-level getters: no Python frame per read,
    # so they cost what the Question's own properties cost (tests hold them equal).
    n_opened = property(attrgetter("_q._opened"), doc="Branches opened so far.")
    total_tokens = property(attrgetter("_q._total"), doc="Tokens read so far over all branches.")
    seq_tokens = property(attrgetter("_q._seq"), doc="Tokens of the deepest branch: the latency proxy.")
    tokens_left = property(attrgetter("_q.tokens_left"), doc="Budget minus tokens read.")

    def __repr__(self) -> str:
        return f"<Question: {self.n_opened}/{self.pool_size} branches open, {self.total_tokens} tokens>"
