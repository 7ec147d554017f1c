"""The evaluation harness: controllers × β × (model, dataset) × seeds, in parallel.

Work is cut into tasks that name everything as plain data (store path, slice, spec text, β,
seeds), so worker processes rebuild controllers themselves and results never depend on the
worker count: built-in baselines run as one vectorised task per slice, everything else in
chunks of seeds through the Question API, and chunks are stitched back in seed order.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from ttsgym.controllers.batched import run_batched
from ttsgym.controllers.registry import ControllerSpec, parse_spec
from ttsgym.controllers.runner import Call, Runner
from ttsgym.env.episodes import EpisodeResults, PoolCache, run_episodes
from ttsgym.env.protocols import parse_protocol
from ttsgym.env.results import results_table, summarize
from ttsgym.store import Store, load_replay

SEED_CHUNK = 10
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Task:
    store: str
    model: str
    dataset: str
    spec: str
    beta: float | None
    seeds: tuple[int, ...]
    protocol: str
    kappa: int
    budget: int | None
    batched: bool
    row: int


@dataclass(frozen=True)
class _Row:
    model: str
    dataset: str
    spec: ControllerSpec
    beta: float | None


_WORKER_CACHE: dict[tuple[str, str, str], tuple] = {}


def _slice(store: str, model: str, dataset: str) -> tuple:
    key = (store, model, dataset)
    if key not in _WORKER_CACHE:
        arrays = load_replay(store, model, dataset)
        _WORKER_CACHE[key] = (arrays, PoolCache(arrays))
    return _WORKER_CACHE[key]


def run_task(task: Task, arrays: Any = None, pools: PoolCache | None = None
             ) -> tuple[int, EpisodeResults, float]:
    """Run one task (in a worker or inline): the row it belongs to, its episodes, its seconds.

    The slice is read from the store unless ``arrays`` (and its ``pools``) are given (Ray workers
    get them from the object store)."""
    start = time.perf_counter()
    if arrays is None:
        arrays, pools = _slice(task.store, task.model, task.dataset)
    elif pools is None:
        pools = PoolCache(arrays)
    spec = parse_spec(task.spec)
    res = None
    if task.batched:
        res = run_batched(spec.make(task.beta), arrays, task.seeds, protocol=task.protocol,
                          kappa=task.kappa, budget=task.budget)
    if res is None:
        res = run_episodes(lambda: spec.make(task.beta), arrays, task.seeds, protocol=task.protocol,
                           kappa=task.kappa, budget=task.budget, pools=pools)
    return task.row, res, time.perf_counter() - start


def run_task_json(task: dict) -> dict:
    """:func:`run_task` for the process runner: a task as a dict in, plain lists out."""
    row, res, sec = run_task(Task(**{**task, "seeds": tuple(task["seeds"])}))
    return result_json(row, res, sec)


def result_json(row: int, res: EpisodeResults, sec: float) -> dict:
    """A task's result as plain lists (what both backends send back)."""
    return {"row": row, "seconds": sec, "seeds": res.seeds.tolist(), "correct": res.correct.tolist(),
            "tokens": res.tokens.tolist(), "seq_tokens": res.seq_tokens.tolist(),
            "opened": res.opened.tolist()}


def _from_json(data: dict, question_ids: np.ndarray) -> tuple[int, EpisodeResults, float]:
    res = EpisodeResults(
        seeds=np.asarray(data["seeds"], dtype=np.int64), question_ids=question_ids,
        correct=np.asarray(data["correct"], dtype=bool).reshape(len(data["seeds"]), -1),
        tokens=np.asarray(data["tokens"], dtype=np.int64).reshape(len(data["seeds"]), -1),
        seq_tokens=np.asarray(data["seq_tokens"], dtype=np.int64).reshape(len(data["seeds"]), -1),
        opened=np.asarray(data["opened"], dtype=np.int32).reshape(len(data["seeds"]), -1),
    )
    return int(data["row"]), res, float(data["seconds"])


