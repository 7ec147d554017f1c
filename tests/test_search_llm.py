"""`ttsgym search --proposer llm` end to end against a scripted OpenAI-compatible server on
127.0.0.1 (real HTTP, the `openai` client unmodified): every kind of bad candidate is rejected or
contained with its reason, the good one is accepted and selected, the history holds every
proposal, no file appears outside the run directory, and the USD cap holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from openai_stub import OpenAIStub, Step, reply, reply_with_code, status

from ttsgym.cli.main import main

GOOD = '''
from ttsgym.env.voting import majority


class Vote:
    """Read 1..8 branches in full and vote."""

    @classmethod
    def schedule(cls, beta):
        return {"n": 1 + round(7 * beta)}

    def __init__(self, config=None):
        self.n = self.schedule((config or {}).get("beta", 0.5))["n"]

    def solve(self, question):
        n = min(self.n, question.pool_size)
        return majority([question.open_full() for _ in range(n)])
'''

HEADER = '''
class Bad:
    @classmethod
    def schedule(cls, beta):
        return {"n": 1 + round(3 * beta)}

    def __init__(self, config=None):
        self.beta = (config or {}).get("beta", 0.5)

    def solve(self, question):
'''


def bad(body: str) -> str:
    return HEADER + "".join(f"        {line}\n" for line in body.strip().splitlines())


LOOP = bad("while True:\n    pass")
ALLOCATE = bad("block = bytearray(10 * 1024 ** 3)\nreturn str(len(block))")
RAISES = bad('raise RuntimeError("the controller gave up")')
WRITES = "import os\n" + bad('os.makedirs("/tmp/ttsgym-escaped", exist_ok=True)\n'
                            'open("/tmp/ttsgym-escaped/x", "w").write("out")\nreturn question.open_full()')
PRIVATE = bad("return question._q._pool_fin[0]")
# Reaches the hidden Question through a format string: no attribute syntax the checks can see.
PEEKS = bad('spec = "{0" + "." + "_" + "q." + "_" + "pool_fin}"\n'
            "text = spec.format(question)\n"
            'finals = [s.strip().strip("\'") for s in text[1:-1].split(",")]\n'
            "question.open()\n"
            "return max(set(finals), key=finals.count)")
GC_WALK = "import gc\n" + bad("for obj in gc.get_objects():\n    pass\nreturn question.open_full()")
SYNTAX = "class Broken:\n    def solve(self, question)\n        return 1\n"

CRITIC_MARK = "You review one candidate"


def script() -> list:
    """The proposer's replies in round order; critic calls get a fixed lesson."""
    proposals: list = [
        reply_with_code(LOOP), reply_with_code(ALLOCATE), reply_with_code(RAISES), reply_with_code(WRITES),
        reply_with_code(PRIVATE), reply_with_code(PEEKS), reply_with_code(GC_WALK),
        reply("I would rather explain my idea in words first."), reply_with_code(SYNTAX),
        [status(429), reply_with_code(GOOD.replace("1..8", "one to eight"))],
        [status(500), reply_with_code(GOOD.replace("7 * beta", "15 * beta"))],
    ]
    queue: list[Step] = []
    for p in proposals:
        queue.extend(p if isinstance(p, list) else [p])

    def step(body: dict) -> Step:
        first = body["messages"][0]["content"] if body.get("messages") else ""
        if CRITIC_MARK in str(first):
            return reply("Lesson: spend fewer full reads when the first answers agree.")
        return queue.pop(0) if queue else reply("no more ideas")

    return [step] * 64


EXPECT = [  # (stage or status, words the reason must contain)
    ("rejected", "timed out"), ("rejected", "out of memory"), ("rejected", "the controller gave up"),
    ("rejected", "'os' is not allowed"), ("rejected", "private attribute"), ("rejected", "peeking"),
    ("rejected", "'gc' is not allowed"), ("rejected", "holds no code"), ("rejected", "does not parse"),
    ("accepted", None), ("accepted", None),
]


