"""One chat call to any OpenAI-compatible endpoint, through the official ``openai`` client, bounded.

Bounded three ways, because a search run is unattended for hours: a total wall-clock limit per
call (a stalled server must not freeze the run, whatever the client's own per-read timeouts and
retries do), the USD cap (the call's worst case is reserved in the ledger before it is sent, see
costs.py), and the client's own retries on 429/5xx with backoff. The API key is read from the
environment variable the config names and is never stored in the config, logged or written.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import openai

from ttsgym.search_agent.costs import (
    CostLedger,
    Reservation,
    prompt_token_bound,
    require_price,
    resolve_price,
    usd,
)
from ttsgym.search_agent.errors import BudgetExceeded, LLMError, LLMFatal, LLMTimeout

__all__ = ["BudgetExceeded", "ChatResult", "LLMClient", "LLMConfig", "LLMError", "LLMFatal", "LLMTimeout",
           "ToolCall"]


@dataclass
class LLMConfig:
    """Where and how to call; prices in USD per 1M tokens (None: the built-in table, else unpriced)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    price_in: float | None = None
    price_out: float | None = None
    max_tokens: int = 4096
    timeout_s: float = 300.0
    stream: bool = False
    temperature: float = 0.7
    max_retries: int = 2


@dataclass
class ToolCall:
    """A tool call as the model wrote it; ``arguments`` is the raw JSON text (it may be malformed)."""

    id: str
    name: str
    arguments: str


@dataclass
class ChatResult:
    """One finished call. ``cost_usd`` is what the ledger counts (the worst case when usage is missing)."""

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: dict | None = None  # {"prompt_tokens", "completion_tokens"} as the server reported them
    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str | None = None
    seconds: float = 0.0

    def assistant_message(self) -> dict:
        """The reply as a chat message, to send back with the tool results."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [
                {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
                for tc in self.tool_calls
            ]
        return msg


class _Abort(openai.OpenAIError):
    """Raised from an HTTP hook to stop the client's retry loop at once (OpenAIErrors pass through)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Attempts:
    """Per-call HTTP hooks: no attempt after the deadline, and a retry of an attempt that may have been
    billed (no error status came back: timeout, dropped connection, truncated body) reserves again."""

    def __init__(self, ledger: CostLedger, res: Reservation, worst_usd: float, deadline: float) -> None:
        self.ledger, self.res, self.worst, self.deadline = ledger, res, worst_usd, deadline
        self.statuses: list[int | None] = []
        self.abandoned = False

    def on_request(self, request: Any) -> None:
        if self.abandoned or time.monotonic() >= self.deadline:
            raise _Abort(LLMTimeout("wall-clock limit reached before a retry"))
        if self.statuses and not _unbilled(self.statuses[-1]):
            try:
                self.ledger.extend(self.res, self.worst)
            except BudgetExceeded as err:
                raise _Abort(err) from None
        self.statuses.append(None)

    def on_response(self, response: Any) -> None:
        if self.statuses:
            self.statuses[-1] = response.status_code

    def billed_attempts_before_last(self) -> int:
        return sum(1 for s in self.statuses[:-1] if not _unbilled(s))


def _unbilled(status: int | None) -> bool:
    """An error status means the server refused the request: nothing was generated or billed."""
    return status is not None and status >= 400


