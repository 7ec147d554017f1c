"""Load: 64 concurrent clients × 10 requests against ``ttsgym serve`` over the fast fake upstream.
Every request is answered or refused with 429 (none lost, none hung: each has a client timeout),
and memory stays bounded: nothing of an episode outlives it, and a second wave of requests does
not grow the process."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import replace
from pathlib import Path

import httpx
from live_fake import SETTINGS, FastFakeVLLM, ServeThread

from ttsgym.collect.client import RetryPolicy
from ttsgym.collect.live import LiveGenerator
from ttsgym.controllers.registry import parse_spec
from ttsgym.controllers.serve import ServeConfig, create_app

CLIENTS, REQUESTS = 64, 10
SMALL = replace(SETTINGS, max_tokens=48)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def wave(url: str, n_requests: int) -> list[tuple[int, dict]]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:

        async def one_client(c: int) -> list[tuple[int, dict]]:
            out = []
            for k in range(n_requests):
                question = f"Question {(c * 7 + k) % 5}?"
                body = {"model": "fake", "messages": [{"role": "user", "content": question}]}
                r = await client.post("/v1/chat/completions", json=body)
                out.append((r.status_code, r.json()))
                if r.status_code == 429:
                    assert r.headers["retry-after"] == "1"
            return out

        results = await asyncio.gather(*(one_client(c) for c in range(CLIENTS)))
    return [x for r in results for x in r]


def test_64_clients_all_answered_or_429_and_memory_bounded() -> None:
    with FastFakeVLLM() as upstream:
        config = ServeConfig(upstream=upstream.base_url, settings=SMALL, spec=parse_spec("sc:n=2"), beta=None,
                             pool_size=4, served_model="fake", max_concurrency=8,
                             retry=RetryPolicy(attempts=2, base_s=0.01, cap_s=0.05, timeout_s=60.0))
        app = create_app(config)
        state = app.state.ttsgym
        with ServeThread(app) as srv:
            first = asyncio.run(wave(srv.url, REQUESTS // 2))
            gc.collect()
            after_first = rss_mb()
            second = asyncio.run(wave(srv.url, REQUESTS - REQUESTS // 2))
            gc.collect()
            after_second = rss_mb()
            results = first + second
            assert len(results) == CLIENTS * REQUESTS
            codes = [code for code, _ in results]
            assert set(codes) <= {200, 429}, sorted(set(codes))
            answered = [body for code, body in results if code == 200]
            assert answered, "nothing was answered"
            for body in answered:
                assert body["ttsgym"]["answer"] is not None or body["ttsgym"]["stop_reason"] == "no_answer"
                assert body["usage"]["completion_tokens"] >= body["ttsgym"]["tokens"] > 0
            assert state.served == len(answered) and state.refused == codes.count(429)
            assert state.active == 0
            assert not [o for o in gc.get_objects() if isinstance(o, LiveGenerator)]
            assert after_second - after_first < 64, (after_first, after_second)
