"""The search loop (DESIGN §5): propose → screen → evaluate in the sandbox → audit → score →
critic → record, for R rounds; then re-score the finalists on fresh seeds and select.

Each round is committed by one line in ``history.jsonl`` (see :mod:`history`), so a run killed at
any moment resumes with ``resume=True``: completed rounds are kept, the interrupted round is redone
from its start (the proposers are deterministic functions of the history, the evaluations of the
code and the seeds), and no id or round is duplicated or lost.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import shutil
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ttsgym.search_agent.backends import CandidateBackend, open_backend
from ttsgym.search_agent.contract import CONTRACT
from ttsgym.search_agent.errors import LLMFatal
from ttsgym.search_agent.evaluation import CandidateEvaluation, Limits, SearchSplit
from ttsgym.search_agent.history import RECORD_KEYS, RunDir, candidate_id, write_json, write_text
from ttsgym.search_agent.objective import TOKEN_RANGE, objective
from ttsgym.search_agent.proposal import Proposal
from ttsgym.search_agent.rule_critic import rule_lesson
from ttsgym.search_agent.tools import DRAFT_BETAS, DRAFT_SEEDS, Tools

BETA_GRID = tuple(round(i / 10, 1) for i in range(11))
FINAL_SEED_START = 1000  # finalists are re-scored on seeds the screen never used
BASELINE_SPECS = (
    *(f"sc:n={n}" for n in (1, 2, 4, 8, 16, 32, 64)),
    "asc:max_samples=64,threshold=0.95",
    "esc:max_samples=64,window_size=8",
    "parallel_probe:num_chains=64,T=40,prune_patience=7,warm_up=15",
)


@dataclass
class SearchSettings:
    """Everything a run is started with; saved in run.json (the API key never is: only the name of
    the environment variable that holds it)."""

    store: str
    out: str
    split: list[str] | None = None  # "model:dataset" entries; None: every slice of the store
    rounds: int = 8
    proposer: str = "offline"
    seed: int = 0
    seeds: int = 20
    final_seeds: int = 100
    finalists: int = 3
    drafts: int = 4  # draft evaluations a proposer may ask for per round
    timeout: float = 600.0
    memory_mb: int = 4096
    workers: int = 2
    base_url: str | None = None
    model: str | None = None
    critic_model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    price: tuple[float, float] | None = None
    budget_usd: float | None = None
    llm_timeout: float = 300.0
    stream: bool = False
    concurrent: int = 1  # candidates evaluated at once (the proposer runs this far ahead)
    backend: str = "local"  # where candidates are evaluated: local | ray
    ray_address: str | None = None

    def saved(self) -> dict[str, Any]:
        out = asdict(self)
        out["store"] = str(Path(self.store).resolve())
        out.pop("out")
        out["price"] = list(self.price) if self.price else None
        return out


@dataclass
class _InFlight:
    record: dict[str, Any]
    handle: Any  # the backend's handle of the evaluation, None when nothing is evaluated
    start: float


@dataclass
class SearchOutcome:
    run_dir: Path
    rounds_done: int
    selected: dict[str, Any] | None
    stopped: str | None = None  # why rounds ended early (budget), None when all ran
    history: list[dict[str, Any]] = field(default_factory=list)


class Search:
    """One run: the split, the run directory, the proposer and critic, the tools."""

    def __init__(self, settings: SearchSettings, *, progress: bool = True) -> None:
        self.s = settings
        self.progress = progress
        slices = [_parse_slice(x) for x in settings.split] if settings.split else None
        self.split = SearchSplit.open(settings.store, slices)
        self.run = RunDir(settings.out)
        self.limits = Limits(timeout_s=settings.timeout, memory_mb=settings.memory_mb,
                             workers=settings.workers)
        if settings.concurrent < 1:
            raise ValueError("--concurrent must be at least 1")
        self.concurrent = settings.concurrent
        self.backend: CandidateBackend = open_backend(settings.backend, self.split,
                                                      concurrency=settings.concurrent,
                                                      address=settings.ray_address)
        self.history: list[dict[str, Any]] = []
        self.baselines: list[dict[str, Any]] = []
        self.proposer: Any = None
        self.critic: Any = None
        self.ledger: Any = None

    # -- set-up ----------------------------------------------------------------------------

    def start(self, *, resume: bool) -> None:
        self.history = self.run.start(self.s.saved(), resume=resume)
        self.baselines = self._baselines()
        self.tools = Tools(self.run, evaluate=self._draft, baselines=self.baselines, contract=CONTRACT,
                           drafts_per_round=self.s.drafts)
        self._make_proposer()

    def _make_proposer(self) -> None:
        if self.s.proposer == "offline":
            from ttsgym.search_agent.offline import OfflineProposer

            self.proposer = OfflineProposer(seed=self.s.seed)
            self.critic = None
            return
        if self.s.proposer != "llm":
            raise ValueError(f"unknown proposer {self.s.proposer!r}: choose llm or offline")
        from ttsgym.search_agent.llm_setup import open_llm

        if not self.s.base_url or not self.s.model:
            raise ValueError("--proposer llm needs --base-url and --model")
        side = open_llm(self.run.path, base_url=self.s.base_url, model=self.s.model,
                        critic_model=self.s.critic_model, api_key_env=self.s.api_key_env,
                        price=self.s.price, budget_usd=self.s.budget_usd, timeout_s=self.s.llm_timeout,
                        stream=self.s.stream)
        self.proposer, self.critic, self.ledger = side.proposer, side.critic, side.ledger

    def _baselines(self) -> list[dict[str, Any]]:
        """The baselines' rows on the search split, computed once per run (100 seeds)."""
        path = self.run.path / "baselines.json"
        if path.exists():
            return json.loads(path.read_text())
        from ttsgym.controllers.evaluate import evaluate

        rows = []
        for model, dataset in self.split.slices:
            table = evaluate(self.s.store, list(BASELINE_SPECS), models=[model], datasets=[dataset],
                             seeds=100, workers=self.s.workers, backend=self.s.backend,
                             ray_address=self.s.ray_address)
            rows.extend({k: r[k] for k in ("model", "dataset", "controller", "accuracy", "avg_tokens",
                                           "avg_seq_tokens")} for r in table.to_pylist())
        write_json(path, rows)
        return rows

    # -- the loop --------------------------------------------------------------------------

    def run_rounds(self) -> str | None:
        """Run the rounds still to do; the reason they stopped early, or None.

        Up to ``concurrent`` candidates are evaluated at once: round r is proposed as soon as
        round r - concurrent is committed, and it sees exactly the records of rounds before
        r - concurrent + 1 plus the proposals of the rounds in between (as ``pending`` stubs),
        whether they are still running or, after a resume, long done. Rounds are committed in
        order, so the history depends on the settings, never on the backend or on timing."""
        todo = range(len(self.history), self.s.rounds)
        bar = tqdm(todo, desc="search", unit="round", disable=not self.progress, file=sys.stderr,
                   initial=len(self.history), total=self.s.rounds)
        flight: deque[_InFlight] = deque()
        next_round = len(self.history)
        try:
            while next_round < self.s.rounds or flight:
                while next_round < self.s.rounds and len(flight) < self.concurrent:
                    item = self._propose(next_round, flight)
                    if isinstance(item, str):  # the proposer cannot go on (key, budget)
                        self._drain(flight, bar)
                        return item
                    flight.append(item)
                    next_round += 1
                stopped = self._finish(flight.popleft())
                bar.update(1)
                bar.set_postfix(best=_fmt(self.best_objective()), spent=f"${self.spent():.4f}")
                if stopped:
                    self._drain(flight, bar)
                    return stopped
        finally:
            bar.close()
        return None

    def _drain(self, flight: deque[_InFlight], bar: Any) -> None:
        """Commit the rounds already in flight when the run stops early (their evaluations are
        paid for; their lessons fall back to the rule critic if the LLM one is out of budget)."""
        while flight:
            self._finish(flight.popleft())
            bar.update(1)

    def _view(self, r: int, flight: Sequence[_InFlight]) -> list[dict[str, Any]]:
        """What the proposer of round r sees (see :meth:`run_rounds`)."""
        cut = max(0, r - self.concurrent + 1)
        between = {rec["round"]: rec for rec in self.history[cut:r]}
        between.update({f.record["round"]: f.record for f in flight if cut <= f.record["round"] < r})
        return self.history[:cut] + [pending_stub(between[k]) for k in range(cut, r)]

    def _propose(self, r: int, flight: Sequence[_InFlight]) -> _InFlight | str:
        cid = candidate_id(r)
        folder = self.run.candidate(cid)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        start = time.perf_counter()
        view = self._view(r, flight)
        try:
            proposal: Proposal = self.proposer.propose(r, list(view), self.tools.for_round())
        except LLMFatal as exc:  # no key, key refused, budget cap: stop, keep what is done
            shutil.rmtree(folder, ignore_errors=True)
            return str(exc)
        record = self._record(r, proposal)
        if proposal.prompt is not None:
            name = "prompt.json" if _is_json(proposal.prompt) else "prompt.txt"
            write_text(folder / name, proposal.prompt)
        if proposal.reply is not None:
            write_text(folder / "reply.txt", proposal.reply if isinstance(proposal.reply, str)
                       else repr(proposal.reply))
        handle = None
        if proposal.code is not None:
            write_text(folder / "code.py", proposal.code)
            twin = _duplicate_in(proposal.code, view)
            if twin:
                record.update(status="rejected", stage="duplicate",
                              reason=f"the same program as {twin} (up to comments and docstrings)")
            else:
                handle = self.backend.submit(proposal.code, betas=BETA_GRID, seeds=range(self.s.seeds),
                                             limits=self.limits, scratch=self.run.scratch() / cid)
        return _InFlight(record=record, handle=handle, start=start)

    def _finish(self, item: _InFlight) -> str | None:
        """Wait for a round's evaluation, write its files and lesson, commit it."""
        record = item.record
        folder = self.run.candidate(record["id"])
        evaluation = None
        if item.handle is not None:
            evaluation = self.backend.result(item.handle)
            self._store_evaluation(folder, evaluation)
            record.update(_verdict(evaluation))
        stopped = None
        try:
            lesson, cost = self._lesson(record, evaluation)
        except LLMFatal as exc:
            lesson, cost, stopped = None, 0.0, str(exc)
        record["lesson"] = lesson
        record["cost_usd"] = round(record["cost_usd"] + cost, 10)
        record["seconds"] = round(time.perf_counter() - item.start, 3)
        self.history.append(self.run.commit(record))
        shutil.rmtree(self.run.scratch() / record["id"], ignore_errors=True)
        return stopped

    def _record(self, r: int, p: Proposal) -> dict[str, Any]:
        return {
            "id": candidate_id(r), "round": r, "proposer": self.s.proposer,
            "status": "rejected",
            "reason": p.reason or ("the reply holds no code" if p.code is None else None),
            "stage": "proposal", "code": p.code, "class_name": None, "curve": [], "objective": None,
            "cost_usd": float(p.cost_usd), "tokens_in": int(p.tokens_in), "tokens_out": int(p.tokens_out),
            "lesson": None, "meta": p.meta or {}, "seconds": 0.0,
        }

    def _store_evaluation(self, folder: Path, ev: CandidateEvaluation) -> None:
        write_json(folder / "checks.json", ev.checks)
        write_json(folder / "audit.json", ev.audit)
        write_json(folder / "traces.json", ev.traces)
        write_json(folder / "metrics.json", {"rows": ev.rows, "curve": ev.curve, "seconds": ev.seconds,
                                             "stage": ev.stage, "reason": ev.reason,
                                             "objective": _objective(ev.rows) if ev.rows else None})

    def _lesson(self, record: dict[str, Any], ev: CandidateEvaluation | None) -> tuple[str, float]:
        info = {**record, "rows": ev.rows if ev else [], "traces": ev.traces if ev else [],
                "audit": ev.audit if ev else {}, "baselines": self.baselines}
        cost = 0.0
        if self.critic is not None and ev is not None and ev.rows:
            lesson, cost = self.critic.lesson(info, list(self.history))
            if lesson:
                return lesson, cost
        return rule_lesson(info, list(self.history)), cost

    def _draft(self, code: str) -> dict[str, Any]:
        ev = self.backend.result(self.backend.submit(
            code, betas=DRAFT_BETAS, seeds=range(DRAFT_SEEDS), limits=self.limits,
            scratch=self.run.scratch() / "draft", audit_episodes=2, trace_episodes=1))
        shutil.rmtree(self.run.scratch() / "draft", ignore_errors=True)
        return {"ok": ev.ok, "reason": ev.reason, "stage": ev.stage, "curve": ev.curve,
                "objective": _objective(ev.rows) if ev.ok else None}

    # -- selection -------------------------------------------------------------------------

    def best_objective(self) -> float | None:
        scores = [r["objective"] for r in self.history if r["status"] == "accepted"]
        return max(scores) if scores else None

    def spent(self) -> float:
        return self.ledger.spent() if self.ledger is not None else 0.0

    def select(self) -> dict[str, Any] | None:
        """Re-score the best few accepted candidates on fresh seeds; write selected/."""
        accepted = [r for r in self.history if r["status"] == "accepted"]
        if not accepted:
            return None
        accepted.sort(key=lambda r: (-r["objective"], r["round"]))
        finalists = accepted[: max(1, self.s.finalists)]
        path = self.run.path / "finalists.json"
        scores: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        seeds = range(FINAL_SEED_START, FINAL_SEED_START + self.s.final_seeds)
        scale = max(1.0, self.s.final_seeds / max(1, self.s.seeds))
        limits = Limits(timeout_s=self.limits.timeout_s * scale, memory_mb=self.limits.memory_mb,
                        workers=self.limits.workers)
        todo = [rec for rec in finalists if rec["id"] not in scores]
        handles = [self.backend.submit(rec["code"], betas=BETA_GRID, seeds=seeds, limits=limits,
                                       scratch=self.run.scratch() / f"final-{rec['id']}", audit_episodes=0,
                                       trace_episodes=0) for rec in todo]
        bar = tqdm(total=len(todo), desc="finalists", unit="cand", disable=not self.progress or not todo,
                   file=sys.stderr)
        with bar:
            for rec, handle in zip(todo, handles, strict=True):
                ev = self.backend.result(handle)
                scores[rec["id"]] = {"ok": ev.ok, "reason": ev.reason, "rows": ev.rows, "curve": ev.curve,
                                     "objective": _objective(ev.rows) if ev.ok else None,
                                     "screen_objective": rec["objective"]}
                write_json(path, scores)  # one finalist at a time: a kill keeps what is done
                bar.update(1)
        ok = [rec for rec in finalists if scores[rec["id"]]["ok"]]
        if not ok:
            return None
        best = max(ok, key=lambda rec: (scores[rec["id"]]["objective"], -rec["round"]))
        final = scores[best["id"]]
        selected = {
            "class": best["class_name"], "id": best["id"], "round": best["round"],
            "objective": final["objective"], "screen_objective": best["objective"],
            "objective_definition": OBJECTIVE_TEXT, "token_range": list(TOKEN_RANGE),
            "final_seeds": [seeds.start, seeds.stop - 1], "betas": list(BETA_GRID),
            "curve": final["curve"], "split": [f"{m}:{d}" for m, d in self.split.slices],
            "finalists": {k: v["objective"] for k, v in scores.items()},
            "leave_one_model_out": leave_one_model_out(self.run, self.history),
        }
        write_text(self.run.selected / "controller.py", _standalone(best))
        write_json(self.run.selected / "selected.json", selected)
        return selected


