"""The LLM critic: after each evaluation, a real call to the critic model writes the lesson that enters
the next round's context — what this candidate's curve and traces say about what to change."""

from __future__ import annotations

import json
import re

from ttsgym.search_agent.context import compact_trace, format_curve, format_table
from ttsgym.search_agent.errors import LLMError
from ttsgym.search_agent.llm import LLMClient

SYSTEM = (
    "You review one candidate test-time-scaling controller from a program search. Write a lesson for the "
    "next proposer: at most 3 sentences, specific and actionable — where on the β-curve it wins or loses "
    "against the baselines and the best so far (accuracy at which token cost), what its traces show it "
    "doing wrong (stopping too early or late, wasting branches, trusting bad probes), or why it was "
    "rejected and how to avoid that. Plain text, no code, no preamble."
)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
LESSON_CHARS = 800


def _objective(rec: dict) -> float | None:
    obj = rec.get("objective")
    return float(obj) if isinstance(obj, int | float) else None


class LLMCritic:
    """Writes one short lesson per evaluated candidate; a failed call gives no lesson, not a crash."""

    def __init__(self, client: LLMClient, *, max_traces: int = 3, max_tokens: int = 1024,
                 code_chars: int = 4000) -> None:
        self.client = client
        self.max_traces = max_traces
        self.max_tokens = max_tokens
        self.code_chars = code_chars
        self.last_error: str | None = None

    def messages(self, evaluation: dict, history: list[dict]) -> list[dict]:
        """The critic's prompt: this candidate's outcome, curve, traces and code, and the best so far."""
        ev = evaluation
        lines = [f"Candidate {ev.get('id', '?')} (round {ev.get('round', '?')}):"]
        if ev.get("ok", ev.get("status") == "accepted"):
            lines.append("evaluated fully and accepted.")
        else:
            lines.append(f"rejected at stage {ev.get('stage', '?')}: {ev.get('reason') or 'no reason given'}")
        obj = _objective(ev)
        if obj is not None:
            lines.append(f"Objective: {obj:.4f}")
        if ev.get("curve"):
            lines.append("Curve (mean over search slices):\n" + format_curve(ev["curve"]))
        if ev.get("audit"):
            lines.append("Audit: " + json.dumps(ev["audit"], default=str)[:400])
        best = max((r for r in history if r.get("status") == "accepted" and _objective(r) is not None
                    and r.get("id") != ev.get("id")), key=lambda r: _objective(r) or 0.0, default=None)
        baselines = ev.get("baselines") or []
        if baselines:
            lines.append("Baselines on the search split:\n" + format_table(baselines[:40]))
        if best is not None:
            lines.append(f"Best so far: {best.get('id')} with objective {_objective(best):.4f}\n"
                         + format_curve(best.get("curve")))
        else:
            lines.append("No earlier accepted candidate.")
        for i, trace in enumerate((ev.get("traces") or [])[: self.max_traces]):
            lines.append(f"Trace {i}: {compact_trace(trace, max_events=30, max_chars=1500)}")
        code = ev.get("code")
        if code:
            cut = code if len(code) <= self.code_chars else code[: self.code_chars] + "\n... [cut]"
            lines.append(f"Code:\n```python\n{cut}\n```")
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(lines)}]

    def lesson(self, evaluation: dict, history: list[dict]) -> tuple[str, float]:
        """(lesson, cost in USD). BudgetExceeded / LLMFatal propagate: they end the run."""
        self.last_error = None
        round_ = evaluation.get("round")
        before = self.client.ledger.spent()  # what counts against the cap, a timed-out call included
        try:
            r = self.client.chat(self.messages(evaluation, history), purpose="critic",
                                 round=round_ if isinstance(round_, int) else None,
                                 max_tokens=self.max_tokens)
        except LLMError as err:
            self.last_error = str(err)
            return "", self.client.ledger.spent() - before
        text = " ".join(_THINK.sub("", r.content or "").split())
        if len(text) > LESSON_CHARS:
            text = text[: LESSON_CHARS - 3] + "..."
        return text, self.client.ledger.spent() - before
