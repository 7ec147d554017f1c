"""Answers out of generated text: brace-matched ``\\boxed{}`` extraction, probe confidence from
logprobs, and the answer classes of one question (math-verify via ``ttsgym.store.answers``).

Brace matching, not a regex: ``\\boxed{\\frac{1}{2}}`` must give ``\\frac{1}{2}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ttsgym.store.answers import canonical_map
from ttsgym.store.schema import ERR

BOXED = "\\boxed{"

__all__ = ["BOXED", "ERR", "answer_classes", "answer_confidence", "last_boxed", "match_brace",
           "probe_answer"]


def match_brace(text: str, start: int, depth: int = 1) -> int | None:
    """Index of the brace that closes an open group at ``text[start:]`` (``depth`` groups are
    open when scanning starts); ``None`` when the text ends first."""
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` in ``text`` (stripped); ``None`` if none."""
    pos = text.rfind(BOXED)
    while pos != -1:
        end = match_brace(text, pos + len(BOXED))
        if end is not None:
            content = text[pos + len(BOXED) : end].strip()
            if content:
                return content
        pos = text.rfind(BOXED, 0, pos)
    return None


def _opens_boxed(template: str) -> bool:
    """Whether the probe template ends inside an open ``\\boxed{`` (the usual forced answer)."""
    pos = template.rfind(BOXED)
    return pos != -1 and match_brace(template, pos + len(BOXED)) is None


def probe_answer(completion: str, template: str) -> tuple[str | None, int | None]:
    """The answer a probe decoded and the index in ``completion`` just past its closing brace.

    When the template ends inside ``\\boxed{`` the completion continues that group; otherwise
    the first ``\\boxed{...}`` of the completion counts. ``(None, None)`` when the group never
    closes within the probe's tokens or is empty.
    """
    if _opens_boxed(template):
        start = 0
    else:
        pos = completion.find(BOXED)
        if pos == -1:
            return None, None
        start = pos + len(BOXED)
    end = match_brace(completion, start)
    if end is None:
        return None, None
    answer = completion[start:end].strip()
    return (answer or None), (end + 1 if answer else None)


def answer_confidence(tokens: Sequence[str] | None, logprobs: Sequence[float | None] | None,
                      end: int | None) -> float | None:
    """Probability of the probe's answer: exp(sum of the logprobs of the tokens that spell it,
    closing brace included). ``None`` without logprobs or without an answer."""
    if end is None or not tokens or not logprobs or len(tokens) != len(logprobs):
        return None
    total, offset = 0.0, 0
    for tok, lp in zip(tokens, logprobs, strict=True):
        if offset >= end:
            break
        if lp is None or not math.isfinite(lp):
            return None
        total += lp
        offset += len(tok)
    return math.exp(total)


def answer_classes(answers: Iterable[str], gold: str, checker: str = "math") -> tuple[dict[str, str], str]:
    """Map each raw answer of one question (and the gold) to its class representative; ``ERR``
    stays a class of its own that never equals a gold."""
    mapping, gold_canonical = canonical_map(answers, gold, checker)
    if ERR in mapping:
        mapping[ERR] = ERR
    return mapping, gold_canonical
