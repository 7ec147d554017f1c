"""Evaluate one candidate: checks → load → screen → sweep → audit → monotone spending → done.

The trusted parent (this module) holds the gold answers; the candidate runs in sandboxed worker
processes (:mod:`ttsgym.search_agent.sandbox`) that get gold-free branch pools through the
scratch directory and send back answers, tokens and read states, which the parent grades.
Every failure of the candidate ends the pipeline with ``ok=False``, the stage and one line of
reason; nothing here raises for a candidate's fault.
"""

from __future__ import annotations

import itertools
import json
import pickle
import random
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ttsgym.controllers.runner import Call, Runner, TaskError
from ttsgym.env.episodes import Grader, PoolCache
from ttsgym.env.protocols import branch_order
from ttsgym.env.question import BranchPool
from ttsgym.search_agent.audit import (
    choose_runs,
    compact_events,
    donor_index_from_arrays,
    first_difference,
    original_episode,
    perturbed_episode,
    replay_costs,
)
from ttsgym.search_agent.checks import check_code
from ttsgym.search_agent.sandbox import sandbox_runner
from ttsgym.store import Store, load_replay

WORKER = "ttsgym.search_agent.worker"
SEED_CHUNK = 10
SCREEN_QUESTIONS = 5
AUDIT_QUESTIONS = 64  # questions perturbed per audited run (all of them on smaller slices)
TOKEN_TOLERANCE = (0.02, 1000.0)  # tokens may fall by at most max(2 %, 1,000 tokens) as β grows


@dataclass
class SearchSplit:
    """The search slices of a store; trusted side: holds gold, never sent to a candidate."""

    store: Path
    slices: list[tuple[str, str]]
    _arrays: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, store: str | Path, slices: Sequence[tuple[str, str]] | None = None) -> SearchSplit:
        s = Store(store)
        chosen = [(x.model, x.dataset) for x in s.slices] if slices is None else [tuple(x) for x in slices]
        for model, dataset in chosen:
            s.slice(model, dataset)  # fail early, naming the available slices
        return cls(store=Path(s.path), slices=chosen)

    def arrays(self, model: str, dataset: str) -> Any:
        key = (model, dataset)
        if key not in self._arrays:
            self._arrays[key] = load_replay(self.store, model, dataset)
        return self._arrays[key]


@dataclass
class Limits:
    timeout_s: float = 600.0  # wall clock for one candidate evaluation
    memory_mb: int = 4096  # address space per process
    workers: int = 2


@dataclass
class CandidateEvaluation:
    ok: bool
    stage: str  # "checks" | "load" | "screen" | "sweep" | "audit" | "monotone" | "done"
    reason: str | None
    class_name: str | None
    rows: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    audit: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    traces: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)  # seconds per stage (load, screen, sweep, audit)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("ok", "stage", "reason", "class_name", "rows", "curve",
                                              "audit", "checks", "traces", "seconds", "timings")}


