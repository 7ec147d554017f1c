"""Ray as a backend: connect to a cluster, put store slices in its object store, run tasks, notice
when the cluster is gone.

Ray is the optional extra ``ttsgym[ray]``; this module imports it only when a function is called,
so the local backend needs nothing new. The evaluation tasks are the ones the local process runner
runs (:mod:`ttsgym.controllers.evaluate`); a slice's compiled arrays are ``ray.put`` once and every
task that replays it reads them zero-copy from the object store (workers keep the branch pools they
build per slice), so results are identical to the local backend whatever the cluster size.

A worker killed mid-task is retried by Ray (``max_retries``); a task is a deterministic function of
its arguments, so the retry gives the same result. A cluster that goes away does not raise in the
driver (Ray keeps waiting, then ends the process); :func:`wait_any` probes the cluster's GCS
port while it waits and raises :class:`ClusterLost` with a message that says what was kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import ipaddress
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

INSTALL_HINT = ("--backend ray needs Ray, the optional extra: pip install 'ttsgym[ray]' "
                "(in a source checkout: pip install -e '.[ray]')")
TASK_RETRIES = 3  # Ray re-runs a task this many times when its worker process dies
HEALTH_EVERY_S = 2.0  # how often a waiting driver checks that the cluster is still there
GIVE_UP_S = 10.0  # a GCS silent this long ends the driver even when it is stuck inside Ray
# Every Ray worker this driver starts: one thread per process (the tasks are the parallelism), and
# a fixed string hash seed (set iteration order must not differ between processes).
WORKER_ENV = {"PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}


class RayUnavailable(RuntimeError):
    """``--backend ray`` without Ray installed; the message says how to install it."""


class ClusterLost(RuntimeError):
    """The Ray cluster could not be reached, or stopped answering while tasks ran."""


def require_ray() -> None:
    """Raise :class:`RayUnavailable` (saying how to install the extra) when Ray is missing."""
    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise RayUnavailable(INSTALL_HINT)


def _is_loopback(address: str | None) -> bool:
    host = (address or "").rpartition(":")[0].strip("[]") or (address or "")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def connect(address: str | None = None) -> ModuleType:
    """``ray`` connected to the cluster at ``address`` (``None``: ``RAY_ADDRESS`` if set, else a
    new local cluster on this machine's cores). Reuses an existing connection.

    A loopback address, or a new local cluster, keeps the driver on 127.0.0.1: on Linux Ray would
    otherwise swap loopback for the machine's public address (its switch for that is the variable
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set here before Ray is first imported; start a
    loopback head with the same variable, see the README)."""
    require_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if (address is None or _is_loopback(address)) and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return ray
    where = address or "a new local cluster"
    try:
        ray.init(address=address or None, logging_level="ERROR", configure_logging=True,
                 runtime_env={"env_vars": dict(WORKER_ENV)}, ignore_reinit_error=True)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise ClusterLost(f"cannot reach the Ray cluster at {where}: {_one_line(exc)}") from None
    gcs = gcs_address(ray)
    if gcs:
        threading.Thread(target=_watch, args=(ray, gcs), name="ray-cluster-watch", daemon=True).start()
    return ray


_LOST_HINT: list[Callable[[], str]] = [lambda: ""]


def on_cluster_lost(hint: Callable[[], str]) -> None:
    """What the last-resort exit (see :func:`_watch`) says was kept, e.g. the committed rounds."""
    _LOST_HINT[0] = hint


def _watch(ray: ModuleType, gcs: str) -> None:
    """Backstop for a driver stuck inside a Ray call when the cluster dies (Ray would wait 60 s,
    then end the process with a line about its GCS client): after ``GIVE_UP_S`` without an
    answer from the GCS, say what happened and what was kept, and exit with status 1. Whatever
    ttsgym commits is already on disk atomically, so nothing is lost by exiting here."""
    missed = 0.0
    while ray.is_initialized():
        time.sleep(HEALTH_EVERY_S)
        if cluster_alive(gcs):
            missed = 0.0
            continue
        missed += HEALTH_EVERY_S
        if missed >= GIVE_UP_S:
            try:
                hint = _LOST_HINT[0]()
            except Exception:
                hint = ""
            sys.stderr.write(f"\nttsgym: error: lost the Ray cluster at {gcs}: its GCS no longer answers. "
                             f"{hint}\n")
            sys.stderr.flush()
            os._exit(1)


def cluster_cpus(ray: ModuleType) -> tuple[int, int]:
    """(CPUs in the cluster, CPUs of its largest node)."""
    total = int(ray.cluster_resources().get("CPU", 0))
    largest = max((int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")),
                  default=0)
    return total, largest


def gcs_address(ray: ModuleType) -> str | None:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:
        return None


def cluster_alive(address: str | None, timeout: float = 2.0) -> bool:
    """Whether the cluster's GCS still accepts connections (``None``: unknown, assumed alive)."""
    if not address:
        return True
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def wait_any(ray: ModuleType, refs: Sequence[Any], *, timeout: float | None, what: str) -> list[Any]:
    """The refs among ``refs`` that are done, waiting at most ``timeout`` seconds (``None``: until
    one is); raises :class:`ClusterLost` when the cluster stops answering meanwhile."""
    gcs = gcs_address(ray)
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        step = HEALTH_EVERY_S if end is None else max(0.0, min(HEALTH_EVERY_S, end - time.monotonic()))
        done, _ = ray.wait(list(refs), num_returns=1, timeout=step)
        if done:
            return list(done)
        if not cluster_alive(gcs):
            raise ClusterLost(f"lost the Ray cluster at {gcs} while {what}: its GCS no longer answers")
        if end is not None and time.monotonic() >= end:
            return []