OBJECTIVE_TEXT = ("mean over the search slices of the mean, over log-uniform token budgets x in "
                  "[32k, 1024k], of the best accuracy (percent) among the β-curve's points with "
                  "avg_tokens <= x (0 where none)")


def _verdict(ev: CandidateEvaluation) -> dict[str, Any]:
    if not ev.ok:
        return {"status": "rejected", "stage": ev.stage, "reason": ev.reason or f"failed at {ev.stage}",
                "class_name": ev.class_name, "curve": _curve(ev.curve)}
    return {"status": "accepted", "stage": ev.stage, "reason": None, "class_name": ev.class_name,
            "curve": _curve(ev.curve), "objective": _objective(ev.rows)}


def _curve(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"beta": p["beta"], "accuracy": p["accuracy"], "avg_tokens": p["avg_tokens"],
             "avg_seq_tokens": p.get("avg_seq_tokens")} for p in points]


def slice_curves(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Evaluation rows grouped into one β-curve per ``model:dataset``."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        curves.setdefault(f"{r['model']}:{r['dataset']}", []).append(r)
    return curves


def _objective(rows: Sequence[dict[str, Any]], models: set[str] | None = None) -> float:
    curves = slice_curves([r for r in rows if models is None or r["model"] in models])
    return float(objective(curves))


def leave_one_model_out(run: RunDir, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Choose on all models but one, score on the held-out one: how much the choice overfits."""
    rows_of = {}
    for rec in history:
        path = run.candidate(rec["id"]) / "metrics.json"
        if rec["status"] == "accepted" and path.exists():
            rows_of[rec["id"]] = json.loads(path.read_text())["rows"]
    models = sorted({r["model"] for rows in rows_of.values() for r in rows})
    if len(models) < 2 or not rows_of:
        return {}
    out = {}
    for held in models:
        rest = set(models) - {held}
        chosen = max(rows_of, key=lambda c: (_objective(rows_of[c], rest), c))
        oracle = max(rows_of, key=lambda c: (_objective(rows_of[c], {held}), c))
        out[held] = {"chosen": chosen, "objective": _objective(rows_of[chosen], {held}),
                     "best": oracle, "best_objective": _objective(rows_of[oracle], {held})}
    return out


def pending_stub(rec: dict[str, Any]) -> dict[str, Any]:
    """A round as a proposer sees it while it is evaluated: its proposal, no verdict yet."""
    stub = dict.fromkeys(RECORD_KEYS)
    stub.update({k: rec.get(k) for k in ("id", "round", "proposer", "code", "meta")},
                status="pending", stage="pending", curve=[], cost_usd=0.0, tokens_in=0, tokens_out=0,
                seconds=0.0)
    return stub


def _duplicate_in(code: str, records: Sequence[dict[str, Any]]) -> str | None:
    """The id of an earlier program that is the same as ``code``, among those that were
    evaluated or are being evaluated."""
    key = code_key(code)
    for rec in records:
        if rec.get("code") and rec.get("stage") != "proposal" and code_key(rec["code"]) == key:
            return rec["id"]
    return None


def code_key(code: str) -> str:
    """A hash of the program's syntax tree without docstrings and comments: what "the same
    program" means for the duplicate screen."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return hashlib.sha256(code.encode()).hexdigest()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def _standalone(rec: dict[str, Any]) -> str:
    head = (f"# Selected by `ttsgym search`: candidate {rec['id']} (round {rec['round']}, "
            f"proposer {rec['proposer']}).\n"
            f"# Run it: ttsgym eval --store STORE --controller controller.py:{rec['class_name']} "
            "--beta 0,0.5,1\n")
    return head + rec["code"]


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _parse_slice(text: str) -> tuple[str, str]:
    model, sep, dataset = text.rpartition(":")
    if not sep or not model or not dataset:
        raise ValueError(f"--split entry {text!r}: write MODEL:DATASET")
    return model, dataset


def _fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}"


def run_search(settings: SearchSettings, *, resume: bool = False, progress: bool = True) -> SearchOutcome:
    """Run (or resume) a search and select its controller."""
    search = Search(settings, progress=progress)
    try:
        search.start(resume=resume)
        stopped = search.run_rounds()
        selected = search.select()
    finally:
        search.backend.close()
    shutil.rmtree(search.run.scratch(), ignore_errors=True)
    return SearchOutcome(run_dir=search.run.path, rounds_done=len(search.history), selected=selected,
                         stopped=stopped, history=search.history)


def default_proposer(base_url: str | None) -> str:
    """``llm`` when an endpoint is given (a local server may need no key), else ``offline``."""
    return "llm" if base_url else "offline"