class _Reject(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def pool_tuple(pool: BranchPool) -> tuple:
    return (pool.probes, pool.tokens, pool.finals, pool.interval, pool.scores, pool.confidences)


def export_pools(split: SearchSplit, slices: Sequence[tuple[str, str]], folder: Path) -> dict:
    """Write each slice's gold-free pools (answers as canonical strings) for the workers."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, (model, dataset) in enumerate(slices):
        arrays = split.arrays(model, dataset)
        pools = [pool_tuple(BranchPool.from_arrays(arrays, q)) for q in range(arrays.n_questions)]
        path = folder / f"slice{i}.pkl"
        with open(path, "wb") as f:
            pickle.dump({"mode": "slice", "pools": pools}, f, protocol=pickle.HIGHEST_PROTOCOL)
        paths[(model, dataset)] = str(path)
    return paths


def _check_schedules(name: str, betas: Sequence[float], info: Any) -> None:
    """Same keys for every β; numeric values monotone in β per key."""
    if not isinstance(info, dict) or not isinstance(info.get("schedules"), list):
        raise _Reject("load", "the worker sent no schedules")
    if info.get("schedule_kind") not in ("classmethod", "staticmethod"):
        raise _Reject("load", f"{name}.schedule must be a classmethod or staticmethod")
    rows = info["schedules"]
    if len(rows) != len(betas) or not all(isinstance(r, dict) for r in rows):
        raise _Reject("load", f"{name}.schedule did not return a dict for every β")
    keys = set(rows[0])
    for beta, row in zip(betas, rows, strict=True):
        if set(row) != keys:
            diff = sorted(set(row) ^ keys)
            raise _Reject("load", f"{name}.schedule({beta:g}) has different keys ({', '.join(diff)})")
    order = np.argsort(betas, kind="stable")
    for key in sorted(keys):
        values = [rows[i][key] for i in order]
        if all(isinstance(v, bool) for v in values) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            if any(v != values[0] for v in values):
                if all(isinstance(v, int | float) for v in values):
                    continue  # booleans that flip once are monotone too
                raise _Reject("load", f"{name}.schedule: non-numeric value {key!r} changes with β")
            continue
        diffs = np.diff(np.asarray(values, dtype=float))
        if (diffs < 0).any() and (diffs > 0).any():
            raise _Reject("load", f"{name}.schedule: {key!r} is not monotone in β "
                                  f"({', '.join(f'{v:g}' for v in values)} over β = "
                                  f"{', '.join(f'{betas[i]:g}' for i in order)})")


def _validate_run(data: Any, n_seeds: int, n_q: int) -> dict:
    """The worker's reply has the expected shape and types (it is untrusted data)."""
    keys = ("answers", "tokens", "seq", "opened", "depths", "pruned")
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) or len(data[k]) != n_seeds
                                         for k in keys):
        raise _Reject("sweep", "the worker sent malformed results")
    for k in keys:
        if any(not isinstance(row, list) or len(row) != n_q for row in data[k]):
            raise _Reject("sweep", "the worker sent malformed results")
    for row in data["answers"]:
        if any(a is not None and not isinstance(a, str) for a in row):
            raise _Reject("sweep", "the worker sent malformed answers")
    for k in ("tokens", "seq", "opened"):
        for row in data[k]:
            if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in row):
                raise _Reject("sweep", "the worker sent malformed token counts")
    for k in ("depths", "pruned"):
        for row in data[k]:
            for ep in row:
                if not isinstance(ep, list) or any(not isinstance(v, int) or isinstance(v, bool) for v in ep):
                    raise _Reject("sweep", "the worker sent malformed read states")
    if "events" in data and not _valid_events(data["events"], n_seeds, n_q):
        raise _Reject("audit", "the worker sent a malformed trace")
    return data


def _valid_events(events: Any, n_seeds: int, n_q: int) -> bool:
    if not isinstance(events, list) or len(events) != n_seeds:
        return False
    for row in events:
        if not isinstance(row, list) or len(row) != n_q:
            return False
        if any(not isinstance(ep, list) or any(not isinstance(e, dict) for e in ep) for ep in row):
            return False
    return True


def _run_calls(runner: Runner, calls: list[Call], stage: str, bar: Any = None,
               sizes: list[int] | None = None) -> list[Any]:
    out: list[Any] = [None] * len(calls)
    try:
        for i, result in runner.map(calls):
            out[i] = result
            if bar is not None and sizes is not None:
                bar.update(sizes[i])
    except TaskError as exc:
        raise _Reject(stage, _task_reason(exc)) from None
    return out


def _task_reason(exc: TaskError) -> str:
    where = f" ({exc.label})" if exc.label else ""
    if exc.kind == "timeout":
        return f"timed out{where}: the evaluation exceeded its wall-clock limit"
    if exc.kind == "memory":
        return f"out of memory{where}: {exc.message}"
    frame = ""
    lines = [ln.strip() for ln in exc.frames.splitlines() if ln.strip().startswith("File")]
    if lines:  # 'File ".../candidate.py", line 12, in solve' -> '[line 12, in solve]'
        frame = " [" + lines[-1].split('", ')[-1] + "]"
    return f"{exc.message}{where}{frame}"


def evaluate_candidate(code: str, split: SearchSplit, *, betas: Sequence[float], seeds: Sequence[int],
                       limits: Limits, scratch: Path, slices: list[tuple[str, str]] | None = None,
                       audit_episodes: int = 8, trace_episodes: int = 4,
                       progress: bool = False) -> CandidateEvaluation:
    """Run the whole pipeline on one candidate's source code (see the module docstring)."""
    start = time.monotonic()
    result = CandidateEvaluation(ok=False, stage="checks", reason=None, class_name=None)
    report = check_code(code)
    result.checks = report.to_dict()
    result.class_name = report.class_name
    if not report.ok:
        result.reason = report.reason
        result.seconds = time.monotonic() - start
        return result
    try:
        _pipeline(code, split, result, betas=list(betas), seeds=list(seeds), limits=limits,
                  scratch=Path(scratch), slices=list(slices or split.slices),
                  audit_episodes=audit_episodes, trace_episodes=trace_episodes, progress=progress,
                  start=start)
    except _Reject as rej:
        result.ok, result.stage, result.reason = False, rej.stage, rej.reason
    result.seconds = time.monotonic() - start
    return result


