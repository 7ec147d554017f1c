"""The LLM proposer, the round context and the LLM critic, against the scripted server over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai_stub import OpenAIStub, hang, reply, reply_with_code, tool_call, tool_reply

from ttsgym.search_agent.context import ContextBuilder, est_tokens
from ttsgym.search_agent.costs import CostLedger
from ttsgym.search_agent.critic import LLMCritic
from ttsgym.search_agent.errors import BudgetExceeded
from ttsgym.search_agent.llm import LLMClient, LLMConfig
from ttsgym.search_agent.llm_proposer import LLMProposer

GOOD = '''from ttsgym.controllers.base import BetaController


class Vote(BetaController):
    @staticmethod
    def schedule(beta):
        return {"branches": 4 + int(60 * beta)}

    def solve(self, question):
        return None
'''
CONTRACT = "CONTRACT-TEXT: define one class with schedule(beta) and solve(question)."


class FakeTools:
    """The loop's tools, recording what the proposer asked."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def evaluate_draft(self, code: str) -> dict:
        self.calls.append(("evaluate_draft", code))
        return {"ok": True, "reason": None, "objective": 0.4242, "curve": [{"beta": 0.0, "accuracy": 50.0,
                                                                          "avg_tokens": 40000.0}]}

    def show_trace(self, candidate_id: str, index: int = 0) -> dict | None:
        self.calls.append(("show_trace", candidate_id, index))
        if candidate_id != "c0001":
            return None
        return {"model": "m", "dataset": "d", "beta": 0.5, "seed": 1, "question_id": 7, "answer": "12",
                "correct": False, "tokens": 9000, "events": [["open", i] for i in range(3)]}

    def show_code(self, candidate_id: str) -> str | None:
        self.calls.append(("show_code", candidate_id))
        return GOOD if candidate_id == "c0001" else None

    def baselines(self) -> list[dict]:
        return [{"controller": "SC@64", "model": "mean", "accuracy": 61.5, "avg_tokens": 820000.0}]

    def contract(self) -> str:
        return CONTRACT


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTSGYM_TEST_KEY", "sk-proposer-test")


def client_for(stub: OpenAIStub, tmp_path: Path, model: str = "stub-model", budget: float | None = None,
               **kw) -> LLMClient:
    cfg = LLMConfig(base_url=stub.url, model=model, api_key_env="TTSGYM_TEST_KEY", price_in=1.0,
                    price_out=2.0, **kw)
    return LLMClient(cfg, CostLedger(tmp_path / "spend.jsonl", budget))


def history_record(i: int, status: str = "accepted", objective: float | None = 0.3, code: str = GOOD) -> dict:
    return {"id": f"c{i:04d}", "round": i, "proposer": "llm", "status": status,
            "reason": None if status == "accepted" else f"reason-{i}: solve raised ZeroDivisionError",
            "code": code, "objective": objective, "cost_usd": 0.01, "lesson": f"lesson-{i}", "meta": {},
            "curve": [{"beta": b / 10, "accuracy": 40 + b, "avg_tokens": 30000.0 * (b + 1)}
                      for b in range(11)]}


def propose(stub: OpenAIStub, tmp_path: Path, history: list[dict] | None = None,
            tools: FakeTools | None = None, **kw):
    client = client_for(stub, tmp_path, **kw.pop("client_kw", {}))
    proposer = LLMProposer(client, ContextBuilder(), **kw)
    return proposer.propose(3, history or [], tools or FakeTools()), client


@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_with_one_python_block_is_a_submission(tmp_path: Path, stream: bool) -> None:
    with OpenAIStub([reply_with_code(GOOD, prompt_tokens=1000, completion_tokens=100)]) as stub:
        p, client = propose(stub, tmp_path, [history_record(1)], client_kw={"stream": stream})
        body = stub.chat_requests()[0]["body"]
    assert p.code is not None and p.code.strip() == GOOD.strip() and p.reason is None
    assert p.cost_usd == pytest.approx((1000 + 200) / 1e6) == pytest.approx(client.ledger.spent())
    assert (p.tokens_in, p.tokens_out) == (1000, 100)
    assert p.reply is not None and "```python" in p.reply and p.meta["via"] == "content"
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    assert CONTRACT in system and "SC@64" in user and "c0001" in user and "lesson-1" in user
    assert json.loads(p.prompt or "[]") == body["messages"]
    names = [t["function"]["name"] for t in body["tools"]]
    assert names == ["evaluate_draft", "show_trace", "show_code", "submit"]


