"""The rule-based critic: a short, specific lesson from one evaluation, no LLM needed.

It says why a candidate failed, how its objective compares with the best earlier candidate,
on which budget band (low / mid / high tokens) its frontier falls below the best earlier one's
and below the baselines (when the evaluation carries them), what its genome changed against its
parent, and which gene changes brought the largest objective changes (child minus parent).
"""

from __future__ import annotations

import math
from typing import Any

from ttsgym.search_agent import space
from ttsgym.search_agent.objective import TOKEN_RANGE

BANDS = (("low", TOKEN_RANGE[0], 100_000), ("mid", 100_000, 350_000), ("high", 350_000, TOKEN_RANGE[1]))


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def best_at(curve: list[dict], budget: float) -> float:
    """Best accuracy among points spending at most ``budget`` tokens (0 when none)."""
    return max((float(p["accuracy"]) for p in curve if float(p["avg_tokens"]) <= budget), default=0.0)


def band_gaps(curve: list[dict], reference: list[dict]) -> dict[str, float]:
    """Mean frontier gap (curve − reference, accuracy points) per budget band, on a log grid."""
    out = {}
    for name, lo, hi in BANDS:
        xs = [math.exp(math.log(lo) + (k + 0.5) / 16 * (math.log(hi) - math.log(lo))) for k in range(16)]
        out[name] = sum(best_at(curve, x) - best_at(reference, x) for x in xs) / len(xs)
    return out


def _genome(rec: dict) -> dict | None:
    g = (rec.get("meta") or {}).get("genome")
    if not isinstance(g, dict):
        return None
    try:
        return space.canonical(g)
    except ValueError:
        return None


def _changes(child: dict, parent: dict) -> list[str]:
    out = []
    for key in space.GENES:
        if child[key] != parent[key] and key in space.active_genes(child) | space.active_genes(parent):
            a, b = parent[key], child[key]
            if isinstance(a, dict):
                a, b = f"{a['lo']}→{a['hi']} {a['shape']}", f"{b['lo']}→{b['hi']} {b['shape']}"
            out.append(f"{key} {a} ⇒ {b}")
    return out


def component_effects(history: list[dict], top: int = 3) -> list[str]:
    """Gene changes ranked by the objective change they brought, child minus accepted parent
    (a paired comparison, so a change is not credited with what its ancestors did)."""
    by_id = {r.get("id"): r for r in history}
    gains: dict[str, list[float]] = {}
    for r in history:
        parent = by_id.get((r.get("meta") or {}).get("parent"))
        if parent is None or not all(x.get("status") == "accepted" and _finite(x.get("objective"))
                                     for x in (r, parent)):
            continue
        child, pg = _genome(r), _genome(parent)
        if child is None or pg is None:
            continue
        delta = float(r["objective"]) - float(parent["objective"])
        for change in _changes(child, pg):
            gains.setdefault(change, []).append(delta)
    ranked = sorted(gains.items(), key=lambda kv: -abs(sum(kv[1]) / len(kv[1])))
    return [f"{change}: {sum(d) / len(d):+.2f}" + (f" (mean of {len(d)})" if len(d) > 1 else "")
            for change, d in ranked[:top] if abs(sum(d) / len(d)) >= 0.1]


def rule_lesson(evaluation: dict, history: list[dict]) -> str:
    """A lesson of a few sentences about ``evaluation`` (a history-like record) given ``history``."""
    parts: list[str] = []
    meta = evaluation.get("meta") or {}
    op = meta.get("op")
    if evaluation.get("status") != "accepted" or not _finite(evaluation.get("objective")):
        stage = evaluation.get("stage")
        reason = evaluation.get("reason") or "no reason recorded"
        parts.append(f"Rejected{f' at {stage}' if stage else ''}: {reason}.")
        if evaluation.get("code") is None:
            parts.append("No code was produced; submit one standalone module.")
        elif "timeout" in str(reason).lower():
            parts.append("It ran out of time: bound the loops (branch budget, depth cap).")
        if op:
            parts.append(f"(operator {op}; this genome is never a parent.)")
        return " ".join(parts)
    obj = float(evaluation["objective"])
    curve = evaluation.get("curve") or []
    earlier = [r for r in history if r.get("status") == "accepted" and _finite(r.get("objective"))
               and r.get("id") != evaluation.get("id")]
    best = max(earlier, key=lambda r: float(r["objective"]), default=None)
    if best is None:
        parts.append(f"First accepted candidate: objective {obj:.2f}.")
    else:
        delta = obj - float(best["objective"])
        verdict = "new best" if delta > 0 else "no gain"
        parts.append(f"Objective {obj:.2f} ({delta:+.2f} vs best {best.get('id')}: {verdict}).")
        gaps = band_gaps(curve, best.get("curve") or [])
        worst = min(gaps, key=gaps.get)
        if gaps[worst] < -0.2:
            parts.append(f"Loses most to {best.get('id')} on the {worst}-token band "
                         f"({gaps[worst]:+.1f} pts).")
        good = max(gaps, key=gaps.get)
        if gaps[good] > 0.2:
            parts.append(f"Gains on the {good}-token band ({gaps[good]:+.1f} pts).")
    if curve:
        cheapest = min(curve, key=lambda p: float(p["avg_tokens"]))
        if float(cheapest["avg_tokens"]) > TOKEN_RANGE[0]:
            parts.append(f"Its cheapest point spends {float(cheapest['avg_tokens']) / 1000:.0f}k > "
                         f"{TOKEN_RANGE[0] // 1000}k: budgets below it score 0, make beta=0 cheaper.")
        top = max(curve, key=lambda p: float(p["accuracy"]))
        parts.append(f"Peak {float(top['accuracy']):.1f}% at {float(top['avg_tokens']) / 1000:.0f}k.")
    for b in evaluation.get("baselines") or []:
        if not (_finite(b.get("accuracy")) and _finite(b.get("avg_tokens"))):
            continue
        reach = [p for p in curve if float(p["accuracy"]) >= float(b["accuracy"])]
        if not reach:
            parts.append(f"Never reaches {b.get('controller')} ({float(b['accuracy']):.1f}%).")
        elif min(float(p["avg_tokens"]) for p in reach) > float(b["avg_tokens"]):
            parts.append(f"Matches {b.get('controller')} only at more tokens.")
    child, parent_id = _genome(evaluation), meta.get("parent")
    parent = next((r for r in history if r.get("id") == parent_id), None)
    if child and parent and (pg := _genome(parent)):
        changed = _changes(child, pg)
        if changed:
            parts.append(f"Changed vs {parent_id}: {'; '.join(changed[:3])}.")
    effects = component_effects([*history, evaluation])
    if effects:
        parts.append("Objective change per gene change so far: " + "; ".join(effects) + ".")
    return " ".join(parts)
