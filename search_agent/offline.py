"""The built-in proposer: evolution over :mod:`ttsgym.search_agent.space`, no LLM needed.

Each round:

1. **Parents** are the accepted history records that carry a genome, ranked by objective
   (failed or rejected records are never parents; records of other proposers are skipped).
   Before any is accepted, the built-in seed genome is the parent.
2. **Offspring** come from operators chosen by what the parent's curve shows: ``cheapen``
   (its cheapest point spends more than the objective's lowest budget: lower a low-β endpoint),
   ``extend`` (still gaining at β = 1 and below the top budget: raise a high-β endpoint),
   ``reshape`` (big token gaps between neighbouring β points: change a schedule's curve),
   ``component`` (switch one component choice), ``mutate`` (one or two genes), ``crossover``
   (with another elite). Every offspring is new: its genome key is in no earlier record, nor
   among the drafts earlier rounds tried.
3. **Local search**: up to ``drafts`` offspring are screened with ``tools.evaluate_draft``; later
   drafts climb from the best draft so far. The best screened draft is submitted.

Round 0 submits the seed genome unrefined. Every random choice comes from a generator seeded by
(seed, round, a digest of the history), and tool results are consumed in a fixed order, so the
proposal is a deterministic function of (seed, round, history, tool results): a resumed run
proposes what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import random
from typing import Any, Protocol

from ttsgym.search_agent import space
from ttsgym.search_agent.objective import TOKEN_RANGE
from ttsgym.search_agent.proposal import Proposal


class DraftTools(Protocol):
    def evaluate_draft(self, code: str) -> dict: ...


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def history_digest(history: list[dict]) -> str:
    """What of the history the proposer depends on, hashed (ids, status, objective, genome)."""
    rows = [[r.get("id"), r.get("round"), r.get("status"), r.get("objective"),
             (r.get("meta") or {}).get("key"), (r.get("meta") or {}).get("tried")] for r in history]
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def known_keys(history: list[dict]) -> set[str]:
    """Genome keys already proposed or screened in earlier rounds (novelty)."""
    keys: set[str] = set()
    for r in history:
        meta = r.get("meta") or {}
        genome = meta.get("genome")
        if isinstance(genome, dict):
            with contextlib.suppress(ValueError):
                keys.add(space.genome_key(genome))
        keys.update(k for k in meta.get("tried") or [] if isinstance(k, str))
    return keys


def elites(history: list[dict]) -> list[tuple[dict, dict]]:
    """(record, genome) of accepted records with a valid genome and a finite objective, best first."""
    out = []
    for r in history:
        if r.get("status") != "accepted" or not _finite(r.get("objective")):
            continue
        genome = (r.get("meta") or {}).get("genome")
        if not isinstance(genome, dict):
            continue
        try:
            out.append((r, space.canonical(genome)))
        except ValueError:
            continue
    out.sort(key=lambda rg: (-float(rg[0]["objective"]), str(rg[0].get("id"))))
    return out


def diagnose(curve: list[dict] | None) -> list[str]:
    """Operators the parent's (mean) curve calls for, most pressing first."""
    pts = [(float(p["avg_tokens"]), float(p["accuracy"]), float(p.get("beta", 0.0)))
           for p in curve or [] if _finite(p.get("avg_tokens")) and _finite(p.get("accuracy"))]
    if not pts:
        return []
    ops = []
    lo, hi = TOKEN_RANGE
    by_tokens = sorted(pts)
    if by_tokens[0][0] > lo:
        ops.append("cheapen")
    by_beta = sorted(pts, key=lambda p: p[2])
    top = max(a for _, a, _ in pts)
    end_tokens, end_acc = by_beta[-1][0], by_beta[-1][1]
    if end_acc >= top - 0.5 and end_tokens < hi / 2:
        ops.append("extend")
    ratios = [b[0] / max(a[0], 1.0) for a, b in itertools.pairwise(by_tokens)]
    flat = sum(1 for a, b in itertools.pairwise(by_beta) if abs(b[0] - a[0]) < 0.02 * a[0])
    if (ratios and max(ratios) > 2.2) or flat >= 2:
        ops.append("reshape")
    return ops


