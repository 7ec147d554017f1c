"""Where candidates are evaluated: on this machine, or on a Ray cluster; several at once.

Both backends run the same pipeline (:func:`evaluate_candidate`: checks, sandboxed sweep, audit)
with the same :class:`Limits`; they differ only in where. Locally, each candidate in flight has
its own sandboxed worker processes, driven from a thread. On Ray, each candidate is one task that
reserves ``limits.workers`` CPUs on one node and runs the pipeline there: the trusted part (gold,
grading, audit) in the Ray worker, the candidate in bubblewrap-sandboxed processes it starts, as on
one machine. The search split's slices are put in the object store once per run and read
zero-copy by every task.

:meth:`submit` returns a handle at once; :meth:`result` waits for it. The search loop commits
rounds in order whatever finishes first, so results do not depend on the backend or timing.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from ttsgym.search_agent.evaluation import CandidateEvaluation, Limits, SearchSplit, evaluate_candidate

BACKENDS = ("local", "ray")


class CandidateBackend(Protocol):
    def submit(self, code: str, *, betas: Sequence[float], seeds: Sequence[int], limits: Limits,
               scratch: Path, audit_episodes: int = 8, trace_episodes: int = 4) -> Any: ...

    def result(self, handle: Any) -> CandidateEvaluation: ...

    def close(self) -> None: ...


class LocalCandidates:
    """Candidates on this machine; up to ``concurrency`` at once, each driven from a thread.

    The threads are daemons and :meth:`close` does not wait for them: on Ctrl-C or a failure the
    process ends at once, and the candidates' worker processes die with it (``PR_SET_PDEATHSIG``).
    """

    def __init__(self, split: SearchSplit, concurrency: int = 1) -> None:
        self.split = split
        for s in split.slices:
            split.arrays(*s)  # compile before threads share the split
        self._queue: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._work, name=f"candidate-{i}", daemon=True)
                         for i in range(max(1, concurrency))]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            future, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(evaluate_candidate(split=self.split, **kwargs))
            except BaseException as exc:  # reaches the caller through result()
                future.set_exception(exc)

    def submit(self, code: str, *, betas: Sequence[float], seeds: Sequence[int], limits: Limits,
               scratch: Path, audit_episodes: int = 8, trace_episodes: int = 4) -> Future:
        future: Future = Future()
        self._queue.put((future, {"code": code, "betas": list(betas), "seeds": list(seeds),
                                  "limits": limits, "scratch": scratch, "audit_episodes": audit_episodes,
                                  "trace_episodes": trace_episodes}))
        return future

    def result(self, handle: Future) -> CandidateEvaluation:
        return handle.result()

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)


def evaluate_on_node(code: str, store: str, slices: list, kwargs: dict, *arrays: Any) -> dict:
    """One candidate's pipeline inside a Ray worker (``arrays``: the slices, zero-copy from the
    object store); the scratch folder is this node's and is removed afterwards."""
    split = SearchSplit(store=Path(store), slices=[tuple(s) for s in slices],
                        _arrays={tuple(s): a for s, a in zip(slices, arrays, strict=True)})
    scratch = Path(tempfile.mkdtemp(prefix="ttsgym-candidate-"))
    try:
        limits = Limits(**kwargs.pop("limits"))
        return evaluate_candidate(code, split, limits=limits, scratch=scratch, **kwargs).to_dict()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class RayCandidates:
    """Candidates on a Ray cluster; each one a task holding ``limits.workers`` CPUs of one node."""

    def __init__(self, split: SearchSplit, address: str | None = None) -> None:
        from ttsgym.controllers.ray_backend import TASK_RETRIES, cluster_cpus, connect, put_slice

        self.ray = connect(address)
        self.split = split
        self._arrays = [put_slice(self.ray, split.arrays(*s)) for s in split.slices]
        self._remote = self.ray.remote(evaluate_on_node)
        self._retries = TASK_RETRIES
        self._largest = cluster_cpus(self.ray)[1]  # once: a GCS call could hang on a lost cluster
        self._open: set = set()

    def submit(self, code: str, *, betas: Sequence[float], seeds: Sequence[int], limits: Limits,
               scratch: Path, audit_episodes: int = 8, trace_episodes: int = 4) -> Any:
        if limits.workers > self._largest:
            raise ValueError(f"--workers {limits.workers}: the cluster's largest node has {self._largest} "
                             "CPUs, and a candidate's workers run on one node")
        kwargs = {"betas": list(betas), "seeds": list(seeds), "limits": asdict(limits),
                  "audit_episodes": audit_episodes, "trace_episodes": trace_episodes}
        ref = self._remote.options(num_cpus=limits.workers, max_retries=self._retries, retry_exceptions=False,
                                   name="ttsgym.candidate").remote(
            code, str(self.split.store), [list(s) for s in self.split.slices], kwargs, *self._arrays)
        self._open.add(ref)
        return ref

    def result(self, handle: Any) -> CandidateEvaluation:
        from ttsgym.controllers.ray_backend import wait_any

        wait_any(self.ray, [handle], timeout=None, what="evaluating a candidate")
        self._open.discard(handle)
        try:
            data = self.ray.get(handle)
        except self.ray.exceptions.RayError as exc:  # retries used up: the node kept dying
            text = " ".join(str(exc).split())[:300]
            return CandidateEvaluation(ok=False, stage="sweep", class_name=None,
                                       reason=f"Ray could not run the evaluation: {text}")
        return CandidateEvaluation(**data)

    def close(self) -> None:
        from ttsgym.controllers.ray_backend import cancel

        cancel(self.ray, list(self._open))
        self._open.clear()


def open_backend(name: str, split: SearchSplit, *, concurrency: int = 1,
                 address: str | None = None) -> CandidateBackend:
    if name == "local":
        return LocalCandidates(split, concurrency)
    if name == "ray":
        return RayCandidates(split, address)
    raise ValueError(f"unknown backend {name!r}: choose {' or '.join(BACKENDS)}")
