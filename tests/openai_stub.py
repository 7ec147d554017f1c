"""A scripted OpenAI-compatible chat server on 127.0.0.1 for tests (real HTTP, the real `openai` client).

Each POST /v1/chat/completions consumes the next step of the script: a reply (content and/or tool
calls, with or without `usage`), an HTTP error status (429 with Retry-After, 500, ...), a hang, or a
truncated body; a step may also be a function of the request body returning a Step, and `default`
answers every request after the script (e.g. for runs that are killed and resumed). Streaming
requests (`"stream": true`) get SSE chunks, tool-call deltas included, and a final usage chunk
when `stream_options.include_usage` is set. Every request is recorded (path, headers, parsed
body) so tests can check what the client sent.

    with OpenAIStub([status(429), reply_with_code(SRC)]) as stub:
        LLMConfig(base_url=stub.url, model="stub-model", ...)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Step:
    """One scripted answer. kind: "reply" | "status" | "hang" | "truncate"."""

    kind: str = "reply"
    content: str | None = None
    tool_calls: list[dict] = field(default_factory=list)  # [{"id", "name", "arguments": str}]
    usage: bool = True
    prompt_tokens: int | None = None  # default: request bytes // 4
    completion_tokens: int | None = None  # default: reply bytes // 4 (at least 1)
    finish_reason: str | None = None
    status: int = 200
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # hang: how long to stall before closing without a reply
    chunk_delay: float = 0.0  # streaming: pause before each chunk (a trickling server)


def reply(content: str | None = None, tool_calls: Iterable[dict] = (), *, usage: bool = True,
          prompt_tokens: int | None = None, completion_tokens: int | None = None,
          chunk_delay: float = 0.0, finish_reason: str | None = None) -> Step:
    """A 200 reply with content and/or tool calls (finish_reason "length": cut at max_tokens)."""
    return Step("reply", content=content, tool_calls=list(tool_calls), usage=usage,
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, chunk_delay=chunk_delay,
                finish_reason=finish_reason)


def reply_with_code(src: str, prose: str = "Here is my controller.", **kw: Any) -> Step:
    """A plain-content reply holding one fenced python block (a submission without tool calls)."""
    return reply(f"{prose}\n\n```python\n{src.rstrip()}\n```\n", **kw)


def tool_call(name: str, arguments: dict | str, *, id: str | None = None) -> dict:
    """One tool call; a str ``arguments`` is sent verbatim (to script malformed JSON)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": id, "name": name, "arguments": args}


def tool_reply(*calls: dict, content: str | None = None, **kw: Any) -> Step:
    """A reply that makes tool calls."""
    return reply(content, calls, **kw)


def status(code: int, message: str = "", retry_after_ms: int | None = 10) -> Step:
    """An HTTP error; 429/5xx carry a short retry-after-ms so the client's retry is fast."""
    headers = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms is not None else {}
    return Step("status", status=code, message=message or f"scripted HTTP {code}", headers=headers)


def hang(seconds: float = 30.0) -> Step:
    """Accept the request and send nothing for ``seconds`` (a stalled server), then drop it."""
    return Step("hang", seconds=seconds)


def truncated(content: str = "this reply is cut short") -> Step:
    """Non-streaming: headers promise a longer body than is sent before the connection closes.
    Streaming: the content chunks are sent, then the connection closes without a finish."""
    return Step("truncate", content=content)


