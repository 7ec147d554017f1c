"""``ttsgym serve``: an OpenAI-compatible endpoint answering with a controller run live upstream."""

from __future__ import annotations

import argparse
import os
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
        "serve", help="serve a controller as an OpenAI-compatible chat endpoint over an upstream server",
        description="POST /v1/chat/completions answers each question by running the controller live "
                    "against --upstream (generation as `ttsgym collect`); `usage` counts every upstream "
                    "token, the `ttsgym` field reports branches, probes, stop reason and β. GET /v1/models.")
    p.add_argument("--upstream", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="the upstream's served model name")
    p.add_argument("--served-model-name", default=None, help="the name clients ask for (default: --model)")
    p.add_argument("--allowed-betas", default=None, metavar="B,B,...",
                   help="β values a request may choose with the 'beta' field (default: only --beta)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="environment variable holding the key clients must send (required off loopback)")
    p.add_argument("--max-concurrency", type=int, default=8,
                   help="questions answered at once; more get 429 (default 8)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (default 600)")
    p.add_argument("--upstream-timeout", type=float, default=300.0,
                   help="seconds per upstream request (default 300)")
    p.add_argument("--upstream-retries", type=int, default=3,
                   help="attempts per upstream request (default 3)")
    add_controller_flags(p)
    add_generation_flags(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ttsgym.collect.client import RetryPolicy
    from ttsgym.controllers.serve import ServeConfig, bind_socket, check_bind, create_app, run_server

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env) or None
        if api_key is None:
            raise ValueError(f"--api-key-env {args.api_key_env}: the variable is not set or empty")
    check_bind(args.host, api_key)
    settings, branches, notes = settings_from_args(args)
    spec, beta = controller_factory(args)
    allowed = tuple(float(b) for b in args.allowed_betas.split(",")) if args.allowed_betas else ()
    if args.upstream_retries <= 0 or args.upstream_timeout <= 0 or args.request_timeout <= 0:
        raise ValueError("--upstream-retries, --upstream-timeout and --request-timeout must be positive")
    config = ServeConfig(
        upstream=args.upstream, settings=settings, spec=spec, beta=beta, pool_size=branches,
        served_model=args.served_model_name or args.model, allowed_betas=allowed, api_key=api_key,
        upstream_api_key=upstream_key(args), max_concurrency=args.max_concurrency,
        speculation=speculation_from_args(args), kappa=args.kappa, budget=args.budget,
        request_timeout_s=args.request_timeout,
        retry=RetryPolicy(attempts=args.upstream_retries, base_s=0.2, cap_s=2.0,
                          timeout_s=args.upstream_timeout))
    for note in notes:
        print(f"ttsgym serve: note: {note}", file=sys.stderr)
    allowed_text = ", ".join(f"{b:g}" for b in config.allowed_betas)
    betas = f" β={beta:g} (allowed: {allowed_text})" if beta is not None else ""
    print(f"ttsgym serve: {spec.text}{betas} over {args.upstream} ({settings.model}) on "
          f"http://{args.host}:{args.port}/v1 as model {config.served_model!r}"
          + ("" if api_key else " (no key: loopback only)"), file=sys.stderr, flush=True)
    sock = bind_socket(args.host, args.port)
    try:
        run_server(create_app(config), sock)
    finally:
        sock.close()
    return 0
