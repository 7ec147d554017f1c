"""Collection against a real vLLM CPU server with a tiny random-weight Qwen3 (see conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from ttsgym.cli.main import main
from ttsgym.collect import chunk_seed, last_boxed, probe_positions, probe_suffix, think_open
from ttsgym.collect.client import DEFAULT_PROBE_TEMPLATE
from ttsgym.collect.collector import DEFAULT_INSTRUCTION
from ttsgym.store import ERR, Store

pytestmark = pytest.mark.integration

QUESTIONS = [{"question": "What is 6+6?", "answer": "12"},
             {"question": "Half of one?", "answer": "0.5"},
             {"question": "What is 3+4?", "answer": "7"}]
DELTA, MAX_TOKENS, BRANCHES, PROBE_TOKENS = 32, 160, 4, 8


def tables(out: Path) -> dict:
    keys = {"questions": ["question_id"], "branches": ["question_id", "branch_id"],
            "steps": ["question_id", "branch_id", "step"], "traces": ["question_id", "branch_id"]}
    return {t: pq.read_table(next((out / t).glob("*.parquet"))).sort_by([(c, "ascending") for c in cols])
            for t, cols in keys.items()}


def run_collect(server, qfile: Path, out: Path, concurrency: int = 8) -> int:
    return main(["collect", "--base-url", server.base_url, "--model", server.model, "--questions", str(qfile),
                 "--out", str(out), "--dataset", "toy", "--branches", str(BRANCHES), "--interval", str(DELTA),
                 "--max-tokens", str(MAX_TOKENS), "--probe-tokens", str(PROBE_TOKENS), "--seed", "11",
                 "--concurrency", str(concurrency), "--no-progress"])


@pytest.fixture(scope="module")
def collected(vllm_server, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("collect")
    qfile = root / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    assert run_collect(vllm_server, qfile, root / "store") == 0
    return qfile, root / "store"


def test_store_matches_direct_requests(vllm_server, collected):
    """Token ids, lengths and probe positions (and probe answers) equal what plain HTTP requests
    to the server give, chunk by chunk with the derived seeds."""
    _, out = collected
    t = tables(out)
    branches, steps, traces = (t[k].to_pylist() for k in ("branches", "steps", "traces"))
    assert len(branches) == len(QUESTIONS) * BRANCHES
    root = vllm_server.base_url.removesuffix("/v1")
    with httpx.Client(timeout=120) as http:
        def post(path: str, body: dict) -> dict:
            r = http.post(root + path, json={"model": vllm_server.model, **body})
            r.raise_for_status()
            return r.json()

        for b, tr in zip(branches, traces, strict=True):
            q = QUESTIONS[b["question_id"]]["question"]
            message = {"role": "user", "content": f"{q}\n\n{DEFAULT_INSTRUCTION}"}
            prompt = post("/tokenize", {"messages": [message], "add_generation_prompt": True})["tokens"]
            assert tr["prompt_token_ids"] == prompt
            ids: list[int] = []
            text = ""
            positions: list[int] = []
            raws: list[str] = []
            for k in range(-(-MAX_TOKENS // DELTA)):
                seed = chunk_seed(11, q, b["branch_id"], k)
                choice = post("/v1/completions", {"prompt": prompt + ids, "max_tokens": DELTA, "seed": seed,
                                                   "temperature": 0.6, "top_p": 0.95,
                                                   "return_token_ids": True})["choices"][0]
                ids += choice["token_ids"]
                text += choice["text"]
                ended = choice["finish_reason"] == "stop" or len(ids) >= MAX_TOKENS
                if len(choice["token_ids"]) == DELTA and choice["finish_reason"] != "stop":
                    prompt_text = post("/detokenize", {"tokens": prompt})["prompt"]
                    suffix_text = probe_suffix(DEFAULT_PROBE_TEMPLATE, think_open(prompt_text + text))
                    suffix = post("/tokenize", {"prompt": suffix_text, "add_special_tokens": False})["tokens"]
                    body = {"prompt": prompt + ids + suffix, "temperature": 0.0, "max_tokens": PROBE_TOKENS,
                            "logprobs": 1}
                    probe = post("/v1/completions", body)["choices"][0]
                    positions.append(len(ids))
                    raws.append(probe["text"])
                if ended:
                    break
            assert tr["token_ids"] == ids, (b["question_id"], b["branch_id"])
            assert b["n_tokens"] == len(ids) and tr["text"] == text
            key = (b["question_id"], b["branch_id"])
            mine = [s["tokens"] for s in steps if (s["question_id"], s["branch_id"]) == key]
            assert mine == positions == probe_positions(len(ids), DELTA, b["finish_reason"])
            assert tr["probe_raw"] == raws
            assert b["final_answer"] == (last_boxed(text) or ERR)
    assert all(s["tokens"] % DELTA == 0 for s in steps)


def test_same_store_at_other_concurrency(vllm_server, collected, tmp_path):
    """Seeded chunks give identical ids whatever the concurrency (and across calls)."""
    qfile, out = collected
    assert run_collect(vllm_server, qfile, tmp_path / "store", concurrency=1) == 0
    got, want = tables(tmp_path / "store"), tables(out)
    for name in want:
        assert got[name].equals(want[name]), name


def test_replays_through_eval_and_the_env(collected, capsys):
    import gymnasium as gym

    import ttsgym.env  # noqa: F401

    _, out = collected
    store = Store(out)
    info = store.slice("tiny", "toy")
    assert (info.questions, info.branches, info.interval_tokens) == (3, 12, DELTA)
    coll = store.manifest["collection"]
    assert coll["servers"][0]["version"] and coll["max_tokens"] == MAX_TOKENS
    assert main(["store", "info", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "--store", str(out), "--controller", "sc:n=4", "--controller", "asc",
                 "--seeds", "4", "--workers", "1", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(r["episodes"] > 0 and r["avg_tokens"] > 0 for r in rows)
    env = gym.make("ttsgym/WidthDepth-v0", store=str(out), model="tiny", dataset="toy", max_branches=4)
    env.reset(seed=0)
    terminated = False
    for action in (1, 2, 1, 0):
        mask = env.unwrapped.action_masks()
        if mask[action]:
            _, _, terminated, _, _ = env.step(action)
        if terminated:
            break
    assert terminated
