"""Collection against the fault-injecting fake vLLM (tests/fake_vllm.py): answers, seeds,
probes, faults, failures, resume, and the store replaying through eval and the env."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_vllm import FAULTS, FakeVLLM

from ttsgym.collect import (
    CollectClient,
    CollectSettings,
    RetryPolicy,
    RunOptions,
    ServerError,
    answer_classes,
    chunk_seed,
    collect,
    last_boxed,
    probe_answer,
    probe_positions,
)
from ttsgym.collect.answers import answer_confidence
from ttsgym.collect.questions import load_questions
from ttsgym.store import ERR, Store

ALL_FAULTS = {k: 0.04 for k in FAULTS}  # 28 % of requests go wrong, every kind of fault
FAST_RETRY = RetryPolicy(attempts=12, base_s=0.005, cap_s=0.05, timeout_s=0.5)
QUESTIONS = [
    {"question": "What is 6+6?", "answer": "12"},
    {"question": "Half of one?", "answer": "\\frac{1}{2}"},
    {"question": "What is 3+4?", "answer": 7},
    {"question": "x plus one?", "answer": "x+1"},
]


def write_questions(path: Path, rows: list[dict] = QUESTIONS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def settings(**kw) -> CollectSettings:
    base = {"model": "fake", "dataset": "toy", "branches": 4, "interval": 8, "max_tokens": 64,
            "probe_tokens": 6}
    return CollectSettings(**{**base, **kw})


def run(srv: FakeVLLM, qfile: Path, out: Path, retry: RetryPolicy = FAST_RETRY, **kw) -> dict:
    rows = load_questions(qfile)
    return collect(rows, settings(**kw), RunOptions([srv.base_url], concurrency=6, retry=retry), out)


def tables(out: Path) -> dict:
    names = {"questions": ["question_id"], "branches": ["question_id", "branch_id"],
             "steps": ["question_id", "branch_id", "step"], "traces": ["question_id", "branch_id"]}
    return {t: pq.read_table(next((out / t).glob("*.parquet"))).sort_by([(c, "ascending") for c in cols])
            for t, cols in names.items()}


# ---------------------------------------------------------------- answers and seeds
def test_boxed_extraction_is_brace_matched():
    assert last_boxed("so \\boxed{\\frac{1}{2}} and") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} then \\boxed{2}") == "2"
    assert last_boxed("\\boxed{3} then \\boxed{unclosed") == "3"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{ }") is None
    tpl = "The final answer is \\boxed{"
    assert probe_answer("\\frac{1}{2}} because", tpl) == ("\\frac{1}{2}", 12)
    assert probe_answer("12 and more", tpl) == (None, None)
    assert probe_answer("x \\boxed{4} y", "Answer:") == ("4", 11)


def test_confidence_covers_the_answer_tokens_only():
    toks, lps = ["1", "2", "}", " because"], [-0.1, -0.2, -0.3, -5.0]
    assert answer_confidence(toks, lps, 3) == pytest.approx(2.718281828 ** -0.6)
    assert answer_confidence(toks, lps, None) is None
    assert answer_confidence(None, None, 3) is None


def test_math_classes_merge_half_and_keep_err_apart():
    mapping, gold = answer_classes(["0.5", "\\frac{1}{2}", "1/2", ERR, "7", ERR], "\\frac{1}{2}", "math")
    assert gold == "\\frac{1}{2}"
    assert mapping["0.5"] == mapping["\\frac{1}{2}"] == mapping["1/2"] == gold
    assert mapping[ERR] == ERR != gold
    assert mapping["7"] not in (gold, ERR)
    exact, _ = answer_classes(["0.5", "\\frac{1}{2}"], "0.5", "exact")
    assert exact["\\frac{1}{2}"] != exact["0.5"]


def test_chunk_seeds_are_a_function_of_question_branch_chunk():
    s = chunk_seed(0, "q", 1, 2)
    assert s == chunk_seed(0, "q", 1, 2)
    assert 0 <= s < 2 ** 31
    others = {chunk_seed(0, "q", 1, 3), chunk_seed(0, "q", 2, 2), chunk_seed(1, "q", 1, 2),
              chunk_seed(0, "r", 1, 2)}
    assert s not in others and len(others) == 4


def test_probe_positions_follow_replay_costs():
    assert probe_positions(64, 8, "length") == [8 * k for k in range(1, 9)]
    assert probe_positions(64, 8, "stop") == [8 * k for k in range(1, 8)]
    assert probe_positions(20, 8, "stop") == [8, 16]
    assert probe_positions(5, 8, "stop") == []


def test_question_files(tmp_path):
    import pyarrow as pa

    rows = load_questions(write_questions(tmp_path / "q.jsonl"))
    assert [r.gold for r in rows] == ["12", "\\frac{1}{2}", "7", "x+1"]
    (tmp_path / "q.csv").write_text("problem,solution\nWhat?,3\n")
    assert load_questions(tmp_path / "q.csv", "problem", "solution")[0].gold == "3"
    pq.write_table(pa.table({"question": ["a"], "answer": ["1"]}), tmp_path / "q.parquet")
    assert load_questions(tmp_path / "q.parquet")[0].question == "a"
    with pytest.raises(ValueError, match=r"q.csv: row 2: no column 'answer'"):
        load_questions(tmp_path / "q.csv", "problem")
    (tmp_path / "bad.jsonl").write_text('{"question": "a", "answer": "1"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: invalid JSON"):
        load_questions(tmp_path / "bad.jsonl")


# ---------------------------------------------------------------- the client
def test_client_chunks_reproduce_and_probe_answers():
    async def go(url: str) -> None:
        async with CollectClient(url, "fake", retry=FAST_RETRY) as c:
            info = await c.check()
            assert info.returns_token_ids and info.version == "fake-0"
            prompt = await c.tokenize([{"role": "user", "content": "hi"}])
            a = await c.generate_chunk(prompt, [], seed=5, max_tokens=8)
            b = await c.generate_chunk(prompt, [], seed=5, max_tokens=8)
            d = await c.generate_chunk(prompt, [], seed=6, max_tokens=8)
            assert a.token_ids == b.token_ids and a.token_ids != d.token_ids
            suffix = await c.tokenize_text("\n\nThe final answer is \\boxed{")
            p = await c.probe(prompt + a.token_ids, suffix, 6, "The final answer is \\boxed{")
            assert p.answer in ("12", "0.5", "\\frac{1}{2}", "7", "x+1", "1/2")
            assert 0 < p.confidence <= 1
            assert p.usage.completion_tokens == len(p.token_ids)

    with FakeVLLM() as srv:
        asyncio.run(go(srv.base_url))


def test_a_server_without_token_ids_fails_clearly(tmp_path):
    with FakeVLLM(token_ids=False) as srv, pytest.raises(ServerError, match="return_token_ids"):
        run(srv, write_questions(tmp_path / "q.jsonl"), tmp_path / "out")


def test_wrong_model_name_is_named(tmp_path):
    with FakeVLLM() as srv, pytest.raises(ServerError, match="model 'nope' is not served"):
        run(srv, write_questions(tmp_path / "q.jsonl"), tmp_path / "out", model="nope")


# ---------------------------------------------------------------- the collected store
@pytest.fixture(scope="module")
def clean_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    with FakeVLLM() as srv:
        summary = run(srv, write_questions(root / "q.jsonl"), root / "store")
    assert summary["questions_complete"] == 4 and not summary["failed"]
    return root / "store"


def test_store_matches_direct_requests(clean_store, tmp_path):
    """Branch token ids, lengths and probe positions equal what one replays by hand."""
    t = tables(clean_store)
    br, steps, tr = t["branches"].to_pylist(), t["steps"].to_pylist(), t["traces"].to_pylist()
    assert len(br) == 16
    rows = load_questions(write_questions(tmp_path / "q.jsonl"))

    async def replay(url: str) -> None:
        async with CollectClient(url, "fake", retry=FAST_RETRY) as c:
            for b, trace in zip(br, tr, strict=True):
                q = rows[b["question_id"]]
                assert trace["prompt_token_ids"] == await c.tokenize(settings().message(q.question))
                ids: list[int] = []
                for k, seed in enumerate(trace["chunk_seeds"]):
                    assert seed == chunk_seed(0, q.question, b["branch_id"], k)
                    want = min(8, 64 - len(ids))
                    chunk = await c.generate_chunk(trace["prompt_token_ids"], ids, seed, want)
                    ids += chunk.token_ids
                assert ids == trace["token_ids"] and b["n_tokens"] == len(ids)
                key = (b["question_id"], b["branch_id"])
                mine = [s for s in steps if (s["question_id"], s["branch_id"]) == key]
                assert [s["tokens"] for s in mine] == probe_positions(len(ids), 8, b["finish_reason"])
                assert b["n_probes"] == len(mine)
                assert b["final_answer"] == (last_boxed(trace["text"]) or ERR)

    with FakeVLLM() as srv:
        asyncio.run(replay(srv.base_url))
    assert {b["finish_reason"] for b in br} == {"stop", "length"}
    assert all(s["confidence"] is None or 0 < s["confidence"] <= 1 for s in steps)
    assert any(s["confidence"] is not None for s in steps)
    assert all(s["score"] is None for s in steps)


def test_store_replays_through_eval_and_the_env(clean_store):
    import gymnasium as gym

    import ttsgym.env  # noqa: F401
    from ttsgym.cli.main import main

    store = Store(clean_store)
    info = store.slice("fake", "toy")
    assert (info.questions, info.branches, info.interval_tokens) == (4, 16, 8)
    coll = store.manifest["collection"]
    assert coll["interval"] == 8 and coll["seed_scheme"] and coll["versions"]["ttsgym"]
    assert coll["probe_overhead"]["generated_tokens"] > 0
    assert main(["eval", "--store", str(clean_store), "--controller", "sc:n=4", "--seeds", "3",
                 "--workers", "1", "--format", "json"]) == 0
    env = gym.make("ttsgym/WidthDepth-v0", store=str(clean_store), model="fake", dataset="toy",
                   max_branches=4)
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(1)
    _, _, terminated, _, _ = env.step(0)
    assert terminated


def test_faults_never_crash_or_corrupt(clean_store, tmp_path):
    with FakeVLLM(faults=ALL_FAULTS, hang_s=1.0) as srv:
        summary = run(srv, write_questions(tmp_path / "q.jsonl"), tmp_path / "store")
        assert all(srv.counts[k] > 0 for k in FAULTS), srv.counts
    assert not summary["failed"]
    assert summary["generation"]["retries"] + summary["probe"]["retries"] > 0
    got, want = tables(tmp_path / "store"), tables(clean_store)
    for name in want:
        assert got[name].equals(want[name]), name


def test_persistent_failures_are_recorded_and_retried_on_rerun(clean_store, tmp_path):
    qfile = write_questions(tmp_path / "q.jsonl")
    out = tmp_path / "store"
    with FakeVLLM(faults={"500": 1.0}) as srv, pytest.raises(Exception, match="failed 2 times"):
        run(srv, qfile, out, retry=RetryPolicy(attempts=2, base_s=0.001, timeout_s=0.5))
    # a server that fails one request in two, three attempts per request: some questions fail
    with FakeVLLM(faults={"500": 0.5}, fault_seed=3) as srv:
        retry = RetryPolicy(attempts=3, base_s=0.001, timeout_s=0.5)
        summary = run(srv, qfile, out, retry=retry)
    assert summary["failed"], "expected some questions to fail"
    assert all("HTTP 500" in r for r in summary["failed"].values())
    store = Store(out)
    assert store.manifest["collection"]["failed"] == summary["failed"]
    assert store.slice("fake", "toy").questions == summary["questions_complete"] < 4
    with FakeVLLM() as srv:
        summary = run(srv, qfile, out)
    assert not summary["failed"] and summary["questions_complete"] == 4
    got, want = tables(out), tables(clean_store)
    for name in want:
        assert got[name].equals(want[name]), name


def test_rerun_is_idempotent_and_settings_are_pinned(clean_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(clean_store, out)
    before = (out / "manifest.json").read_text()
    with FakeVLLM() as srv:
        summary = run(srv, write_questions(tmp_path / "q.jsonl"), out)
        assert summary["questions_done"] == 0 and srv.counts["ok"] == 0
        assert (out / "manifest.json").read_text() == before
        with pytest.raises(ValueError, match=r"interval: 8 then, 16 now"):
            run(srv, tmp_path / "q.jsonl", out, interval=16)
        with pytest.raises(FileNotFoundError, match="no collection to resume"):
            collect(load_questions(tmp_path / "q.jsonl"), settings(),
                    RunOptions([srv.base_url], retry=FAST_RETRY, resume=True), tmp_path / "none")


def test_prm_scores_fill_the_score_column(tmp_path):
    with FakeVLLM() as srv, FakeVLLM(model="prm") as prm:
        rows = load_questions(write_questions(tmp_path / "q.jsonl", QUESTIONS[:1]))
        collect(rows, settings(prm_model="prm"),
                RunOptions([srv.base_url], prm_url=prm.base_url, retry=FAST_RETRY), tmp_path / "s")
        assert any(r["path"] == "/pooling" for r in prm.requests)
    steps = tables(tmp_path / "s")["steps"].to_pylist()
    assert steps and all(0 <= s["score"] <= 1 for s in steps)
    assert Store(tmp_path / "s").slice("fake", "toy").has_score


def test_two_servers_give_the_same_store(clean_store, tmp_path):
    with FakeVLLM() as a, FakeVLLM() as b:
        rows = load_questions(write_questions(tmp_path / "q.jsonl"))
        collect(rows, settings(), RunOptions([a.base_url, b.base_url], retry=FAST_RETRY), tmp_path / "s")
        assert a.counts["ok"] > 0 and b.counts["ok"] > 0
    got, want = tables(tmp_path / "s"), tables(clean_store)
    for name in want:
        assert got[name].equals(want[name]), name