def _hidden(split: SearchSplit) -> list[Path]:
    """Directories the sandbox hides: the store and the data it was imported from."""
    hide = [split.store]
    try:
        manifest = json.loads((split.store / "manifest.json").read_text())
        for f in manifest.get("source", {}).get("files", []):
            p = (split.store / f["path"]).resolve() if not Path(f["path"]).is_absolute() else Path(f["path"])
            hide.append(p.parent.parent)  # <data>/<model>/<dataset>.json → <data>
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return list(dict.fromkeys(hide))


def _pipeline(code: str, split: SearchSplit, result: CandidateEvaluation, *, betas: list[float],
              seeds: list[int], limits: Limits, scratch: Path, slices: list[tuple[str, str]],
              audit_episodes: int, trace_episodes: int, progress: bool, start: float) -> None:
    if not betas or not seeds:
        raise _Reject("load", "no β values or no seeds to evaluate")
    name = result.class_name or ""
    scratch.mkdir(parents=True, exist_ok=True)
    code_path = scratch / "candidate.py"
    code_path.write_text(code)
    pools = export_pools(split, slices, scratch / "pools")
    deadline = start + limits.timeout_s
    hide = _hidden(split)
    cpu = limits.timeout_s * 1.5 + 10
    common = {"code_path": str(code_path), "class_name": name}
    with sandbox_runner(scratch, workers=limits.workers, deadline=deadline, memory_mb=limits.memory_mb,
                        cpu_seconds=cpu, hide=hide) as runner:
        # load: the interface and the β contract
        (info,) = _run_calls(runner, [Call(f"{WORKER}:inspect_candidate",
                                           {**common, "betas": betas}, label="load")], "load")
        _check_schedules(name, betas, info)
        result.timings["load"] = time.monotonic() - start
        # screen: a few questions at the extremes of β, to fail fast before the sweep
        screen_t = time.monotonic()
        screen_cpu: list[float] = []
        screen = [Call(f"{WORKER}:run_seeds", {**common, "pools_path": pools[s], "beta": b,
                                               "seeds": seeds[:1],
                                               "questions": list(range(min(SCREEN_QUESTIONS,
                                                                           split.arrays(*s).n_questions)))},
                       label=f"screen {s[0]}/{s[1]} β={b:g}")
                  for s in slices for b in sorted({min(betas), max(betas)})]
        for reply in _run_calls(runner, screen, "screen"):
            used = reply.get("cpu") if isinstance(reply, dict) else None
            screen_cpu.append(float(used) if isinstance(used, int | float) and used >= 0 else 0.0)
        n_screen = sum(len(c.kwargs["questions"]) for c in screen)
        _check_speed(sum(screen_cpu), n_screen, split, slices, betas, seeds, deadline, limits.workers)
        result.timings["screen"] = time.monotonic() - screen_t
        sweep_t = time.monotonic()
        # sweep
        calls, keys, sizes = [], [], []
        for s in slices:
            n_q = split.arrays(*s).n_questions
            for b in betas:
                for i in range(0, len(seeds), SEED_CHUNK):
                    chunk = seeds[i:i + SEED_CHUNK]
                    calls.append(Call(f"{WORKER}:run_seeds", {**common, "pools_path": pools[s], "beta": b,
                                                              "seeds": chunk},
                                      label=f"{s[0]}/{s[1]} β={b:g} seeds {chunk[0]}-{chunk[-1]}"))
                    keys.append((s, b, chunk))
                    sizes.append(n_q * len(chunk))
        bar = tqdm(total=sum(sizes), desc="sweep", unit="ep", disable=not progress, file=sys.stderr)
        with bar:
            replies = _run_calls(runner, calls, "sweep", bar, sizes)
        by_key: dict[Any, dict] = {}
        for (s, b, chunk), reply in zip(keys, replies, strict=True):
            n_q = split.arrays(*s).n_questions
            by_key[(s, b, chunk[0])] = _validate_run(reply, len(chunk), n_q)
    sweep = _grade(split, slices, betas, seeds, by_key)
    result.timings["sweep"] = time.monotonic() - sweep_t
    audit_t = time.monotonic()
    result.rows = [r["row"] for r in sweep.values()]
    result.curve = _curve(result.rows, betas)
    rng = random.Random(secrets.randbits(64))  # the candidate cannot predict what is audited
    runs = choose_runs(slices, betas, seeds, max(0, audit_episodes), rng)
    picks = _choose_traces(sweep, seeds, trace_episodes)
    result.audit, replays = _audit(split, sweep, runs, picks, seeds, rng, common, pools=pools,
                                   scratch=scratch, deadline=deadline, limits=limits, hide=hide, cpu=cpu)
    result.traces = _traces(sweep, picks, seeds, replays, split)
    result.timings["audit"] = time.monotonic() - audit_t
    if not result.audit["passed"]:
        raise _Reject("audit", result.audit["detail"])
    _check_monotone(result.rows, slices, betas)
    result.ok, result.stage, result.reason = True, "done", None


