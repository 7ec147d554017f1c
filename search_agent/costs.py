"""LLM prices, worst-case call estimates and the on-disk spend ledger that makes the USD cap hold.

The cap must hold even when the process is SIGKILLed mid-call and the run is resumed, so the
ledger is an append-only ``spend.jsonl``: a *reservation* of the call's worst case is written (and
fsynced) before the request is sent, and a *settlement* with the cost the server's ``usage``
implies after it. A reservation that never got settled (killed process, lost reply, a reply without
``usage``) counts at its worst case forever; that is what keeps a resumed run under the cap.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ttsgym.search_agent.errors import BudgetExceeded, LLMFatal

# USD per 1M tokens (input, output), list prices of hosted models as published by their vendors in
# 2025. Only a default: `--price IN,OUT` overrides it, and a model missing here has no price.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}

# Prompt-token bound. Byte-level BPE (and SentencePiece with byte fallback) never produces more
# tokens than UTF-8 bytes, so the serialised request's byte length bounds the text's tokens; the
# chat template adds role markers per message and an instruction block around tool definitions,
# which the constant overheads cover.
PER_MESSAGE_OVERHEAD = 16
PER_TOOL_OVERHEAD = 32
PER_CALL_OVERHEAD = 512


def resolve_price(model: str, price_in: float | None, price_out: float | None) -> tuple[float, float] | None:
    """Explicit prices win; else the built-in table (exact name, then the name after a ``/``)."""
    if price_in is not None and price_out is not None:
        return float(price_in), float(price_out)
    for name in (model, model.rsplit("/", 1)[-1]):
        if name in PRICES:
            return PRICES[name]
    return None


def parse_price(text: str) -> tuple[float, float]:
    """``"0.15,0.60"`` → (0.15, 0.60); the `--price IN,OUT` flag's format."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        pin, pout = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"--price: expected IN,OUT in USD per 1M tokens (e.g. 0.15,0.60), got {text!r}") \
            from None
    if pin < 0 or pout < 0:
        raise ValueError(f"--price: prices must be >= 0, got {text!r}")
    return pin, pout


def prompt_token_bound(messages: list[dict], tools: list[dict] | None = None) -> int:
    """An upper bound on the prompt tokens of a chat request (see the constants above)."""
    n = PER_CALL_OVERHEAD + PER_MESSAGE_OVERHEAD * len(messages)
    n += len(json.dumps(messages, ensure_ascii=False).encode("utf-8"))
    if tools:
        n += PER_TOOL_OVERHEAD * len(tools) + len(json.dumps(tools, ensure_ascii=False).encode("utf-8"))
    return n


def usd(tokens_in: int, tokens_out: int, price: tuple[float, float] | None) -> float:
    """Cost in USD of a token count at a (per-1M input, per-1M output) price; 0 when unpriced."""
    if price is None:
        return 0.0
    return (tokens_in * price[0] + tokens_out * price[1]) / 1e6


@dataclass
class Reservation:
    """An open ledger entry: the worst case of one call, until its settlement is written."""

    id: str
    worst_usd: float
    purpose: str
    round: int | None
    model: str


