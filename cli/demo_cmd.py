"""``ttsgym demo``: the main job, offline on any machine.

Picks a store (``--store``, else ``$TTSGYM_STORE``, else a synthetic one it generates),
evaluates the baselines and a β sweep of every built-in β-family, writes the result table and
the report, and prints the table with, for each baseline, the cheapest β that matches or beats
it (accuracy at least as high, tokens at most as many, averaged over the store's models).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ttsgym.cli.output import print_table
from ttsgym.controllers.evaluate import evaluate
from ttsgym.controllers.registry import builtins
from ttsgym.store import Store

BASELINES = ("sc:n=1", "sc:n=4", "sc:n=16", "sc:n=64", "asc", "esc",
             "parallel_probe:T=40,prune_patience=7,warm_up=15")
COMPARE = ("sc", "asc", "esc", "parallel_probe:T=40,prune_patience=7,warm_up=15")
BETAS = tuple(round(0.1 * i, 1) for i in range(11))
QUICK_BETAS = (0.0, 0.5, 1.0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: baselines vs the β-family, report and table",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--store", default=os.environ.get("TTSGYM_STORE"),
                   help="a store to evaluate on (default: $TTSGYM_STORE, else a generated synthetic one)")
    p.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    p.add_argument("--seeds", type=int, help="seeds per question (default 100, 10 with --quick)")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--quick", action="store_true", help="10 seeds and β ∈ {0, 0.5, 1}: a smoke run")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(args.store) if args.store else _synthetic_store(out / "synthetic-store")
    kind = "synthetic" if store.synthetic else "real"
    print(f"store: {store.path} ({kind}; {', '.join(f'{s.model}/{s.dataset}' for s in store.slices)})")
    families = [name for name, cls in builtins().items() if cls.kind == "beta-family"]
    seeds = args.seeds or (10 if args.quick else 100)
    table = evaluate(store, [*BASELINES, *families], betas=QUICK_BETAS if args.quick else BETAS,
                     seeds=seeds, workers=args.workers, progress=True)
    results = out / "results.parquet"
    pq.write_table(table, results)
    from ttsgym.controllers.report import write_report  # matplotlib only here

    report = write_report([table], out / "report")
    _print_results(table.to_pylist(), families)
    print(f"\nresults: {results}\nreport:  {report} (plots beside it)")
    if store.synthetic:
        print("(synthetic store: the numbers describe generated traces, not a real model; "
              "run with --store on an imported store for real figures)")
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def _synthetic_store(path: Path) -> Store:
    """The default preset's store, generated once and reused while its manifest matches."""
    from ttsgym.store.synth import DEFAULT_PRESET, generate

    if path.exists():
        try:
            store = Store(path)
            if store.manifest.get("source", {}).get("preset") == DEFAULT_PRESET:
                return store
        except ValueError:
            pass
    print(f"generating a synthetic store ({DEFAULT_PRESET}) in {path}")
    return Store(generate(path, preset=DEFAULT_PRESET, seed=0, overwrite=True))


def _mean_over_models(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (controller, β): accuracy and tokens averaged over the store's slices."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["controller"], r["beta"]), []).append(r)
    out = []
    for (controller, beta), members in groups.items():
        n = len(members)
        out.append({"controller": controller, "beta": beta, "kind": members[0]["kind"],
                    "accuracy": sum(m["accuracy"] for m in members) / n,
                    "avg_tokens": sum(m["avg_tokens"] for m in members) / n,
                    "avg_seq_tokens": sum(m["avg_seq_tokens"] for m in members) / n,
                    "slices": n})
    return out


def _print_results(rows: list[dict[str, Any]], families: list[str]) -> None:
    mean = _mean_over_models(rows)
    n_slices = max((r["slices"] for r in mean), default=0)
    print(f"\naccuracy and tokens per question, mean over {n_slices} slice(s):")
    print_table(mean, ["controller", "beta", "accuracy", "avg_tokens", "avg_seq_tokens"], sys.stdout,
                {"accuracy": "acc %", "avg_tokens": "tokens", "avg_seq_tokens": "seq tokens"})
    for family in families:
        sweep = sorted((r for r in mean if r["controller"] == family), key=lambda r: r["avg_tokens"])
        print(f"\n{family}: the cheapest β that matches or beats each baseline "
              "(accuracy ≥ and tokens ≤, mean over slices)")
        for base in (r for r in mean if r["controller"] in COMPARE):
            hit = next((r for r in sweep if r["accuracy"] >= base["accuracy"]
                        and r["avg_tokens"] <= base["avg_tokens"]), None)
            verdict = (f"β={hit['beta']:g}: {hit['accuracy']:.2f}% at {hit['avg_tokens']:,.0f} tokens"
                       if hit else "no β of the sweep does")
            print(f"  vs {base['controller']:<48} {base['accuracy']:6.2f}% at "
                  f"{base['avg_tokens']:>11,.0f} tokens -> {verdict}")
