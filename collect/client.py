"""An async client for chunked, seeded generation and forced-answer probes on a vLLM (or any
OpenAI-compatible) server: the one piece collection and live inference both talk through.

Raw HTTP (httpx) rather than the ``openai`` package: the calls that matter are vLLM extras —
token-id prompts with ``return_token_ids``, ``/tokenize`` and ``/detokenize`` with chat templates,
the pooling API — which live at the server root or outside the OpenAI schema, and every failure
mode (429, 5xx, timeouts, cut or malformed bodies, dropped connections) must be classified
precisely: transient ones are retried with exponential backoff and full jitter, the rest fail
with a message naming the server and the request.

Retrying is safe because every generation request carries its own seed: the retry returns the
same tokens.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ttsgym.collect.answers import answer_confidence, probe_answer
from ttsgym.store.schema import ERR

# Closes an open thinking block before the probe template (Qwen3 and other reasoning models).
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
THINK_CLOSE_TEXT = "\n</think>\n\n"
NO_THINK_SEPARATOR = "\n\n"
DEFAULT_PROBE_TEMPLATE = "The final answer is \\boxed{"


class ServerError(RuntimeError):
    """A request the server refused for good (4xx other than 429), or a server that lacks a
    feature collection needs; retrying cannot help. The message names server and request."""


class RequestFailed(RuntimeError):
    """A request that kept failing transiently until the retries ran out."""


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient failures: attempt k waits uniform(0, min(cap, base·2^k)) seconds
    (full jitter, so many clients do not retry in lockstep), or the server's Retry-After."""

    attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 30.0
    timeout_s: float = 600.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        if retry_after is not None and retry_after >= 0:
            return min(self.cap_s, retry_after)
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2.0 ** attempt))


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of branch chunks (probes are greedy)."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p}
        if self.top_k is not None:
            out["top_k"] = self.top_k
        return out


@dataclass
class Usage:
    """Tokens and time of one request. ``cached_tokens`` is None when the server does not say."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    seconds: float = 0.0
    requests: int = 0
    retries: int = 0
    usage_reported: bool = True

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        if other.cached_tokens is not None:
            self.cached_tokens = (self.cached_tokens or 0) + other.cached_tokens
        self.seconds += other.seconds
        self.requests += other.requests
        self.retries += other.retries
        self.usage_reported = self.usage_reported and other.usage_reported

    def as_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens, "seconds": round(self.seconds, 6),
                "requests": self.requests, "retries": self.retries}


@dataclass
class Chunk:
    """One Δ-token generation: the new token ids, their text, why it stopped, what it cost."""

    token_ids: list[int]
    text: str
    finish_reason: str
    usage: Usage


@dataclass
class ProbeResult:
    """A forced-answer decode: the raw completion, the brace-matched answer (ERR when none),
    its probability from the logprobs, and what it cost."""

    raw: str
    answer: str
    confidence: float | None
    token_ids: list[int]
    usage: Usage


@dataclass
class ServerInfo:
    """What :meth:`CollectClient.check` found out about a server."""

    base_url: str
    model: str
    version: str | None
    returns_token_ids: bool


def server_root(base_url: str) -> str:
    """``http://host:port/v1`` → ``http://host:port`` (vLLM serves /tokenize, /pooling there)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def think_open(text: str) -> bool:
    """Whether ``text`` ends inside a thinking block (an opening tag after the last closing one)."""
    return text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE)


def probe_suffix(template: str, thinking: bool) -> str:
    """The text appended to a prefix before probing it."""
    return (THINK_CLOSE_TEXT if thinking else NO_THINK_SEPARATOR) + template


