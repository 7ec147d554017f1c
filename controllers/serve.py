"""``ttsgym serve``: an OpenAI-compatible chat endpoint that answers each request by running one
fixed controller live against an upstream server (FastAPI on uvicorn).

What a request can and cannot do: it names the served model, gives the messages (the last user
message is the question, wrapped in the collection prompt so live runs match a store) and may
pick β among the values the operator allowed. Nothing else: the controller, its code and the
generation settings are fixed at start, and any other field is refused with 400 — so no request
can make the server run code of its choosing.

Limits: requests need ``Authorization: Bearer KEY`` when a key is configured (401 otherwise);
at most ``max_concurrency`` questions run at once (429 with ``Retry-After`` beyond); an
upstream that keeps failing gives 502 (504 on timeouts) with the reason; a client that hangs up
cancels its episode and every upstream request still in flight for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import ipaddress
import math
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from ttsgym.collect.client import CollectClient, RequestFailed, RetryPolicy, ServerError
from ttsgym.collect.collector import CollectSettings
from ttsgym.controllers.live import EpisodeCancelled, LiveSession, Speculation, UpstreamFailed
from ttsgym.controllers.registry import ControllerSpec


@dataclass
class ServeConfig:
    """Everything fixed when the server starts."""

    upstream: str
    settings: CollectSettings
    spec: ControllerSpec
    beta: float | None
    pool_size: int
    served_model: str
    allowed_betas: tuple[float, ...] = ()
    api_key: str | None = None
    upstream_api_key: str | None = None
    max_concurrency: int = 8
    speculation: Speculation = field(default_factory=Speculation)
    kappa: int = 0
    budget: int | None = None
    request_timeout_s: float = 600.0
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(attempts=3, base_s=0.2, cap_s=2.0,
                                                                   timeout_s=300.0))

    def __post_init__(self) -> None:
        if self.max_concurrency <= 0:
            raise ValueError(f"--max-concurrency must be positive, got {self.max_concurrency}")
        if self.spec.takes_beta:
            betas = tuple(dict.fromkeys((*self.allowed_betas, self.beta)))
            for b in betas:
                if b is None or not (0.0 <= b <= 1.0 and math.isfinite(b)):
                    raise ValueError(f"--allowed-betas: β must be in [0, 1], got {b}")
            self.allowed_betas = betas
        elif self.allowed_betas:
            raise ValueError(f"controller {self.spec.text!r} takes no β; drop --allowed-betas")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without a key."""
    if not is_loopback(host) and not api_key:
        raise ValueError(f"--host {host}: refusing to serve on a non-loopback address without a key; "
                         "set one with --api-key-env VAR (the variable holding the key)")


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, with TCP_NODELAY (inherited by accepted connections on Linux): uvicorn
    writes a response's headers and body separately, and with Nagle's algorithm on, the body then
    waits for the client's delayed ACK — about 40 ms added to every reply."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(address)
    return sock


def server_config(app: FastAPI) -> Any:
    """uvicorn's settings: keep idle connections 75 s (as common proxies do) so a client reusing a
    connection rarely races the server closing it."""
    import uvicorn

    return uvicorn.Config(app, log_level="warning", backlog=2048, timeout_keep_alive=75)


def run_server(app: FastAPI, sock: socket.socket) -> None:
    """Serve ``app`` on a bound socket until interrupted."""
    import uvicorn

    uvicorn.Server(server_config(app)).run(sockets=[sock])


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(BaseModel):
    """The fields a request may carry; anything else is refused."""

    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[_Message]
    beta: float | None = None
    stream: bool = False
    n: int = 1
    user: str | None = None


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def _question_of(req: ChatRequest) -> str:
    for m in reversed(req.messages):
        if m.role == "user":
            if isinstance(m.content, str):
                text = m.content
            else:
                text = "".join(p.get("text", "") for p in (m.content or []) if p.get("type") == "text")
            if text.strip():
                return text
    raise ValueError("messages: no user message with text (the last one is the question)")


