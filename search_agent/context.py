"""The proposer's round context: what it needs to improve on the search so far, within a token budget.

A long history does not fit a prompt, and a prompt that silently overflows the model's window fails
the round, so the context is assembled from parts ranked by importance and the least important are
dropped first: traces, then the oldest rejects, then the weaker of the best candidates, then the
best candidate's code is shortened; the contract and the baselines' frontier stay. Tokens are
estimated as UTF-8 bytes / 4 (typical for code and English with BPE tokenizers); the cost cap uses
a strict bound instead (costs.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

OBJECTIVE = (
    "The objective (higher is better): for each search slice, the mean over token budgets x spread "
    "log-uniformly over [32k, 1024k] of the best accuracy among your β-points whose avg_tokens ≤ x "
    "(0 where none), averaged over slices. So the β-sweep must be strong everywhere: cheap and "
    "accurate at β=0, spending more and gaining accuracy as β grows; tokens must not decrease with β."
)

RULES = """You write test-time-scaling controllers in Python for ttsgym. A controller decides, per question, \
how many reasoning branches to open, how deep to read them, when to probe for an answer and when to stop, \
given one knob β in [0, 1] (0 = cheapest, 1 = most compute).

{objective}

How to answer:
- Submit one complete Python module: call the `submit` tool with the full source, or reply with exactly one \
```python block (and no other python block) — that reply is your submission.
- If tools are offered: `evaluate_draft` screens a draft cheaply on a few questions (up to {max_drafts} \
calls per round), `show_trace` shows what a past candidate did in an episode, `show_code` shows a past \
candidate's code.
- Every candidate is statically checked, run in a sandbox with time and memory limits, and audited: episodes \
are replayed with every cell the controller did not reveal replaced by other data, and any change in its \
calls or answer rejects it as peeking. Only the public Question API works; reading private state, files, \
the network or the interpreter's internals gets a candidate rejected.
- Learn from the history below: improve on the best candidates where they lose, avoid the rejects' mistakes.

# Candidate contract

{contract}
"""


class ToolsProtocol(Protocol):
    """What the search loop offers the proposer (search_agent/tools.py implements it)."""

    def evaluate_draft(self, code: str) -> dict: ...
    def show_trace(self, candidate_id: str, index: int = 0) -> dict | None: ...
    def show_code(self, candidate_id: str) -> str | None: ...
    def baselines(self) -> list[dict]: ...
    def contract(self) -> str: ...


def est_tokens(text: str) -> int:
    """Budgeting estimate: UTF-8 bytes / 4."""
    return (len(text.encode("utf-8")) + 3) // 4


@dataclass
class _Part:
    text: str
    drop: int | None  # higher is dropped first; None: never dropped


def format_curve(curve: list[dict] | None) -> str:
    """A β-curve as a compact table: beta, accuracy (%), avg_tokens."""
    if not curve:
        return "(no curve)"
    rows = ["beta  accuracy  avg_tokens"]
    for p in curve:
        rows.append(f"{float(p.get('beta', 0)):.2f}  {float(p.get('accuracy', 0)):7.2f}%  "
                    f"{float(p.get('avg_tokens', 0)):,.0f}")
    return "\n".join(rows)


def format_table(rows: list[dict]) -> str:
    """List of dicts → a small markdown table (columns in first-seen order)."""
    if not rows:
        return "(none)"
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def compact_trace(trace: dict, max_events: int = 40, max_chars: int = 2500) -> str:
    """One episode as compact JSON: the header fields, then the first events."""
    events = list(trace.get("events") or [])
    head = {k: v for k, v in trace.items() if k != "events"}
    shown = events[:max_events]
    text = json.dumps({**head, "events": shown}, ensure_ascii=False, separators=(",", ":"), default=str)
    if len(events) > max_events:
        text += f"  (+{len(events) - max_events} more events)"
    return text if len(text) <= max_chars else text[: max_chars - 20] + " ...(trace cut)"


def _objective(rec: dict) -> float:
    obj = rec.get("objective")
    return float(obj) if isinstance(obj, int | float) else float("-inf")


class ContextBuilder:
    """Builds [system, user] messages for a round within ``token_budget`` (estimated tokens)."""

    def __init__(self, token_budget: int = 16000, best_k: int = 3, rejects_k: int = 6, traces_k: int = 2,
                 max_drafts: int = 4, objective_text: str = OBJECTIVE) -> None:
        self.token_budget = token_budget
        self.objective_text = objective_text  # keep in step with search_agent/objective.py
        self.best_k = best_k
        self.rejects_k = rejects_k
        self.traces_k = traces_k
        self.max_drafts = max_drafts

    def system(self, tools: ToolsProtocol) -> str:
        contract = tools.contract().strip()
        return RULES.format(objective=self.objective_text, contract=contract, max_drafts=self.max_drafts)

    def messages(self, round: int, history: list[dict], tools: ToolsProtocol) -> list[dict]:
        """The round's prompt: system = rules + contract, user = the search so far."""
        system = self.system(tools)
        parts = self._parts(round, history, tools)
        budget = self.token_budget - est_tokens(system)
        omitted = 0
        while sum(est_tokens(p.text) for p in parts) > budget:
            droppable = [p for p in parts if p.drop is not None]
            if not droppable:
                break
            parts.remove(max(droppable, key=lambda p: p.drop or 0))
            omitted += 1
        over = sum(est_tokens(p.text) for p in parts) - budget
        if over > 0:  # shorten the longest remaining part (the best candidate's code, usually)
            longest = max(parts, key=lambda p: len(p.text))
            keep = max(200, len(longest.text.encode("utf-8")) - 4 * over - 200)
            longest.text = longest.text.encode("utf-8")[:keep].decode("utf-8", "ignore") + \
                "\n... [cut to fit the context budget]\n"
        user = "\n\n".join(p.text for p in parts)
        if omitted:
            user += f"\n\n({omitted} lower-priority context items omitted to fit the token budget.)"
        if est_tokens(system) > self.token_budget // 2:  # a contract too long for the budget
            system = system.encode("utf-8")[: 2 * self.token_budget].decode("utf-8", "ignore") + \
                "\n... [contract cut to fit the context budget]"
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _parts(self, round: int, history: list[dict], tools: ToolsProtocol) -> list[_Part]:
        pending = [r for r in history if r.get("status") == "pending"]  # --concurrent: still running
        history = [r for r in history if r.get("status") != "pending"]
        accepted = sorted((r for r in history if r.get("status") == "accepted"), key=_objective, reverse=True)
        rejected = [r for r in history if r.get("status") != "accepted"]
        parts = [_Part(f"# Round {round}\n{len(history)} proposals so far ({len(accepted)} accepted, "
                       f"{len(rejected)} rejected). Write a controller that beats the best below.", None)]
        if pending:
            ids = ", ".join(str(r.get("id")) for r in pending)
            parts.append(_Part(f"## Being evaluated now (results not in yet): {ids}. Do not resubmit "
                               "their programs; their code is available through the show_code tool.", None))
        parts.append(_Part("## Baselines on the search split\n" + format_table(tools.baselines()), None))
        if history:
            last = history[-1]
            status = last.get("status")
            line = f"## Last proposal: {last.get('id')} (round {last.get('round')}): {status}"
            if last.get("reason"):
                line += f" — {last['reason']}"
            if last.get("objective") is not None:
                line += f"; objective {_objective(last):.4f}"
            if last.get("lesson"):
                line += f"\nLesson: {last['lesson']}"
            parts.append(_Part(line, None))
        for rank, rec in enumerate(accepted[: self.best_k]):
            text = (f"## Best candidate #{rank + 1}: {rec.get('id')} (round {rec.get('round')}), "
                    f"objective {_objective(rec):.4f}\n{format_curve(rec.get('curve'))}")
            if rec.get("lesson"):
                text += f"\nLesson: {rec['lesson']}"
            if rec.get("code"):
                text += f"\n```python\n{rec['code'].rstrip()}\n```"
            parts.append(_Part(text, None if rank == 0 else 60 + rank))
        recent = rejected[-self.rejects_k:]
        if recent:
            lines = ["## Recent rejects (newest last)"]
            for rec in recent:
                reason = " ".join(str(rec.get("reason") or "no reason recorded").split())[:400]
                lines.append(f"- {rec.get('id')} (round {rec.get('round')}): {reason}")
            parts.append(_Part("\n".join(lines), 80))
        shown: list[str] = []
        for rec in accepted[:1] + [r for r in reversed(history) if r.get("status") == "accepted"][:1]:
            cid = rec.get("id")
            if cid is None or cid in shown:
                continue
            shown.append(cid)
            for i in range(self.traces_k):
                try:
                    trace = tools.show_trace(cid, i)
                except Exception:  # a missing or unreadable trace only costs context
                    trace = None
                if trace:
                    parts.append(_Part(f"## Trace {i} of {cid}\n{compact_trace(trace)}", 100 + len(parts)))
        return parts
