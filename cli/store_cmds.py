"""``ttsgym import``, ``ttsgym export`` and ``ttsgym store info``."""

from __future__ import annotations

import argparse
import sys

from ttsgym.cli.output import print_json, print_table
from ttsgym.store import export_autotts, import_autotts
from ttsgym.store.analysis import MAJ_KS, slice_stats
from ttsgym.store.answers import CHECKERS


def register(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser("import", help="import replay data into a new store")
    imp_sub = imp.add_subparsers(dest="layout", required=True, metavar="LAYOUT")
    autotts = imp_sub.add_parser("autotts", help="AutoTTS / Parallel-Probe JSON (<model>/<dataset>.json)")
    autotts.add_argument("src", help="a <model>/<dataset>.json file, a model folder or a tree of them")
    autotts.add_argument("--out", required=True, help="the store directory to create")
    autotts.add_argument("--checker", choices=CHECKERS, default="exact",
                         help="answer equivalence: exact strings (reproduces published numbers) "
                              "or math-verify")
    autotts.add_argument("--overwrite", action="store_true", help="replace an existing store")
    autotts.set_defaults(run=_import_autotts)

    exp = sub.add_parser("export", help="write a store back to a published layout")
    exp_sub = exp.add_subparsers(dest="layout", required=True, metavar="LAYOUT")
    autotts = exp_sub.add_parser("autotts", help="AutoTTS / Parallel-Probe JSON")
    autotts.add_argument("store")
    autotts.add_argument("--out", required=True, help="directory for <model>/<dataset>.json files")
    autotts.add_argument("--model", help="only these models (comma-separated)")
    autotts.add_argument("--dataset", help="only these datasets (comma-separated)")
    autotts.set_defaults(run=_export_autotts)

    store = sub.add_parser("store", help="inspect a store")
    store_sub = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = store_sub.add_parser("info", help="per (model, dataset): sizes, accuracy, maj@k")
    info.add_argument("store")
    info.add_argument("--format", choices=("table", "json"), default="table")
    info.set_defaults(run=_info)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _import_autotts(args: argparse.Namespace) -> int:
    out = import_autotts(args.src, args.out, checker=args.checker, overwrite=args.overwrite,
                         progress=sys.stderr.isatty())
    print(f"wrote store {out}")
    return 0


def _export_autotts(args: argparse.Namespace) -> int:
    for path in export_autotts(args.store, args.out, models=_split(args.model),
                               datasets=_split(args.dataset)):
        print(path)
    return 0


def _info(args: argparse.Namespace) -> int:
    rows = slice_stats(args.store).to_pylist()
    if args.format == "json":
        print_json(rows, sys.stdout)
        return 0
    for row in rows:
        for key in ("branch_accuracy", *(f"maj_{k}" for k in MAJ_KS)):
            row[key] = None if row[key] is None else round(100 * row[key], 2)
    columns = ["model", "dataset", "questions", "branches", "probes", "tokens", "branch_accuracy",
               *(f"maj_{k}" for k in MAJ_KS)]
    headers = {"branch_accuracy": "branch acc %", **{f"maj_{k}": f"maj@{k} %" for k in MAJ_KS}}
    print_table(rows, columns, sys.stdout, headers)
    return 0
