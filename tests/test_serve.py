"""``ttsgym serve``: the OpenAI-compatible reply, keys, refusals, limits, upstream failures and
cancellation on disconnect, against the fast fake upstream on loopback."""

from __future__ import annotations

import gc
import socket
import threading
import time

import httpx
import pytest
from live_fake import SETTINGS, FastFakeVLLM, ServeThread

from ttsgym.cli.main import main
from ttsgym.collect.client import RetryPolicy
from ttsgym.collect.live import LiveGenerator
from ttsgym.controllers.live import LiveRunner
from ttsgym.controllers.registry import parse_spec
from ttsgym.controllers.serve import ServeConfig, check_bind, create_app

KEY = "s3cret-key"
QUESTION = "What is 3 + 4?"


def config(upstream: str, **kw) -> ServeConfig:
    base = dict(upstream=upstream, settings=SETTINGS, spec=parse_spec("short_race"), beta=0.5,
                pool_size=SETTINGS.branches, served_model="fake", allowed_betas=(0.2, 0.9), api_key=KEY,
                max_concurrency=4, retry=RetryPolicy(attempts=1, base_s=0.01, cap_s=0.01, timeout_s=30.0))
    base.update(kw)
    return ServeConfig(**base)


def ask(url: str, body: dict | None = None, key: str | None = KEY, timeout: float = 60.0) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = body or {"model": "fake", "messages": [{"role": "user", "content": QUESTION}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=timeout)


def wait_until(predicate, what: str, limit_s: float = 30.0) -> None:
    """Poll for a state change the test caused (a bound against hanging, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def live_generators() -> int:
    """Episodes still alive in this process (the serve app's and the tests')."""
    gc.collect()
    return sum(isinstance(o, LiveGenerator) for o in gc.get_objects())


@pytest.fixture(scope="module")
def upstream():
    with FastFakeVLLM() as server:
        yield server


@pytest.fixture(scope="module")
def served(upstream):
    app = create_app(config(upstream.base_url))
    with ServeThread(app) as srv:
        yield srv, app


def test_reply_carries_answer_usage_and_the_episode(served, upstream) -> None:
    srv, _ = served
    r = ask(srv.url, {"model": "fake", "messages": [{"role": "system", "content": "be brief"},
                                                   {"role": "user", "content": QUESTION}], "beta": 0.9})
    assert r.status_code == 200, r.text
    data = r.json()
    extra = data["ttsgym"]
    with LiveRunner(upstream.base_url, SETTINGS, pool_size=SETTINGS.branches) as runner:
        direct = runner.solve(lambda: parse_spec("short_race").make(0.9), QUESTION)
    assert extra["answer"] == direct.answer and extra["tokens"] == direct.tokens
    assert data["choices"][0]["message"]["content"] == f"\\boxed{{{direct.answer}}}"
    assert extra["beta"] == 0.9 and extra["controller"] == "short_race"
    assert extra["branches_opened"] == direct.opened and extra["probes"] == direct.probes_read
    assert extra["stop_reason"] == "answered"
    up = extra["upstream"]
    usage = data["usage"]
    assert usage["prompt_tokens"] == up["generation"]["prompt_tokens"] + up["probe"]["prompt_tokens"]
    generated = up["generation"]["completion_tokens"] + up["probe"]["completion_tokens"]
    assert usage["completion_tokens"] == generated
    assert usage["completion_tokens"] >= extra["tokens"]  # every upstream token, read or not
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_readme_openai_client_example_runs(served, monkeypatch, capsys) -> None:
    import re

    from conftest import REPO

    srv, _ = served
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    [code] = [b for b in blocks if "extra_body" in b]
    code = code.replace("http://127.0.0.1:8080/v1", f"{srv.url}/v1").replace('"Qwen/Qwen3-1.7B"', '"fake"')
    code = code.replace('"beta": 0.8', '"beta": 0.9')
    monkeypatch.setenv("TTSGYM_SERVE_KEY", KEY)
    exec(compile(code, "README.md", "exec"), {})
    content, tokens = capsys.readouterr().out.split()
    assert content.startswith("\\boxed{") and int(tokens) > 0


def test_models_lists_the_served_name(served) -> None:
    srv, _ = served
    r = httpx.get(f"{srv.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["fake"]
    assert httpx.get(f"{srv.url}/v1/models").status_code == 401


@pytest.mark.parametrize("key", [None, "wrong", KEY + "x", ""])
def test_missing_or_wrong_key_is_401(served, key) -> None:
    srv, _ = served
    r = ask(srv.url, key=key)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("body", "status", "text"), [
    ({"controller": "sc:n=64"}, 400, "'controller' is not accepted"),
    ({"code": "class X:\n def solve(self, q): return '1'"}, 400, "'code' is not accepted"),
    ({"temperature": 1.5}, 400, "'temperature' is not accepted"),
    ({"beta": 0.3}, 400, "not allowed here"),
    ({"stream": True}, 400, "streaming"),
    ({"model": "sc"}, 404, "not served here"),
    ({"messages": []}, 400, "no user message"),
    ({"messages": [{"role": "user", "content": "hi", "tool": "x"}]}, 400, "not accepted"),
])
def test_requests_cannot_change_the_controller(served, body, status, text) -> None:
    srv, _ = served
    full = {"model": "fake", "messages": [{"role": "user", "content": QUESTION}], **body}
    r = ask(srv.url, full)
    assert r.status_code == status, r.text
    assert text in r.json()["error"]["message"]


def test_bad_json_is_400(served) -> None:
    srv, _ = served
    r = httpx.post(f"{srv.url}/v1/chat/completions", content=b"{not json",
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400


def test_a_class_file_spec_is_refused_through_beta_for_baselines(upstream) -> None:
    with pytest.raises(ValueError, match="takes no β"):
        config(upstream.base_url, spec=parse_spec("sc:n=4"), beta=None, allowed_betas=(0.5,))


def test_non_loopback_bind_needs_a_key(capsys, monkeypatch) -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "k")
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    args = ["serve", "--upstream", "http://127.0.0.1:9/v1", "--model", "fake", "--controller", "sc:n=4",
            "--interval", "16", "--host", "0.0.0.0"]
    assert main(args) == 2
    assert "refusing to serve on a non-loopback address without a key" in capsys.readouterr().err
    monkeypatch.delenv("TTSGYM_TEST_UNSET_KEY", raising=False)
    assert main([*args, "--api-key-env", "TTSGYM_TEST_UNSET_KEY"]) == 2
    assert "not set or empty" in capsys.readouterr().err


def test_over_max_concurrency_is_429_with_retry_after(upstream) -> None:
    app = create_app(config(upstream.base_url, max_concurrency=1))
    state = app.state.ttsgym
    with ServeThread(app) as srv:
        assert ask(srv.url).status_code == 200  # warm: the session is ready
        gate = threading.Event()
        upstream.gate = gate
        results: list[httpx.Response] = []
        first = threading.Thread(target=lambda: results.append(ask(srv.url)))
        try:
            first.start()
            wait_until(lambda: state.active == 1 and upstream.in_flight > 0, "the first request running")
            r = ask(srv.url)
            assert r.status_code == 429
            assert r.headers["retry-after"] == "1"
        finally:
            upstream.gate = None
            gate.set()
            first.join(timeout=60)
        assert results and results[0].status_code == 200


def test_upstream_down_is_502_and_a_hanging_upstream_504() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    s.close()  # nothing listens there any more
    with ServeThread(create_app(config(dead))) as srv:
        r = ask(srv.url)
        assert r.status_code == 502
        assert "upstream" in r.json()["error"]["message"] and "ConnectError" in r.json()["error"]["message"]
    with FastFakeVLLM(faults={"hang": 1.0}, hang_s=3.0) as slow:
        retry = RetryPolicy(attempts=1, base_s=0.01, cap_s=0.01, timeout_s=0.3)
        with ServeThread(create_app(config(slow.base_url, retry=retry))) as srv:
            r = ask(srv.url)
            assert r.status_code == 504
            assert "Timeout" in r.json()["error"]["message"]


def test_a_client_that_hangs_up_cancels_its_upstream_work(upstream) -> None:
    app = create_app(config(upstream.base_url, spec=parse_spec("sc:n=8"), beta=None, allowed_betas=()))
    state = app.state.ttsgym
    with ServeThread(app) as srv:
        assert ask(srv.url).status_code == 200
        before = upstream.completions
        assert ask(srv.url).status_code == 200
        full = upstream.completions - before  # what one uninterrupted episode asks upstream
        gate = threading.Event()
        upstream.gate = gate
        try:
            body = (b'{"model": "fake", "messages": [{"role": "user", "content": "What is 3 + 4?"}]}')
            conn = socket.create_connection(("127.0.0.1", srv.port))
            head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n")
            conn.sendall(head.encode() + body)
            start = upstream.completions
            wait_until(lambda: upstream.in_flight > 0, "the episode reaching upstream")
            conn.close()
            wait_until(lambda: state.active == 0, "the episode ending after the disconnect")
            asked = upstream.completions - start
        finally:
            upstream.gate = None
            gate.set()
        assert state.disconnected == 1
        assert asked < full
        # Nothing of the episode stays behind once its controller thread has seen the cancellation.
        wait_until(lambda: live_generators() == 0, "the cancelled episode being released")


def test_a_failing_controller_is_500_naming_it(upstream, tmp_path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("class Broken:\n    def __init__(self, config=None):\n        pass\n\n"
                    "    def solve(self, q):\n"
                    "        q.open()\n        raise KeyError('oops')\n")
    app = create_app(config(upstream.base_url, spec=parse_spec(f"{path}:Broken"), beta=0.5, allowed_betas=()))
    with ServeThread(app) as srv:
        r = ask(srv.url)
    assert r.status_code == 500
    assert "Broken" in r.json()["error"]["message"] and "KeyError" in r.json()["error"]["message"]
