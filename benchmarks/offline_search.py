"""Run the offline proposer for R rounds in-process on a store and print what it finds.

A stand-in for the search loop: each round's submission is evaluated over 11 β × every slice ×
``--seeds`` seeds through ``ttsgym.controllers.evaluate`` (no sandbox, no audit), drafts through
the same harness at ``--draft-seeds`` seeds. Prints the objective per round, the lesson of the
rule-based critic, and the selected controller re-scored at ``--final-seeds`` against the
baselines (evaluated alike), on the search split and on the models left out of it (``--models``).

    python benchmarks/offline_search.py --store /work/stores/aime24 --rounds 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from ttsgym.controllers.evaluate import evaluate
from ttsgym.controllers.registry import parse_spec
from ttsgym.search_agent import space
from ttsgym.search_agent.objective import objective
from ttsgym.search_agent.offline import OfflineProposer
from ttsgym.search_agent.rule_critic import rule_lesson
from ttsgym.store import Store

BETAS = [k / 10 for k in range(11)]


class InProcessTools:
    """``evaluate_draft`` through the plain harness (the real loop uses the sandbox)."""

    def __init__(self, store: str, scratch: Path, seeds: int, workers: int,
                 models: list[str] | None = None) -> None:
        self.store, self.scratch, self.seeds, self.workers = store, scratch, seeds, workers
        self.models = models
        self.calls = 0

    def run(self, code: str, seeds: range, models: list[str] | None = None) -> dict:
        self.calls += 1
        path = self.scratch / f"draft{self.calls}.py"
        path.write_text(code)
        name = next(line.split()[1].split("(")[0] for line in code.splitlines() if line.startswith("class "))
        try:
            rows = evaluate(self.store, [f"{path}:{name}"], betas=BETAS, seeds=list(seeds),
                            workers=self.workers, models=models or self.models).to_pylist()
        except Exception as exc:  # a candidate fault is a result, not a crash
            return {"ok": False, "reason": f"{type(exc).__name__}: {exc}", "curve": [], "objective": None}
        per_slice: dict[str, list[dict]] = {}
        for r in rows:
            per_slice.setdefault(f"{r['model']}/{r['dataset']}", []).append(
                {"beta": r["beta"], "accuracy": r["accuracy"], "avg_tokens": r["avg_tokens"]})
        n = len(per_slice)
        curve = [{"beta": b, "accuracy": sum(c[k]["accuracy"] for c in per_slice.values()) / n,
                  "avg_tokens": sum(c[k]["avg_tokens"] for c in per_slice.values()) / n}
                 for k, b in enumerate(BETAS)]
        return {"ok": True, "reason": None, "curve": curve, "objective": objective(per_slice),
                "per_slice": per_slice}

    def evaluate_draft(self, code: str) -> dict:
        res = self.run(code, range(1000, 1000 + self.seeds))
        return {k: res[k] for k in ("ok", "reason", "curve", "objective")}


BASELINE_SPECS = {"SC@64": "sc:n=64", "ASC": "asc:max_samples=64,threshold=0.95",
                  "ESC": "esc:max_samples=64,window_size=8",
                  "Parallel-Probe": "parallel_probe:num_chains=64,T=40,prune_patience=7,warm_up=15",
                  "short_race b=0.5": "short_race"}


def report(title: str, models: list[str], final: dict, args: argparse.Namespace) -> None:
    """The selected controller's mean curve at ``--final-seeds`` against the baselines there."""
    rows = evaluate(args.store, list(BASELINE_SPECS.values()), betas=[0.5], seeds=args.final_seeds,
                    models=models, workers=args.workers).to_pylist()
    base = {}
    for name, spec in BASELINE_SPECS.items():
        mine = [r for r in rows if r["controller"] == parse_spec(spec).text]
        n = len(mine)
        base[name] = (sum(r["accuracy"] for r in mine) / n, sum(r["avg_tokens"] for r in mine) / n)
    print(f"\n== {title}: {', '.join(models)}; {args.final_seeds} seeds; objective {final['objective']:.3f}")
    print(" beta  accuracy  tokens")
    for p in final["curve"]:
        print(f" {p['beta']:.1f}   {p['accuracy']:6.2f}  {p['avg_tokens'] / 1000:7.0f}k")
    print("baseline (model mean)        acc     tokens   cheapest beta point matching it")
    for name, (acc, tok) in base.items():
        match = [p for p in final["curve"] if p["accuracy"] >= acc]
        cheapest = min(match, key=lambda p: p["avg_tokens"]) if match else None
        txt = (f"beta={cheapest['beta']:.1f}: {cheapest['accuracy']:.2f}% at "
               f"{cheapest['avg_tokens'] / 1000:.0f}k ({tok / cheapest['avg_tokens']:.1f}x fewer)"
               if cheapest else "not matched")
        print(f"  {name:24s} {acc:6.2f}%  {tok / 1000:5.0f}k   {txt}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="/work/stores/aime24")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--draft-seeds", type=int, default=5)
    ap.add_argument("--drafts", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--models", default=None, help="search split: comma-separated models (default all)")
    ap.add_argument("--final-seeds", type=int, default=100, help="re-score the selected controller")
    ap.add_argument("--rescore", type=Path, default=None,
                    help="skip the search: re-score the best record of this history file")
    ap.add_argument("--out", type=Path, default=None, help="write the history (JSON lines) here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        search_models = args.models.split(",") if args.models else None
        tools = InProcessTools(args.store, Path(tmp), args.draft_seeds, args.workers, search_models)
        proposer = OfflineProposer(seed=args.seed, drafts=args.drafts)
        history: list[dict] = []
        if args.rescore:
            history = [json.loads(line) for line in args.rescore.read_text().splitlines() if line.strip()]
        start = time.perf_counter()
        for rnd in range(0 if args.rescore else args.rounds):
            t0 = time.perf_counter()
            prop = proposer.propose(rnd, history, tools)
            if prop.code is None:
                rec = {"id": f"c{rnd:04d}", "round": rnd, "status": "rejected", "reason": prop.reason,
                       "objective": None, "curve": [], "meta": prop.meta, "code": None}
            else:
                res = tools.run(prop.code, range(args.seeds))
                rec = {"id": f"c{rnd:04d}", "round": rnd, "status": "accepted" if res["ok"] else "rejected",
                       "reason": res["reason"], "objective": res["objective"], "curve": res["curve"],
                       "meta": prop.meta, "code": prop.code}
            rec["lesson"] = rule_lesson(rec, history)
            history.append(rec)
            obj = "-" if rec["objective"] is None else f"{rec['objective']:.3f}"
            drafts = [d["objective"] and round(d["objective"], 2) for d in prop.meta.get("drafts", [])]
            print(f"round {rnd}: {rec['status']:8s} objective {obj:>7s}  op={prop.meta.get('op')} "
                  f"drafts={drafts} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
            print(f"    lesson: {rec['lesson']}", flush=True)
        print(f"total {time.perf_counter() - start:.0f}s, {tools.calls} evaluations")
        accepted = [r for r in history if r["status"] == "accepted"]
        best = max(accepted, key=lambda r: r["objective"])
        print(f"\nselected {best['id']} ({best['meta']['class']}), objective {best['objective']:.3f} "
              f"(first candidate {history[0]['objective']:.3f})")
        print("\n".join(space.describe(best["meta"]["genome"])))
        all_models = Store(args.store).models
        split = search_models or all_models
        groups = [("search split", split)]
        held = [m for m in all_models if m not in split]
        if held:
            groups.append(("held-out models (never seen by the search)", held))
        for title, models in groups:
            final = tools.run(best["code"], range(args.final_seeds), models=models)
            report(title, models, final, args)
        if args.out:
            args.out.write_text("".join(json.dumps(r) + "\n" for r in history))


if __name__ == "__main__":
    main()
