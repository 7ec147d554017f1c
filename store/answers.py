"""Answer checkers: group a question's answer strings into equivalence classes before voting.

``exact`` treats answers as opaque strings (what reproduces the published numbers); ``math``
uses math-verify, so that ``0.5``, ``\\frac{1}{2}`` and ``1/2`` vote together. Either way the
class representative is the gold answer's own spelling when the class holds the gold, else the
first member seen, so ``canonical == gold_canonical`` is the correctness test everywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from functools import lru_cache

from ttsgym.store.schema import ERR

CHECKERS = ("exact", "math")


def canonical_map(answers: Iterable[str], gold: str, checker: str) -> tuple[dict[str, str], str]:
    """Map every distinct answer of one question to its class representative.

    Returns ``(mapping, gold_canonical)``; ``mapping`` covers every answer and the gold.
    """
    if checker == "exact":
        mapping = {a: a for a in answers}
        mapping[gold] = gold
        return mapping, gold
    if checker == "math":
        return _math_classes(answers, gold)
    raise ValueError(f"unknown answer checker {checker!r}; choose one of {', '.join(CHECKERS)}")


@lru_cache(maxsize=65536)
def _parse(answer: str):
    """math-verify's parse of a bare answer; empty when it is not mathematics."""
    from math_verify import parse

    if answer == ERR or not answer.strip():
        return ()
    # math-verify's parse timeout is a signal.alarm, which only the main thread may set; live
    # inference canonicalises in controller threads, where parse must run without it.
    kwargs = {} if threading.current_thread() is threading.main_thread() else {"parsing_timeout": None}
    parsed = parse(answer, **kwargs)
    if not parsed:
        parsed = parse(f"$\\boxed{{{answer}}}$", **kwargs)
    return tuple(parsed)


def _numeric_key(value) -> str | None:
    try:
        if getattr(value, "is_number", False) and value.is_real:
            return f"num:{float(value):.9g}"
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def _math_classes(answers: Iterable[str], gold: str) -> tuple[dict[str, str], str]:
    from math_verify import verify

    distinct = list(dict.fromkeys([gold, *answers]))
    # First a cheap key (numeric value or printed expression), then math-verify between the
    # few symbolic representatives left, so grouping stays near-linear in distinct answers.
    rep_of_key: dict[str, str] = {}
    rep: dict[str, str] = {}
    symbolic: list[str] = []
    for answer in distinct:
        parsed = _parse(answer)
        if not parsed:
            rep[answer] = answer
            continue
        key = _numeric_key(parsed[0]) or f"expr:{parsed[0]}"
        if key in rep_of_key:
            rep[answer] = rep_of_key[key]
            continue
        rep_of_key[key] = answer
        rep[answer] = answer
        if key.startswith("expr:"):
            symbolic.append(answer)
    for i, a in enumerate(symbolic):
        if rep[a] != a:
            continue
        for b in symbolic[i + 1 :]:
            if rep[b] == b and verify(list(_parse(a)), list(_parse(b)), timeout_seconds=None):
                rep[b] = a
    # Follow merges to the root; gold is first in `distinct`, so its class is named by it.
    mapping = {}
    for answer in distinct:
        root = rep[answer]
        while rep[root] != root:
            root = rep[root]
        mapping[answer] = root
    return mapping, gold
