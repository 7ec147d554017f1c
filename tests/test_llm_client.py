"""LLMClient and the spend ledger against the scripted OpenAI-compatible server over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from openai_stub import OpenAIStub, hang, reply, status, tool_call, tool_reply, truncated

from ttsgym.search_agent.costs import CostLedger, parse_price, prompt_token_bound, resolve_price, usd
from ttsgym.search_agent.errors import BudgetExceeded, LLMError, LLMFatal, LLMTimeout
from ttsgym.search_agent.llm import LLMClient, LLMConfig

KEY = "sk-test-9f8e7d6c5b4a-never-written"
MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "write a controller"}]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTSGYM_TEST_KEY", KEY)


def make(stub: OpenAIStub, tmp_path: Path, budget: float | None = None, **kw) -> LLMClient:
    cfg = LLMConfig(base_url=stub.url, model="stub-model", api_key_env="TTSGYM_TEST_KEY",
                    price_in=kw.pop("price_in", 1.0), price_out=kw.pop("price_out", 2.0), **kw)
    return LLMClient(cfg, CostLedger(tmp_path / "spend.jsonl", budget))


@pytest.mark.parametrize("stream", [False, True])
def test_reply_content_tool_calls_usage_and_key(tmp_path: Path, stream: bool) -> None:
    args = {"code": "class C:\n    pass\n" * 5}
    calls = [tool_call("evaluate_draft", args), tool_call("show_code", {"candidate_id": "c1"})]
    with OpenAIStub([reply("hello there", prompt_tokens=100, completion_tokens=20),
                     tool_reply(*calls, prompt_tokens=300, completion_tokens=40)]) as stub:
        client = make(stub, tmp_path, stream=stream, max_tokens=64)
        r1 = client.chat(MSGS, round=0)
        r2 = client.chat(MSGS, tools=[{"type": "function", "function": {"name": "evaluate_draft"}}], round=1)
    assert r1.content == "hello there" and r1.tool_calls == []
    assert r1.usage == {"prompt_tokens": 100, "completion_tokens": 20}
    assert r1.cost_usd == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)
    assert [tc.name for tc in r2.tool_calls] == ["evaluate_draft", "show_code"]
    assert json.loads(r2.tool_calls[0].arguments) == args  # reassembled from the streamed deltas
    assert r2.finish_reason == "tool_calls"
    assert client.ledger.spent() == pytest.approx(r1.cost_usd + r2.cost_usd)
    assert client.ledger.by_round() == pytest.approx({0: r1.cost_usd, 1: r2.cost_usd})
    reqs = stub.chat_requests()
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in reqs)
    body = reqs[0]["body"]
    assert body["model"] == "stub-model" and body["max_tokens"] == 64 and body["messages"] == MSGS
    assert body.get("stream", False) is stream
    if stream:
        assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
def test_429_and_500_are_retried_and_cost_counted_once(tmp_path: Path, stream: bool) -> None:
    with OpenAIStub([status(429), status(500), reply("ok", prompt_tokens=50, completion_tokens=5)]) as stub:
        client = make(stub, tmp_path, stream=stream)
        r = client.chat(MSGS)
    assert r.content == "ok" and len(stub.chat_requests()) == 3
    assert client.ledger.spent() == pytest.approx(usd(50, 5, (1.0, 2.0)))
    recs = [json.loads(line) for line in (tmp_path / "spend.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in recs] == ["reserve", "settle"]


def test_truncated_body_retry_counts_the_lost_attempt_at_worst_case(tmp_path: Path) -> None:
    with OpenAIStub([truncated(), reply("ok", prompt_tokens=50, completion_tokens=5)]) as stub:
        client = make(stub, tmp_path)
        worst = client.worst_case_usd(MSGS, None, client.config.max_tokens)
        r = client.chat(MSGS)
    # The cut-off reply may have been generated and billed: it stays counted at its worst case.
    assert r.content == "ok" and client.ledger.spent() == pytest.approx(usd(50, 5, (1.0, 2.0)) + worst)


def test_a_cut_stream_is_an_error_and_counts_at_worst_case(tmp_path: Path) -> None:
    with OpenAIStub([truncated("```python\nclass Half:\n")]) as stub:
        client = make(stub, tmp_path, stream=True)
        worst = client.worst_case_usd(MSGS, None, client.config.max_tokens)
        with pytest.raises(LLMError, match="stopped before it finished"):
            client.chat(MSGS)
    assert client.ledger.spent() == pytest.approx(worst)


@pytest.mark.parametrize("stream", [False, True])
def test_a_hanging_server_is_cut_at_the_wall_clock_limit(tmp_path: Path, stream: bool) -> None:
    with OpenAIStub([hang(60), reply("after")]) as stub:
        client = make(stub, tmp_path, stream=stream, timeout_s=1.0)
        worst = client.worst_case_usd(MSGS, None, client.config.max_tokens)
        t0 = time.monotonic()
        with pytest.raises(LLMTimeout, match="wall-clock limit of 1 s"):
            client.chat(MSGS)
        assert time.monotonic() - t0 < 20  # far below the 60 s stall: the call was abandoned
        assert client.ledger.spent() == pytest.approx(worst)  # unsettled: counted at its worst case
        assert client.chat(MSGS).content == "after"  # the run goes on


def test_a_trickling_stream_is_cut_at_the_wall_clock_limit(tmp_path: Path) -> None:
    with OpenAIStub([reply("x" * 16 * 200, chunk_delay=0.05)]) as stub:  # ≈ 10 s of chunks
        client = make(stub, tmp_path, stream=True, timeout_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(LLMTimeout):
            client.chat(MSGS)
        assert time.monotonic() - t0 < 8


def test_missing_usage_leaves_the_reservation_standing(tmp_path: Path) -> None:
    with OpenAIStub([reply("no usage here", usage=False)]) as stub:
        client = make(stub, tmp_path)
        worst = client.worst_case_usd(MSGS, None, client.config.max_tokens)
        r = client.chat(MSGS)
    assert r.usage is None and r.cost_usd == pytest.approx(worst)
    assert CostLedger(tmp_path / "spend.jsonl", None).spent() == pytest.approx(worst)


@pytest.mark.parametrize("stream", [False, True])
def test_the_usd_cap_holds_against_the_usage_the_server_reports(tmp_path: Path, stream: bool) -> None:
    max_tokens = 200
    bound = prompt_token_bound(MSGS)
    # Every reply bills (almost) its worst case, so the cap is reached after a few calls.
    steps = [reply("x", prompt_tokens=bound - i, completion_tokens=max_tokens) for i in range(50)]
    per_call = usd(bound, max_tokens, (1.0, 2.0))
    budget = 4.5 * per_call
    with OpenAIStub(steps) as stub:
        client = make(stub, tmp_path, budget=budget, stream=stream, max_tokens=max_tokens)
        with pytest.raises(BudgetExceeded, match=r"budget cap reached.*--budget-usd.*refused"):
            for _ in range(50):
                client.chat(MSGS)
        served = stub.chat_requests()
    implied = sum(usd(s.prompt_tokens, s.completion_tokens, (1.0, 2.0)) for s in steps[: len(served)])
    assert len(served) == 4 and implied <= budget
    assert client.ledger.spent() <= budget
    # A resumed run reads the same ledger and is refused too.
    again = make(OpenAIStub(), tmp_path, budget=budget, stream=stream, max_tokens=max_tokens)
    with pytest.raises(BudgetExceeded):
        again.chat(MSGS)


def test_a_killed_call_counts_at_its_worst_case_after_resume(tmp_path: Path) -> None:
    """SIGKILL while the request is in flight: the fsynced reservation is what a resumed run sees."""
    with OpenAIStub([hang(60)]) as stub:
        code = textwrap.dedent(f"""
            from pathlib import Path
            from ttsgym.search_agent.costs import CostLedger
            from ttsgym.search_agent.llm import LLMClient, LLMConfig
            cfg = LLMConfig(base_url={stub.url!r}, model="stub-model", api_key_env="TTSGYM_TEST_KEY",
                            price_in=1.0, price_out=2.0, timeout_s=60)
            LLMClient(cfg, CostLedger(Path({str(tmp_path / "spend.jsonl")!r}), 1.0)).chat({MSGS!r})
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ})
        try:
            deadline = time.monotonic() + 30
            while not stub.chat_requests() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert stub.chat_requests(), "the child never sent its request"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    worst = usd(prompt_token_bound(MSGS), LLMConfig("u", "m").max_tokens, (1.0, 2.0))
    assert CostLedger(tmp_path / "spend.jsonl", 1.0).spent() == pytest.approx(worst)


