"""What a proposer may ask of the run between submissions (the LLM's tools, the offline search's
screen): evaluate a draft cheaply, read a past candidate's code or traces, the baselines, the
contract. Everything answers from the search split; nothing here reaches held-out data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ttsgym.search_agent.history import RunDir

DRAFT_BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)
DRAFT_SEEDS = 5
DRAFTS_PER_ROUND = 4


class Tools:
    """The tool box of one round; :meth:`for_round` resets the draft allowance."""

    def __init__(self, run: RunDir, *, evaluate: Callable[[str], dict[str, Any]],
                 baselines: list[dict[str, Any]], contract: str,
                 drafts_per_round: int = DRAFTS_PER_ROUND) -> None:
        self._run = run
        self._evaluate = evaluate
        self._baselines = baselines
        self._contract = contract
        self.drafts_per_round = drafts_per_round
        self.drafts_used = 0

    def for_round(self) -> Tools:
        self.drafts_used = 0
        return self

    def evaluate_draft(self, code: str) -> dict[str, Any]:
        """A low-fidelity screen of ``code`` (few β, few seeds) through the same sandbox and
        checks as a submission: ``{"ok", "reason", "stage", "curve", "objective"}``."""
        if self.drafts_used >= self.drafts_per_round:
            return {"ok": False, "reason": f"this round's {self.drafts_per_round} draft evaluations are "
                    "used up; submit your best version", "stage": "tools", "curve": [], "objective": None}
        self.drafts_used += 1
        return self._evaluate(code)

    def show_code(self, candidate_id: str) -> str | None:
        path = self._folder(candidate_id) / "code.py"
        return path.read_text() if path and path.exists() else None

    def show_trace(self, candidate_id: str, index: int = 0) -> dict[str, Any] | None:
        path = self._folder(candidate_id) / "traces.json"
        if not path.exists():
            return None
        traces = json.loads(path.read_text())
        return traces[index] if 0 <= index < len(traces) else None

    def baselines(self) -> list[dict[str, Any]]:
        return list(self._baselines)

    def contract(self) -> str:
        return self._contract

    def _folder(self, candidate_id: str) -> Path:
        # Ids are c0000-style names; anything else (paths, "..") finds nothing.
        if not (len(candidate_id) == 5 and candidate_id[0] == "c" and candidate_id[1:].isdigit()):
            return self._run.path / "candidates" / "-"
        return self._run.candidate(candidate_id)
