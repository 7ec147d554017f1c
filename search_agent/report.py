"""``ttsgym search report``: what a run did, as markdown and PNGs.

Objective per round (accepted and rejected marked), the selected controller's β-curve against the
baselines on the search split (and, only when asked, on held-out slices that the search never
saw — evaluated here and nowhere else), the spend per round, and a table of every candidate.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ttsgym.controllers.registry import parse_spec
from ttsgym.search_agent.history import RunDir, RunDirError

# The published settings, keyed by the canonical spec text result rows carry ("sc" for sc:n=64).
HEADLINE = {parse_spec(spec).text: label for spec, label in (
    ("sc:n=64", "SC@64"), ("asc:max_samples=64,threshold=0.95", "ASC"),
    ("esc:max_samples=64,window_size=8", "ESC"),
    ("parallel_probe:num_chains=64,T=40,prune_patience=7,warm_up=15", "Parallel-Probe"))}
MEAN = "mean"


def write_search_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                        holdout_store: str | None = None, holdout_seeds: int = 100,
                        workers: int | None = None) -> Path:
    """Write ``report.md`` and its PNGs into ``out_dir``; the path of ``report.md``."""
    import matplotlib

    matplotlib.use("Agg")
    run = RunDir(run_dir)
    if not run.history_path.exists():
        raise RunDirError(f"{run.path}: no history.jsonl; is this a `ttsgym search` run directory?")
    history = run.history()
    baselines = _load(run.path / "baselines.json", [])
    selected = _load(run.selected / "selected.json", None)
    finalists = _load(run.path / "finalists.json", {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    md = [f"# ttsgym search report: `{run.path}`", ""]
    settings = _load(run.settings_path, {})
    n_acc = sum(r["status"] == "accepted" for r in history)
    spent = sum(float(r.get("cost_usd") or 0.0) for r in history)
    md += [f"Proposer **{settings.get('proposer', '?')}**, {len(history)} rounds "
           f"({n_acc} accepted, {len(history) - n_acc} rejected), spend ${spent:.4f}, "
           f"screen at {settings.get('seeds', '?')} seeds, finalists re-scored on "
           f"{settings.get('final_seeds', '?')} fresh seeds.", ""]
    _objective_plot(history, out / "objective.png")
    md += ["## Objective per round", "", "![objective per round](objective.png)", ""]
    if selected:
        first, last = selected["final_seeds"]
        spec = f"{run.selected / 'controller.py'}:{selected['class']}"
        md += ["## Selected controller", "",
               f"`{selected['class']}` from candidate **{selected['id']}** (round {selected['round']}): "
               f"objective {selected['objective']:.3f} on fresh seeds {first}–{last} "
               f"(screen: {selected['screen_objective']:.3f}). "
               f"Objective: {selected['objective_definition']}.", "",
               f"Code: `selected/controller.py`; run it with `ttsgym eval --store STORE --controller {spec} "
               "--beta 0,0.5,1`.", ""]
        rows = finalists.get(selected["id"], {}).get("rows", [])
        _frontier_plot(rows, baselines, out / "frontier.png", "search split (fresh seeds)")
        md += ["![selected vs baselines on the search split](frontier.png)", "",
               *_curve_table(rows, baselines), ""]
        lomo = selected.get("leave_one_model_out") or {}
        if lomo:
            md += ["### Leave one model out", "",
                   "Choose the best candidate on the other models' screens, score it on the held-out one "
                   "(best: the candidate that would have been best on it).", "",
                   "| held-out model | chosen | objective | best | best objective |", "|---|---|--:|---|--:|"]
            md += [f"| {m} | {v['chosen']} | {v['objective']:.3f} | {v['best']} | {v['best_objective']:.3f} |"
                   for m, v in lomo.items()]
            md.append("")
        if holdout_store:
            hrows, hbase = _holdout(run, selected, holdout_store, holdout_seeds, workers)
            _frontier_plot(hrows, hbase, out / "holdout.png", f"held-out: {Path(holdout_store).name}")
            md += ["## Held-out slices", "", f"Store `{holdout_store}`, {holdout_seeds} seeds, evaluated "
                   "only now, after the search.", "", "![selected vs baselines, held out](holdout.png)", "",
                   *_curve_table(hrows, hbase), ""]
    else:
        md += ["## Selected controller", "", "No candidate was accepted: nothing was selected.", ""]
    _spend_plot(history, _ledger_by_round(run), out / "spend.png")
    md += ["## Spend per round", "", "![spend per round](spend.png)", "",
           "## Candidates", "", "| id | round | status | stage | objective | cost $ | reason / lesson |",
           "|---|--:|---|---|--:|--:|---|"]
    for r in history:
        text = r.get("reason") or r.get("lesson") or ""
        md.append(f"| {r['id']} | {r['round']} | {r['status']} | {r.get('stage') or ''} | "
                  f"{_num(r.get('objective'))} | {float(r.get('cost_usd') or 0):.4f} | {_cell(text)} |")
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path


def _load(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def _num(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _objective_plot(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    acc = [(r["round"], r["objective"]) for r in history if r["status"] == "accepted"]
    rej = [r["round"] for r in history if r["status"] != "accepted"]
    floor = min([y for _, y in acc], default=0.0)
    if acc:
        ax.plot(*zip(*acc, strict=True), "o", color="tab:blue", label="accepted")
        best, xs, ys = -math.inf, [], []
        for x, y in sorted(acc):
            best = max(best, y)
            xs.append(x)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:blue", alpha=0.5, label="best so far")
    if rej:
        ax.plot(rej, [floor] * len(rej), "x", color="tab:red", label="rejected (no score)")
    ax.set_xlabel("round")
    ax.set_ylabel("objective (mean accuracy %, 32k–1024k tokens)")
    ax.set_title("search objective per round")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, bbox_inches="tight", dpi=110)
    plt.close(fig)


def _ledger_by_round(run: RunDir) -> dict[int, float]:
    """Spend per round from the ledger: it also holds calls of a round the budget cut short."""
    if not run.spend_path.exists():
        return {}
    from ttsgym.search_agent.costs import CostLedger

    return {int(k): v for k, v in CostLedger(run.spend_path, None).by_round().items() if k is not None}


def _spend_plot(history: list[dict[str, Any]], ledger: dict[int, float], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    spend = {r["round"]: float(r.get("cost_usd") or 0.0) for r in history}
    spend.update(ledger)
    rounds = sorted(spend)
    cost = [spend[r] for r in rounds]
    ax.bar(rounds, cost, color="tab:green")
    ax.set_xlabel("round")
    ax.set_ylabel("USD")
    ax.set_title(f"LLM spend per round (total ${sum(cost):.4f})")
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, bbox_inches="tight", dpi=110)
    plt.close(fig)


def _with_mean(rows: Sequence[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    """Rows per panel (``model:dataset``) plus the mean over panels, grouped by ``key``."""
    panels: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        panels.setdefault(f"{r['model']}:{r['dataset']}", []).append(r)
    if len(panels) > 1:
        groups: dict[Any, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(r[key], []).append(r)
        n = len(panels)
        panels[MEAN] = [{key: k, "accuracy": sum(m["accuracy"] for m in g) / n,
                         "avg_tokens": sum(m["avg_tokens"] for m in g) / n}
                        for k, g in groups.items() if len(g) == n]
    return panels


def _frontier_plot(rows: Sequence[dict[str, Any]], baselines: Sequence[dict[str, Any]], path: Path,
                   title: str) -> None:
    import matplotlib.pyplot as plt

    cand = _with_mean(rows, "beta")
    base = _with_mean(baselines, "controller")
    names = ([MEAN] if MEAN in cand else []) + sorted(k for k in cand if k != MEAN)
    cols = min(3, max(1, len(names)))
    nrows = math.ceil(len(names) / cols) if names else 1
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        pts = sorted(cand[name], key=lambda r: r["beta"])
        ax.plot([p["avg_tokens"] for p in pts], [p["accuracy"] for p in pts], "o-", color="tab:blue",
                label="selected (β 0→1)", ms=3.5)
        brows = base.get(name, [])
        sc = sorted((r for r in brows if r["controller"].partition(":")[0] == "sc"),
                    key=lambda r: r["avg_tokens"])
        if sc:
            ax.plot([r["avg_tokens"] for r in sc], [r["accuracy"] for r in sc], "s--", color="grey",
                    label="SC@N", ms=3, alpha=0.7)
        for r in brows:
            label = HEADLINE.get(r["controller"])
            if label and label != "SC@64":
                ax.plot(r["avg_tokens"], r["accuracy"], "D", ms=5, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("mean tokens per question")
        ax.set_ylabel("accuracy %")
        ax.set_title(name if name != MEAN else f"mean of {len(names) - 1} slices", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    if names:
        axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"selected controller vs baselines — {title}", fontsize=10)
    fig.savefig(path, bbox_inches="tight", dpi=110)
    plt.close(fig)


def _curve_table(rows: Sequence[dict[str, Any]], baselines: Sequence[dict[str, Any]]) -> list[str]:
    cand = _with_mean(rows, "beta")
    base = _with_mean(baselines, "controller")
    panel = MEAN if MEAN in cand else next(iter(cand), None)
    if panel is None:
        return []
    out = [f"Panel **{panel}**:", "", "| controller | accuracy % | tokens |", "|---|--:|--:|"]
    for r in sorted(base.get(panel, []), key=lambda r: r["avg_tokens"]):
        if r["controller"] in HEADLINE:
            out.append(f"| {HEADLINE[r['controller']]} | {r['accuracy']:.2f} | {r['avg_tokens']:,.0f} |")
    for r in sorted(cand[panel], key=lambda r: r["beta"]):
        out.append(f"| selected β={r['beta']:g} | {r['accuracy']:.2f} | {r['avg_tokens']:,.0f} |")
    return out


def _holdout(run: RunDir, selected: dict[str, Any], store: str, seeds: int,
             workers: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate the selected controller and the baselines on a held-out store (only here)."""
    from ttsgym.controllers.evaluate import evaluate
    from ttsgym.search_agent.run import BASELINE_SPECS, BETA_GRID

    spec = f"{run.selected / 'controller.py'}:{selected['class']}"
    table = evaluate(store, [spec, *BASELINE_SPECS], betas=list(BETA_GRID), seeds=seeds, workers=workers)
    keep = ("model", "dataset", "controller", "beta", "accuracy", "avg_tokens", "avg_seq_tokens")
    rows = [{k: r[k] for k in keep} for r in table.to_pylist()]
    return [r for r in rows if r["controller"] == spec], [r for r in rows if r["controller"] != spec]
