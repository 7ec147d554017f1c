"""The one process runner: calls run in worker processes that a timeout or Ctrl-C really stops.

Both ``ttsgym eval`` and the search agent's sandbox run untrusted-by-accident or untrusted-by-design
controller code through this module, so it gives what a pool of workers from the standard
library does not:

- every worker is the leader of its own process group (``start_new_session``), and a timeout,
  a failure elsewhere, Ctrl-C or leaving the ``with`` block kills the whole group with SIGKILL,
  children included; a worker also dies with its parent (``PR_SET_PDEATHSIG``);
- address-space (``RLIMIT_AS``) and CPU-time (``RLIMIT_CPU``) limits per worker, a per-call
  timeout and an overall deadline;
- an optional wrapper command (``bwrap ...``) that the worker runs inside;
- results travel back as JSON, never pickle, so a hostile worker cannot run code in the
  parent by what it sends; calls travel to the worker as pickle (the parent is trusted);
- a failure in user code comes back as one line plus the user's own frames, not a pool's
  traceback.

A call names a worker-side function as ``"package.module:function"`` and its keyword arguments.
The function runs in the worker and must return JSON-serialisable data.

Run as ``python -m ttsgym.controllers.runner FD_IN FD_OUT`` it is the worker loop.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("!I")
_ROOT = Path(__file__).resolve().parents[1]
# ttsgym's own packages (each top-level folder is ttsgym.<folder>): their frames are not the user's.
_PACKAGE_DIRS = tuple(str(_ROOT / d) + os.sep for d in ("cli", "collect", "controllers", "env",
                                                        "search_agent", "store"))
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class Call:
    """One unit of work: ``fn`` is ``"module:function"``; ``label`` names it in error messages."""

    fn: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""


class TaskError(RuntimeError):
    """A call failed: ``kind`` is error | timeout | memory | crash | malformed.

    ``message`` is one line; ``frames`` holds the user's own traceback frames (may be empty).
    """

    def __init__(self, kind: str, message: str, *, label: str = "", frames: str = "",
                 exc_type: str | None = None) -> None:
        super().__init__(f"{label}: {message}" if label else message)
        self.kind = kind
        self.message = message
        self.label = label
        self.frames = frames
        self.exc_type = exc_type


class _Worker:
    __slots__ = ("buffer", "call", "fd_out", "index", "proc", "started", "w_in")

    def __init__(self, proc: subprocess.Popen, w_in: int, fd_out: int) -> None:
        self.proc = proc
        self.w_in = w_in
        self.fd_out = fd_out
        self.buffer = bytearray()
        self.call: Call | None = None
        self.index = -1
        self.started = 0.0


class Runner:
    """A set of worker processes under limits; use as a context manager and call :meth:`map`.

    ``task_timeout``: seconds one call may take; ``deadline``: a ``time.monotonic()`` instant by
    which every call must be done; ``memory_mb``: address-space limit per worker; ``cpu_seconds``:
    CPU-time limit per worker (a backstop: the kernel sends SIGXCPU); ``wrapper``: argv prefix the
    worker runs under (e.g. bwrap); ``file_mb``: largest file a worker may write (``RLIMIT_FSIZE``,
    its log included); ``log``: file that receives the workers' stdout and stderr
    (default: inherited); ``env``: extra environment variables; ``clean_env``: start from an empty
    environment instead of the parent's (so secrets such as API keys never reach the workers).
    """

    def __init__(self, workers: int = 1, *, task_timeout: float | None = None,
                 deadline: float | None = None, memory_mb: int | None = None,
                 cpu_seconds: float | None = None, file_mb: int | None = None,
                 wrapper: Sequence[str] = (),
                 log: Path | None = None, env: Mapping[str, str] | None = None,
                 clean_env: bool = False, python: str | None = None) -> None:
        self.workers = max(1, int(workers))
        self.task_timeout = task_timeout
        self.deadline = deadline
        self.memory_mb = memory_mb
        self.cpu_seconds = cpu_seconds
        self.file_mb = file_mb
        self.wrapper = list(wrapper)
        self.log = log
        self.env = dict(env or {})
        self.clean_env = clean_env
        self.python = python or sys.executable
        self._pool: list[_Worker] = []
        self._log_file: Any = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every worker's process group and reap the workers (idempotent)."""
        for w in self._pool:
            _kill_group(w.proc)
        for w in self._pool:
            for fd in (w.w_in, w.fd_out):
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(Exception):
                w.proc.wait(timeout=5)
        self._pool.clear()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return [w.proc.pid for w in self._pool if w.proc.poll() is None]

    def _spawn(self) -> _Worker:
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        env = {} if self.clean_env else dict(os.environ)
        for var in _THREAD_VARS:  # one thread per worker: the workers are the parallelism
            env.setdefault(var, "1")
        env["PYTHONHASHSEED"] = "0"  # set iteration order must not differ between processes
        env.update(self.env)
        limits = [str(self.memory_mb or 0), str(self.cpu_seconds or 0), str(self.file_mb or 0)]
        argv = [*self.wrapper, self.python, "-m", "ttsgym.controllers.runner", str(r_in), str(w_out),
                *limits]
        if self.log is not None and self._log_file is None:
            self._log_file = open(self.log, "ab")  # noqa: SIM115 - lives as long as the runner
        out = self._log_file
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    pass_fds=(r_in, w_out), env=env, start_new_session=True,
                                    close_fds=True)
        finally:
            os.close(r_in)
            os.close(w_out)
        worker = _Worker(proc, w_in, r_out)
        self._pool.append(worker)
        return worker

    # -- running -----------------------------------------------------------------------------

    def map(self, calls: Iterable[Call]) -> Iterator[tuple[int, Any]]:
        """Run the calls; yield ``(index, result)`` as each finishes (any order).

        The first failure kills every worker and raises :class:`TaskError`; so does the
        deadline. Ctrl-C (or closing the generator early) kills every worker too.
        """
        pending = deque(enumerate(calls))
        if not pending:
            return
        ok = False
        try:
            yield from self._loop(pending)
            ok = True
        finally:
            if not ok:
                self.close()

    def _loop(self, pending: deque) -> Iterator[tuple[int, Any]]:
        idle = [w for w in self._pool if w.call is None]
        busy: list[_Worker] = []
        sel = selectors.DefaultSelector()
        try:
            while pending or busy:
                while pending and (idle or len(self._pool) < self.workers):
                    worker = idle.pop() if idle else self._spawn()
                    index, call = pending.popleft()
                    self._send(worker, index, call)
                    sel.register(worker.fd_out, selectors.EVENT_READ, worker)
                    busy.append(worker)
                for key, _ in sel.select(self._wait(busy)):
                    worker = key.data
                    message = self._receive(worker)
                    if message is None:
                        continue
                    sel.unregister(worker.fd_out)
                    busy.remove(worker)
                    index, call = worker.index, worker.call
                    worker.call = None
                    idle.append(worker)
                    yield index, reply_result(message, _label(call))
                self._check_time(busy)
        finally:
            sel.close()

    def _send(self, worker: _Worker, index: int, call: Call) -> None:
        payload = pickle.dumps((call.fn, dict(call.kwargs)), protocol=pickle.HIGHEST_PROTOCOL)
        worker.call, worker.index, worker.started = call, index, time.monotonic()
        try:
            _write_all(worker.w_in, _HEADER.pack(len(payload)) + payload)
        except BrokenPipeError:
            raise self._crash(worker) from None

    def _receive(self, worker: _Worker) -> dict | None:
        try:
            chunk = os.read(worker.fd_out, 1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            raise self._crash(worker)
        worker.buffer += chunk
        if len(worker.buffer) < _HEADER.size:
            return None
        (n,) = _HEADER.unpack_from(worker.buffer)
        if len(worker.buffer) < _HEADER.size + n:
            return None
        raw = bytes(worker.buffer[_HEADER.size:_HEADER.size + n])
        del worker.buffer[:_HEADER.size + n]
        try:
            message = json.loads(raw)
            if not isinstance(message, dict):
                raise ValueError
        except ValueError:
            raise TaskError("malformed", "the worker sent a malformed reply",
                            label=_label(worker.call)) from None
        return message

    def _wait(self, busy: list[_Worker]) -> float | None:
        ends = [w.started + self.task_timeout for w in busy] if self.task_timeout else []
        if self.deadline is not None:
            ends.append(self.deadline)
        if not ends:
            return None
        return max(0.0, min(ends) - time.monotonic())

    def _check_time(self, busy: list[_Worker]) -> None:
        now = time.monotonic()
        for w in busy:
            if self.task_timeout and now - w.started >= self.task_timeout:
                raise TaskError("timeout", f"timed out after {self.task_timeout:g} s (--timeout)",
                                label=_label(w.call))
        if self.deadline is not None and now >= self.deadline and busy:
            raise TaskError("timeout", "the time limit ran out", label=_label(busy[0].call))

    def _crash(self, worker: _Worker) -> TaskError:
        try:
            code = worker.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        return TaskError("crash", describe_exit(code, self.memory_mb, self.cpu_seconds),
                         label=_label(worker.call))


def reply_result(message: dict, label: str = "") -> Any:
    """The result a worker's reply carries, or the :class:`TaskError` it describes (raised)."""
    if message.get("ok") is True:
        return message.get("result")
    kind = str(message.get("kind", "error"))
    raise TaskError(kind, str(message.get("message", "failed"))[:2000], label=label,
                    frames=str(message.get("frames", ""))[:8000], exc_type=message.get("type"))


def describe_exit(code: int | None, memory_mb: int | None = None, cpu_seconds: float | None = None) -> str:
    """One line saying why a worker process ended."""
    if code is None:
        return "the worker stopped answering"
    if code < 0:
        sig = -code
        if sig == signal.SIGXCPU:
            return f"the worker exceeded its CPU-time limit ({cpu_seconds:g} s)"
        if sig == signal.SIGXFSZ:
            return "the worker exceeded its file-size limit (too much output?)"
        if sig == signal.SIGKILL:
            return "the worker was killed (SIGKILL; out of memory?)"
        return f"the worker died from signal {signal.Signals(sig).name}"
    if code == 0:
        return "the worker exited before answering (did the code call exit?)"
    if code > 128 and code - 128 in (signal.SIGXCPU, signal.SIGXFSZ, signal.SIGKILL, signal.SIGSEGV):
        return describe_exit(128 - code, memory_mb, cpu_seconds)  # bwrap reports a signal as 128 + n
    return f"the worker exited with status {code}"


def _label(call: Call | None) -> str:
    return call.label if call is not None else ""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the worker's whole process group (its children too), even if the leader is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


# -- the worker side ---------------------------------------------------------------------------


def user_frames(tb: Any) -> str:
    """The traceback frames that belong to the user's code: not ttsgym's, not the standard
    library's or an installed package's."""
    skip = (*_PACKAGE_DIRS, sys.prefix + os.sep, sys.base_prefix + os.sep, "<frozen ")
    frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith(skip)]
    return "".join(traceback.format_list(frames)).rstrip()


