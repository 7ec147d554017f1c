"""``ttsgym run``: one question, live, with the controller's actions and the tokens they cost."""

from __future__ import annotations

import argparse
import json
import sys

from ttsgym.cli.live_args import (
    add_controller_flags,
    add_generation_flags,
    controller_factory,
    settings_from_args,
    speculation_from_args,
    upstream_key,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a controller live on one question against an OpenAI-compatible server",
        description="Run a controller on one question against a live (vLLM) server, generating "
                    "branches exactly as `ttsgym collect` does, and print its actions and costs "
                    "(replay units: Δ per interval read, the tail of a finishing read, T for a full "
                    "read) next to the real upstream usage and the wall clock.")
    p.add_argument("--base-url", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="the served model name")
    p.add_argument("--question", required=True, help="the question text")
    p.add_argument("--order-seed", type=int, default=None,
                   help="open branch ids in the order replay's autotts protocol gives this seed "
                        "(default: 0, 1, 2, ...)")
    add_controller_flags(p)
    add_generation_flags(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ttsgym.collect.client import ServerError
    from ttsgym.controllers.live import LiveRunner, UpstreamFailed
    from ttsgym.env.protocols import branch_order

    settings, branches, notes = settings_from_args(args)
    spec, beta = controller_factory(args)
    for note in notes:
        print(f"ttsgym run: note: {note}", file=sys.stderr)
    order = None if args.order_seed is None else branch_order("autotts", branches, args.order_seed)
    try:
        with LiveRunner(args.base_url, settings, pool_size=branches, api_key=upstream_key(args),
                        speculation=speculation_from_args(args)) as runner:
            result = runner.solve(lambda: spec.make(beta), args.question, order=order, kappa=args.kappa,
                                  budget=args.budget, trace=True)
    except (UpstreamFailed, ServerError) as exc:
        print(f"ttsgym run: upstream error: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({"controller": spec.text, "beta": beta, **result.as_dict(), "events": result.events},
                         indent=2))
        return 0
    print(f"controller {spec.text}" + (f" at β={beta:g}" if beta is not None else "")
          + f" · Δ={settings.interval} · {branches} branch ids · model {settings.model}")
    print(f"{'time':>8}  {'op':<9} {'branch':>6} {'id':>4}  {'answer':<16} {'cost':>7} {'total':>8}")
    for e in result.events:
        if e["op"] == "event":
            print(f"{'':>8}  event     {e.get('event')}: "
                  + ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("op", "event")))
            continue
        answer = "" if "answer" not in e else (e["answer"] + (" (final)" if e.get("finished") else ""))
        print(f"{e['t']:>7.2f}s  {e['op']:<9} {e['branch']:>6} {e['branch_id']:>4}  {answer:<16.16} "
              f"{e['cost']:>7} {e['total']:>8}")
    r = result
    up = r.upstream
    print(f"answer: {r.answer}   (stop: {r.stop_reason})")
    print(f"replay units: {r.tokens:,} tokens, {r.seq_tokens:,} sequential, {r.opened} branches opened, "
          f"{r.probes_read} probes read")
    print(f"upstream: {up['chunks']} chunk + {up['probes']} probe requests, "
          f"{r.prompt_tokens:,} prompt tokens, "
          f"{r.completion_tokens:,} completion tokens ({r.speculative_tokens:,} generated ahead and unused, "
          f"{r.speculative_probes} probes unused, {up['cancelled_requests']} requests cancelled)")
    print(f"wall clock: {r.seconds:.3f} s ({r.wait_seconds:.3f} s of it waiting on the server)")
    return 0