def _choose_traces(sweep: dict, seeds: list, n: int) -> list[tuple]:
    """Informative episodes: wrong answers first (the most expensive, spread over slices and β),
    then the most expensive right ones."""
    cands = []
    for (s, b), data in sweep.items():
        correct, tokens = data["correct"], data["tokens"]
        for si in range(correct.shape[0]):
            for q in range(correct.shape[1]):
                cands.append((bool(correct[si, q]), -int(tokens[si, q]), s, b, seeds[si], q))
    cands.sort(key=lambda c: (c[0], c[1]))
    picks, used = [], set()
    for c in cands:  # one per (slice, β) first, then anything
        if len(picks) >= n:
            break
        if (c[2], c[3]) not in used:
            used.add((c[2], c[3]))
            picks.append(c[2:])
    for c in cands:
        if len(picks) >= n:
            break
        if c[2:] not in picks:
            picks.append(c[2:])
    return picks


def _audit(split: SearchSplit, sweep: dict, runs: list, picks: list, seeds: list, rng: random.Random,
           common: dict, *, pools: dict, scratch: Path, deadline: float, limits: Limits, hide: list,
           cpu: float) -> tuple[dict, dict]:
    """Re-run the sampled runs on original and perturbed data, each batch in a fresh sandbox
    process; compare with each other and with the scored run. Returns (audit dict, replays).

    A run is re-run whole (a controller solves a seed's questions in order and may carry state
    across them), on the sweep's own pool file; its perturbed twin replaces the unread cells of
    up to :data:`AUDIT_QUESTIONS` questions drawn at random (every question on small slices),
    so the audit's cost stays bounded on a 10,000-question slice."""
    trace_runs = list(dict.fromkeys((s, b, seed) for s, b, seed, _ in picks if (s, b, seed) not in runs))
    traced_q: dict[tuple, set[int]] = {}
    for s, b, seed, q in picks:
        traced_q.setdefault((s, b, seed), set()).add(q)
    pool_cache: dict = {}
    donor_cache: dict = {}
    folder = scratch / "audit" / secrets.token_hex(4)  # the path says nothing about the data
    folder.mkdir(parents=True, exist_ok=True)
    batches: dict[str, list[Call]] = {"original": [], "perturbed": []}
    sampled: dict[tuple, list[int]] = {}
    for k, run in enumerate([*runs, *trace_runs]):
        s, b, seed = run
        arrays = split.arrays(*s)
        if s not in pool_cache:
            pool_cache[s] = PoolCache(arrays)
        lazy = pool_cache[s]
        n_q = arrays.n_questions
        chosen = []
        if run in runs:
            chosen = list(range(n_q)) if n_q <= AUDIT_QUESTIONS else sorted(rng.sample(range(n_q),
                                                                                        AUDIT_QUESTIONS))
            sampled[run] = chosen
            if s not in donor_cache:
                donor_cache[s] = donor_index_from_arrays(arrays)
            depths = sweep[(s, b)]["depths"][seeds.index(seed)]
            overlay = {q: perturbed_episode(lazy, q, branch_order("autotts", len(lazy[q]), seed), depths[q],
                                            rng, donor_cache[s]) for q in chosen}
            path = folder / f"run{k}.pkl"
            with open(path, "wb") as f:
                pickle.dump({"mode": "overlay", "base": pools[s], "episodes": overlay}, f,
                            protocol=pickle.HIGHEST_PROTOCOL)
            batches["perturbed"].append(Call(f"{WORKER}:run_seeds", {
                **common, "pools_path": str(path), "beta": b, "seeds": [seed], "trace": True,
                "trace_questions": chosen}, label=f"audit {s[0]}/{s[1]} β={b:g} seed {seed}"))
        traced = sorted(set(chosen) | traced_q.get(run, set()))
        batches["original"].append(Call(f"{WORKER}:run_seeds", {
            **common, "pools_path": pools[s], "beta": b, "seeds": [seed], "trace": True,
            "trace_questions": traced}, label=f"audit {s[0]}/{s[1]} β={b:g} seed {seed}"))
    # One call per batch; two calls on two new workers: each batch in its own fresh process.
    batch_calls = [Call(f"{WORKER}:run_batch", {"calls": [dict(c.kwargs) for c in batches[w]]},
                        label=f"audit ({len(batches[w])} runs)") for w in ("original", "perturbed")]
    replies: dict[str, list] = {}
    with sandbox_runner(scratch, workers=2, deadline=deadline, memory_mb=limits.memory_mb,
                        cpu_seconds=cpu, hide=hide) as runner:
        try:
            got = _run_calls(runner, batch_calls, "audit")
        except _Reject as rej:
            return {"passed": False, "episodes": 0, "detail": f"the audit's re-run failed: {rej.reason}"}, {}
    for w, reply in zip(("original", "perturbed"), got, strict=True):
        if not isinstance(reply, list) or len(reply) != len(batches[w]):
            return {"passed": False, "episodes": 0, "detail": "the audit's re-run sent malformed results"}, {}
        replies[w] = reply
    malformed = "the audit's re-run sent malformed results"
    episodes = 0
    replays = {}
    for k, run in enumerate([*runs, *trace_runs]):
        s, b, seed = run
        lazy = pool_cache[s]
        n_q = split.arrays(*s).n_questions
        try:
            orig = _validate_run(replies["original"][k], 1, n_q)
        except _Reject:
            return {"passed": False, "episodes": episodes, "detail": malformed}, {}
        replays[run] = orig
        scored = sweep[(s, b)]
        si = seeds.index(seed)
        qids = scored["question_ids"]
        where = f"{s[0]}/{s[1]} β={b:g} seed {seed}"
        for q in range(n_q):
            same = (orig["answers"][0][q] == scored["answers"][si][q]
                    and orig["depths"][0][q] == scored["depths"][si][q]
                    and orig["tokens"][0][q] == int(scored["tokens"][si, q]))
            if not same:
                return {"passed": False, "episodes": episodes, "detail": (
                    f"not reproducible: on {where}, question {int(qids[q])}, a re-run on the same data in a "
                    "fresh process read different branches or answered differently than the scored run "
                    "(a controller must be a deterministic function of its seed and what it read)")}, replays
        for q in sorted(set(sampled.get(run, [])) | traced_q.get(run, set())):
            episode = original_episode(lazy[q], branch_order("autotts", len(lazy[q]), seed))
            problem = replay_costs(episode, orig["events"][0][q])
            if problem:
                return {"passed": False, "episodes": episodes,
                        "detail": f"accounting: on {where}, question {int(qids[q])}: {problem}"}, replays
        if run not in runs:
            continue
        try:
            pert = _validate_run(replies["perturbed"][runs.index(run)], 1, n_q)
        except _Reject:
            return {"passed": False, "episodes": episodes, "detail": malformed}, replays
        chosen = set(sampled[run])
        for q in range(n_q):
            diff = None
            if q in chosen:
                episodes += 1
                diff = first_difference(orig["events"][0][q], pert["events"][0][q])
            a, p = orig["answers"][0][q], pert["answers"][0][q]
            if diff is None and a != p:
                diff = f"its answer changed from {a!r} to {p!r}"
            if diff is None and orig["depths"][0][q] != pert["depths"][0][q]:
                diff = "it read other branches"
            if diff is not None:
                return {"passed": False, "episodes": episodes, "detail": (
                    f"peeking: on {where}, question {int(qids[q])}, replacing the data it never read "
                    f"changed its behaviour ({diff}); a controller may depend only on what it has read "
                    "(a nondeterministic controller fails this too)")}, replays
    detail = (f"{len(runs)} runs ({episodes} episodes) re-run on original and perturbed data: "
              "same calls and answers")
    return {"passed": True, "episodes": episodes, "detail": detail}, replays