def _shift(g: dict, key: str, end: str, step: int) -> dict:
    """Move one schedule endpoint ``step`` places along its allowed values (clipped)."""
    s = dict(g[key])
    values = space.SCHEDULED[key]["values"]
    k = min(max(values.index(s[end]) + step, 0), len(values) - 1)
    s[end] = values[k]
    if s["lo"] > s["hi"]:
        s["lo"], s["hi"] = s["hi"], s["lo"]
    return {**g, key: s}


def _cheapen(g: dict, rng: random.Random) -> dict:
    """Lower the β = 0 end of the spend drivers (width and vote count; the stop level when both
    are at their minimum) and spread the points geometrically over the longer range."""
    child = dict(g)
    drivers = [k for k in ("width", "max_votes") if g[k]["lo"] > space.SCHEDULED[k]["values"][0]]
    if not drivers:
        drivers = [space.STOP_KNOB[g["stop"]]]
    for key in rng.sample(drivers, k=rng.choice((1, len(drivers)))):
        child = _shift(child, key, "lo", -1)
        if child[key]["lo"] != child[key]["hi"] and rng.random() < 0.6:
            child[key] = {**child[key], "shape": "geo"}
    return space.validate(child)


def _extend(g: dict, rng: random.Random) -> dict:
    """Raise the β = 1 end of one or two spend drivers (vote count, stop level, width)."""
    keys = ["max_votes", space.STOP_KNOB[g["stop"]], "width"]
    child = dict(g)
    for key in rng.sample(keys, k=rng.choice((1, 2))):
        child = _shift(child, key, "hi", +1)
    return space.validate(child)


def _reshape(g: dict, rng: random.Random) -> dict:
    moving = [k for k in ("width", "max_votes", space.STOP_KNOB[g["stop"]]) if g[k]["lo"] != g[k]["hi"]]
    if not moving:
        return space.mutate(g, rng)
    key = rng.choice(moving)
    s = dict(g[key])
    s["shape"] = rng.choice([x for x in space.SHAPES if x != s["shape"]])
    return space.validate({**g, key: s})


COMPONENT_GENES = (*space.CHOICES, "revision_weight", "length_gamma", "settle_run", "support_weight")


def _component(g: dict, rng: random.Random) -> dict:
    """Switch one component (a rule choice or a rule's weight), keeping the schedules."""
    used = space.active_genes(g)
    key = rng.choice([k for k in COMPONENT_GENES if k in used])
    return space.mutate_gene(g, key, rng)


def combine(parent: dict, a: dict, b: dict) -> dict:
    """The parent with the changes of both ``a`` and ``b`` (``a`` wins where both changed a gene)."""
    out = {}
    for key in space.GENES:
        out[key] = a[key] if a[key] != parent[key] else b[key]
    return space.validate(out)


def offspring(op: str, parent: dict, other: dict | None, rng: random.Random) -> dict:
    """One child of ``parent`` by the named operator."""
    if op == "cheapen":
        return _cheapen(parent, rng)
    if op == "extend":
        return _extend(parent, rng)
    if op == "reshape":
        return _reshape(parent, rng)
    if op == "component":
        return _component(parent, rng)
    if op == "crossover" and other is not None:
        return space.crossover(parent, other, rng)
    return space.mutate(parent, rng, n=rng.choice((1, 1, 2)))