@pytest.mark.parametrize(("content", "reason"), [
    ("I would rather not write code today.", "holds no code"),
    ("", "empty"),
    (f"```python\n{GOOD}```\nor maybe\n```python\n{GOOD}```", "2 ```python blocks"),
    (f"```\n{GOOD}```", "without the python tag"),
    ("```python\ndef solve(q:\n    return 1\n```", "does not parse: line 1"),
    (f"<think>draft:\n```python\nx = 1\n```\n</think>\nFinal:\n```python\n{GOOD}```", None),
])
def test_replies_without_exactly_one_parsable_block_are_rejected_with_a_reason(
        tmp_path: Path, content: str, reason: str | None) -> None:
    with OpenAIStub([reply(content)]) as stub:
        p, _ = propose(stub, tmp_path)
    if reason is None:
        assert p.code is not None and p.reason is None
    else:
        assert p.code is None and reason in (p.reason or "")
        if "parse" in reason:
            assert "def solve" in p.meta["unparsed_code"]


@pytest.mark.parametrize(("call", "reason"), [
    (tool_call("submit", '{"code": "class A:\\n  pass'), "submit arguments are not valid JSON"),
    (tool_call("run_shell", {"cmd": "ls"}), "unknown tool 'run_shell'"),
    (tool_call("submit", {"source": GOOD}), "submit needs a 'code' string"),
    (tool_call("submit", "[1, 2]"), "must be a JSON object"),
    (tool_call("show_code", {}), "show_code needs a 'candidate_id'"),
    (tool_call("submit", {"code": "def f(:\n"}), "does not parse"),
])
def test_malformed_tool_calls_are_rejected_with_a_reason(tmp_path: Path, call: dict, reason: str) -> None:
    with OpenAIStub([tool_reply(call)]) as stub:
        p, _ = propose(stub, tmp_path)
    assert p.code is None and reason in (p.reason or ""), p.reason


@pytest.mark.parametrize("stream", [False, True])
def test_tool_flow_evaluate_then_inspect_then_submit(tmp_path: Path, stream: bool) -> None:
    tools = FakeTools()
    script = [
        tool_reply(tool_call("evaluate_draft", {"code": GOOD}),
                   tool_call("show_trace", {"candidate_id": "c0001"})),
        tool_reply(tool_call("show_code", {"candidate_id": "c0009"})),
        tool_reply(tool_call("submit", {"code": GOOD}), prompt_tokens=10, completion_tokens=10),
    ]
    with OpenAIStub(script) as stub:
        p, client = propose(stub, tmp_path, [history_record(1)], tools, client_kw={"stream": stream})
        reqs = stub.chat_requests()
    assert p.code == GOOD and p.reason is None and p.meta["via"] == "submit"
    # (the context builder's own show_trace calls come first)
    assert tools.calls[-3:] == [("evaluate_draft", GOOD), ("show_trace", "c0001", 0), ("show_code", "c0009")]
    second = reqs[1]["body"]["messages"]
    tool_msgs = [m for m in second if m["role"] == "tool"]
    assert len(tool_msgs) == 2 and "0.4242" in tool_msgs[0]["content"]
    assert '"question_id":7' in tool_msgs[1]["content"]
    assert second[-3]["tool_calls"][0]["function"]["name"] == "evaluate_draft"
    third = reqs[2]["body"]["messages"]
    assert "no candidate 'c0009'" in third[-1]["content"]
    assert p.meta["tools_used"] == ["evaluate_draft", "show_trace", "show_code", "submit"]
    assert p.meta["llm_calls"] == 3 and p.cost_usd == pytest.approx(client.ledger.spent())
    turns = json.loads(p.reply or "[]")
    assert [t["role"] for t in turns] == ["assistant", "tool", "tool", "assistant", "tool", "assistant"]


def test_draft_limit_and_the_last_call_goes_without_tools(tmp_path: Path) -> None:
    tools = FakeTools()
    draft = tool_call("evaluate_draft", {"code": GOOD})
    with OpenAIStub([tool_reply(draft, draft), tool_reply(draft), reply_with_code(GOOD)]) as stub:
        p, _ = propose(stub, tmp_path, tools=tools, max_calls=3, max_drafts=2)
        reqs = stub.chat_requests()
    assert p.code is not None and p.reason is None
    assert sum(1 for c in tools.calls if c[0] == "evaluate_draft") == 2
    assert "limit (2 per round) reached" in reqs[2]["body"]["messages"][-2]["content"]
    assert "tools" not in reqs[2]["body"]
    assert "Tool-call limit reached" in reqs[2]["body"]["messages"][-1]["content"]


