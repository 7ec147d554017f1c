"""A fast, deterministic stand-in for a vLLM OpenAI-compatible server, with injected faults.

The fake model is a function of the context: the next token is a hash of (request seed, step
within the request, all token ids so far), so a chunked branch is reproducible chunk by chunk
exactly like vLLM's seeded sampling, and greedy probes depend on the context only. It writes
reasoning-looking text that opens and closes ``\\boxed{`` groups, emits end-of-sequence now and
then, and answers a forced ``\\boxed{`` with one of a few answers (``\\frac{1}{2}`` and ``0.5``
among them). Endpoints: GET /health, /version, /v1/models; POST /tokenize, /detokenize,
/v1/completions, /pooling.

Faults (per request, drawn from a seeded generator): ``429``, ``500``, ``hang`` (answer after
``hang_s``), ``truncated`` (body cut short of its Content-Length), ``bad_json`` (a cut body
with a matching length), ``no_usage`` (a valid reply without ``usage``) and ``drop`` (close the
connection without a reply). Only 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EOS, THINK, END_THINK, USER, ASSISTANT = 1, 2, 3, 4, 5
SPECIAL = {THINK: "<think>", END_THINK: "</think>", USER: "<|user|>", ASSISTANT: "<|assistant|>"}
BYTE0 = 10
WORDS = [" the", " so", " we", " get", " x", " =", " +", " 3", " 4", " 12", "\n", " then", " check",
         " wait", " answer", " is", " \\boxed{", "}", " 7", " 0.5"]
ANSWERS = ["12", "0.5", "\\frac{1}{2}", "7", "x+1", "1/2"]
WORD0 = 300
ANSWER0 = WORD0 + len(WORDS)
BOXED_ID = WORD0 + WORDS.index(" \\boxed{")
CLOSE_ID = WORD0 + WORDS.index("}")
OPEN_BRACE_BYTE = BYTE0 + ord("{")
FAULTS = ("429", "500", "hang", "truncated", "bad_json", "no_usage", "drop")


def piece(t: int) -> str:
    if t == EOS:
        return ""
    if t in SPECIAL:
        return SPECIAL[t]
    if BYTE0 <= t < BYTE0 + 256:
        return bytes([t - BYTE0]).decode("latin-1")
    if WORD0 <= t < ANSWER0:
        return WORDS[t - WORD0]
    if ANSWER0 <= t < ANSWER0 + len(ANSWERS):
        return ANSWERS[t - ANSWER0]
    return "?"


def tokenize(text: str) -> list[int]:
    out: list[int] = []
    i = 0
    specials = sorted(((s, t) for t, s in SPECIAL.items()), key=lambda x: -len(x[0]))
    while i < len(text):
        for s, t in specials:
            if text.startswith(s, i):
                out.append(t)
                i += len(s)
                break
        else:
            out.extend(BYTE0 + b for b in text[i].encode("utf-8"))
            i += 1
    return out


def detokenize(ids: list[int]) -> str:
    raw = b"".join(piece(t).encode("latin-1") if BYTE0 <= t < BYTE0 + 256 else piece(t).encode("utf-8")
                   for t in ids)
    return raw.decode("utf-8", errors="replace")


def chat(messages: list[dict]) -> list[int]:
    text = "".join(f"<|user|>{m['content']}" for m in messages) + "<|assistant|><think>\n"
    return tokenize(text)


def _h(*parts: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(b"|".join(parts), digest_size=8).digest(), "big")


def next_token(context: list[int], seed: int, step: int, greedy: bool) -> tuple[int, float]:
    """The fake model's next token and its logprob."""
    ctx = b"".join(t.to_bytes(4, "little") for t in context)
    h = _h(b"g" if greedy else seed.to_bytes(8, "little", signed=True),
           b"" if greedy else step.to_bytes(4, "little"), ctx)
    lp = -((h >> 20) % 1000) / 500.0
    last = context[-1] if context else 0
    if last in (BOXED_ID, OPEN_BRACE_BYTE):
        return ANSWER0 + h % len(ANSWERS), lp
    if ANSWER0 <= last < ANSWER0 + len(ANSWERS):
        return CLOSE_ID, -0.01
    r = h % 1000
    if r < 12:
        return EOS, lp
    if r < 30:
        return END_THINK, lp
    return WORD0 + (h >> 10) % len(WORDS), lp


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that timed out hung up
        return