class OfflineProposer:
    """Evolution with curve-directed mutation and a few screened drafts per round."""

    name = "offline"

    def __init__(self, seed: int = 0, drafts: int = 4) -> None:
        self.seed = int(seed)
        self.drafts = max(0, min(int(drafts), 4))

    def propose(self, round: int, history: list[dict], tools: DraftTools | None) -> Proposal:
        """The next candidate; see the module docstring for how it is chosen."""
        rng = random.Random(f"{self.seed}:{round}:{history_digest(history)}")
        seen = known_keys(history)
        pool = elites(history)
        base = space.canonical(space.seed_genome())
        if (round == 0 or not history) and space.genome_key(base) not in seen:
            return self._proposal(base, op="seed", parent=None, drafts=[], tried=[])
        parent_rec, parent = pool[0] if pool else (None, base)
        others = [g for _, g in pool[1:4]]
        plan = diagnose(parent_rec.get("curve") if parent_rec else None)
        n = self.drafts if tools is not None else 0
        ops = [*plan[:2], "component", "crossover" if others else "component", "combine"][: max(n, 1)]
        if len(ops) < max(n, 1):
            ops += ["mutate"] * (max(n, 1) - len(ops))
        if n >= 3 and ops[n - 1] != "combine":
            ops[n - 1] = "combine"
        children: list[tuple[str, dict]] = []
        tried: list[str] = []
        drafts: list[dict] = []
        scored: list[tuple[float, int, dict, str]] = []  # (draft objective, order, genome, op)
        for k, op in enumerate(ops):
            child = None
            good = sorted((x for x in scored if x[0] > -math.inf), key=lambda x: (-x[0], x[1]))
            if op == "combine":
                if len(good) >= 2:  # both of the round's best moves at once
                    merged = space.canonical(combine(parent, good[0][2], good[1][2]))
                    if space.genome_key(merged) not in seen:
                        child = merged
                if child is None:
                    op = good[0][3] if good and good[0][3] != "combine" else "component"
                    src = good[0][2] if good else parent  # climb from the round's best draft
                    child = self._novel(op, src, None, rng, seen)
            else:
                child = self._novel(op, parent, rng.choice(others) if others else None, rng, seen)
            if child is None:
                continue
            key = space.genome_key(child)
            seen.add(key)
            tried.append(key)
            children.append((op, child))
            if not n:
                break
            code, _ = space.render(child)
            try:
                result = tools.evaluate_draft(code) if tools is not None else {}
            except Exception as exc:  # a broken tool costs the draft, never the round
                result = {"ok": False, "reason": f"evaluate_draft raised {type(exc).__name__}: {exc}"}
            score = float(result["objective"]) if result.get("ok") and _finite(result.get("objective")) \
                else -math.inf
            drafts.append({"key": key, "op": op, "ok": bool(result.get("ok")),
                           "objective": score if score > -math.inf else None,
                           "reason": result.get("reason")})
            scored.append((score, k, child, op))
        best = min(scored, key=lambda x: (-x[0], x[1])) if scored else None
        if not children:
            return Proposal(code=None, reason="offline proposer: no new genome found near the elites",
                            meta={"tried": tried}, prompt="(no novel offspring)")
        if best is not None:
            _, _, child, op = best
        else:
            op, child = children[0]
        return self._proposal(child, op=op, parent=parent_rec.get("id") if parent_rec else None,
                              drafts=drafts, tried=tried, plan=plan)

    @staticmethod
    def _novel(op: str, parent: dict, other: dict | None, rng: random.Random,
               seen: set[str], attempts: int = 60) -> dict | None:
        """A child whose key is not in ``seen``; falls back to wider mutations, then gives up."""
        for t in range(attempts):
            child = offspring(op if t < attempts // 3 else "mutate", parent, other, rng)
            if t >= 2 * attempts // 3:
                child = space.mutate(child, rng, n=2)
            if space.genome_key(child) not in seen:
                return space.canonical(child)
        return None

    def _proposal(self, genome: dict, *, op: str, parent: Any, drafts: list[dict], tried: list[str],
                  plan: list[str] | None = None) -> Proposal:
        code, cls = space.render(genome)
        key = space.genome_key(genome)
        prompt = "\n".join([f"offline proposer: op={op}, parent={parent}, plan={plan or []}",
                            *space.describe(genome)])
        return Proposal(code=code, meta={"genome": genome, "key": key, "class": cls, "parent": parent,
                                         "op": op, "plan": plan or [], "drafts": drafts,
                                         "tried": sorted(set(tried) | {key})}, prompt=prompt)
