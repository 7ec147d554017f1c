"""The LLM proposer: one round = prompt, optional tool calls, one submission (or the reason there is none).

Whatever the model answers, the round ends in a Proposal and never in an exception from the reply:
no code, several code blocks, a malformed tool call or code that does not parse become
Proposal(code=None, reason=...), which the loop records as rejected and feeds back. Only a refused
call under the USD cap and configuration faults (LLMFatal) propagate, because they end the run.
Tool calling is used when the endpoint supports it; when it rejects `tools` (HTTP 400), the round
continues on plain content, where one fenced python block is the submission.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from ttsgym.search_agent.context import ContextBuilder, ToolsProtocol, compact_trace
from ttsgym.search_agent.errors import LLMError
from ttsgym.search_agent.llm import ChatResult, LLMClient
from ttsgym.search_agent.proposal import Proposal


def _fn(name: str, description: str, props: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": required, "additionalProperties": False}}}


_CODE = {"code": {"type": "string", "description": "the complete Python module source"}}
_CID = {"candidate_id": {"type": "string", "description": "a candidate id from the history, e.g. c0003"}}
TOOL_SPECS: list[dict] = [
    _fn("evaluate_draft", "Screen a draft cheaply on a few questions; returns ok, reason, curve, objective. "
        "Limited calls per round.", _CODE, ["code"]),
    _fn("show_trace", "Show the compact trace of one episode of a past candidate.",
        {**_CID, "index": {"type": "integer", "description": "which stored episode (0 first)"}},
        ["candidate_id"]),
    _fn("show_code", "Show a past candidate's source code.", _CID, ["candidate_id"]),
    _fn("submit", "Submit the final module for this round (ends the round).", _CODE, ["code"]),
]
TOOL_NAMES = tuple(t["function"]["name"] for t in TOOL_SPECS)

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_PY_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_ANY_BLOCK = re.compile(r"```")
TOOL_RESULT_CHARS = 6000


def extract_code(content: str | None) -> tuple[str | None, str | None]:
    """(code, None) when the reply holds exactly one ```python block, else (None, why not)."""
    text = _THINK.sub("", content or "")
    blocks = _PY_BLOCK.findall(text)
    if len(blocks) == 1:
        return blocks[0], None
    if blocks:
        return None, (f"the reply holds {len(blocks)} ```python blocks; a submission is a reply with exactly "
                      "one (or a call to the submit tool)")
    if not text.strip():
        return None, "the reply is empty (no code)"
    if _ANY_BLOCK.search(text):
        return None, "the reply holds no ```python block (a fence without the python tag is not a submission)"
    return None, "the reply holds no code: submit one ```python block or call the submit tool"


def check_parses(code: str) -> str | None:
    """None when the module parses, else a one-line reason naming the line."""
    if not code.strip():
        return "the submitted code is empty"
    try:
        ast.parse(code)
    except SyntaxError as err:
        return f"the code does not parse: line {err.lineno}: {err.msg}"
    except ValueError as err:  # e.g. null bytes
        return f"the code does not parse: {err}"
    return None