class CostLedger:
    """Append-only spend ledger (``RUN_DIR/spend.jsonl``) enforcing an optional hard USD cap.

    Records are ``{"kind": "reserve", id, worst_usd, ...}`` and ``{"kind": "settle", id, cost_usd,
    tokens_in, tokens_out, ...}``. Spent = Σ settled costs + Σ worst cases of unsettled
    reservations. A second reservation under the same id (a retried attempt that may have been
    billed) adds to that call's worst case.
    """

    def __init__(self, path: Path, budget_usd: float | None) -> None:
        if budget_usd is not None and budget_usd < 0:
            raise ValueError(f"--budget-usd must be >= 0, got {budget_usd}")
        self.path = Path(path)
        self.budget_usd = budget_usd
        self._worst: dict[str, float] = {}  # reservation id -> summed worst case
        self._settled: dict[str, float] = {}  # reservation id -> settled cost
        self._meta: dict[str, dict] = {}  # reservation id -> {purpose, round, model}
        self._tokens: dict[str, tuple[int, int]] = {}
        self._lock = threading.RLock()  # an abandoned call's retry hook may run in another thread
        if self.path.exists():
            self._load()
            with self.path.open("rb+") as f:  # end a torn last line, so the next record starts clean
                f.seek(0, os.SEEK_END)
                if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                    f.write(b"\n")

    def _load(self) -> None:
        with self.path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    # A record torn by a kill mid-write: a torn reservation's request was never sent
                    # (the reservation is written and fsynced first); a torn settlement leaves its
                    # reservation counted at the worst case. Either way, skipping it is safe.
                    continue
                if not isinstance(rec, dict) or "id" not in rec:
                    raise ValueError(f"{self.path}:{lineno}: not a ledger record")
                self._apply(rec)

    def _apply(self, rec: dict) -> None:
        rid = rec["id"]
        if rec.get("kind") == "reserve":
            self._worst[rid] = self._worst.get(rid, 0.0) + float(rec["worst_usd"])
            self._meta.setdefault(rid, {k: rec.get(k) for k in ("purpose", "round", "model")})
        elif rec.get("kind") == "settle":
            self._settled[rid] = float(rec["cost_usd"])
            self._tokens[rid] = (int(rec.get("tokens_in") or 0), int(rec.get("tokens_out") or 0))

    def _append(self, rec: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(rec, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self._apply(rec)

    def spent(self) -> float:
        """USD counted against the cap: settled costs plus the worst case of every open reservation."""
        return sum(self._settled.get(rid, worst) for rid, worst in self._worst.items())

    def remaining(self) -> float | None:
        """USD left under the cap (None when there is no cap)."""
        return None if self.budget_usd is None else self.budget_usd - self.spent()

    def by_round(self) -> dict[int | None, float]:
        """Spend per round (as counted against the cap), for the report."""
        out: dict[int | None, float] = {}
        for rid, worst in self._worst.items():
            r = self._meta.get(rid, {}).get("round")
            out[r] = out.get(r, 0.0) + self._settled.get(rid, worst)
        return out

    def _check(self, worst_usd: float, what: str) -> None:
        if self.budget_usd is None:
            return
        spent = self.spent()
        if spent + worst_usd > self.budget_usd + 1e-12:
            raise BudgetExceeded(
                f"budget cap reached: {what} could cost up to ${worst_usd:.4f} "
                f"(prompt bound + max_tokens), spent so far ${spent:.4f} of --budget-usd "
                f"${self.budget_usd:.4f}; call refused, run stopped (ledger: {self.path})"
            )

    def reserve(self, worst_usd: float, *, purpose: str, round: int | None, model: str) -> Reservation:
        """Write the call's worst case before sending it; BudgetExceeded when it could cross the cap."""
        with self._lock:
            self._check(worst_usd, f"the next {purpose} call to {model}")
            res = Reservation(uuid.uuid4().hex[:16], worst_usd, purpose, round, model)
            self._append({"kind": "reserve", "id": res.id, "worst_usd": worst_usd, "purpose": purpose,
                          "round": round, "model": model, "time": time.time()})
        return res

    def extend(self, res: Reservation, worst_usd: float) -> None:
        """Reserve another worst case for the same call (a retry after an attempt that may be billed)."""
        with self._lock:
            self._check(worst_usd, f"a retry of the {res.purpose} call to {res.model}")
            res.worst_usd += worst_usd
            self._append({"kind": "reserve", "id": res.id, "worst_usd": worst_usd, "purpose": res.purpose,
                          "round": res.round, "model": res.model, "time": time.time(), "retry": True})

    def settle(self, res: Reservation, cost_usd: float, tokens_in: int, tokens_out: int,
               note: str | None = None) -> None:
        """Replace the reservation by the cost the server's usage implies (or 0 for a refused request)."""
        rec = {"kind": "settle", "id": res.id, "cost_usd": cost_usd, "tokens_in": tokens_in,
               "tokens_out": tokens_out, "time": time.time()}
        if cost_usd > res.worst_usd + 1e-12:
            rec["over_estimate"] = True  # the server billed more than the bound: a tokenizer surprise
        if note:
            rec["note"] = note
        with self._lock:
            self._append(rec)


def require_price(model: str, price: tuple[float, float] | None, budget_usd: float | None) -> None:
    """A cap is meaningless without a price: refuse to start rather than spend blind."""
    if price is None and budget_usd is not None:
        raise LLMFatal(
            f"no price known for model {model!r}: pass --price IN,OUT (USD per 1M input/output tokens) "
            f"to use --budget-usd, or drop --budget-usd (known models: {', '.join(sorted(PRICES))})"
        )
