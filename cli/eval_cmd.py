"""``ttsgym eval``: controllers × β × (model, dataset) × seeds on a store."""

from __future__ import annotations

import argparse
import sys

import pyarrow.parquet as pq

from ttsgym.cli.output import print_json, print_table
from ttsgym.controllers.evaluate import BACKENDS, default_workers, evaluate
from ttsgym.controllers.ray_backend import ClusterLost, RayUnavailable, on_cluster_lost
from ttsgym.controllers.registry import list_controllers
from ttsgym.controllers.runner import TaskError, describe_exception
from ttsgym.env.episodes import ControllerError
from ttsgym.env.results import SUMMARY_FIELDS

SPEC_HELP = ("a built-in with optional parameters (sc:n=64, asc:max_samples=64,threshold=0.95, "
             "esc:max_samples=64,window_size=8, parallel_probe:num_chains=64,T=40,prune_patience=7,"
             "warm_up=15) or path/to/file.py:ClassName; repeatable")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate controllers by replay")
    p.add_argument("--store", help="store directory")
    p.add_argument("--model", help="model(s), comma-separated (default: all in the store)")
    p.add_argument("--dataset", help="dataset(s), comma-separated (default: all in the store)")
    p.add_argument("--controller", action="append", default=[], metavar="SPEC", help=SPEC_HELP)
    p.add_argument("--beta", help="β value(s) for β-families and user classes, comma-separated")
    p.add_argument("--seeds", type=int, default=100, help="seeds 0..N-1 (default 100)")
    p.add_argument("--protocol", default="autotts", help="autotts (default), stored or subset:N")
    p.add_argument("--kappa", type=int, default=0, help="extra tokens charged per probe (default 0)")
    p.add_argument("--budget", type=int, help="token budget per episode")
    p.add_argument("--workers", type=int, default=None,
                   help=f"processes (default: all cores, here {default_workers()})")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds one task (slice × β × chunk of seeds) may take; then all workers are killed")
    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help="local process pool (default) or a Ray cluster (needs the extra ttsgym[ray])")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to use with --backend ray, e.g. 127.0.0.1:6379 "
                        "(default: RAY_ADDRESS, else a new local cluster)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--out", help="write the full result table (with per-question vectors) as Parquet")
    p.add_argument("--list-controllers", action="store_true", help="list built-in controllers and exit")
    p.set_defaults(run=_run)


def _fail(line: str, frames: str) -> int:
    """One line naming what failed, then the user's own frames (no pool or harness frames)."""
    print(f"ttsgym eval: error: {line}", file=sys.stderr)
    if frames:
        print(frames, file=sys.stderr)
    return 1


def _run(args: argparse.Namespace) -> int:
    if args.list_controllers:
        rows = list_controllers()
        if args.format == "json":
            print_json(rows, sys.stdout)
        else:
            print_table(rows, ["name", "kind", "description"], sys.stdout)
        return 0
    if not args.store:
        raise ValueError("--store is required")
    if not args.controller:
        raise ValueError("give at least one --controller SPEC (see --list-controllers)")
    betas = [float(b) for b in args.beta.split(",")] if args.beta else None
    if args.ray_address and args.backend != "ray":
        raise ValueError("--ray-address needs --backend ray")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError("--timeout must be a positive number of seconds")
    if args.backend == "ray":
        on_cluster_lost(lambda: "Nothing was written.")
    try:
        table = evaluate(
            args.store, args.controller,
            models=args.model.split(",") if args.model else None,
            datasets=args.dataset.split(",") if args.dataset else None,
            betas=betas, seeds=args.seeds, workers=args.workers, protocol=args.protocol,
            kappa=args.kappa, budget=args.budget, progress=True, timeout=args.timeout,
            backend=args.backend, ray_address=args.ray_address,
        )
    except (RayUnavailable, ClusterLost) as exc:
        return _fail(str(exc), "")
    except TaskError as exc:
        return _fail(str(exc), exc.frames)
    except ControllerError as exc:  # inline run (one worker, no timeout): same report
        return _fail(*describe_exception(exc))
    if args.out:
        pq.write_table(table, args.out)
    rows = [{k: r[k] for k in SUMMARY_FIELDS} for r in table.to_pylist()]
    if args.format == "json":
        print_json(rows, sys.stdout)
    else:
        print_table(rows, ["model", "dataset", "controller", "beta", "accuracy", "std_accuracy",
                           "avg_tokens", "avg_seq_tokens", "episodes", "seconds"], sys.stdout,
                    {"accuracy": "acc %", "std_accuracy": "± seeds", "avg_tokens": "tokens",
                     "avg_seq_tokens": "seq tokens"})
        if any(r["synthetic"] for r in rows):
            print("(synthetic store: these numbers describe generated traces, not a real model)")
    return 0
