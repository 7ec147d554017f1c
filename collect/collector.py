"""``collect``: sample N branches per question from one or more servers, probe every Δ tokens,
and keep each finished question on disk at once, so a rerun only does what is missing.

Concurrency is bounded by branches in flight (each branch holds one slot from its first chunk to
its last, so the earliest questions finish first and are written early). Branch b of question q
sticks to server (q·N + b) mod S, which keeps its prefix in that server's cache. A question
whose requests keep failing is recorded as failed with the reason; the run goes on, and a rerun
retries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ttsgym.collect.branch import BranchPlan, BranchResult, collect_branch
from ttsgym.collect.client import (
    DEFAULT_PROBE_TEMPLATE,
    CollectClient,
    RequestFailed,
    RetryPolicy,
    Sampling,
    ServerError,
    ServerInfo,
    Usage,
    probe_suffix,
)
from ttsgym.collect.questions import QuestionRow, questions_digest
from ttsgym.collect.seeds import SEED_SCHEME
from ttsgym.collect.workdir import WorkDir

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class CollectSettings:
    """Everything that decides the collected data; a rerun must give the same values."""

    model: str
    dataset: str
    branches: int
    interval: int
    max_tokens: int
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int | None = None
    seed: int = 0
    probe_template: str = DEFAULT_PROBE_TEMPLATE
    probe_tokens: int = 16
    instruction: str = DEFAULT_INSTRUCTION
    checker: str = "math"
    prm_model: str | None = None

    def __post_init__(self) -> None:
        for name in ("branches", "interval", "max_tokens", "probe_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")

    def message(self, question: str) -> list[dict[str, str]]:
        content = f"{question}\n\n{self.instruction}" if self.instruction else question
        return [{"role": "user", "content": content}]

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.top_k)


@dataclass
class RunOptions:
    """How to run it (free to change between reruns)."""

    base_urls: Sequence[str]
    concurrency: int = 32
    prm_url: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    api_key: str | None = None
    progress: bool = False
    resume: bool = False


@dataclass
class Totals:
    """Token and time accounting of one run (what this process did, not earlier runs)."""

    gen: Usage = field(default_factory=Usage)
    probe: Usage = field(default_factory=Usage)
    questions_done: int = 0
    questions_failed: int = 0
    branches_done: int = 0
    branch_tokens: int = 0
    probes: int = 0
    wall_seconds: float = 0.0

    def add_branch(self, b: BranchResult) -> None:
        self.gen.add(b.gen)
        self.probe.add(b.probe_usage)
        self.branches_done += 1
        self.branch_tokens += len(b.token_ids)
        self.probes += len(b.probes)

    def summary(self) -> dict[str, Any]:
        gen, probe = self.gen, self.probe
        gen_tokens = gen.completion_tokens

        def ratio(a: float, b: float) -> float | None:
            return round(a / b, 4) if b else None

        return {
            "questions_done": self.questions_done, "questions_failed": self.questions_failed,
            "branches": self.branches_done, "branch_tokens": self.branch_tokens, "probes": self.probes,
            "wall_seconds": round(self.wall_seconds, 3),
            "tokens_per_second": ratio(gen_tokens, self.wall_seconds),
            "generation": gen.as_dict(), "probe": probe.as_dict(),
            "probe_overhead": {
                "generated_tokens": ratio(probe.completion_tokens, gen_tokens),
                "prompt_tokens": ratio(probe.prompt_tokens, gen.prompt_tokens),
                "uncached_prompt_tokens": (
                    ratio(probe.prompt_tokens - probe.cached_tokens, gen.prompt_tokens - gen.cached_tokens)
                    if probe.cached_tokens is not None and gen.cached_tokens is not None else None),
                "request_seconds": ratio(probe.seconds, gen.seconds),
            },
        }


def settings_record(settings: CollectSettings, questions: list[QuestionRow], questions_file: str) -> dict:
    """What the work directory pins: the settings, the question set and the seed scheme."""
    return {**asdict(settings), "questions_file": Path(questions_file).name,
            "questions_sha256": questions_digest(questions), "n_questions": len(questions),
            "seed_scheme": SEED_SCHEME}


async def _suffix_ids(client: CollectClient, template: str) -> tuple[list[int], list[int]]:
    return (await client.tokenize_text(probe_suffix(template, True)),
            await client.tokenize_text(probe_suffix(template, False)))


class Collector:
    """One collection run; :meth:`run` does the pending questions and rebuilds the store."""

    def __init__(self, questions: list[QuestionRow], settings: CollectSettings, options: RunOptions,
                 out: str | Path, questions_file: str = "questions") -> None:
        if not options.base_urls:
            raise ValueError("give at least one --base-url")
        if options.concurrency <= 0:
            raise ValueError(f"--concurrency must be positive, got {options.concurrency}")
        if settings.prm_model and not options.prm_url:
            raise ValueError("--prm-model needs --prm-url")
        self.questions = questions
        self.settings = settings
        self.options = options
        self.work = WorkDir(out)
        self.record = settings_record(settings, questions, questions_file)
        self.totals = Totals()
        self.servers: list[ServerInfo] = []

    async def run(self) -> dict[str, Any]:
        """Collect what is missing, then (re)build the store when anything changed."""
        from ttsgym.collect.build import build_store, store_is_current

        start = time.perf_counter()
        self.work.open(self.record, resume=self.options.resume)
        done = self.work.done_ids()
        pending = [q for q in self.questions if q.question_id not in done]
        if pending:
            await self._collect(pending)
        self.totals.wall_seconds = time.perf_counter() - start
        summary = self.totals.summary()
        failed = self.work.failed()
        summary["failed"] = {str(k): v for k, v in failed.items()}
        summary["questions_complete"] = len(self.work.done_ids())
        summary["questions_total"] = len(self.questions)
        if not store_is_current(self.work):
            build_store(self.work, self.questions, self.settings, self.record,
                        servers=[asdict(s) for s in self.servers], run_summary=summary)
        return summary

    async def _collect(self, pending: list[QuestionRow]) -> None:
        retry = self.options.retry
        clients = [CollectClient(url, self.settings.model, retry=retry, api_key=self.options.api_key,
                                 max_connections=self.options.concurrency)
                   for url in self.options.base_urls]
        scorer = None
        if self.settings.prm_model:
            scorer = CollectClient(self.options.prm_url, self.settings.prm_model, retry=retry,
                                   api_key=self.options.api_key, max_connections=self.options.concurrency)
        try:
            self.servers = [await c.check() for c in clients]
            suffixes = [await _suffix_ids(c, self.settings.probe_template) for c in clients]
            if any(s != suffixes[0] for s in suffixes):
                raise ServerError("the servers tokenize the probe template differently; "
                                  "they must serve the same model and tokenizer")
            plan = BranchPlan(self.settings.interval, self.settings.max_tokens, self.settings.sampling,
                              self.settings.seed, self.settings.probe_template, self.settings.probe_tokens,
                              suffixes[0][0], suffixes[0][1])
            await self._run_questions(pending, clients, scorer, plan)
        finally:
            for c in clients:
                await c.aclose()
            if scorer is not None:
                await scorer.aclose()

    async def _run_questions(self, pending: list[QuestionRow], clients: list[CollectClient],
                             scorer: CollectClient | None, plan: BranchPlan) -> None:
        from tqdm import tqdm

        n_branches = self.settings.branches
        slots = asyncio.Semaphore(self.options.concurrency)
        window = max(1, -(-self.options.concurrency // n_branches)) + 1
        queue: asyncio.Queue[QuestionRow] = asyncio.Queue()
        for q in pending:
            queue.put_nowait(q)
        bar = tqdm(total=len(pending), desc="collect", unit="q", disable=not self.options.progress,
                   file=sys.stderr, dynamic_ncols=True)
        t0 = time.perf_counter()

        def show() -> None:
            t = self.totals
            elapsed = max(time.perf_counter() - t0, 1e-9)
            over = t.probe.completion_tokens / t.gen.completion_tokens if t.gen.completion_tokens else 0.0
            bar.set_postfix(branches=t.branches_done, failed=t.questions_failed,
                            tok_s=f"{t.gen.completion_tokens / elapsed:.0f}", probe_over=f"{over:.1%}",
                            refresh=False)

        async def one_question(q: QuestionRow) -> None:
            first = clients[(q.question_id * n_branches) % len(clients)]
            try:
                prompt_ids = await first.tokenize(self.settings.message(q.question))
                prompt_text = await first.detokenize(prompt_ids)

                async def one_branch(b: int) -> BranchResult:
                    client = clients[(q.question_id * n_branches + b) % len(clients)]
                    async with slots:
                        return await collect_branch(client, plan, q.question, b, prompt_ids, prompt_text,
                                                    scorer)

                tasks = [asyncio.ensure_future(one_branch(b)) for b in range(n_branches)]
                try:
                    results = await asyncio.gather(*tasks)
                except BaseException:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise
            except (RequestFailed, ServerError) as exc:
                self.work.write_failed(q.question_id, str(exc))
                self.totals.questions_failed += 1
                return
            record = {"question_id": q.question_id, "prompt_token_ids": prompt_ids,
                      "prompt_text": prompt_text, "branches": [r.record() for r in results]}
            self.work.write_done(q.question_id, record)
            for r in results:
                self.totals.add_branch(r)
            self.totals.questions_done += 1

        async def worker() -> None:
            while True:
                try:
                    q = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await one_question(q)
                bar.update(1)
                show()

        try:
            workers = [asyncio.ensure_future(worker()) for _ in range(min(window, len(pending)))]
            try:
                await asyncio.gather(*workers)
            except BaseException:
                for w in workers:
                    w.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*workers, return_exceptions=True)
                raise
        finally:
            bar.close()


def collect(questions: list[QuestionRow], settings: CollectSettings, options: RunOptions,
            out: str | Path, questions_file: str = "questions") -> dict[str, Any]:
    """Synchronous entry point (the CLI's): returns the run summary."""
    return asyncio.run(Collector(questions, settings, options, out, questions_file).run())