class LLMClient:
    """Chat calls for one model, all counted in one ledger (proposer and critic may share it)."""

    def __init__(self, config: LLMConfig, ledger: CostLedger) -> None:
        key = os.environ.get(config.api_key_env)
        if not key and _is_loopback(config.base_url):
            key = "EMPTY"  # a local server (vLLM, llama.cpp) started without --api-key takes any key
        if not key:
            raise LLMFatal(
                f"environment variable {config.api_key_env} is not set: export the API key for "
                f"{config.base_url} there (--api-key-env names another variable)"
            )
        if config.timeout_s <= 0 or config.max_tokens <= 0:
            raise ValueError("LLMConfig: timeout_s and max_tokens must be > 0")
        self.config = config
        self.ledger = ledger
        self.price = resolve_price(config.model, config.price_in, config.price_out)
        require_price(config.model, self.price, ledger.budget_usd)
        self._key = key
        self.tools_supported: bool | None = None  # learned: False once the server rejected `tools`
        self.max_tokens_param = "max_tokens"  # OpenAI's reasoning models want max_completion_tokens
        self.send_temperature = True

    def __repr__(self) -> str:
        return f"LLMClient(model={self.config.model!r}, base_url={self.config.base_url!r})"

    def worst_case_usd(self, messages: list[dict], tools: list[dict] | None, max_tokens: int) -> float:
        """The most this call could cost: prompt bound at the input price, max_tokens at the output price."""
        return usd(prompt_token_bound(messages, tools), max_tokens, self.price)

    def chat(self, messages: list[dict], tools: list[dict] | None = None, purpose: str = "propose", *,
             round: int | None = None, max_tokens: int | None = None) -> ChatResult:
        """Send one chat request; raises BudgetExceeded before sending, LLMTimeout at the wall-clock
        limit, LLMFatal when the endpoint refuses the key or model, LLMError on any other failure."""
        for _ in range(3):  # at most two request-shape adaptations (refused requests are not billed)
            try:
                return self._chat_once(messages, tools, purpose, round, max_tokens)
            except LLMError as err:
                if not self._adapt(err):
                    raise
        return self._chat_once(messages, tools, purpose, round, max_tokens)

    def _adapt(self, err: LLMError) -> bool:
        """Learn from a 400 that names a parameter some models refuse; True when the request changed."""
        text = str(err)
        if err.status != 400:
            return False
        if self.max_tokens_param == "max_tokens" and "max_completion_tokens" in text:
            self.max_tokens_param = "max_completion_tokens"  # the same bound, under its newer name
            return True
        if self.send_temperature and "temperature" in text:
            self.send_temperature = False  # models with a fixed sampling temperature
            return True
        return False

    def _chat_once(self, messages: list[dict], tools: list[dict] | None, purpose: str, round: int | None,
                   max_tokens: int | None) -> ChatResult:
        cfg = self.config
        mt = max_tokens or cfg.max_tokens
        worst = self.worst_case_usd(messages, tools, mt)
        res = self.ledger.reserve(worst, purpose=purpose, round=round, model=cfg.model)
        t0 = time.monotonic()
        deadline = t0 + cfg.timeout_s
        attempts = _Attempts(self.ledger, res, worst, deadline)
        http = openai.DefaultHttpxClient(
            timeout=cfg.timeout_s,
            event_hooks={"request": [attempts.on_request], "response": [attempts.on_response]},
        )
        client = openai.OpenAI(base_url=cfg.base_url, api_key=self._key, timeout=cfg.timeout_s,
                               max_retries=cfg.max_retries, http_client=http)
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["result"] = self._request(client, messages, tools, mt, deadline, box)
            except BaseException as err:  # handed to the caller's thread
                box["error"] = err
            finally:
                done.set()

        threading.Thread(target=work, daemon=True, name=f"llm-{purpose}").start()
        try:
            finished = done.wait(max(0.0, deadline - time.monotonic()))
        except BaseException:  # Ctrl-C: stop the worker's retries too; the reservation stands
            finished = False
            raise
        finally:
            if not finished:
                attempts.abandoned = True
                threading.Thread(target=_close_quietly, args=(box.get("stream"), client), daemon=True).start()
        if not finished:
            raise LLMTimeout(f"{purpose} call to {cfg.model} at {cfg.base_url} exceeded its wall-clock limit "
                             f"of {cfg.timeout_s:g} s and was abandoned (its worst case stays counted)")
        _close_quietly(None, client)
        seconds = time.monotonic() - t0
        extra = worst * attempts.billed_attempts_before_last()
        err = box.get("error")
        if err is not None:
            if isinstance(err, _Abort):
                err = err.error
            if isinstance(err, openai.APIStatusError):
                # Every attempt ended in an error status or may have been billed; count the latter.
                self.ledger.settle(res, extra, 0, 0, note=f"HTTP {err.status_code}")
                raise _status_error(err, purpose, cfg) from None
            if isinstance(err, LLMError | LLMFatal):
                raise err
            # Timeouts, dropped connections, unreadable replies: the reservation stands.
            what = f"{type(err).__name__}: {_short(err)}"
            raise LLMError(f"{purpose} call to {cfg.model} failed: {what}") from None
        result: ChatResult = box["result"]
        result.seconds = seconds
        if result.usage is None:
            result.cost_usd = res.worst_usd  # unsettled: counted at its worst case
        else:
            cost = usd(result.tokens_in, result.tokens_out, self.price) + extra
            self.ledger.settle(res, cost, result.tokens_in, result.tokens_out)
            result.cost_usd = cost
        return result

    def _request(self, client: openai.OpenAI, messages: list[dict], tools: list[dict] | None, max_tokens: int,
                 deadline: float, box: dict) -> ChatResult:
        cfg = self.config
        kwargs: dict[str, Any] = {"model": cfg.model, "messages": messages, self.max_tokens_param: max_tokens}
        if self.send_temperature:
            kwargs["temperature"] = cfg.temperature
        if tools:
            kwargs["tools"] = tools
        if not cfg.stream:
            resp = client.chat.completions.create(**kwargs)
            if not resp.choices:
                raise LLMError(f"reply from {cfg.model} holds no choices")
            choice = resp.choices[0]
            msg = choice.message
            calls = [_tool_call(i, tc) for i, tc in enumerate(msg.tool_calls or [])]
            return _with_usage(ChatResult(msg.content, calls, finish_reason=choice.finish_reason), resp.usage)
        stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        box["stream"] = stream
        content: list[str] = []
        calls_by_index: dict[int, dict] = {}
        finish = None
        usage = None
        for chunk in stream:
            if time.monotonic() >= deadline:
                stream.close()
                raise LLMTimeout(f"streamed reply from {cfg.model} exceeded its wall-clock limit "
                                 f"of {cfg.timeout_s:g} s")
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices or []:
                delta = choice.delta
                if delta is not None and delta.content:
                    content.append(delta.content)
                for tc in (delta.tool_calls if delta is not None else None) or []:
                    slot = calls_by_index.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                    if tc.id:
                        slot["id"] = tc.id
                    if tc.function is not None:
                        slot["name"] += tc.function.name or ""
                        slot["arguments"] += tc.function.arguments or ""
                if choice.finish_reason:
                    finish = choice.finish_reason
        if finish is None and usage is None:
            raise LLMError(f"the streamed reply from {cfg.model} stopped before it finished "
                           "(no finish_reason): the connection was cut")
        calls = [ToolCall(s["id"] or f"call_{i}", s["name"], s["arguments"])
                 for i, s in sorted(calls_by_index.items())]
        result = ChatResult("".join(content) if content else None, calls, finish_reason=finish)
        return _with_usage(result, usage)


