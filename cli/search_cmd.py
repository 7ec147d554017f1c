"""``ttsgym search``: discover controller code on the search split; ``ttsgym search report``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ttsgym.controllers.ray_backend import ClusterLost, RayUnavailable, on_cluster_lost
from ttsgym.search_agent.history import RunDir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search controller programs (LLM or built-in offline proposer) by replay",
        description="Rounds of: propose a controller program, check it, evaluate it in a sandbox on the "
                    "search split, audit it, score it, write a lesson. `ttsgym search report RUN_DIR --out "
                    "DIR` writes the report of a run.")
    p.add_argument("--store", help="store directory holding the search split")
    p.add_argument("--out", help="run directory (created; with --resume, continued)")
    p.add_argument("--split", help="search slices MODEL:DATASET, comma-separated (default: every slice)")
    p.add_argument("--rounds", type=int, default=8, help="proposer submissions (default 8)")
    p.add_argument("--proposer", choices=("llm", "offline"),
                   help="default: llm when --base-url is given, else offline")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="proposer model name")
    p.add_argument("--critic-model", help="critic model name (default: --model)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--price", help="USD per million input,output tokens, e.g. 0.5,1.5")
    p.add_argument("--budget-usd", type=float, help="hard cap on LLM spend for the run")
    p.add_argument("--seeds", type=int, default=20, help="screening seeds (default 20)")
    p.add_argument("--final-seeds", type=int, default=100,
                   help="fresh seeds the finalists are re-scored on (default 100)")
    p.add_argument("--drafts", type=int, default=4,
                   help="cheap draft evaluations a proposer may ask for per round (default 4)")
    p.add_argument("--finalists", type=int, default=3, help="candidates re-scored before selection (3)")
    p.add_argument("--timeout", type=float, default=600.0, help="wall-clock seconds per evaluation (600)")
    p.add_argument("--memory-mb", type=int, default=4096, help="address-space limit per process (4096)")
    p.add_argument("--workers", type=int, default=2, help="evaluation processes per candidate (default 2)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where candidates are evaluated: this machine (default) or a Ray cluster "
                        "(needs the extra ttsgym[ray])")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster for --backend ray "
                   "(default: RAY_ADDRESS, else a new local cluster)")
    p.add_argument("--concurrent", type=int, metavar="K",
                   help="candidates evaluated at once, the proposer running K-1 rounds ahead "
                        "(default: 1 locally; on Ray, the cluster's CPUs / --workers, at most 16; "
                        "on --resume, the run's). The history depends on K, not on the backend")
    p.add_argument("--llm-timeout", type=float, default=300.0, help="wall-clock seconds per LLM call (300)")
    p.add_argument("--stream", action="store_true", help="stream LLM replies")
    p.add_argument("--seed", type=int, default=0, help="the offline proposer's seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ttsgym.search_agent.run import SearchSettings, default_proposer, run_search

    if not args.store or not args.out:
        raise ValueError("--store and --out are required (or: ttsgym search report RUN_DIR --out DIR)")
    if args.rounds < 1:
        raise ValueError("--rounds must be at least 1")
    price = None
    if args.price:
        try:
            price = tuple(float(x) for x in args.price.split(","))
        except ValueError:
            price = ()
        if len(price) != 2 or min(price) < 0:
            raise ValueError(f"--price {args.price!r}: write IN,OUT in USD per million tokens, e.g. 0.5,1.5")
    if args.ray_address and args.backend != "ray":
        raise ValueError("--ray-address needs --backend ray")
    try:
        if args.backend == "ray":
            on_cluster_lost(lambda: _kept(args.out))
        concurrent = args.concurrent or _default_concurrent(args)
        settings = SearchSettings(
            store=args.store, out=args.out, split=args.split.split(",") if args.split else None,
            rounds=args.rounds, proposer=args.proposer or default_proposer(args.base_url), seed=args.seed,
            seeds=args.seeds, final_seeds=args.final_seeds, finalists=args.finalists, drafts=args.drafts,
            timeout=args.timeout,
            memory_mb=args.memory_mb, workers=args.workers, base_url=args.base_url, model=args.model,
            critic_model=args.critic_model, api_key_env=args.api_key_env, price=price,
            budget_usd=args.budget_usd, llm_timeout=args.llm_timeout, stream=args.stream,
            concurrent=concurrent, backend=args.backend, ray_address=args.ray_address,
        )
        outcome = run_search(settings, resume=args.resume, progress=True)
    except RayUnavailable as exc:
        print(f"ttsgym search: error: {exc}", file=sys.stderr)
        return 2
    except ClusterLost as exc:
        print(f"ttsgym search: error: {exc}.\n{_kept(args.out)}", file=sys.stderr)
        return 1
    accepted = sum(r["status"] == "accepted" for r in outcome.history)
    print(f"{outcome.rounds_done} rounds in {outcome.run_dir} ({accepted} accepted)")
    if outcome.stopped:
        print(f"stopped early: {outcome.stopped}")
    sel = outcome.selected
    if sel:
        print(f"selected {sel['id']} ({sel['class']}), objective {sel['objective']:.3f} on fresh seeds "
              f"(screen {sel['screen_objective']:.3f}): {outcome.run_dir / 'selected' / 'controller.py'}")
    else:
        print("no candidate was accepted; nothing selected")
    return 0


def _kept(out: str) -> str:
    done = len(RunDir(out).history()) if Path(out).exists() else 0
    return (f"{done} committed rounds are kept in {out}; finish the run with the same command and "
            "--resume (on a cluster again, or with --backend local)")


def _default_concurrent(args: argparse.Namespace) -> int:
    """The run's own value on --resume; else 1 locally, and on Ray as many candidates as the
    cluster holds at --workers CPUs each (at most 16)."""
    saved = Path(args.out) / "run.json"
    if args.resume and saved.exists():
        return int(json.loads(saved.read_text()).get("concurrent", 1))
    if args.backend != "ray":
        return 1
    from ttsgym.controllers.ray_backend import cluster_cpus, connect

    total, _ = cluster_cpus(connect(args.ray_address))
    return max(1, min(16, total // max(1, args.workers)))


def run_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ttsgym search report",
                                     description="markdown + PNG report of a search run")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--holdout-store", help="evaluate the selected controller on this store too "
                        "(held-out slices are evaluated only here, after the search)")
    parser.add_argument("--holdout-seeds", type=int, default=100)
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    from ttsgym.search_agent.report import write_search_report

    path = write_search_report(args.run_dir, args.out, holdout_store=args.holdout_store,
                               holdout_seeds=args.holdout_seeds, workers=args.workers)
    print(f"wrote {path}")
    for png in sorted(path.parent.glob("*.png")):
        print(f"      {png}")
    return 0


if __name__ == "__main__":
    sys.exit(run_report(sys.argv[1:]))