def _traces(sweep: dict, picks: list, seeds: list, replays: dict, split: SearchSplit) -> list[dict]:
    out = []
    for s, b, seed, q in picks:
        rep = replays.get((s, b, seed))
        if rep is None:
            continue
        data = sweep[(s, b)]
        si = seeds.index(seed)
        out.append({"model": s[0], "dataset": s[1], "beta": float(b), "seed": int(seed),
                    "question_id": int(data["question_ids"][q]), "answer": data["answers"][si][q],
                    "correct": bool(data["correct"][si, q]), "tokens": int(data["tokens"][si, q]),
                    "events": compact_events(rep["events"][0][q])})
    return out


def _check_speed(cpu: float, episodes: int, split: SearchSplit, slices: list, betas: list, seeds: list,
                 deadline: float, workers: int) -> None:
    """Reject before the sweep when the screen's pace (CPU seconds per episode, which a busy
    machine does not inflate) says the sweep cannot finish in time even on idle cores."""
    per_episode = cpu / max(1, episodes)
    total = sum(split.arrays(*s).n_questions for s in slices) * len(betas) * len(seeds)
    expected = per_episode * total / max(1, workers)
    left = deadline - time.monotonic()
    if expected > 3.0 * left and expected > 5.0:
        raise _Reject("screen", f"too slow: at the screen's pace ({per_episode * 1000:.1f} ms per episode) "
                                f"the sweep would take about {expected:.0f} s, {left:.0f} s are left")