def _tool_call(i: int, tc: Any) -> ToolCall:
    fn = getattr(tc, "function", None)  # a non-function ("custom") tool call has none
    return ToolCall(tc.id or f"call_{i}", (fn.name if fn else "") or "", (fn.arguments if fn else "") or "")


def _with_usage(result: ChatResult, usage: Any) -> ChatResult:
    if usage is not None and usage.prompt_tokens is not None and usage.completion_tokens is not None:
        result.tokens_in, result.tokens_out = int(usage.prompt_tokens), int(usage.completion_tokens)
        result.usage = {"prompt_tokens": result.tokens_in, "completion_tokens": result.tokens_out}
    return result


def _status_error(err: openai.APIStatusError, purpose: str, cfg: LLMConfig) -> Exception:
    where = f"{purpose} call to {cfg.model} at {cfg.base_url}"
    detail = _short(err)
    if err.status_code in (401, 403):
        return LLMFatal(f"{where}: the endpoint refused the key from ${cfg.api_key_env} "
                        f"(HTTP {err.status_code}): {detail}")
    if err.status_code == 404:
        return LLMFatal(f"{where}: not found (HTTP 404; check --base-url and --model): {detail}")
    out = LLMError(f"{where} failed with HTTP {err.status_code}: {detail}")
    out.status = err.status_code
    return out


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _close_quietly(stream: Any, client: openai.OpenAI) -> None:
    for thing in (stream, client):
        if thing is not None:
            with contextlib.suppress(Exception):
                thing.close()