def _validate(body: Any, config: ServeConfig) -> tuple[ChatRequest, float | None]:
    """The request and its β, or ValueError with a message naming the field."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            raise ValueError(f"field {where!r} is not accepted: the controller, its code and the "
                             "generation settings are fixed by the server") from None
        raise ValueError(f"field {where!r}: {first['msg']}") from None
    if req.stream:
        raise ValueError("field 'stream': streaming is not supported (the answer exists only at the end)")
    if req.n != 1:
        raise ValueError("field 'n': only n=1 is supported")
    beta = config.beta
    if req.beta is not None:
        if not config.spec.takes_beta:
            raise ValueError(f"field 'beta': controller {config.spec.text!r} takes no β")
        match = [b for b in config.allowed_betas if abs(b - req.beta) <= 1e-9]
        if not match:
            allowed = ", ".join(f"{b:g}" for b in config.allowed_betas)
            raise ValueError(f"field 'beta': {req.beta:g} is not allowed here (allowed: {allowed})")
        beta = match[0]
    return req, beta


async def _disconnected(request: Request) -> None:
    """Return when the client hangs up (the body was read, so receive() waits for that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _State:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.active = 0
        self.served = 0
        self.refused = 0
        self.disconnected = 0
        self.session: LiveSession | None = None
        self.ready = asyncio.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=config.max_concurrency,
                                                          thread_name_prefix="ttsgym-serve")

    async def session_ready(self) -> LiveSession:
        async with self.ready:
            if self.session is None:
                c = self.config
                client = CollectClient(c.upstream, c.settings.model, retry=c.retry,
                                       api_key=c.upstream_api_key,
                                       max_connections=max(64, 16 * c.max_concurrency))
                session = LiveSession(client, c.settings, pool_size=c.pool_size, speculation=c.speculation)
                try:
                    await session.prepare()
                except BaseException:
                    await client.aclose()
                    raise
                self.session = session
            return self.session


def create_app(config: ServeConfig) -> FastAPI:
    """The ASGI app; ``uvicorn.run(create_app(config), host=..., port=...)``."""
    state = _State(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if state.session is not None:
            await state.session.client.aclose()
        state.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ttsgym serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ttsgym = state

    def authorised(request: Request) -> bool:
        if not config.api_key:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                  config.api_key.encode())

    def unauthorised() -> JSONResponse:
        return _error(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error",
                      {"WWW-Authenticate": "Bearer"})

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        if not authorised(request):
            return unauthorised()
        return JSONResponse({"object": "list", "data": [{
            "id": config.served_model, "object": "model", "owned_by": "ttsgym",
            "controller": config.spec.text, "beta": config.beta,
            "allowed_betas": list(config.allowed_betas)}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        if not authorised(request):
            return unauthorised()
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not valid JSON", "invalid_request_error")
        try:
            req, beta = _validate(body, config)
            question = _question_of(req)
        except ValueError as exc:
            return _error(400, str(exc), "invalid_request_error")
        if req.model != config.served_model:
            return _error(404, f"model {req.model!r} is not served here (GET /v1/models lists "
                               f"{config.served_model!r})", "model_not_found")
        if state.active >= config.max_concurrency:
            state.refused += 1
            return _error(429, f"{config.max_concurrency} requests are running already; retry shortly",
                          "rate_limit_error", {"Retry-After": "1"})
        state.active += 1
        try:
            return await _answer(request, req, question, beta)
        finally:
            state.active -= 1

    async def _answer(request: Request, req: ChatRequest, question: str, beta: float | None) -> JSONResponse:
        started = time.time()
        try:
            session = await state.session_ready()
        except RequestFailed as exc:
            return _error(504 if "Timeout" in str(exc) else 502, f"upstream {config.upstream}: {exc}",
                          "upstream_error")
        except ServerError as exc:
            return _error(502, f"upstream {config.upstream}: {exc}", "upstream_error")
        spec = config.spec
        task = asyncio.ensure_future(session.solve(
            lambda: spec.make(beta), question, kappa=config.kappa, budget=config.budget, executor=state.pool))
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({task, watch}, timeout=config.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if task not in done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if watch in done:  # the client is gone: nobody reads this
                state.disconnected += 1
                return _error(499, "client closed the request", "cancelled")
            return _error(504, f"no answer within {config.request_timeout_s:g} s", "timeout")
        try:
            result = task.result()
        except UpstreamFailed as exc:
            code = 504 if exc.timeout else 502
            return _error(code, f"upstream {config.upstream}: {exc}", "upstream_error")
        except EpisodeCancelled as exc:
            return _error(499, str(exc), "cancelled")
        except Exception as exc:  # the controller itself failed: the operator's bug, say which
            return _error(500, f"controller {spec.text} failed: {type(exc).__name__}: {exc}", "server_error")
        state.served += 1
        answer = result.answer
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                 "total_tokens": result.prompt_tokens + result.completion_tokens}
        return JSONResponse({
            "id": f"chatcmpl-ttsgym-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
            "created": int(started), "model": config.served_model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "" if answer is None else f"\\boxed{{{answer}}}"}}],
            "usage": usage,
            "ttsgym": {
                "answer": answer, "controller": spec.text, "beta": beta, "stop_reason": result.stop_reason,
                "branches_opened": result.opened, "probes": result.probes_read,
                "tokens": result.tokens, "seq_tokens": result.seq_tokens,
                "speculative_tokens": result.speculative_tokens,
                "speculative_probes": result.speculative_probes,
                "upstream": result.upstream, "latency_s": round(result.seconds, 4),
            },
        })

    return app