def cancel(ray: ModuleType, refs: Sequence[Any]) -> None:
    """Force-cancel refs (their worker processes are killed); errors of a gone cluster ignored."""
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


# -- evaluation tasks --------------------------------------------------------------------------


def put_slice(ray: ModuleType, arrays: Any) -> Any:
    """Put a slice's compiled arrays in the object store, where workers read them zero-copy.

    ``load_replay`` hands out memory-mapped arrays; Ray serialises an ``np.memmap`` by copying
    (every worker would hold its own copy of the slice), a plain ndarray by reference to shared
    memory. So the arrays go in as plain ndarray views of the same memory."""
    import dataclasses

    import numpy as np

    plain = {f.name: np.asarray(getattr(arrays, f.name)) for f in dataclasses.fields(arrays)
             if isinstance(getattr(arrays, f.name), np.ndarray)}
    return ray.put(dataclasses.replace(arrays, **plain))


_SLICES: dict[str, tuple[Any, Any]] = {}  # worker side: object id -> (arrays, branch pools)


def _worker_slice(ref_box: list) -> tuple[Any, Any]:
    """The slice behind the boxed ref (a ref inside a list is not resolved by Ray, so the worker
    fetches it once and keeps the pools it builds across tasks)."""
    import ray

    from ttsgym.env.episodes import PoolCache

    (ref,) = ref_box
    key = ref.hex()
    if key not in _SLICES:
        if len(_SLICES) >= 8:
            _SLICES.pop(next(iter(_SLICES)))
        arrays = ray.get(ref)
        _SLICES[key] = (arrays, PoolCache(arrays))
    return _SLICES[key]


def _materialise(spec: str, sources: Mapping[str, tuple[str, str]]) -> str:
    """A user-class spec whose file this node may not have: write the shipped source to a
    per-content folder and point the spec there (the file's own path when it is the same file)."""
    if spec not in sources:
        return spec
    path, _, cls = spec.rpartition(":")
    name, code = sources[spec]
    if Path(path).is_file() and Path(path).read_text() == code:
        return spec
    digest = hashlib.sha256(code.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / "ttsgym-ray-code" / digest / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(code)
        os.replace(tmp, target)
    return f"{target}:{cls}"


def eval_task(task: dict, ref_box: list, sources: Mapping[str, tuple[str, str]]) -> dict:
    """One evaluation task on a Ray worker; the reply has the local runner's shape (``ok``,
    ``result`` or ``kind``/``message``/``frames``), so failures read the same on both backends."""
    from ttsgym.controllers.evaluate import Task, result_json, run_task
    from ttsgym.controllers.runner import error_reply

    try:
        arrays, pools = _worker_slice(ref_box)
        spec = _materialise(task["spec"], sources)
        t = Task(**{**task, "spec": spec, "seeds": tuple(task["seeds"])})
        row, res, sec = run_task(t, arrays=arrays, pools=pools)
        return {"ok": True, "result": result_json(row, res, sec)}
    except Exception as exc:
        return error_reply(exc)


def user_sources(specs: Sequence[str]) -> dict[str, tuple[str, str]]:
    """spec -> (file name, source) for the user-class specs among ``specs`` (shipped with tasks)."""
    out = {}
    for spec in specs:
        path, sep, _ = spec.rpartition(":")
        if sep and path.endswith(".py"):
            out[spec] = (Path(path).name, Path(path).read_text())
    return out


def run_tasks(tasks: Sequence[Any], slices: Mapping[tuple[str, str], Any], *, address: str | None,
              timeout: float | None, label: Callable[[Any], str]) -> Iterator[tuple[int, dict]]:
    """Run evaluation tasks on Ray; yield ``(index, reply)`` as each finishes (any order).

    ``slices`` maps (model, dataset) to the compiled arrays, each put in the object store once.
    At most as many tasks are in flight as the cluster has CPUs (so ``timeout``, counted from
    submission, is close to a task's running time); a timeout or a failed task cancels the rest.
    """
    from dataclasses import asdict

    from ttsgym.controllers.runner import TaskError

    ray = connect(address)
    refs_of = {key: put_slice(ray, arrays) for key, arrays in slices.items()}
    sources = user_sources(sorted({t.spec for t in tasks}))
    sources_ref = ray.put(sources)
    remote = ray.remote(eval_task).options(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False,
                                           name="ttsgym.eval")
    total, _ = cluster_cpus(ray)
    limit = max(1, total if timeout else 2 * total)
    pending = list(enumerate(tasks))[::-1]
    running: dict[Any, tuple[int, float]] = {}
    done_count = 0
    try:
        while pending or running:
            while pending and len(running) < limit:
                i, task = pending.pop()
                ref = remote.remote(asdict(task), [refs_of[(task.model, task.dataset)]], sources_ref)
                running[ref] = (i, time.monotonic())
            wait = None
            if timeout:
                wait = max(0.0, min(start for _, start in running.values()) + timeout - time.monotonic())
            done = wait_any(ray, list(running), timeout=wait,
                            what=f"evaluating ({done_count} of {len(tasks)} tasks done, nothing written)")
            if not done:
                i, _ = min(running.values(), key=lambda v: v[1])
                raise TaskError("timeout", f"timed out after {timeout:g} s (--timeout)",
                                label=label(tasks[i]))
            for ref in done:
                i, _ = running.pop(ref)
                try:
                    reply = ray.get(ref)
                except ray.exceptions.RayError as exc:  # retries used up, or the task was lost
                    reply = {"ok": False, "kind": "crash", "message": f"Ray could not run the task: "
                                                                      f"{_one_line(exc)}"}
                done_count += 1
                yield i, reply
    finally:
        cancel(ray, list(running))
