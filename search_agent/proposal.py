"""What a proposer hands the search loop each round (the LLM proposer and the offline one alike)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Proposal:
    """One submission: code to evaluate, or the reason there is none (recorded as rejected)."""

    code: str | None
    reason: str | None = None
    meta: dict = field(default_factory=dict)  # e.g. {"genome": {...}, "parent": "c0003", "op": "mutate"}
    prompt: str | None = None  # what was asked (LLM) / a description (offline)
    reply: str | None = None  # raw reply (LLM)
    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