class CollectClient:
    """Async client of one OpenAI-compatible server for one model.

    ``base_url`` as the ``openai`` client takes it (``http://127.0.0.1:8000/v1``). Use as an async
    context manager (or call :meth:`aclose`). Every method retries transient failures under
    ``retry`` and raises :class:`RequestFailed` when they persist, :class:`ServerError` when the
    server refuses the request for good.
    """

    def __init__(self, base_url: str, model: str, *, retry: RetryPolicy | None = None,
                 api_key: str | None = None, jitter_seed: int | None = None,
                 max_connections: int = 64) -> None:
        self.base_url = base_url.rstrip("/")
        self.root = server_root(self.base_url)
        self.model = model
        self.retry = retry or RetryPolicy()
        self._rng = random.Random(jitter_seed)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(headers=headers, limits=limits,
                                       timeout=httpx.Timeout(self.retry.timeout_s, connect=30.0))

    async def __aenter__(self) -> CollectClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---------------------------------------------------------------- transport with retries
    async def _request(self, method: str, url: str, body: dict[str, Any] | None,
                       validate, what: str) -> tuple[Any, Usage]:
        """One logical request: retried on transient failures; ``validate(json)`` raises
        KeyError/TypeError/ValueError on a malformed reply (retried too) and returns the result."""
        stats = Usage(requests=0)
        last = "no attempt made"
        for attempt in range(self.retry.attempts):
            if attempt:
                stats.retries += 1
            start = time.perf_counter()
            try:
                response = await self._http.request(method, url, json=body)
                stats.requests += 1
                status = response.status_code
                if status == 429 or status >= 500:
                    raise _Transient(f"HTTP {status}", _retry_after(response))
                if status >= 400:
                    raise ServerError(f"{url}: {what} refused with HTTP {status}: {_snippet(response.text)}")
                try:
                    data = response.json()
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise _Transient(f"invalid JSON in the reply ({exc.__class__.__name__})") from None
                try:
                    result = validate(data)
                except (KeyError, TypeError, ValueError, IndexError) as exc:
                    raise _Transient(f"malformed reply ({exc.__class__.__name__}: {exc})") from None
                stats.seconds += time.perf_counter() - start
                return result, stats
            except _Transient as exc:
                stats.seconds += time.perf_counter() - start
                last, retry_after = str(exc), exc.retry_after
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                stats.seconds += time.perf_counter() - start
                stats.requests += 1
                last, retry_after = f"{exc.__class__.__name__}: {exc}".rstrip(": "), None
            if attempt + 1 < self.retry.attempts:
                await asyncio.sleep(self.retry.delay(attempt, self._rng, retry_after))
        raise RequestFailed(f"{url}: {what} failed {self.retry.attempts} times; last error: {last}")

    # ---------------------------------------------------------------- tokenizer endpoints
    async def tokenize(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a chat prompt: the server applies the model's chat template and the
        generation prompt, so the ids are exactly what the model sees."""
        body = {"model": self.model, "messages": list(messages), "add_generation_prompt": True}
        ids, _ = await self._request("POST", f"{self.root}/tokenize", body, _token_list, "tokenize")
        return ids

    async def tokenize_text(self, text: str) -> list[int]:
        """Token ids of plain text without special tokens (for the probe suffix)."""
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        ids, _ = await self._request("POST", f"{self.root}/tokenize", body, _token_list, "tokenize")
        return ids

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        body = {"model": self.model, "tokens": list(token_ids)}
        text, _ = await self._request("POST", f"{self.root}/detokenize", body,
                                      lambda d: _str(d["prompt"]), "detokenize")
        return text

    # ---------------------------------------------------------------- generation and probes
    async def generate_chunk(self, prompt_ids: Sequence[int], branch_ids: Sequence[int], seed: int,
                             max_tokens: int, sampling: Sampling | None = None) -> Chunk:
        """Up to ``max_tokens`` new tokens after prompt + branch so far, sampled with ``seed``."""
        prompt = [*prompt_ids, *branch_ids]
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "seed": seed,
                "return_token_ids": True, "n": 1, "stream": False, **(sampling or Sampling()).body()}
        (ids, text, finish, usage), stats = await self._request(
            "POST", f"{self.base_url}/completions", body,
            lambda d: _completion(d, len(prompt), max_tokens), "completion")
        return Chunk(ids, text, finish, _merge(usage, stats))

    async def probe(self, prefix_ids: Sequence[int], suffix_ids: Sequence[int], max_tokens: int,
                    template: str) -> ProbeResult:
        """Greedy forced-answer decode after ``prefix_ids + suffix_ids`` (the suffix closes the
        thinking block and opens ``\\boxed{``); the answer is brace-matched, its confidence is
        the probability of its tokens."""
        prompt = [*prefix_ids, *suffix_ids]
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "logprobs": 1, "return_token_ids": True, "n": 1, "stream": False}
        (ids, text, _finish, usage, lp), stats = await self._request(
            "POST", f"{self.base_url}/completions", body,
            lambda d: (*_completion(d, len(prompt), max_tokens), _logprobs(d)), "probe")
        answer, end = probe_answer(text, template)
        confidence = answer_confidence(lp[0], lp[1], end) if lp else None
        return ProbeResult(text, answer if answer is not None else ERR, confidence, ids, _merge(usage, stats))

    async def check(self) -> ServerInfo:
        """Find out whether the server can serve collection: the model is listed, /tokenize
        works, and completions return the generated token ids. Raises :class:`ServerError` with
        what is missing."""
        models, _ = await self._request("GET", f"{self.base_url}/models", None,
                                        lambda d: [m["id"] for m in d["data"]], "list models")
        if self.model not in models:
            raise ServerError(f"{self.base_url}: model {self.model!r} is not served "
                              f"(the server lists: {', '.join(models) or 'none'}); pass --model")
        try:
            ids = await self.tokenize([{"role": "user", "content": "1+1?"}])
        except ServerError as exc:
            raise ServerError(f"{self.root}/tokenize is needed to turn chat prompts into token ids "
                              f"(vLLM serves it): {exc}") from None
        body = {"model": self.model, "prompt": ids, "max_tokens": 2, "seed": 0, "temperature": 1.0,
                "return_token_ids": True}
        data, _ = await self._request("POST", f"{self.base_url}/completions", body, _choice0,
                                      "token-id completion")
        if not isinstance(data.get("token_ids"), list):
            raise ServerError(
                f"{self.base_url}: the server does not return generated token ids "
                "(`return_token_ids`; vLLM >= 0.10.2 supports it). Collection records branches as "
                "token ids so that they can be regenerated chunk by chunk, and cannot run without them.")
        version = None
        try:
            version, _ = await self._request("GET", f"{self.root}/version", None,
                                             lambda d: _str(d["version"]), "version")
        except (ServerError, RequestFailed):
            version = None
        return ServerInfo(self.base_url, self.model, version, True)

    async def score(self, text: str) -> float:
        """A process-reward score of ``text`` (prompt + branch so far) from the pooling API:
        the last number of the first output (for a per-token reward model with [neg, pos]
        outputs, the last token's positive-class probability)."""
        body = {"model": self.model, "input": text}
        value, _ = await self._request("POST", f"{self.root}/pooling", body, _pooled_score, "pooling")
        return value


# -------------------------------------------------------------------- reply parsing
def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _ints(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise TypeError(f"{what} must be a list of integers")
    return value


def _token_list(data: Any) -> list[int]:
    return _ints(data["tokens"], "tokens")


def _choice0(data: Any) -> dict[str, Any]:
    choice = data["choices"][0]
    if not isinstance(choice, dict):
        raise TypeError("choices[0] must be an object")
    return choice


def _completion(data: Any, n_prompt: int, max_tokens: int) -> tuple[list[int], str, str, Usage]:
    choice = _choice0(data)
    if "token_ids" not in choice:
        raise KeyError("choices[0].token_ids (return_token_ids) is missing")
    ids = _ints(choice["token_ids"], "choices[0].token_ids")
    text = _str(choice["text"])
    finish = choice.get("finish_reason")
    if finish not in ("stop", "length"):
        raise ValueError(f"finish_reason {finish!r}")
    if len(ids) > max_tokens or (finish == "length" and not ids):
        raise ValueError(f"{len(ids)} token ids for max_tokens={max_tokens}, finish {finish}")
    usage = Usage(prompt_tokens=n_prompt, completion_tokens=len(ids), requests=0, usage_reported=False)
    reported = data.get("usage")
    if isinstance(reported, dict):
        usage.usage_reported = True
        usage.prompt_tokens = int(reported.get("prompt_tokens") or n_prompt)
        details = reported.get("prompt_tokens_details")
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            usage.cached_tokens = int(details["cached_tokens"])
    return ids, text, finish, usage


def _logprobs(data: Any) -> tuple[list[str], list[float | None]] | None:
    lp = _choice0(data).get("logprobs")
    if not isinstance(lp, dict):
        return None
    tokens, values = lp.get("tokens"), lp.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        return None
    return [t if isinstance(t, str) else "" for t in tokens], [
        float(v) if isinstance(v, int | float) and math.isfinite(v) else None for v in values]


def _pooled_score(data: Any) -> float:
    out = data["data"][0]["data"]
    while isinstance(out, list):
        if not out:
            raise ValueError("empty pooling output")
        out = out[-1]
    if not isinstance(out, int | float) or isinstance(out, bool) or not math.isfinite(out):
        raise TypeError("pooling output is not a number")
    return float(out)


def _merge(usage: Usage, stats: Usage) -> Usage:
    usage.seconds, usage.requests, usage.retries = stats.seconds, stats.requests, stats.retries
    return usage
