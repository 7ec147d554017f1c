"""What live inference adds on top of the upstream server, measured on the fast fake upstream.

1. Proxy overhead: the same questions answered one at a time (a) in-process through
   ``LiveRunner`` and (b) through ``ttsgym serve`` over HTTP; p50/p95 of (b) − (a) is the cost of
   the HTTP/ASGI layer (validation, JSON, uvicorn). Also the backend's own overhead: episode wall
   clock minus the time the controller was blocked on upstream results.
2. Read-ahead: SC@8 and short_race with and without speculation on an upstream with a fixed
   service time per completion (``--delay-ms``): wall clock and the speculative tokens spent.
3. Load: 64 clients × 10 requests through serve: answered / 429, requests per second.

    python benchmarks/bench_serve.py [--requests 40] [--delay-ms 20]

Numbers are printed, not asserted (2 shared cores: expect noise).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from live_fake import SETTINGS, FastFakeVLLM, ServeThread

from ttsgym.collect.client import RetryPolicy
from ttsgym.controllers.live import LiveRunner, Speculation
from ttsgym.controllers.registry import parse_spec
from ttsgym.controllers.serve import ServeConfig, create_app


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def ms(x: float) -> str:
    return f"{1000 * x:7.1f} ms"


def overhead(n: int, spec_text: str, beta: float | None) -> None:
    spec = parse_spec(spec_text)
    questions = [f"Question {k}?" for k in range(n)]
    with FastFakeVLLM() as upstream:
        with LiveRunner(upstream.base_url, SETTINGS, pool_size=SETTINGS.branches) as runner:
            runner.solve(lambda: spec.make(beta), "warm up")
            direct, backend = [], []
            for q in questions:
                t = time.perf_counter()
                r = runner.solve(lambda: spec.make(beta), q)
                direct.append(time.perf_counter() - t)
                backend.append(r.seconds - r.wait_seconds)
        config = ServeConfig(upstream=upstream.base_url, settings=SETTINGS, spec=spec, beta=beta,
                             pool_size=SETTINGS.branches, served_model="fake", max_concurrency=4)
        with ServeThread(create_app(config)) as srv, httpx.Client(base_url=srv.url, timeout=120) as client:
            body = {"model": "fake", "messages": [{"role": "user", "content": "warm up"}]}
            client.post("/v1/chat/completions", json=body).raise_for_status()
            served = []
            for q in questions:
                body = {"model": "fake", "messages": [{"role": "user", "content": q}]}
                t = time.perf_counter()
                client.post("/v1/chat/completions", json=body).raise_for_status()
                served.append(time.perf_counter() - t)
    diff = [s - d for s, d in zip(served, direct, strict=True)]
    label = spec.text if beta is None else f"{spec.text} β={beta:g}"
    print(f"1. proxy overhead, {label}, {n} questions one at a time")
    for name, xs in (("in-process episode", direct), ("through ttsgym serve", served),
                     ("serve − in-process", diff), ("backend (wall − upstream wait)", backend)):
        print(f"   {name:<32} p50 {ms(pct(xs, 0.5))}   p95 {ms(pct(xs, 0.95))}   "
              f"mean {ms(statistics.mean(xs))}")


def read_ahead(delay_ms: float) -> None:
    print(f"2. read-ahead, upstream service time {delay_ms:g} ms per completion")
    with FastFakeVLLM(delay_s=delay_ms / 1000) as upstream:
        for spec_text, beta in (("sc:n=8", None), ("short_race", 0.5),
                                ("parallel_probe:num_chains=8,T=3,warm_up=2,prune_patience=2", None)):
            spec = parse_spec(spec_text)
            row = []
            for name, speculation in (("on demand", Speculation(0, 0, 0)), ("read-ahead", Speculation())):
                with LiveRunner(upstream.base_url, SETTINGS, pool_size=SETTINGS.branches,
                                speculation=speculation) as runner:
                    r = runner.solve(lambda s=spec, b=beta: s.make(b), "What is 3 + 4?")
                row.append(f"{name}: {r.seconds:6.2f} s, {r.tokens} tokens, "
                           f"{r.speculative_tokens} speculative, {r.speculative_probes} unused probes")
            print(f"   {spec.text:<58} " + " | ".join(row))


async def _wave(url: str, clients: int, requests: int) -> list[int]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
        async def one(c: int) -> list[int]:
            codes = []
            for k in range(requests):
                body = {"model": "fake", "messages": [{"role": "user", "content": f"Q{(c + k) % 7}"}]}
                codes.append((await client.post("/v1/chat/completions", json=body)).status_code)
            return codes
        return [x for r in await asyncio.gather(*(one(c) for c in range(clients))) for x in r]


def load(clients: int, requests: int) -> None:
    small = replace(SETTINGS, max_tokens=48)
    with FastFakeVLLM() as upstream:
        config = ServeConfig(upstream=upstream.base_url, settings=small, spec=parse_spec("sc:n=2"), beta=None,
                             pool_size=4, served_model="fake", max_concurrency=8,
                             retry=RetryPolicy(attempts=2, base_s=0.01, cap_s=0.05, timeout_s=60))
        with ServeThread(create_app(config)) as srv:
            t = time.perf_counter()
            codes = asyncio.run(_wave(srv.url, clients, requests))
            wall = time.perf_counter() - t
    ok, busy = codes.count(200), codes.count(429)
    print(f"3. load, {clients} clients × {requests} requests (sc:n=2, max-concurrency 8): "
          f"{ok} answered, {busy} × 429, {len(codes) - ok - busy} other, {wall:.1f} s, "
          f"{ok / wall:.1f} answers/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=64)
    args = ap.parse_args()
    overhead(args.requests, "short_race", 0.5)
    read_ahead(args.delay_ms)
    load(args.clients, 10)


if __name__ == "__main__":
    main()
