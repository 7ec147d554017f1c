"""Flags shared by ``ttsgym run`` and ``ttsgym serve``: the generation settings of ``collect``
(or ``--like STORE`` to take them from a collected store), the controller and the read-ahead.

A live run matches a store only when every generation setting matches how the store was
collected, so ``--like`` reads them from the manifest and any flag given next to it overrides
one value (and is reported, since the runs then differ).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ttsgym.collect.client import DEFAULT_PROBE_TEMPLATE
from ttsgym.collect.collector import DEFAULT_INSTRUCTION, CollectSettings

# flag name -> (CollectSettings field, type, default without --like)
GENERATION_FLAGS: dict[str, tuple[str, type, Any]] = {
    "--interval": ("interval", int, None),
    "--max-tokens": ("max_tokens", int, 32768),
    "--temperature": ("temperature", float, 0.6),
    "--top-p": ("top_p", float, 0.95),
    "--top-k": ("top_k", int, None),
    "--seed": ("seed", int, 0),
    "--probe-template": ("probe_template", str, DEFAULT_PROBE_TEMPLATE),
    "--probe-tokens": ("probe_tokens", int, 16),
    "--instruction": ("instruction", str, DEFAULT_INSTRUCTION),
    "--checker": ("checker", str, "math"),
}


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (as `ttsgym collect`; default: from --like STORE)")
    g.add_argument("--like", metavar="STORE", help="take every generation setting from a collected store")
    for flag, (name, kind, default) in GENERATION_FLAGS.items():
        shown = f" (default {default!r})" if default is not None else ""
        g.add_argument(flag, dest=name, type=kind, default=None, help=f"{name}{shown}")
    g.add_argument("--branches", type=int, default=None,
                   help="branch ids available per question (default: the store's, else 64)")


def add_controller_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controller", required=True, metavar="SPEC",
                   help="a built-in (sc:n=64, asc, esc, parallel_probe, short_race, ...) "
                        "or path/file.py:Class")
    p.add_argument("--beta", type=float, default=None,
                   help="β for β-families and class files (default 0.5)")
    p.add_argument("--kappa", type=int, default=0, help="extra replay tokens charged per probe (default 0)")
    p.add_argument("--budget", type=int, default=None, help="token budget per question (replay units)")
    p.add_argument("--lookahead", type=int, default=1,
                   help="intervals read ahead per active branch (0: strictly on demand)")
    p.add_argument("--window", type=int, default=32,
                   help="unopened branches read ahead at most (0: none; default 32)")
    p.add_argument("--upstream-api-key-env", default=None, metavar="VAR",
                   help="environment variable holding the upstream server's key, if it wants one")


def settings_from_args(args: argparse.Namespace) -> tuple[CollectSettings, int, list[str]]:
    """The CollectSettings of the run, the pool size, and notes on values overriding --like."""
    from ttsgym.collect.live import settings_from_store

    notes: list[str] = []
    if args.like:
        base, branches = settings_from_store(args.like, model=args.model)
        values = {f: getattr(base, f) for f in base.__dataclass_fields__}
        for flag, (name, _, _) in GENERATION_FLAGS.items():
            given = getattr(args, name)
            if given is not None and given != values[name]:
                notes.append(f"{flag} {given!r} overrides the store's {values[name]!r}: "
                             "the run will not regenerate the store's branches")
                values[name] = given
    else:
        if args.interval is None:
            raise ValueError("give --interval (the probe interval Δ) or --like STORE")
        values = {"model": args.model, "dataset": "live", "branches": args.branches or 64}
        for name, _, default in GENERATION_FLAGS.values():
            given = getattr(args, name)
            values[name] = default if given is None else given
        branches = args.branches or 64
    if args.branches is not None:
        branches = args.branches
    if branches <= 0:
        raise ValueError(f"--branches must be positive, got {branches}")
    values["branches"] = branches
    return CollectSettings(**values), branches, notes


def controller_factory(args: argparse.Namespace):
    """The parsed spec and a zero-argument constructor at the chosen β."""
    from ttsgym.controllers.registry import parse_spec

    spec = parse_spec(args.controller)
    if not spec.takes_beta and args.beta is not None:
        raise ValueError(f"controller {spec.text!r} takes no β (its parameters go in the spec)")
    beta = (0.5 if args.beta is None else args.beta) if spec.takes_beta else None
    spec.make(beta)  # fail now, in the parent, on a bad β
    return spec, beta


def speculation_from_args(args: argparse.Namespace):
    from ttsgym.controllers.live import Speculation

    if args.lookahead < 0 or args.window < 0:
        raise ValueError("--lookahead and --window must be >= 0")
    return Speculation(lookahead=args.lookahead, max_window=args.window,
                       first_window=min(4, args.window))


def upstream_key(args: argparse.Namespace) -> str | None:
    var = args.upstream_api_key_env
    return (os.environ.get(var) or None) if var else None
