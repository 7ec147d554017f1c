"""``ttsgym synth``: generate a synthetic replay store (model and presets: ttsgym.store.synth)."""

from __future__ import annotations

import argparse
import sys

from ttsgym.cli.output import print_json, print_table
from ttsgym.store.synth import DEFAULT_PRESET, PRESETS, generate

# Target statistics shown by --list-presets (all of them are in the JSON form).
_SHOWN = ("branch_accuracy", "maj_64", "mean_branch_tokens", "probes_per_branch", "err_rate",
          "answer_change_rate")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth", help="generate a synthetic store calibrated to the shared AIME24 data",
        description="Generate a synthetic replay store (same schema as an imported one; its "
                    "manifest, model and dataset names say 'synthetic'). Sizes default to the "
                    "preset's real data (30 questions x 128 branches); it also scales to "
                    "10,000 x 256.")
    p.add_argument("--out", help="the store directory to create")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS), metavar="NAME",
                   help=f"calibration preset (default {DEFAULT_PRESET}; see --list-presets)")
    p.add_argument("--questions", type=int, help="number of questions (default: the preset's)")
    p.add_argument("--branches", type=int, help="branches per question (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same store")
    p.add_argument("--signals", action="store_true",
                   help="add per-step score and confidence (plausible, not calibrated)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--list-presets", action="store_true",
                   help="list presets and the real statistics they target, then exit")
    p.add_argument("--format", choices=("table", "json"), default="table", help="for --list-presets")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.list_presets:
        return _list(args.format)
    if not args.out:
        raise ValueError("--out is required (or pass --list-presets)")
    out = generate(args.out, preset=args.preset, questions=args.questions, branches=args.branches,
                   seed=args.seed, signals=args.signals, overwrite=args.overwrite,
                   progress=sys.stderr.isatty())
    p = PRESETS[args.preset]
    n_q = args.questions or p.questions
    n_b = args.branches or p.branches
    print(f"wrote synthetic store {out}: {p.model} / {p.dataset}, {n_q:,} questions × {n_b:,} branches "
          f"(preset {p.name}, seed {args.seed}{', with signals' if args.signals else ''})")
    return 0


def _list(fmt: str) -> int:
    rows = []
    for p in PRESETS.values():
        row = {"preset": p.name, "model": p.model, "dataset": p.dataset,
               "calibrated_to": f"{p.real_model}/{p.real_dataset}",
               "default_size": f"{p.questions}x{p.branches}"}
        if fmt == "json":
            row.update(targets=dict(p.targets), tolerances=dict(p.tolerances))
        else:
            row.update({k: p.targets[k] for k in _SHOWN})
        rows.append(row)
    if fmt == "json":
        print_json(rows, sys.stdout)
        return 0
    headers = {"branch_accuracy": "real branch acc", "maj_64": "real maj@64",
               "mean_branch_tokens": "real mean tokens", "probes_per_branch": "real probes/branch",
               "err_rate": "real ERR rate", "answer_change_rate": "real change rate"}
    print_table(rows, ["preset", "model", "calibrated_to", "default_size", *_SHOWN], sys.stdout, headers)
    print(f"\ndefault: {DEFAULT_PRESET}; every preset's full targets and tolerances: --format json")
    return 0