def test_an_endpoint_without_tool_calling_falls_back_to_plain_content(tmp_path: Path) -> None:
    with OpenAIStub([reply_with_code(GOOD)], tools_supported=False) as stub:
        p, client = propose(stub, tmp_path)
        reqs = stub.chat_requests()
    assert p.code is not None and p.reason is None
    assert "tools" in reqs[0]["body"] and "tools" not in reqs[1]["body"]
    assert client.tools_supported is False


def test_a_failed_call_is_a_rejected_proposal_and_its_worst_case_counts(tmp_path: Path) -> None:
    with OpenAIStub([hang(30)]) as stub:
        p, client = propose(stub, tmp_path, client_kw={"timeout_s": 1.0})
    assert p.code is None and "LLM call failed" in (p.reason or "") and "wall-clock" in (p.reason or "")
    assert p.cost_usd > 0 and p.cost_usd == pytest.approx(client.ledger.spent())


def test_the_cap_ends_the_run_instead_of_rejecting_the_round(tmp_path: Path) -> None:
    with OpenAIStub([reply_with_code(GOOD)]) as stub, pytest.raises(BudgetExceeded):
        propose(stub, tmp_path, client_kw={"budget": 1e-6})
    assert stub.chat_requests() == []


class BigTools(FakeTools):
    def contract(self) -> str:
        return CONTRACT + "\n" + "Contract detail line.\n" * 50


def test_context_stays_within_its_budget_dropping_the_least_important_first() -> None:
    big = GOOD + "\n".join(f"# filler line {i} " + "x" * 60 for i in range(150))
    history = [history_record(i, objective=0.1 * i, code=big) for i in range(1, 6)]
    history += [history_record(i, status="rejected", objective=None) for i in range(6, 12)]
    tools = BigTools()

    def build(budget: int) -> list[dict]:
        msgs = ContextBuilder(token_budget=budget).messages(12, history, tools)
        assert sum(est_tokens(m["content"]) for m in msgs) <= budget
        return msgs

    roomy = build(100_000)[1]["content"]
    assert "## Trace" not in roomy  # FakeTools has traces for c0001 only, which is neither best nor latest
    assert "## Best candidate #1: c0005" in roomy and "#3: c0003" in roomy and "reason-11" in roomy
    mid = build(9000)[1]["content"]
    assert "#1: c0005" in mid and "reason-11" in mid and "#3: c0003" not in mid
    tight = build(3000)
    assert CONTRACT in tight[0]["content"] and "SC@64" in tight[1]["content"]
    assert "#1: c0005" in tight[1]["content"] and "cut to fit" in tight[1]["content"]


def test_context_shows_traces_until_they_no_longer_fit() -> None:
    history = [history_record(1, objective=0.5)]
    roomy = ContextBuilder(token_budget=50_000).messages(2, history, FakeTools())[1]["content"]
    assert "## Trace 0 of c0001" in roomy and '"correct":false' in roomy
    need = sum(est_tokens(m["content"]) for m in ContextBuilder(10**6).messages(2, history, FakeTools()))
    tight = ContextBuilder(token_budget=need - 20).messages(2, history, FakeTools())[1]["content"]
    assert "## Trace 0 of c0001" in tight and "## Trace 1" not in tight  # the last trace goes first
    assert "#1: c0001" in tight and "omitted" in tight


