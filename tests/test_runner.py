"""The process runner: results, one-line errors with user frames, timeouts that kill the whole
process group, memory limits, and the bwrap sandbox's read-only file system."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ttsgym.controllers.runner import Call, Runner, TaskError
from ttsgym.search_agent.sandbox import find_bwrap, sandbox_runner

HELPERS = {"PYTHONPATH": str(Path(__file__).parent)}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_results_come_back_for_every_call() -> None:
    with Runner(2, env=HELPERS) as runner:
        got = dict(runner.map([Call("sandbox_helpers:add", {"a": i, "b": 1}) for i in range(5)]))
    assert got == {i: i + 1 for i in range(5)}


def test_an_exception_is_one_line_plus_the_users_frames() -> None:
    with Runner(1, env=HELPERS) as runner, pytest.raises(TaskError) as info:
        list(runner.map([Call("sandbox_helpers:boom", label="task 1")]))
    err = info.value
    assert err.kind == "error" and str(err) == "task 1: ValueError: boom from user code"
    assert "sandbox_helpers.py" in err.frames and "runner.py" not in err.frames


def test_timeout_kills_the_worker_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    runner = Runner(1, task_timeout=1.0, env=HELPERS)
    with runner, pytest.raises(TaskError) as info:
        list(runner.map([Call("sandbox_helpers:spawn_child_and_hang", {"pid_file": str(pid_file)})]))
    assert info.value.kind == "timeout"
    child = int(pid_file.read_text())
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.02)
    assert not _alive(child), "the worker's child outlived the timeout"
    assert runner.pids() == []


def test_memory_limit_stops_a_huge_allocation() -> None:
    with Runner(1, memory_mb=1024, env=HELPERS) as runner, pytest.raises(TaskError) as info:
        list(runner.map([Call("sandbox_helpers:allocate", {"gigabytes": 10})]))
    assert info.value.kind == "memory"


def test_the_environment_is_clean_when_asked(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    with Runner(1, env={**HELPERS, "PATH": os.environ["PATH"]}, clean_env=True) as runner:
        (_, env), = runner.map([Call("os:getenv", {"key": "OPENAI_API_KEY"})])
    assert env is None


@pytest.mark.skipif(find_bwrap() is None, reason="no working bwrap on this machine")
def test_under_bwrap_nothing_is_written_outside_scratch(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    outside = Path(__file__).parent / "escaped.txt"
    with sandbox_runner(scratch, workers=1, deadline=None, memory_mb=2048, cpu_seconds=30) as runner:
        runner.env["PYTHONPATH"] = HELPERS["PYTHONPATH"]
        with pytest.raises(TaskError) as info:
            list(runner.map([Call("sandbox_helpers:write_file", {"path": str(outside)})]))
        assert "Read-only file system" in str(info.value)
    assert not outside.exists()
    with sandbox_runner(scratch, workers=1, deadline=None, memory_mb=2048, cpu_seconds=30) as runner:
        runner.env["PYTHONPATH"] = HELPERS["PYTHONPATH"]
        (_, path), = runner.map([Call("sandbox_helpers:write_file", {"path": str(scratch / "ok.txt")})])
    assert Path(path).read_text() == "escaped"


def test_cpu_limit_ends_a_spinning_worker() -> None:
    with Runner(1, cpu_seconds=1, env=HELPERS) as runner, pytest.raises(TaskError) as info:
        list(runner.map([Call("sandbox_helpers:spin")]))
    assert info.value.kind == "crash" and "CPU-time limit" in info.value.message


def test_bwraps_exit_codes_are_read_as_signals() -> None:
    from ttsgym.controllers.runner import describe_exit

    assert "CPU-time limit (10 s)" in describe_exit(128 + 24, cpu_seconds=10)
    assert describe_exit(-9).startswith("the worker was killed")