def test_the_key_is_never_written_nor_shown(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with OpenAIStub([status(500), reply("fine"), hang(30), status(401)]) as stub:
        cfg = LLMConfig(base_url=stub.url, model="stub-model", api_key_env="TTSGYM_TEST_KEY",
                        price_in=1.0, price_out=2.0, timeout_s=1.0)
        client = LLMClient(cfg, CostLedger(run / "spend.jsonl", 10.0))
        client.chat(MSGS)
        with pytest.raises(LLMTimeout) as e1:
            client.chat(MSGS)
        with pytest.raises(LLMFatal, match="refused the key from \\$TTSGYM_TEST_KEY") as e2:
            client.chat(MSGS)
    assert KEY not in repr(client) and KEY not in repr(cfg) and KEY not in str(e1.value) + str(e2.value)
    files = [p for p in run.rglob("*") if p.is_file()]
    assert files and not any(KEY.encode() in p.read_bytes() for p in files)


def test_configuration_errors_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TTSGYM_TEST_KEY")
    with pytest.raises(LLMFatal, match="TTSGYM_TEST_KEY is not set"):  # constructing sends nothing
        LLMClient(LLMConfig("https://api.example.com/v1", "m", api_key_env="TTSGYM_TEST_KEY"),
                  CostLedger(tmp_path / "s.jsonl", None))
    with OpenAIStub([reply("local")]) as stub:  # a local server needs no key
        local = LLMClient(LLMConfig(stub.url, "m", api_key_env="TTSGYM_TEST_KEY"),
                          CostLedger(tmp_path / "s.jsonl", None))
        assert local.chat(MSGS).content == "local"
        assert stub.chat_requests()[0]["headers"]["authorization"] == "Bearer EMPTY"
    monkeypatch.setenv("TTSGYM_TEST_KEY", KEY)
    with pytest.raises(LLMFatal, match=r"no price known for model 'my-local'.*--price IN,OUT"):
        LLMClient(LLMConfig("http://127.0.0.1:9/v1", "my-local", api_key_env="TTSGYM_TEST_KEY"),
                  CostLedger(tmp_path / "s.jsonl", 1.0))
    # Without a cap an unpriced model runs (cost 0, tokens still counted); the table knows some names.
    LLMClient(LLMConfig("http://127.0.0.1:9/v1", "my-local", api_key_env="TTSGYM_TEST_KEY"),
              CostLedger(tmp_path / "s.jsonl", None))
    assert resolve_price("openai/gpt-4o-mini", None, None) == (0.15, 0.60)
    assert resolve_price("gpt-4o-mini", 1.0, 3.0) == (1.0, 3.0)
    assert parse_price("0.5,1.5") == (0.5, 1.5)
    with pytest.raises(ValueError, match="--price"):
        parse_price("0.5")


def test_other_http_errors_are_non_fatal_and_unbilled(tmp_path: Path) -> None:
    with OpenAIStub([status(400, "context too long"), status(404)]) as stub:
        client = make(stub, tmp_path)
        with pytest.raises(LLMError, match=r"HTTP 400: .*context too long") as e:
            client.chat(MSGS)
        assert e.value.status == 400
        with pytest.raises(LLMFatal, match="HTTP 404"):
            client.chat(MSGS)
    assert client.ledger.spent() == 0.0


def test_a_torn_last_ledger_line_is_ignored_and_later_records_still_count(tmp_path: Path) -> None:
    path = tmp_path / "spend.jsonl"
    path.write_text(json.dumps({"kind": "reserve", "id": "a", "worst_usd": 0.5}) + "\n" + '{"kind": "set')
    ledger = CostLedger(path, 1.0)
    assert ledger.spent() == pytest.approx(0.5)
    ledger.reserve(0.25, purpose="critic", round=1, model="m")
    assert CostLedger(path, 1.0).spent() == pytest.approx(0.75)
    with pytest.raises(BudgetExceeded):
        CostLedger(path, 1.0).reserve(0.3, purpose="propose", round=2, model="m")


def test_a_server_wanting_max_completion_tokens_and_no_temperature_gets_it(tmp_path: Path) -> None:
    msg = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens'."
    temp = "Unsupported value: 'temperature' does not support 0.7 with this model."
    with OpenAIStub([status(400, msg), status(400, temp), reply("ok"), reply("again")]) as stub:
        client = make(stub, tmp_path, max_tokens=77)
        assert client.chat(MSGS).content == "ok" and client.chat(MSGS).content == "again"
        bodies = [r["body"] for r in stub.chat_requests()]
    assert bodies[0]["max_tokens"] == 77 and bodies[0]["temperature"] == 0.7 and "max_tokens" not in bodies[1]
    assert bodies[2]["max_completion_tokens"] == 77 == bodies[3]["max_completion_tokens"]
    assert "temperature" not in bodies[2] and "temperature" not in bodies[3]
    recs = [json.loads(line) for line in (tmp_path / "spend.jsonl").read_text().splitlines()]
    settled = [r["cost_usd"] for r in recs if r["kind"] == "settle"]
    assert len(settled) == 4 and settled[:2] == [0.0, 0.0] and all(c > 0 for c in settled[2:])


def test_stub_serves_callable_steps_then_its_default(tmp_path: Path) -> None:
    echo = lambda body: reply(f"you said {body['messages'][-1]['content']}")  # noqa: E731
    with OpenAIStub([echo], default=reply("default")) as stub:
        client = make(stub, tmp_path)
        assert client.chat(MSGS).content == "you said write a controller"
        assert client.chat(MSGS).content == client.chat(MSGS).content == "default"
