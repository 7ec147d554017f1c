"""``ttsgym report``: a markdown summary and PNG plots from the result tables of ``ttsgym eval``."""

from __future__ import annotations

import argparse
import sys

from ttsgym.controllers.metrics import CI_SEED, N_RESAMPLES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="markdown summary and plots (accuracy vs tokens, CIs, frontier, vs SC@64)",
        description="Concatenate result tables written by `ttsgym eval --out` and write report.md, "
                    "metrics.csv and accuracy-vs-tokens PNGs (one panel per model) into DIR.")
    p.add_argument("results", nargs="+", metavar="RESULTS.parquet",
                   help="result tables from `ttsgym eval --out`; a later file's row replaces an "
                        "earlier one for the same configuration")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the report into")
    p.add_argument("--resamples", type=int, default=N_RESAMPLES,
                   help=f"bootstrap resamples for the 95%% CIs (default {N_RESAMPLES})")
    p.add_argument("--seed", type=int, default=CI_SEED, help=f"bootstrap seed (default {CI_SEED})")
    p.add_argument("--ci-bars", action="store_true",
                   help="draw 95%% CI bars on the plots (they overlap a lot on small benchmarks)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the report; user errors (missing file, not a results table) raise for main to print."""
    if args.resamples < 100:
        raise ValueError("--resamples must be at least 100")
    from ttsgym.controllers.report import write_report  # matplotlib only when reporting

    path = write_report(args.results, args.out, n_resamples=args.resamples, seed=args.seed,
                        ci_bars=args.ci_bars)
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    print(f"wrote {path}", file=sys.stdout)
    for name in pngs:
        print(f"      {path.parent / name}", file=sys.stdout)
    return 0