class OpenAIStub:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) running a script of steps; a context manager."""

    def __init__(self, script: Iterable[Step | Callable[[dict], Step]] = (), *, model: str = "stub-model",
                 tools_supported: bool = True, default: Step | Callable[[dict], Step] | None = None) -> None:
        self.script: list[Step | Callable[[dict], Step]] = list(script)
        self.default = default  # served once the script is used up (None: HTTP 400 "script exhausted")
        self.model = model
        self.tools_supported = tools_supported  # False: any request with `tools` gets HTTP 400
        self.requests: list[dict] = []
        self.errors: list[str] = []  # requests the script could not answer
        self._lock = threading.Lock()
        self._stop = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub._record(self, None)
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": stub.model, "object": "model",
                                                                 "created": 0, "owned_by": "stub"}]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                stub._record(self, body)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if body.get("tools") and not stub.tools_supported:
                    self._json(400, {"error": {"message": "tools are not supported by this server",
                                               "type": "invalid_request_error"}})
                    return
                step = stub._next(body)
                if step is None:
                    stub.errors.append("script exhausted")
                    self._json(400, {"error": {"message": "openai_stub: script exhausted"}})
                    return
                stub._serve(self, step, body, len(raw))

            def _json(self, code: int, obj: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True, name="openai-stub")

    @property
    def url(self) -> str:
        """The base URL to give the client (…/v1)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def add(self, *steps: Step | Callable[[dict], Step]) -> None:
        with self._lock:
            self.script.extend(steps)

    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def start(self) -> OpenAIStub:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------
    def _record(self, handler: BaseHTTPRequestHandler, body: dict | None) -> None:
        with self._lock:
            headers = {k.lower(): v for k, v in handler.headers.items()}
            self.requests.append({"method": handler.command, "path": handler.path, "headers": headers,
                                  "body": body})

    def _next(self, body: dict) -> Step | None:
        with self._lock:
            step = self.script.pop(0) if self.script else self.default
        return step(body) if callable(step) else step

    def _serve(self, h: Any, step: Step, body: dict, request_bytes: int) -> None:
        if step.kind == "status":
            err = {"message": step.message, "type": "scripted", "code": step.status}
            h._json(step.status, {"error": err}, step.headers)
            return
        if step.kind == "hang":
            self._stop.wait(step.seconds)
            h.close_connection = True
            return
        text = step.content or ""
        args_len = sum(len(tc["arguments"]) for tc in step.tool_calls)
        usage = {
            "prompt_tokens": step.prompt_tokens if step.prompt_tokens is not None else request_bytes // 4,
            "completion_tokens": step.completion_tokens if step.completion_tokens is not None
            else max(1, (len(text.encode()) + args_len) // 4),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish = step.finish_reason or ("tool_calls" if step.tool_calls else "stop")
        calls = [{"id": tc["id"] or f"call_{i}", "type": "function",
                  "function": {"name": tc["name"], "arguments": tc["arguments"]}}
                 for i, tc in enumerate(step.tool_calls)]
        base = {"id": "chatcmpl-stub", "created": int(time.time()), "model": body.get("model", self.model)}
        if step.kind == "truncate" and not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            data = json.dumps({**base, "object": "chat.completion", "choices": [choice]}).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data) + 100))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": step.content}
            if calls:
                message["tool_calls"] = calls
            obj = {**base, "object": "chat.completion",
                   "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
            if step.usage:
                obj["usage"] = usage
            h._json(200, obj)
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.end_headers()
        h.close_connection = True
        base = {**base, "object": "chat.completion.chunk"}

        def send(choices: list[dict], extra: dict | None = None) -> bool:
            if step.chunk_delay and self._stop.wait(step.chunk_delay):
                return False
            chunk = {**base, "choices": choices, **(extra or {})}
            try:
                h.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                h.wfile.flush()
            except OSError:  # the client went away (e.g. it hit its deadline)
                return False
            return True

        def delta(d: dict, finish_reason: str | None = None) -> list[dict]:
            return [{"index": 0, "delta": d, "finish_reason": finish_reason}]

        if not send(delta({"role": "assistant", "content": ""})):
            return
        for i in range(0, len(text), 16):
            if not send(delta({"content": text[i: i + 16]})):
                return
        for i, c in enumerate(calls):
            head = {"index": i, "id": c["id"], "type": "function",
                    "function": {"name": c["function"]["name"], "arguments": ""}}
            if not send(delta({"tool_calls": [head]})):
                return
            args = c["function"]["arguments"]
            for j in range(0, len(args), 16):
                piece = {"index": i, "function": {"arguments": args[j: j + 16]}}
                if not send(delta({"tool_calls": [piece]})):
                    return
        if step.kind == "truncate":  # the stream stops mid-reply: no finish_reason, no [DONE]
            return
        if not send(delta({}, finish)):
            return
        wants_usage = step.usage and (body.get("stream_options") or {}).get("include_usage")
        if wants_usage and not send([], {"usage": usage}):
            return
        try:
            h.wfile.write(b"data: [DONE]\n\n")
            h.wfile.flush()
        except OSError:
            pass
