"""Trusted worker-side functions for the runner tests (run through ``Call("sandbox_helpers:...")``)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def spawn_child_and_hang(pid_file: str) -> None:
    """Start a child process, write its pid, then spin: a timeout must kill both."""
    child = subprocess.Popen(["sleep", "300"])
    Path(pid_file).write_text(str(child.pid))
    while True:
        time.sleep(0.01)


def allocate(gigabytes: float) -> int:
    return len(bytearray(int(gigabytes * 2**30)))


def write_file(path: str) -> str:
    Path(path).write_text("escaped")
    return path


def add(a: int, b: int) -> int:
    return a + b


def boom() -> None:
    raise ValueError("boom from user code")


def spin() -> None:
    while True:
        pass
