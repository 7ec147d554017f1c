"""``ttsgym collect``: build a store by sampling, probing and scoring branches on vLLM servers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ttsgym.store.answers import CHECKERS


def register(sub: argparse._SubParsersAction) -> None:
    from ttsgym.collect.client import DEFAULT_PROBE_TEMPLATE
    from ttsgym.collect.collector import DEFAULT_INSTRUCTION

    p = sub.add_parser(
        "collect", help="collect a store from an OpenAI-compatible (vLLM) server",
        description="Sample --branches branches per question in --interval-token chunks (token-id "
                    "prompts, a seed per chunk), probe the answer after each chunk, and write a "
                    "replay store. Each question is written when complete; rerunning (or "
                    "--resume) finishes what is missing.")
    p.add_argument("--base-url", action="append", required=True, metavar="URL",
                   help="server as the openai client takes it, e.g. http://127.0.0.1:8000/v1 "
                        "(repeat to spread the work over several servers)")
    p.add_argument("--model", required=True, help="the served model name")
    p.add_argument("--questions", required=True, help="JSONL, CSV or Parquet file of questions")
    p.add_argument("--out", required=True, help="the store directory to create (or finish)")
    p.add_argument("--branches", type=int, required=True, help="branches per question (N)")
    p.add_argument("--interval", type=int, required=True, help="probe interval Δ in tokens")
    p.add_argument("--max-tokens", type=int, default=32768, help="branch length limit (default 32768)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="store seed; chunk seeds derive from it")
    p.add_argument("--concurrency", type=int, default=32, help="branches in flight (default 32)")
    p.add_argument("--probe-template", default=DEFAULT_PROBE_TEMPLATE,
                   help=f"text after the (closed) thinking block that forces an answer "
                        f"(default {DEFAULT_PROBE_TEMPLATE!r})")
    p.add_argument("--probe-tokens", type=int, default=16, help="greedy tokens per probe (default 16)")
    p.add_argument("--instruction", default=DEFAULT_INSTRUCTION,
                   help="appended to each question in the user message ('' for none)")
    p.add_argument("--question-column", default="question")
    p.add_argument("--answer-column", default="answer")
    p.add_argument("--dataset", help="dataset name in the store (default: the question file's stem)")
    p.add_argument("--checker", choices=CHECKERS, default="math", help="answer equivalence (default math)")
    p.add_argument("--prm-url", help="server of a process reward model (pooling API)")
    p.add_argument("--prm-model", help="its served model name")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key, if the server wants one")
    p.add_argument("--retries", type=int, default=8, help="attempts per request (default 8)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    p.add_argument("--backoff", type=float, default=0.5, help="first retry's backoff scale in seconds")
    p.add_argument("--resume", action="store_true", help="insist on finishing an existing collection")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--format", choices=("table", "json"), default="table", help="summary format")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from ttsgym.collect.client import RequestFailed, RetryPolicy, ServerError
    from ttsgym.collect.collector import CollectSettings, RunOptions, collect
    from ttsgym.collect.questions import load_questions

    questions = load_questions(args.questions, args.question_column, args.answer_column)
    settings = CollectSettings(
        model=args.model, dataset=args.dataset or Path(args.questions).stem, branches=args.branches,
        interval=args.interval, max_tokens=args.max_tokens, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, seed=args.seed, probe_template=args.probe_template,
        probe_tokens=args.probe_tokens, instruction=args.instruction, checker=args.checker,
        prm_model=args.prm_model)
    if args.retries <= 0 or args.timeout <= 0:
        raise ValueError("--retries and --timeout must be positive")
    options = RunOptions(
        base_urls=args.base_url, concurrency=args.concurrency, prm_url=args.prm_url,
        retry=RetryPolicy(attempts=args.retries, base_s=args.backoff, timeout_s=args.timeout),
        api_key=os.environ.get(args.api_key_env) or None,
        progress=not args.no_progress and sys.stderr.isatty(), resume=args.resume)
    try:
        summary = collect(questions, settings, options, args.out, questions_file=args.questions)
    except (ServerError, RequestFailed) as exc:
        print(f"ttsgym collect: error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, args.out)
    return 1 if summary["failed"] else 0


def _print_summary(s: dict, out: str) -> None:
    over = s["probe_overhead"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f} %"

    print(f"store {out}: {s['questions_complete']}/{s['questions_total']} questions complete"
          f" ({s['questions_done']} this run, {len(s['failed'])} failed)")
    print(f"  this run: {s['branches']} branches, {s['branch_tokens']:,} branch tokens, {s['probes']} probes,"
          f" {s['wall_seconds']:.1f} s, {s['tokens_per_second'] or 0:.0f} generated tokens/s")
    gen, probe = s["generation"], s["probe"]
    cached = "not reported" if gen["cached_tokens"] is None else f"{gen['cached_tokens']:,} cached"
    print(f"  generation: {gen['requests']} requests, {gen['prompt_tokens']:,} prompt tokens ({cached}),"
          f" {gen['completion_tokens']:,} generated, {gen['retries']} retries")
    print(f"  probes: {probe['requests']} requests, {probe['prompt_tokens']:,} prompt tokens,"
          f" {probe['completion_tokens']:,} generated")
    print(f"  probe overhead: {pct(over['generated_tokens'])} extra generated tokens,"
          f" {pct(over['request_seconds'])} extra request time,"
          f" {pct(over['uncached_prompt_tokens'])} extra uncached prompt tokens")
    for qid, reason in s["failed"].items():
        print(f"  failed question {qid}: {reason}")
