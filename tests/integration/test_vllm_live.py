"""Live inference against the real vLLM CPU server (tiny random-weight Qwen3, see conftest.py):
parity with replay of a store collected from the same server, and load through ``ttsgym serve``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import httpx
import pytest
from live_fake import ServeThread
from test_live_parity import SPECS, USER_CLASS, _classes, _map_log, _replay

from ttsgym.collect.client import RetryPolicy
from ttsgym.collect.collector import Collector, CollectSettings, RunOptions
from ttsgym.collect.questions import QuestionRow
from ttsgym.controllers.live import LiveRunner
from ttsgym.controllers.registry import parse_spec
from ttsgym.controllers.serve import ServeConfig, create_app
from ttsgym.env.episodes import fresh_controller
from ttsgym.env.protocols import branch_order
from ttsgym.store import load_replay

pytestmark = pytest.mark.integration

QUESTIONS = [QuestionRow(0, "What is 6+6?", "12"), QuestionRow(1, "Half of one?", "0.5"),
             QuestionRow(2, "What is 3+4?", "7")]
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def collected(vllm_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("live-vllm")
    settings = CollectSettings(model=vllm_server.model, dataset="toy", branches=4, interval=32,
                               max_tokens=160, probe_tokens=8, seed=11)
    asyncio.run(Collector(QUESTIONS, settings, RunOptions([vllm_server.base_url], concurrency=8),
                          root / "store").run())
    user = root / "snoop.py"
    user.write_text(USER_CLASS)
    return settings, root / "store", user


def _small(spec_text: str) -> str:
    """The parity specs, sized to 4 branches per question."""
    return spec_text.replace("n=8", "n=4").replace("max_samples=8", "max_samples=4").replace(
        "num_chains=6", "num_chains=4").replace("window_size=3", "window_size=2")


@pytest.mark.parametrize(("spec_text", "beta"), SPECS)
def test_live_on_vllm_equals_replay(vllm_server, collected, spec_text: str, beta) -> None:
    settings, store, user = collected
    spec = parse_spec(f"{user}:Snoop" if spec_text == "USER" else _small(spec_text))
    arrays = load_replay(store, settings.model, settings.dataset)
    classes = _classes(store)
    with LiveRunner(vllm_server.base_url, settings, pool_size=settings.branches) as runner:
        for seed in SEEDS:
            replayed = _replay(spec, beta, arrays, seed)
            controller = fresh_controller(lambda: spec.make(beta), seed)
            for q, (r_answer, r_tokens, r_seq, r_opened, r_log) in enumerate(replayed):
                qid = int(arrays.question_ids[q])
                order = branch_order("autotts", settings.branches, seed)
                live = runner.solve(lambda c=controller: c, QUESTIONS[qid].question, order=order)
                where = f"{spec.text} β={beta} seed {seed} question {qid}"
                assert (live.tokens, live.seq_tokens, live.opened) == (r_tokens, r_seq, r_opened), where
                assert classes[qid].get(live.answer, live.answer) == r_answer, where
                if spec_text == "USER":
                    live_log = list(controller.log)
                    controller.log.clear()
                    assert _map_log(live_log, classes[qid]) == r_log, where


def test_serve_over_vllm_under_load(vllm_server, collected) -> None:
    """64 clients × 10 requests through serve over vLLM: each answered or 429, none lost or hung."""
    settings, _, _ = collected
    small = replace(settings, max_tokens=64)
    config = ServeConfig(upstream=vllm_server.base_url, settings=small, spec=parse_spec("sc:n=2"), beta=None,
                         pool_size=4, served_model="tiny", max_concurrency=4,
                         retry=RetryPolicy(attempts=3, base_s=0.1, cap_s=1.0, timeout_s=120))

    async def wave(url: str) -> list[int]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
            async def one(c: int) -> list[int]:
                codes = []
                for k in range(10):
                    body = {"model": "tiny", "messages": [{"role": "user", "content": f"Q{(c + k) % 5}"}]}
                    codes.append((await client.post("/v1/chat/completions", json=body)).status_code)
                return codes
            return [x for r in await asyncio.gather(*(one(c) for c in range(64))) for x in r]

    app = create_app(config)
    with ServeThread(app) as srv:
        start = time.perf_counter()
        codes = asyncio.run(wave(srv.url))
        wall = time.perf_counter() - start
    print(f"serve over vLLM, 64 clients x 10: {codes.count(200)} answered, {codes.count(429)} x 429, "
          f"{wall:.1f} s")
    assert len(codes) == 640 and set(codes) <= {200, 429}, sorted(set(codes))
    assert codes.count(200) > 0
    assert app.state.ttsgym.active == 0