class FakeVLLM:
    """The server; ``with FakeVLLM(faults={"500": 0.1}) as srv: srv.base_url``."""

    def __init__(self, *, model: str = "fake", faults: dict[str, float] | None = None, fault_seed: int = 0,
                 hang_s: float = 2.0, token_ids: bool = True, eos_in_ids: bool = True,
                 max_model_len: int = 4096) -> None:
        unknown = set(faults or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {unknown}")
        self.model = model
        self.faults = dict(faults or {})
        self.hang_s = hang_s
        self.token_ids = token_ids
        self.eos_in_ids = eos_in_ids
        self.max_model_len = max_model_len
        self._rng = random.Random(fault_seed)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self._cache: set[bytes] = set()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeVLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def draw_fault(self) -> str | None:
        with self._lock:
            r = self._rng.random()
            acc = 0.0
            for kind in FAULTS:
                acc += self.faults.get(kind, 0.0)
                if r < acc:
                    self.counts[kind] += 1
                    return kind
            self.counts["ok"] += 1
            return None

    # ------------------------------------------------------------------ the fake engine
    def _cached(self, prompt: list[int]) -> int:
        block = 16
        cached = 0
        with self._lock:
            for k in range(block, len(prompt) + 1, block):
                key = hashlib.blake2b(repr(prompt[:k]).encode(), digest_size=8).digest()
                if key in self._cache:
                    cached = k
                else:
                    self._cache.add(key)
        return cached

    def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("model") != self.model:
            return 404, {"error": {"message": f"model {body.get('model')!r} not found"}}
        prompt = body["prompt"]
        if not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
            prompt = tokenize(prompt if isinstance(prompt, str) else "")
        max_tokens = int(body.get("max_tokens", 16))
        if len(prompt) + max_tokens > self.max_model_len:
            return 400, {"error": {"message": "This model's maximum context length is exceeded"}}
        greedy = float(body.get("temperature", 1.0)) == 0.0
        seed = int(body.get("seed") or 0)
        ctx = list(prompt)
        ids, lps = [], []
        finish = "length"
        for step in range(max_tokens):
            t, lp = next_token(ctx, seed, step, greedy)
            if t == EOS:
                finish = "stop"
                if self.eos_in_ids:
                    ids.append(t)
                    lps.append(lp)
                break
            ids.append(t)
            lps.append(lp)
            ctx.append(t)
        text = detokenize([t for t in ids if t != EOS])
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish, "stop_reason": None,
                                  "logprobs": None}
        if body.get("logprobs") is not None:
            toks = [piece(t) for t in ids]
            choice["logprobs"] = {"tokens": toks, "token_logprobs": lps,
                                  "top_logprobs": [{a: b} for a, b in zip(toks, lps, strict=True)],
                                  "text_offset": []}
        if self.token_ids and body.get("return_token_ids"):
            choice["token_ids"] = ids
            choice["prompt_token_ids"] = prompt
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                 "total_tokens": len(prompt) + len(ids),
                 "prompt_tokens_details": {"cached_tokens": self._cached(prompt)}}
        return 200, {"id": "cmpl-fake", "object": "text_completion", "model": self.model,
                     "choices": [choice], "usage": usage}

    def route(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path == "/health":
            return 200, {}
        if method == "GET" and path == "/version":
            return 200, {"version": "fake-0"}
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]}
        if method == "POST" and body is not None:
            if path == "/tokenize":
                ids = chat(body["messages"]) if "messages" in body else tokenize(body.get("prompt", ""))
                return 200, {"tokens": ids, "count": len(ids), "max_model_len": self.max_model_len}
            if path == "/detokenize":
                return 200, {"prompt": detokenize(body["tokens"])}
            if path == "/v1/completions":
                return self.complete(body)
            if path == "/pooling":
                h = _h(body.get("input", "").encode())
                return 200, {"data": [{"index": 0, "data": [[0.3, (h % 1000) / 1000.0]]}]}
        return 404, {"error": {"message": f"no route {method} {path}"}}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def _serve(self, method: str) -> None:
                body = None
                if method == "POST":
                    n = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(n) or b"{}")
                fault = None if self.path == "/health" else server.draw_fault()
                with server._lock:
                    server.requests.append({"path": self.path, "body": body, "fault": fault})
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault in ("429", "500"):
                    self._send(int(fault), {"error": {"message": f"injected {fault}"}}, retry_after="0")
                    return
                if fault == "hang":
                    time.sleep(server.hang_s)
                status, payload = server.route(method, self.path, body)
                if fault == "no_usage":
                    payload.pop("usage", None)
                raw = json.dumps(payload).encode()
                if fault == "truncated":
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw[: len(raw) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if fault == "bad_json":
                    raw = raw[: max(1, len(raw) // 2)]
                self._send(status, raw=raw)

            def _send(self, status: int, payload: dict | None = None, raw: bytes | None = None,
                      retry_after: str | None = None) -> None:
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler


if __name__ == "__main__":  # a standalone fake server for manual runs
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--fault-rate", type=float, default=0.0)
    args = ap.parse_args()
    rate = args.fault_rate / len(FAULTS)
    with FakeVLLM(faults={k: rate for k in FAULTS}, hang_s=1.0) as srv:
        print(srv.base_url, flush=True)
        threading.Event().wait()