def _concat(parts: list[EpisodeResults]) -> EpisodeResults:
    if len(parts) == 1:
        return parts[0]
    return EpisodeResults(
        seeds=np.concatenate([p.seeds for p in parts]),
        question_ids=parts[0].question_ids,
        correct=np.concatenate([p.correct for p in parts]),
        tokens=np.concatenate([p.tokens for p in parts]),
        seq_tokens=np.concatenate([p.seq_tokens for p in parts]),
        opened=np.concatenate([p.opened for p in parts]),
    )


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def evaluate(
    store: str | os.PathLike | Store,
    controllers: Sequence[str],
    *,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    betas: Sequence[float] | None = None,
    seeds: int | Sequence[int] = 100,
    workers: int | None = None,
    protocol: str = "autotts",
    kappa: int = 0,
    budget: int | None = None,
    progress: bool = False,
    timeout: float | None = None,
    backend: str = "local",
    ray_address: str | None = None,
) -> pa.Table:
    """Evaluate controller specs on a store; one result row per (model, dataset, controller, β).

    Baselines ignore ``betas`` (one row, β = null); β-families and user classes get one row per
    β (β-families default to 0, 0.25, 0.5, 0.75, 1 when no β is given). ``timeout`` bounds each
    task (one slice × β × chunk of seeds) in seconds; a task that fails or runs out of time
    raises :class:`~ttsgym.controllers.runner.TaskError` after every worker is killed.

    ``backend="ray"`` sends the same tasks to a Ray cluster (``ray_address``; default: RAY_ADDRESS
    or a new local cluster), each slice put in its object store once; the table is identical.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose {' or '.join(BACKENDS)}")
    if backend == "ray":
        from ttsgym.controllers.ray_backend import require_ray

        require_ray()  # say how to install the extra before any work
    store = store if isinstance(store, Store) else Store(store)
    parse_protocol(protocol)
    models = list(models or store.models)
    datasets = list(datasets or store.datasets)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("no seeds to evaluate")
    specs = [parse_spec(c) for c in controllers]
    rows: list[_Row] = []
    for model in models:
        for dataset in datasets:
            store.slice(model, dataset)  # fail early, naming the available slices
            load_replay(store, model, dataset)  # compile once here, not in every worker
            for spec in specs:
                if spec.takes_beta:
                    grid = betas if betas else ((0.0, 0.25, 0.5, 0.75, 1.0)
                                                if spec.kind == "beta-family" else (None,))
                else:
                    grid = (None,)
                rows.extend(_Row(model, dataset, spec, b) for b in grid)
    tasks = []
    for r, row in enumerate(rows):
        batched = row.spec.kind == "baseline" and budget is None
        chunks = [seed_list] if batched else [seed_list[i : i + SEED_CHUNK]
                                              for i in range(0, len(seed_list), SEED_CHUNK)]
        tasks.extend(Task(str(store.path), row.model, row.dataset, row.spec.text, row.beta,
                          tuple(c), protocol, kappa, budget, batched, r) for c in chunks)
    # Whole-slice vectorised tasks first, seed chunks after, so no worker ends on a long task.
    tasks.sort(key=lambda t: not t.batched)
    parts: dict[int, list[tuple[int, EpisodeResults]]] = {r: [] for r in range(len(rows))}
    seconds = [0.0] * len(rows)
    n_workers = max(1, min(workers or default_workers(), len(tasks)))
    bar = tqdm(total=_episodes(tasks, store), desc="eval", unit="ep", disable=not progress,
               file=sys.stderr, smoothing=0.1)
    with bar:
        runs = (_run_ray(tasks, store, timeout, ray_address) if backend == "ray"
                else _run_all(tasks, n_workers, timeout, store))
        for r, res, sec in runs:
            parts[r].append((int(res.seeds[0]), res))
            seconds[r] += sec
            bar.update(res.correct.size)
    out = []
    for r, row in enumerate(rows):
        res = _concat([p for _, p in sorted(parts[r], key=lambda x: x[0])])
        out.append(summarize(
            res, model=row.model, dataset=row.dataset, controller=row.spec.text,
            name=row.spec.name, kind=row.spec.kind, beta=row.beta, protocol=protocol, kappa=kappa,
            budget=budget, synthetic=store.synthetic, seconds=seconds[r],
        ))
    return results_table(out)


def _episodes(tasks: list[Task], store: Store) -> int:
    questions = {(s.model, s.dataset): s.questions for s in store.slices}
    return sum(len(t.seeds) * questions[(t.model, t.dataset)] for t in tasks)


def _run_all(tasks: list[Task], n_workers: int, timeout: float | None,
             store: Store) -> Iterator[tuple[int, EpisodeResults, float]]:
    """Inline when one worker and no timeout (Ctrl-C interrupts the user's code directly);
    otherwise through the process runner, which kills its workers on timeout, error or Ctrl-C."""
    if n_workers == 1 and timeout is None:
        for task in tasks:
            yield run_task(task)
        return
    ids = {(s.model, s.dataset): None for s in store.slices}
    for key in ids:
        ids[key] = load_replay(store, *key).question_ids
    calls = [Call("ttsgym.controllers.evaluate:run_task_json", {"task": asdict(t)}, label=_task_label(t))
             for t in tasks]
    with Runner(n_workers, task_timeout=timeout) as runner:
        for i, data in runner.map(calls):
            yield _from_json(data, ids[(tasks[i].model, tasks[i].dataset)])


def _run_ray(tasks: list[Task], store: Store, timeout: float | None,
             address: str | None) -> Iterator[tuple[int, EpisodeResults, float]]:
    """The same tasks on a Ray cluster (see :mod:`ttsgym.controllers.ray_backend`)."""
    from ttsgym.controllers.ray_backend import run_tasks
    from ttsgym.controllers.runner import reply_result

    slices = {(t.model, t.dataset): load_replay(store, t.model, t.dataset) for t in tasks}
    for i, reply in run_tasks(tasks, slices, address=address, timeout=timeout, label=_task_label):
        task = tasks[i]
        ids = slices[(task.model, task.dataset)].question_ids
        yield _from_json(reply_result(reply, _task_label(task)), ids)


def _task_label(task: Task) -> str:
    beta = "" if task.beta is None else f" β={task.beta:g}"
    seeds = f"seed {task.seeds[0]}" if len(task.seeds) == 1 else f"seeds {task.seeds[0]}-{task.seeds[-1]}"
    return f"{task.spec} on {task.model}/{task.dataset}{beta} {seeds}"
