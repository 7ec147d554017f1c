"""Test helpers for live inference: a fast fake upstream, a small collected store, and
``ttsgym serve``'s app on a loopback port in a background thread.

``FastFakeVLLM`` is the collect tests' deterministic fake vLLM with Nagle's algorithm off: the
stock ``http.server`` handler writes headers and body separately, and Nagle plus delayed ACKs
then cost ~40 ms per keep-alive request, which would make a "fast upstream" slow. ``delay_s``
adds a fixed service time per completion, so that concurrency shows in wall-clock numbers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from fake_vllm import FakeVLLM

from ttsgym.collect.collector import Collector, CollectSettings, RunOptions
from ttsgym.collect.questions import QuestionRow

QUESTIONS = [QuestionRow(0, "What is 3 + 4?", "7"), QuestionRow(1, "Halve one.", "1/2"),
             QuestionRow(2, "What is 3 * 4?", "12")]
SETTINGS = CollectSettings(model="fake", dataset="toy", branches=8, interval=16, max_tokens=96,
                           probe_tokens=8)


class FastFakeVLLM(FakeVLLM):
    """FakeVLLM without the Nagle stall, optionally with a fixed per-completion service time or a
    gate that holds completions; it counts completions and the most it had in flight at once."""

    def __init__(self, *, delay_s: float = 0.0, **kwargs: Any) -> None:
        self.delay_s = delay_s
        self.gate: threading.Event | None = None  # when set to an Event, completions wait for it
        self.completions = 0
        self.in_flight = 0
        self.max_in_flight = 0
        super().__init__(**kwargs)

    def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.completions += 1
            gate = self.gate
        try:
            if gate is not None:
                gate.wait()
            if self.delay_s:
                time.sleep(self.delay_s)
            return super().complete(body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handler(self):
        handler = super()._handler()
        handler.disable_nagle_algorithm = True
        return handler


def collect_store(base_url: str, out: Path, settings: CollectSettings = SETTINGS,
                  questions: list[QuestionRow] = QUESTIONS) -> Path:
    """A store collected with the collection stage itself (H1's Collector)."""
    options = RunOptions([base_url], concurrency=8)
    asyncio.run(Collector(questions, settings, options, out).run())
    return out


class ServeThread:
    """uvicorn serving an app on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        from ttsgym.controllers.serve import bind_socket, server_config

        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(server_config(app))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServeThread:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
