"""Run a controller live: the Question API over a real server, with the costs of replay.

:class:`LiveQuestion` has the public methods and properties of
:class:`ttsgym.env.question.Question` (AutoTTS aliases included), so any controller runs
unchanged. Branch index ``k`` of the episode is branch id ``order[k]`` in the chunk-seed
derivation, so a live episode regenerates the recorded branches of a collected store in the
order replay opens them, and is charged in the same units: Δ (+ κ) per interval read, the tail
max(0, T − Δ·L) for the finishing read, T for a full read, nothing for reading a finished branch.

Controllers are plain sequential Python, so the controller runs in its own thread and every
call waits on an asyncio loop that talks to the server. Independent branches still advance
together because the backend reads ahead (speculation): after each call it keeps the next
interval of every active branch in flight (``lookahead``), and the next unopened branches in
the way the controller last opened one (first interval, or the whole branch for full reads),
in a window that grows with each consecutive opening like file-system read-ahead (so a
controller that opens two branches wastes little, and SC@64 still runs 32 branches at once).
Chunks and probes are pure functions of (branch, chunk), so speculation never changes results;
prefetched but unread work is reported separately (``speculative_tokens`` and the real upstream
usage) and never charged. :meth:`LiveQuestion.extend_many` and friends are the explicit batch
form for controllers that want it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttsgym.collect.client import CollectClient, ProbeResult, RequestFailed, ServerError
from ttsgym.collect.collector import CollectSettings
from ttsgym.collect.live import AnswerClasses, LiveBranch, LiveGenerator, make_plan
from ttsgym.env.question import BranchPruned, BudgetExhausted, PoolExhausted
from ttsgym.env.voting import majority

_INF = float("inf")


class _NoTimeoutNotice(logging.Filter):
    """math-verify warns once that parse runs without its signal timeout, which is by design in
    controller threads (see store/answers.py); the notice would only confuse a live user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


logging.getLogger("math_verify.parser").addFilter(_NoTimeoutNotice())


class EpisodeCancelled(RuntimeError):
    """The episode was cancelled (its client went away, or it ran out of time)."""