def test_llm_search_rejects_each_bad_candidate_and_selects_the_good_one(real_store: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    escaped = Path("/tmp/ttsgym-escaped")
    assert not escaped.exists()
    monkeypatch.setenv("TTSGYM_TEST_KEY", "sk-test-secret-123")
    run = tmp_path / "run"
    before = set(os.listdir(tmp_path))
    with OpenAIStub(script()) as stub:
        code = main(["search", "--store", str(real_store), "--out", str(run), "--proposer", "llm",
                     "--base-url", stub.url, "--model", "stub-model", "--api-key-env", "TTSGYM_TEST_KEY",
                     "--rounds", str(len(EXPECT)), "--split", "Qwen3-4B:aime24,Qwen3-8B:aime24",
                     "--seeds", "2", "--final-seeds", "4", "--finalists", "2", "--timeout", "20",
                     "--memory-mb", "2048", "--price", "1,2", "--budget-usd", "5"])
        requests = stub.chat_requests()
    assert code == 0
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == list(range(len(EXPECT)))
    for h, (want, words) in zip(history, EXPECT, strict=True):
        assert h["status"] == want, (h["id"], h["status"], h["reason"])
        if words:
            assert words.lower() in (h["reason"] or "").lower(), (h["id"], h["reason"])
        assert h["cost_usd"] > 0
    assert all(r["headers"]["authorization"] == "Bearer sk-test-secret-123" for r in requests)
    selected = json.loads((run / "selected" / "selected.json").read_text())
    assert selected["class"] == "Vote" and selected["id"] in ("c0009", "c0010")
    assert "class Vote" in (run / "selected" / "controller.py").read_text()
    assert not escaped.exists()
    assert set(os.listdir(tmp_path)) == before | {"run"}
    for path in run.rglob("*"):
        if path.is_file():
            assert b"sk-test-secret-123" not in path.read_bytes(), path
    assert main(["search", "report", str(run), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "c0005" in report and "Selected controller" in report


def test_usd_cap_holds_against_the_usage_the_server_reports(real_store: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    """Every reply bills close to its worst case; the run stops before the cap, not after."""
    monkeypatch.setenv("TTSGYM_TEST_KEY", "k")
    price_in, price_out, budget = 1.0, 2.0, 0.05  # USD per million tokens; the cap

    def expensive(body: dict) -> Step:
        return reply_with_code(GOOD, prompt_tokens=prompt_bytes(body), completion_tokens=max_out(body))

    with OpenAIStub([expensive] * 200) as stub:
        code = main(["search", "--store", str(real_store), "--out", str(tmp_path / "run"),
                     "--proposer", "llm", "--base-url", stub.url, "--model", "stub-model",
                     "--api-key-env", "TTSGYM_TEST_KEY",
                     "--rounds", "50", "--split", "Qwen3-8B:aime24", "--seeds", "1", "--final-seeds", "1",
                     "--finalists", "1", "--price", f"{price_in},{price_out}", "--budget-usd", str(budget)])
        requests = stub.chat_requests()
    assert code == 0
    billed = 0.0
    for r in requests:
        body = r["body"]
        billed += (prompt_bytes(body) * price_in + max_out(body) * price_out) / 1e6
    assert 0 < billed <= budget
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert len(history) < 50  # the cap ended the run
    assert sum(h["cost_usd"] for h in history) <= budget


def prompt_bytes(body: dict) -> int:
    """What the stub bills as prompt tokens: every byte of the messages' text (a tokenizer-free
    upper bound that a real server stays under)."""
    return sum(len(str(m.get("content") or "").encode()) for m in body["messages"])


def max_out(body: dict) -> int:
    return int(body.get("max_tokens") or body.get("max_completion_tokens") or 4096)


pytestmark = pytest.mark.shared_data