def test_critic_makes_a_real_call_to_its_own_model(tmp_path: Path) -> None:
    lesson = "It stops too early at low beta; probe twice before trusting a 2-vote lead."
    with OpenAIStub([reply(f"<think>hmm</think>\n{lesson}", prompt_tokens=500, completion_tokens=50),
                     hang(30)]) as stub:
        client = client_for(stub, tmp_path, model="critic-model", timeout_s=1.0)
        critic = LLMCritic(client)
        ev = {"id": "c0002", "round": 2, "status": "accepted", "stage": "done", "objective": 0.41,
              "baselines": FakeTools().baselines(),
              "curve": history_record(2)["curve"], "traces": [FakeTools().show_trace("c0001")], "code": GOOD}
        text, cost = critic.lesson(ev, [history_record(1, objective=0.5)])
        body = stub.chat_requests()[0]["body"]
        assert text == lesson and cost == pytest.approx((500 + 100) / 1e6)
        assert body["model"] == "critic-model" and body["max_tokens"] == 1024
        user = body["messages"][1]["content"]
        assert "0.4100" in user and "Best so far: c0001" in user and "accepted" in user and "SC@64" in user
        assert '"question_id":7' in user and "class Vote" in user
        text, cost = critic.lesson({**ev, "status": "rejected", "stage": "audit", "reason": "peeked"}, [])
        assert "rejected at stage audit: peeked" in stub.chat_requests()[1]["body"]["messages"][1]["content"]
    assert text == "" and "wall-clock" in (critic.last_error or "") and cost > 0


def test_a_reply_cut_at_max_tokens_says_so(tmp_path: Path) -> None:
    with OpenAIStub([reply("<think>let me think about the vote threshold", finish_reason="length")]) as stub:
        p, _ = propose(stub, tmp_path)
    assert p.code is None and "empty" in (p.reason or "") and "cut at max_tokens" in (p.reason or "")


def test_open_llm_shares_one_ledger_and_prices_the_critic(tmp_path: Path) -> None:
    from ttsgym.search_agent.errors import LLMFatal
    from ttsgym.search_agent.llm_setup import open_llm

    with OpenAIStub([reply_with_code(GOOD, prompt_tokens=1000, completion_tokens=10),
                     reply("lesson text", prompt_tokens=1000, completion_tokens=10)]) as stub:
        side = open_llm(tmp_path / "run", base_url=stub.url, model="local-coder", critic_model="gpt-4o-mini",
                        api_key_env="TTSGYM_TEST_KEY", price="1,2", budget_usd=5.0)
        p = side.proposer.propose(0, [], FakeTools())
        text, cost = side.critic.lesson({"id": "c0000", "round": 0, "ok": True, "curve": []}, [])
        models = [r["body"]["model"] for r in stub.chat_requests()]
    assert p.code is not None and text == "lesson text" and models == ["local-coder", "gpt-4o-mini"]
    assert p.cost_usd == pytest.approx((1000 * 1 + 10 * 2) / 1e6)
    assert cost == pytest.approx((1000 * 0.15 + 10 * 0.60) / 1e6)  # the table's price for the critic
    assert side.ledger.by_round() == pytest.approx({0: p.cost_usd + cost})
    assert (tmp_path / "run" / "spend.jsonl").exists()
    with pytest.raises(LLMFatal, match="no price known for model 'local-coder'"):
        open_llm(tmp_path / "run2", base_url=stub.url, model="local-coder", api_key_env="TTSGYM_TEST_KEY",
                 budget_usd=1.0)


@pytest.mark.parametrize("error", [429, 500])
def test_a_retried_error_then_success_is_one_submission_paid_once(tmp_path: Path, error: int) -> None:
    from openai_stub import status

    with OpenAIStub([status(error), reply_with_code(GOOD, prompt_tokens=100, completion_tokens=10)]) as stub:
        p, client = propose(stub, tmp_path)
        assert len(stub.chat_requests()) == 2
    assert p.code is not None and p.reason is None and p.meta["llm_calls"] == 1
    assert p.cost_usd == pytest.approx((100 + 20) / 1e6) == pytest.approx(client.ledger.spent())


def test_context_names_pending_candidates_apart_from_rejects() -> None:
    """With --concurrent, the rounds still being evaluated are listed as such, not as rejects."""
    from ttsgym.search_agent.run import pending_stub

    done = {"id": "c0000", "round": 0, "status": "rejected", "reason": "does not parse", "code": "x",
            "curve": [], "objective": None, "lesson": None, "meta": {}}
    stub = pending_stub({"id": "c0001", "round": 1, "proposer": "llm", "code": GOOD, "meta": {}})
    text = ContextBuilder().messages(2, [done, stub], FakeTools())[1]["content"]
    assert "Being evaluated now (results not in yet): c0001" in text
    assert "1 proposals so far (0 accepted, 1 rejected)" in text
    rejects = text.split("## Recent rejects")[1]
    assert "c0000" in rejects and "c0001" not in rejects