class UpstreamFailed(RuntimeError):
    """The upstream server failed a request the controller needed; ``timeout`` tells 504 from 502."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True)
class Speculation:
    """How far the backend reads ahead of the controller (0 everywhere: strictly on demand)."""

    lookahead: int = 1          # intervals in flight per active branch
    max_window: int = 32        # unopened branches in flight at most
    first_window: int = 4       # chunk 0 of this many branches before the controller asks anything


class _Branch:
    """The controller-visible state of one opened branch."""

    __slots__ = ("answers", "confs", "depth", "final", "finished", "full", "index", "live", "n_probes",
                 "pruned", "spent")

    def __init__(self, index: int, live: LiveBranch) -> None:
        self.index = index
        self.live = live
        self.depth = 0
        self.spent = 0
        self.pruned = False
        self.finished = False
        self.full = False                      # opened by a full read: probes are fetched lazily
        self.answers: list[str] = []           # revealed probe answers (canonical), then the final
        self.confs: list[float | None] = []
        self.final: str | None = None
        self.n_probes = 0


class LiveQuestion:
    """One live episode over a question's branches; see the module docstring.

    Built by :class:`LiveSession`; the controller's thread calls it, ``loop`` serves it.
    """

    def __init__(self, gen: LiveGenerator, loop: asyncio.AbstractEventLoop, *, pool_size: int,
                 order: Sequence[int] | None = None, kappa: int = 0, budget: int | None = None,
                 checker: str = "math", speculation: Speculation | None = None, trace: bool = False) -> None:
        self._gen = gen
        self._loop = loop
        self._order = tuple(range(pool_size)) if order is None else tuple(order)
        if len(self._order) != pool_size:
            raise ValueError(f"order has {len(self._order)} branch ids for a pool of {pool_size}")
        self._size = pool_size
        self.interval = gen.plan.interval
        self._kappa = kappa
        self._budget = _INF if budget is None else budget
        self._classes = AnswerClasses(checker)
        self._spec = speculation or Speculation()
        self._b: list[_Branch] = []
        self._total = 0
        self._seq = 0
        self._probes_read = 0
        self._lazy_probes = 0
        self._last_open: str | None = None
        self._streak = 0
        self._cancelled = threading.Event()
        self._failure: BaseException | None = None
        self._waiting = 0.0
        self.events: list[dict[str, Any]] | None = [] if trace else None
        self._t0 = time.perf_counter()
        self._logged = 0
        self._schedule([("chunk", b, 0) for b in self._order[: self._spec.first_window]])

    # -- the bridge to the event loop -----------------------------------------------------

    def _schedule(self, wants: list[tuple[str, int, int]]) -> None:
        if wants and not self._cancelled.is_set():
            self._loop.call_soon_threadsafe(self._start, wants)

    def _start(self, wants: list[tuple[str, int, int]]) -> None:
        """On the loop: make sure each wanted chunk / probe / full read is in flight."""
        if self._gen.closed:
            return
        for kind, b, c in wants:
            branch = self._gen.branch(b)
            if kind == "chunk":
                branch.chunk(c)
            elif kind == "read":
                branch.chunk(c)
                branch.probe(c)
            else:  # "full"
                branch.prefetch_full()

    def _wait(self, coro: Any) -> Any:
        if self._failure is not None:
            raise self._failure
        if self._cancelled.is_set():
            coro.close()
            raise EpisodeCancelled("the episode was cancelled")
        start = time.perf_counter()
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            self._failure = EpisodeCancelled("the episode was cancelled")
            raise self._failure from None
        except RequestFailed as exc:
            self._failure = UpstreamFailed(str(exc), timeout="Timeout" in str(exc))
            raise self._failure from None
        except ServerError as exc:
            self._failure = UpstreamFailed(str(exc))
            raise self._failure from None
        finally:
            self._waiting += time.perf_counter() - start

    def cancel(self) -> None:
        """Make every current and later call raise :class:`EpisodeCancelled` (any thread)."""
        self._cancelled.set()

    def _prefetch(self, extra: list[tuple[str, int, int]] = ()) -> None:
        """Read ahead: the next interval(s) of active branches, and the next unopened branches."""
        wants = list(extra)
        spec = self._spec
        if spec.lookahead > 0:
            for br in self._b:
                if not (br.pruned or br.finished or br.full):
                    b = br.live.branch_id
                    wants += [("read", b, c) for c in range(br.depth, br.depth + spec.lookahead)]
        if self._last_open is not None and spec.max_window > 0:
            window = min(spec.max_window, self._streak)
            kind = "full" if self._last_open == "full" else "read"
            wants += [(kind, b, 0) for b in self._order[len(self._b) : len(self._b) + window]]
        self._schedule(wants)

    def _opened(self, kind: str) -> None:
        self._streak = self._streak + 1 if self._last_open == kind else 1
        self._last_open = kind

    # -- reading ---------------------------------------------------------------------------

    def _fetch(self, live: LiveBranch, c: int) -> tuple[Any, ProbeResult | None]:
        self._prefetch([("read", live.branch_id, c + k) for k in range(1, self._spec.lookahead + 1)])
        return self._wait(live.read(c))

    def _cost_of(self, br: _Branch, info: Any, probe: ProbeResult | None) -> tuple[int, bool]:
        if info is not None and probe is not None:
            return self.interval + self._kappa, False
        # The finishing read: what is left of the branch after its probed intervals (0 when the
        # branch ended exactly on a probe), as replay charges max(0, T − Δ·L).
        tokens = len(br.live.ids)
        return max(0, tokens - self.interval * br.depth), True

    def _charge(self, br: _Branch, cost: int) -> None:
        total = self._total + cost
        if total > self._budget:
            raise BudgetExhausted(f"reading branch {br.index} costs {cost} tokens, {self.tokens_left} left")
        self._total = total
        br.spent += cost
        if br.spent > self._seq:
            self._seq = br.spent

    def _read(self, br: _Branch, *, opening: bool) -> tuple[str, bool]:
        info, probe = self._fetch(br.live, br.depth)
        cost, finished = self._cost_of(br, info, probe)
        if opening:
            self._b.append(br)
        try:
            self._charge(br, cost)
        except BudgetExhausted:
            if opening:
                self._b.pop()
            raise
        br.depth += 1
        if finished:
            br.finished = True
            br.n_probes = br.depth - 1
            br.final = self._classes(br.live.final_answer())
            br.answers.append(br.final)
            return br.final, True
        self._probes_read += 1
        answer = self._classes(probe.answer)
        br.answers.append(answer)
        br.confs.append(probe.confidence)
        return answer, False

    def open(self) -> tuple[str, int, bool]:
        """Open the next branch and read its first interval: ``(answer, index, finished)``."""
        k = len(self._b)
        if k >= self._size:
            raise PoolExhausted(f"all {self._size} branches of this question are open already")
        self._opened("open")
        br = _Branch(k, self._gen_branch(self._order[k]))
        answer, finished = self._read(br, opening=True)
        self._log("open", br, answer, finished)
        self._prefetch()
        return answer, k, finished

    def extend(self, i: int) -> tuple[str, bool]:
        """Read the next interval of open branch ``i``: ``(answer, finished)``."""
        if i < 0 or i >= len(self._b):
            raise IndexError(f"branch {i} is not open ({len(self._b)} branches are)")
        br = self._b[i]
        if br.pruned:
            raise BranchPruned(f"branch {i} was pruned")
        if br.finished:
            return br.final, True
        answer, finished = self._read(br, opening=False)
        self._log("extend", br, answer, finished)
        self._prefetch()
        return answer, finished

    def open_full(self) -> str:
        """Open the next branch and read it to its end at once (cost T); its final answer."""
        k = len(self._b)
        if k >= self._size:
            raise PoolExhausted(f"all {self._size} branches of this question are open already")
        self._opened("full")
        br = _Branch(k, self._gen_branch(self._order[k]))
        self._prefetch([("full", br.live.branch_id, 0)])
        infos = self._wait(br.live.to_end())
        cost = len(br.live.ids)
        if self._total + cost > self._budget:
            raise BudgetExhausted(f"a full read costs {cost} tokens, {self.tokens_left} left")
        self._b.append(br)
        self._charge(br, cost)
        br.full = br.finished = True
        br.n_probes = sum(1 for i in infos if i.probed)
        br.depth = br.n_probes + 1
        br.final = self._classes(br.live.final_answer())
        self._log("open_full", br, br.final, True)
        self._prefetch()
        return br.final

    def prune(self, i: int) -> None:
        """Mark open branch ``i`` inactive; it keeps its depth and revealed answers."""
        br = self._b[self._check(i)]
        br.pruned = True
        self._loop.call_soon_threadsafe(br.live.cancel)
        self._log("prune", br, None, None)

    # -- batches: the same results as the calls one by one, requested together -------------

    def extend_many(self, indices: Sequence[int]) -> list[tuple[str, bool]]:
        """``[extend(i) for i in indices]``, with every read sent before the first is awaited."""
        self._schedule([("read", self._b[i].live.branch_id, self._b[i].depth) for i in indices
                        if 0 <= i < len(self._b) and not (self._b[i].pruned or self._b[i].finished)])
        return [self.extend(i) for i in indices]

    def open_many(self, n: int) -> list[tuple[str, int, bool]]:
        """``[open() for _ in range(n)]``, the n first intervals requested together."""
        k = len(self._b)
        self._schedule([("read", b, 0) for b in self._order[k : k + n]])
        return [self.open() for _ in range(n)]

    def open_full_many(self, n: int) -> list[str]:
        """``[open_full() for _ in range(n)]``, the n branches generated together."""
        k = len(self._b)
        self._schedule([("full", b, 0) for b in self._order[k : k + n]])
        return [self.open_full() for _ in range(n)]

    # -- state -----------------------------------------------------------------------------

    def _gen_branch(self, b: int) -> LiveBranch:
        return self._wait(_branch_of(self._gen, b))

    @property
    def n_opened(self) -> int:
        return len(self._b)

    @property
    def pool_size(self) -> int:
        """How many branches the episode may open."""
        return self._size

    @property
    def kappa(self) -> int:
        return self._kappa

    @property
    def budget(self) -> float:
        return self._budget

    @property
    def total_tokens(self) -> int:
        return self._total

    @property
    def seq_tokens(self) -> int:
        return self._seq

    @property
    def tokens_left(self) -> float:
        return self._budget - self._total

    def depth(self, i: int) -> int:
        return self._b[self._check(i)].depth

    def depths(self) -> list[int]:
        return [br.depth for br in self._b]

    def tokens_of(self, i: int) -> int:
        return self._b[self._check(i)].spent

    def is_finished(self, i: int) -> bool:
        return self._b[self._check(i)].finished

    def is_pruned(self, i: int) -> bool:
        return self._b[self._check(i)].pruned

    def active(self) -> list[int]:
        return [br.index for br in self._b if not (br.pruned or br.finished)]

    def _fill_probes(self, br: _Branch) -> None:
        """A full read's probe answers, fetched only when the controller asks to see them."""
        if br.full and len(br.answers) < br.n_probes + 1:
            probes = self._wait(br.live.all_probes())
            self._lazy_probes += len(probes)
            br.answers = [self._classes(p.answer) for p in probes] + [br.final]
            br.confs = [p.confidence for p in probes]

    def answers(self, i: int) -> list[str]:
        br = self._b[self._check(i)]
        self._fill_probes(br)
        return list(br.answers)

    def latest(self, i: int) -> str | None:
        br = self._b[self._check(i)]
        if br.finished:
            return br.final
        return br.answers[-1] if br.answers else None

    def signals(self, i: int) -> list[tuple[float | None, float | None]]:
        """``(score, confidence)`` of each revealed probe (no reward model live: score is None)."""
        br = self._b[self._check(i)]
        self._fill_probes(br)
        return [(None, c) for c in br.confs]

    def majority(self) -> str | None:
        return majority(self.latest(br.index) for br in self._b if not br.pruned)

    def trace(self, event: str, **data: Any) -> None:
        if self.events is not None:
            self.events.append({"op": "event", "event": event, **data})

    def _log(self, op: str, br: _Branch, answer: str | None, finished: bool | None) -> None:
        if self.events is not None:
            event = {"op": op, "branch": br.index, "branch_id": br.live.branch_id,
                     "t": round(time.perf_counter() - self._t0, 4), "cost": self._total - self._logged,
                     "total": self._total}
            self._logged = self._total
            if answer is not None:
                event.update(answer=answer, finished=finished)
            self.events.append(event)

    def _check(self, i: int) -> int:
        if i < 0 or i >= len(self._b):
            raise IndexError(f"branch {i} is not open ({len(self._b)} branches are)")
        return i

    # -- AutoTTS aliases -------------------------------------------------------------------

    probe_new = open
    probe_more = extend
    get_new_branch_final_answer = open_full

    def get_seq_and_total_tokens(self) -> tuple[int, int]:
        return self._seq, self._total

    def get_cost_per_branch_active(self) -> list[int]:
        return [br.spent for br in self._b]

    # -- accounting ------------------------------------------------------------------------

    @property
    def probes_read(self) -> int:
        """Probe answers the controller saw (interval reads; lazily fetched full-read probes excluded)."""
        return self._probes_read

    @property
    def wait_seconds(self) -> float:
        return self._waiting