class _Reject(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LLMProposer:
    """Asks an LLM for one controller per round, with the tools the loop offers."""

    name = "llm"

    def __init__(self, client: LLMClient, context: ContextBuilder, *, max_calls: int = 6,
                 max_drafts: int = 4) -> None:
        self.client = client
        self.context = context
        self.max_calls = max_calls  # chat calls per round; the last one is made without tools
        self.max_drafts = max_drafts

    def propose(self, round: int, history: list[dict], tools: ToolsProtocol) -> Proposal:
        """One round's submission; raises only BudgetExceeded / LLMFatal (they end the run)."""
        messages = self.context.messages(round, history, tools)
        before = self.client.ledger.spent()
        state: dict[str, Any] = {"calls": 0, "tin": 0, "tout": 0, "drafts": 0, "tools": [],
                                 "last": []}  # "last": the reply that ended the round (not in transcript)
        transcript = list(messages)
        code: str | None = None
        reason: str | None = None
        via = None
        try:
            code, via = self._converse(round, transcript, tools, state)
            reason = check_parses(code)
        except _Reject as rej:
            reason = rej.reason
        meta: dict[str, Any] = {"model": self.client.config.model, "llm_calls": state["calls"],
                                "tools_used": state["tools"], "drafts": state["drafts"]}
        if via:
            meta["via"] = via
        if reason is not None and code is not None:
            meta["unparsed_code"] = code  # kept for the record; the loop sees code=None
            code = None
        # A plain reply is kept as its raw text; a tool conversation as JSON of every turn after the prompt.
        turns = transcript[len(messages):] + [r.assistant_message() for r in state["last"]]
        if len(turns) == 1 and not turns[0].get("tool_calls"):
            reply = turns[0]["content"]
        else:
            reply = json.dumps(turns, ensure_ascii=False, indent=1) if turns else None
        prompt = json.dumps(messages, ensure_ascii=False, indent=1)
        return Proposal(code=code, reason=reason, meta=meta, prompt=prompt, reply=reply,
                        cost_usd=self.client.ledger.spent() - before, tokens_in=state["tin"],
                        tokens_out=state["tout"])

    def _chat(self, round: int, transcript: list[dict], use_tools: bool, state: dict) -> ChatResult:
        state["calls"] += 1
        try:
            r = self.client.chat(transcript, tools=TOOL_SPECS if use_tools else None, purpose="propose",
                                 round=round)
        except LLMError as err:
            if use_tools and err.status == 400 and self.client.tools_supported is None:
                # The endpoint rejects tool definitions: go on with plain-content submissions.
                self.client.tools_supported = False
                return self._chat(round, transcript, False, state)
            raise _Reject(f"LLM call failed: {err}") from None
        state["tin"] += r.tokens_in
        state["tout"] += r.tokens_out
        return r

    def _converse(self, round: int, transcript: list[dict], tools: ToolsProtocol,
                  state: dict) -> tuple[str, str]:
        for step in range(self.max_calls):
            last = step == self.max_calls - 1
            use_tools = self.client.tools_supported is not False and not last
            if last and step > 0:
                transcript.append({"role": "user", "content": "Tool-call limit reached for this round: reply "
                                   "now with the complete module in exactly one ```python block."})
            r = self._chat(round, transcript, use_tools, state)
            state["last"] = [r]
            if not r.tool_calls:
                code, why = extract_code(r.content)
                if code is None:
                    if r.finish_reason == "length":
                        why = f"{why} — the reply was cut at max_tokens (raise it, or ask for shorter code)"
                    raise _Reject(why or "no code")
                return code, "content"
            if use_tools:
                self.client.tools_supported = True
            state["last"] = []
            transcript.append(r.assistant_message())
            for tc in r.tool_calls:
                if tc.name not in TOOL_NAMES:
                    known = ", ".join(TOOL_NAMES)
                    raise _Reject(f"malformed tool call: unknown tool {tc.name!r} (tools: {known})")
                try:
                    args = json.loads(tc.arguments or "{}")
                except json.JSONDecodeError as err:
                    raise _Reject(f"malformed tool call: {tc.name} arguments are not valid JSON "
                                  f"({err.msg} at char {err.pos})") from None
                if not isinstance(args, dict):
                    raise _Reject(f"malformed tool call: {tc.name} arguments must be a JSON object")
                state["tools"].append(tc.name)
                if tc.name == "submit":
                    code = args.get("code")
                    if not isinstance(code, str):
                        raise _Reject("malformed tool call: submit needs a 'code' string")
                    return code, "submit"
                transcript.append({"role": "tool", "tool_call_id": tc.id,
                                   "content": self._run_tool(tc.name, args, tools, state)})
        raise _Reject(f"no submission after {self.max_calls} LLM calls")

    def _run_tool(self, name: str, args: dict, tools: ToolsProtocol, state: dict) -> str:
        """A tool's result as text for the model; a tool's own failure is reported to it, not raised."""
        try:
            if name == "evaluate_draft":
                code = args.get("code")
                if not isinstance(code, str):
                    raise _Reject("malformed tool call: evaluate_draft needs a 'code' string")
                if state["drafts"] >= self.max_drafts:
                    return (f"evaluate_draft limit ({self.max_drafts} per round) reached: submit your best "
                            "code now.")
                state["drafts"] += 1
                why = check_parses(code)
                if why is not None:
                    return json.dumps({"ok": False, "reason": why})
                return _cut(json.dumps(tools.evaluate_draft(code), ensure_ascii=False, default=str))
            cid = args.get("candidate_id")
            if not isinstance(cid, str):
                raise _Reject(f"malformed tool call: {name} needs a 'candidate_id' string")
            if name == "show_code":
                src = tools.show_code(cid)
                return _cut(src) if src is not None else f"no candidate {cid!r} (or it has no code)"
            index = args.get("index", 0)
            if not isinstance(index, int) or isinstance(index, bool):
                raise _Reject("malformed tool call: show_trace 'index' must be an integer")
            trace = tools.show_trace(cid, index)
            if trace is None:
                return f"no trace {index} for candidate {cid!r}"
            return compact_trace(trace, max_chars=TOOL_RESULT_CHARS)
        except _Reject:
            raise
        except Exception as err:  # the loop's tool failed: tell the model, keep the round alive
            return f"{name} failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}"


def _cut(text: str, limit: int = TOOL_RESULT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 40] + f"\n... [{len(text) - limit + 40} chars cut]"