def describe_exception(exc: BaseException) -> tuple[str, str]:
    """``(one line, the user's own frames)`` for an exception raised by user code.

    A chained exception (``raise ... from cause``) already names its cause in its message, so
    the line is that message; the frames come from the cause's traceback.
    """
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    frames = user_frames(root.__traceback__) or user_frames(exc.__traceback__)
    text = " ".join(str(exc).split())
    if root is not exc and text:
        line = text
    elif isinstance(exc, MemoryError) and not text:
        line = "MemoryError: out of memory"
    else:
        line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line, frames


def error_reply(exc: BaseException) -> dict[str, Any]:
    """A failed call's reply: one line, the user's frames, the kind (memory or error)."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    line, frames = describe_exception(exc)
    return {"ok": False, "kind": "memory" if isinstance(root, MemoryError) else "error",
            "message": line, "frames": frames, "type": type(root).__name__}


def _set_limits(memory_mb: int, cpu_seconds: float, file_mb: int = 0) -> None:
    import resource

    if file_mb > 0:  # a worker printing forever cannot fill the disk through its log
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_seconds > 0:
        soft = int(cpu_seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _read_exact(fd: int, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def worker_main(argv: Sequence[str]) -> int:
    """The worker loop: read a pickled call, run it, write a JSON reply; until EOF."""
    fd_in, fd_out = int(argv[0]), int(argv[1])
    memory_mb = int(argv[2]) if len(argv) > 2 else 0
    cpu_seconds = float(argv[3]) if len(argv) > 3 else 0.0
    file_mb = int(argv[4]) if len(argv) > 4 else 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a worker stops
    _die_with_parent()
    _set_limits(memory_mb, cpu_seconds, file_mb)
    functions: dict[str, Any] = {}
    while True:
        header = _read_exact(fd_in, _HEADER.size)
        if header is None:
            return 0
        payload = _read_exact(fd_in, _HEADER.unpack(header)[0])
        if payload is None:
            return 0
        fn_name, kwargs = pickle.loads(payload)
        try:
            fn = functions.get(fn_name)
            if fn is None:
                module, _, attr = fn_name.partition(":")
                fn = functions[fn_name] = getattr(importlib.import_module(module), attr)
            reply = {"ok": True, "result": fn(**kwargs)}
            data = json.dumps(reply, separators=(",", ":")).encode()
        except BaseException as exc:  # everything, MemoryError and SystemExit included
            data = json.dumps(error_reply(exc)).encode()
        _write_all(fd_out, _HEADER.pack(len(data)) + data)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