async def _branch_of(gen: LiveGenerator, b: int) -> LiveBranch:
    return gen.branch(b)


@dataclass
class LiveResult:
    """One live episode: the answer, replay-unit costs, and what really went upstream."""

    answer: str | None
    stop_reason: str
    tokens: int
    seq_tokens: int
    opened: int
    probes_read: int
    upstream: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    speculative_tokens: int
    speculative_probes: int
    seconds: float
    wait_seconds: float
    events: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "events"}


class LiveSession:
    """A client of one upstream server plus the branch plan, shared by many episodes.

    Use it from async code (``await session.solve(...)``; the controller runs in a worker thread)
    or from sync code through :class:`LiveRunner`.
    """

    def __init__(self, client: CollectClient, settings: CollectSettings, *, pool_size: int,
                 speculation: Speculation | None = None) -> None:
        self.client = client
        self.settings = settings
        self.pool_size = pool_size
        self.speculation = speculation or Speculation()
        self.plan = None
        self._prompts: OrderedDict[str, tuple[list[int], str]] = OrderedDict()

    async def prepare(self) -> None:
        """Check the server and tokenise the probe suffixes once."""
        await self.client.check()
        self.plan = await make_plan(self.client, self.settings)
        checker = self.settings.checker
        # Import math-verify (about a second) now rather than inside the first episode.
        await asyncio.get_running_loop().run_in_executor(None, lambda: AnswerClasses(checker)("1/2"))

    async def _generator(self, question: str) -> LiveGenerator:
        """A generator for the question; its chat-prompt ids are cached (a server asks often)."""
        cached = self._prompts.get(question)
        if cached is None:
            gen = await LiveGenerator.start(self.client, self.plan, self.settings, question)
            self._prompts[question] = (gen.prompt_ids, gen.prompt_text)
            while len(self._prompts) > 1024:
                self._prompts.popitem(last=False)
            return gen
        self._prompts.move_to_end(question)
        return LiveGenerator(self.client, self.plan, question, cached[0], cached[1])

    async def solve(self, make_controller: Callable[[], Any], question: str, *,
                    order: Sequence[int] | None = None, kappa: int = 0, budget: int | None = None,
                    trace: bool = False, executor: concurrent.futures.Executor | None = None,
                    on_question: Callable[[LiveQuestion], None] | None = None) -> LiveResult:
        """Run one episode: the controller's ``solve`` in a worker thread, its reads on this loop.

        Cancelling this coroutine cancels the episode's upstream work and makes the controller's
        next (or current) call raise :class:`EpisodeCancelled`.
        """
        if self.plan is None:
            await self.prepare()
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        gen = await self._generator(question)
        q = LiveQuestion(gen, loop, pool_size=self.pool_size, order=order, kappa=kappa, budget=budget,
                         checker=self.settings.checker, speculation=self.speculation, trace=trace)
        if on_question is not None:
            on_question(q)

        def work() -> tuple[Any, str]:
            controller = make_controller()
            try:
                return controller.solve(q), "answered"
            except BudgetExhausted:
                return q.majority(), "budget"

        try:
            answer, reason = await loop.run_in_executor(executor, work)
        except BaseException:
            q.cancel()
            await gen.close()
            raise
        finally:
            if not gen.closed:
                await gen.close()
        if q._failure is not None:  # the controller swallowed an upstream failure or cancellation
            raise q._failure
        seconds = time.perf_counter() - start
        spend = gen.spend
        return LiveResult(
            answer=answer if isinstance(answer, str) else None,
            stop_reason=reason if isinstance(answer, str) else "no_answer",
            tokens=q.total_tokens, seq_tokens=q.seq_tokens, opened=q.n_opened, probes_read=q.probes_read,
            upstream=spend.as_dict(), prompt_tokens=spend.prompt_tokens,
            completion_tokens=spend.completion_tokens,
            speculative_tokens=max(0, spend.gen.completion_tokens - _consumed(q)),
            speculative_probes=max(0, spend.probes - q.probes_read - q._lazy_probes),
            seconds=seconds, wait_seconds=q.wait_seconds, events=q.events or [])


def _consumed(q: LiveQuestion) -> int:
    """Generated tokens the controller read (κ excluded): the branch tokens behind its total."""
    return sum(br.spent if br.full else br.spent - q.kappa * len(br.confs) for br in q._b)


class LiveRunner:
    """Synchronous front of :class:`LiveSession`: an event loop in a background thread."""

    def __init__(self, base_url: str, settings: CollectSettings, *, pool_size: int,
                 api_key: str | None = None, speculation: Speculation | None = None,
                 max_connections: int = 64) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ttsgym-live", daemon=True)
        self._thread.start()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="ttsgym-ctl")

        async def make() -> LiveSession:
            client = CollectClient(base_url, settings.model, api_key=api_key, max_connections=max_connections)
            return LiveSession(client, settings, pool_size=pool_size, speculation=speculation)

        self.session: LiveSession = self._call(make())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def solve(self, make_controller: Callable[[], Any], question: str, **kwargs: Any) -> LiveResult:
        """One live episode (see :meth:`LiveSession.solve`)."""
        return self._call(self.session.solve(make_controller, question, executor=self._pool, **kwargs))

    def close(self) -> None:
        try:
            self._call(self.session.client.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> LiveRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