def _grade(split: SearchSplit, slices: list, betas: list, seeds: list, by_key: dict) -> dict:
    """Grade every episode here, in the trusted process; one row per (slice, β)."""
    out = {}
    for s in slices:
        arrays = split.arrays(*s)
        grade = Grader(arrays)
        n_q = arrays.n_questions
        for b in betas:
            answers, tokens, seq, opened, depths = [], [], [], [], []
            for i in range(0, len(seeds), SEED_CHUNK):
                data = by_key[(s, b, seeds[i])]
                answers += data["answers"]
                tokens += data["tokens"]
                seq += data["seq"]
                opened += data["opened"]
                depths += data["depths"]
            correct = np.array([[grade(q, row[q]) for q in range(n_q)] for row in answers], dtype=bool)
            tok = np.asarray(tokens, dtype=np.int64)
            row = {"model": s[0], "dataset": s[1], "beta": float(b),
                   "accuracy": float(correct.mean() * 100.0), "avg_tokens": float(tok.mean()),
                   "avg_seq_tokens": float(np.mean(seq)), "avg_opened": float(np.mean(opened)),
                   "episodes": int(correct.size)}
            out[(s, b)] = {"row": row, "answers": answers, "correct": correct, "tokens": tok,
                           "depths": depths, "question_ids": arrays.question_ids}
    return out


def _curve(rows: list[dict], betas: list[float]) -> list[dict]:
    curve = []
    for b in sorted(set(betas)):
        sel = [r for r in rows if r["beta"] == b]
        curve.append({"beta": float(b), "accuracy": float(np.mean([r["accuracy"] for r in sel])),
                      "avg_tokens": float(np.mean([r["avg_tokens"] for r in sel])),
                      "avg_seq_tokens": float(np.mean([r["avg_seq_tokens"] for r in sel]))})
    return curve


def _check_monotone(rows: list[dict], slices: list, betas: list[float]) -> None:
    """Spending grows with β: per slice, mean tokens never fall by more than the tolerance."""
    rel, absolute = TOKEN_TOLERANCE
    for s in slices:
        sel = sorted((r for r in rows if (r["model"], r["dataset"]) == s), key=lambda r: r["beta"])
        for a, b in itertools.pairwise(sel):
            allowed = max(rel * a["avg_tokens"], absolute)
            if b["avg_tokens"] < a["avg_tokens"] - allowed:
                raise _Reject("monotone", f"spending falls as β grows on {s[0]}/{s[1]}: "
                                          f"{a['avg_tokens']:.0f} tokens at β={a['beta']:g}, "
                                          f"{b['avg_tokens']:.0f} at β={b['beta']:g} (tolerance "
                                          f"{rel:.0%} or {absolute:.0f} tokens)")

