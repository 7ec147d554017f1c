"""What runs inside the sandbox: load a candidate, report its schedules, run it over episodes.

The process this module runs in is the candidate's: it holds gold-free branch pools that the
parent exported to the scratch directory, builds plain :class:`Question` episodes from them,
hands the candidate a :class:`QuestionView` and returns what happened (answers, tokens, the
final read state, optionally the full call trace). It never sees a gold answer, so it cannot
grade, and nothing it returns is trusted beyond being data: the parent grades and audits.

Pool files (pickle, written by the trusted parent) hold ``{"mode": "slice", "pools": [...]}``
(one pool per question, ordered per seed by the protocol), ``{"mode": "overlay", "base":
SLICE_FILE, "episodes": {question: pool}}`` (the slice with some questions replaced by pools
already in opening order: the audit's perturbed runs) or ``{"mode": "fixed", "episodes":
{seed: [pool, ...]}}`` (one pool per episode, in opening order).
A pool is ``(probes, tokens, finals, interval, scores, confidences)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import pickle
import sys
import time
from typing import Any

from ttsgym.env.episodes import ControllerError, fresh_controller
from ttsgym.env.protocols import branch_order
from ttsgym.env.question import BranchPool, Question, TracedQuestion
from ttsgym.search_agent.facade import QuestionView

_MODULES: dict[str, Any] = {}
_POOLS: dict[str, dict] = {}


def load_class(code_path: str, class_name: str) -> type:
    """Import the candidate file once per process and return its class."""
    module = _MODULES.get(code_path)
    if module is None:
        name = "ttsgym_candidate_" + hashlib.sha256(code_path.encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, code_path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{code_path}: cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _MODULES[code_path] = module
    cls = vars(module).get(class_name)
    if not isinstance(cls, type):
        raise TypeError(f"the module defines no class {class_name!r}")
    return cls


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    try:  # numpy scalars
        item = value.item()
    except (AttributeError, TypeError, ValueError):
        return repr(value)[:80]
    return _jsonable(item) if item is not value else repr(value)[:80]


def inspect_candidate(code_path: str, class_name: str, betas: list[float]) -> dict:
    """Schedules per β (as JSON-safe values) and whether ``Class(config={"beta": b})`` builds."""
    cls = load_class(code_path, class_name)
    kind = "missing"
    for klass in cls.__mro__:  # the defining class tells whether it is a class- or staticmethod
        if "schedule" in vars(klass):
            kind = type(vars(klass)["schedule"]).__name__
            break
    if not callable(getattr(cls, "solve", None)):
        raise TypeError(f"{class_name} has no solve(question) method")
    rows = []
    for beta in betas:
        hp = cls.schedule(beta)
        if not isinstance(hp, dict):
            raise TypeError(f"{class_name}.schedule({beta:g}) returned {type(hp).__name__}, not a dict")
        rows.append({str(k): _jsonable(v) for k, v in hp.items()})
        cls(config={"beta": beta})
    return {"schedule_kind": kind, "schedules": rows}


def _pool_file(path: str) -> dict:
    data = _POOLS.get(path)
    if data is None:
        with open(path, "rb") as f:
            data = pickle.load(f)
        data["built"] = {}
        _POOLS[path] = data
    return data


def _pool(data: dict, key: Any, raw: tuple) -> BranchPool:
    pool = data["built"].get(key)
    if pool is None:
        probes, tokens, finals, interval, scores, confs = raw
        pool = data["built"][key] = BranchPool(probes, tokens, finals, interval, scores, confs)
    return pool


def run_seeds(code_path: str, class_name: str, pools_path: str, beta: float, seeds: list[int],
              questions: list[int] | None = None, protocol: str = "autotts",
              trace: bool = False, trace_questions: list[int] | None = None) -> dict:
    """Run the candidate on ``seeds`` × ``questions`` of one pool file; a fresh controller per
    seed (the global random state seeded with it), questions in order, as the evaluator does.
    With ``trace``, the call trace of every question (or of ``trace_questions`` only; the others
    get an empty trace) is returned too."""
    cls = load_class(code_path, class_name)
    data = _pool_file(pools_path)
    # the pace the screen extrapolates from: episodes only, not the one-time load of the pool
    # file (seconds on a 10,000-question slice, which would make every candidate look too slow)
    cpu_start = time.process_time()
    mode = data["mode"]
    if mode == "fixed":
        n_q = len(data["episodes"][seeds[0]])
    else:
        base = _pool_file(data["base"]) if mode == "overlay" else data
        n_q = len(base["pools"])
    qs = list(range(n_q)) if questions is None else list(questions)
    traced = set(qs if trace_questions is None else trace_questions) if trace else set()
    make = (lambda: cls(config={"beta": beta}))  # noqa: E731
    out: dict[str, list] = {"answers": [], "tokens": [], "seq": [], "opened": [], "depths": [],
                            "pruned": []}
    if trace:
        out["events"] = []
    for seed in seeds:
        controller = fresh_controller(make, seed)
        row = {k: [] for k in out}
        for q in qs:
            kind = TracedQuestion if q in traced else Question
            if mode == "fixed":
                question = kind(_pool(data, (seed, q), data["episodes"][seed][q]))
            elif mode == "overlay" and q in data["episodes"]:  # already in opening order
                question = kind(_pool(data, q, data["episodes"][q]))
            else:
                pool = _pool(base, q, base["pools"][q])
                question = kind(pool, branch_order(protocol, len(pool), seed))
            try:
                answer = controller.solve(QuestionView(question))
            except Exception as exc:
                raise ControllerError(f"{class_name}.solve failed on question {q} (seed {seed}, "
                                      f"β={beta:g}): {type(exc).__name__}: {exc}") from exc
            if answer is not None and not isinstance(answer, str):
                raise TypeError(f"{class_name}.solve returned {type(answer).__name__} "
                                f"{repr(answer)[:40]} (seed {seed}, β={beta:g}); an answer must be "
                                "a str or None")
            depths = question.depths()
            row["answers"].append(answer)
            row["tokens"].append(question.total_tokens)
            row["seq"].append(question.seq_tokens)
            row["opened"].append(question.n_opened)
            row["depths"].append(depths)
            row["pruned"].append([i for i in range(len(depths)) if question.is_pruned(i)])
            if trace:
                row["events"].append([_jsonable(e) for e in question.events] if q in traced else [])
        for k in out:
            out[k].append(row[k])
    out["cpu"] = time.process_time() - cpu_start
    return out


def run_batch(calls: list[dict]) -> list[dict]:
    """Several :func:`run_seeds` calls in one process, in order (the audit's batches)."""
    return [run_seeds(**kwargs) for kwargs in calls]
