"""Live branch generation: the chunks and probes of one question's branches, requested on demand
(or ahead of demand) through the collection client, each at most once.

A branch is regenerated exactly as :func:`ttsgym.collect.branch.collect_branch` records it: chunk
``c`` of branch ``b`` is one Δ-token request after prompt + branch so far, seeded with
``chunk_seed(store seed, question, b, c)``; after a full chunk the prefix is probed with the same
suffix ids, greedy decode and brace matching. Because every chunk and probe is a pure function of
(branch, chunk), asking for one early (speculation) never changes what is returned later, so the
Question API on top (``ttsgym.controllers.live``) may prefetch freely and charge only what the
controller reads.

Everything here runs on one asyncio event loop; nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ttsgym.collect.answers import answer_classes, last_boxed
from ttsgym.collect.branch import BranchPlan
from ttsgym.collect.client import CollectClient, ProbeResult, Usage, probe_suffix, think_open
from ttsgym.collect.collector import CollectSettings
from ttsgym.collect.seeds import chunk_seed
from ttsgym.store.schema import ERR

# The CollectSettings fields that decide what a branch is (the rest only label the store).
GENERATION_FIELDS = ("interval", "max_tokens", "temperature", "top_p", "top_k", "seed", "probe_template",
                     "probe_tokens", "instruction", "checker")


def settings_from_store(store: str | Path, model: str | None = None) -> tuple[CollectSettings, int]:
    """The generation settings a collected store was made with, and its branches per question, so a
    live run regenerates the same branches (``--like STORE``). The model name may be overridden."""
    path = Path(store) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (is {store} a store?)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    coll = manifest.get("collection")
    if not isinstance(coll, dict) or "interval" not in coll:
        raise ValueError(f"{path}: field 'collection' holds no collection settings "
                         "(--like needs a store made by `ttsgym collect`)")
    known = {f.name for f in fields(CollectSettings)}
    values = {k: v for k, v in coll.items() if k in known}
    if model is not None:
        values["model"] = model
    return CollectSettings(**values), int(coll["branches"])


async def make_plan(client: CollectClient, settings: CollectSettings) -> BranchPlan:
    """The branch plan of a collection (probe suffix ids tokenised by the server, as collect does)."""
    think = await client.tokenize_text(probe_suffix(settings.probe_template, True))
    plain = await client.tokenize_text(probe_suffix(settings.probe_template, False))
    return BranchPlan(settings.interval, settings.max_tokens, settings.sampling, settings.seed,
                      settings.probe_template, settings.probe_tokens, think, plain)


@dataclass(frozen=True)
class ChunkInfo:
    """What one generated chunk tells the reader: its length, whether the branch ends with it and
    whether collection would probe after it."""

    index: int
    n_tokens: int
    tokens_after: int
    ended: bool
    probed: bool


@dataclass
class Spend:
    """Upstream work of an episode, split by kind; every request sent counts, consumed or not."""

    gen: Usage = field(default_factory=Usage)
    probe: Usage = field(default_factory=Usage)
    chunks: int = 0
    probes: int = 0
    cancelled: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"generation": self.gen.as_dict(), "probe": self.probe.as_dict(), "chunks": self.chunks,
                "probes": self.probes, "cancelled_requests": self.cancelled}

    @property
    def prompt_tokens(self) -> int:
        return self.gen.prompt_tokens + self.probe.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.gen.completion_tokens + self.probe.completion_tokens


class LiveBranch:
    """One branch's chunks and probes as memoised tasks: chunk c waits for chunk c−1 (its prefix)."""

    def __init__(self, gen: LiveGenerator, branch_id: int) -> None:
        self.gen = gen
        self.branch_id = branch_id
        self.ids: list[int] = []
        self.texts: list[str] = []
        self.infos: list[ChunkInfo] = []
        self._chunks: dict[int, asyncio.Task] = {}
        self._probes: dict[int, asyncio.Task] = {}
        self._full: asyncio.Task | None = None

    def chunk(self, c: int) -> asyncio.Task:
        """The task of chunk ``c`` (``None`` result: the branch ended before it)."""
        task = self._chunks.get(c)
        if task is None or task.cancelled():  # cancelled by a prune: the result is still wanted
            task = self._chunks[c] = self.gen._spawn(self._generate(c))
        return task

    def probe(self, c: int) -> asyncio.Task:
        """The task of the probe after chunk ``c`` (``None`` result: collection has no probe there)."""
        task = self._probes.get(c)
        if task is None or task.cancelled():
            task = self._probes[c] = self.gen._spawn(self._probe(c))
        return task

    async def _generate(self, c: int) -> ChunkInfo | None:
        if c > 0:
            before = await self.chunk(c - 1)
            if before is None or before.ended:
                return None
        plan = self.gen.plan
        done = len(self.ids)
        want = min(plan.interval, plan.max_tokens - done)
        if want <= 0:
            return None
        seed = chunk_seed(plan.store_seed, self.gen.question, self.branch_id, c)
        chunk = await self.gen.client.generate_chunk(self.gen.prompt_ids, self.ids, seed, want, plan.sampling)
        self.gen.spend.gen.add(chunk.usage)
        self.gen.spend.chunks += 1
        self.ids.extend(chunk.token_ids)
        self.texts.append(chunk.text)
        n = len(chunk.token_ids)
        # The same end and probe conditions as collect_branch.
        ended = chunk.finish_reason == "stop" or n < want or len(self.ids) >= plan.max_tokens
        at_step = len(self.ids) % plan.interval == 0 and n == plan.interval
        probed = at_step and not (ended and chunk.finish_reason == "stop")
        info = ChunkInfo(c, n, len(self.ids), ended, probed)
        self.infos.append(info)
        return info

    async def _probe(self, c: int) -> ProbeResult | None:
        info = await self.chunk(c)
        if info is None or not info.probed:
            return None
        plan = self.gen.plan
        prefix = self.gen.prompt_ids + self.ids[: info.tokens_after]
        thinking = think_open(self.gen.prompt_text + "".join(self.texts[: c + 1]))
        suffix = plan.suffix_think if thinking else plan.suffix_plain
        result = await self.gen.client.probe(prefix, suffix, plan.probe_tokens, plan.probe_template)
        self.gen.spend.probe.add(result.usage)
        self.gen.spend.probes += 1
        return result

    async def read(self, c: int) -> tuple[ChunkInfo | None, ProbeResult | None]:
        """Interval read ``c``: the chunk and, where collection probes, its probe."""
        info = await self.chunk(c)
        if info is None or not info.probed:
            return info, None
        return info, await self.probe(c)

    async def to_end(self) -> list[ChunkInfo]:
        """Every chunk of the branch (a full read: no probes)."""
        c = 0
        while True:
            info = await self.chunk(c)
            if info is None or info.ended:
                return list(self.infos)
            c += 1

    async def all_probes(self) -> list[ProbeResult]:
        """The probes of a branch read to its end (asked for only when a controller looks at them)."""
        infos = await self.to_end()
        tasks = [self.probe(i.index) for i in infos if i.probed]
        return list(await asyncio.gather(*tasks))

    def prefetch_full(self) -> asyncio.Task:
        """Generate the whole branch in the background (once)."""
        if self._full is None:
            self._full = self.gen._spawn(self.to_end())
        return self._full

    def final_answer(self) -> str:
        """The branch's own final answer (last boxed in its text); only meaningful once it ended."""
        return last_boxed("".join(self.texts)) or ERR

    def cancel(self) -> None:
        for task in (*self._chunks.values(), *self._probes.values(), *filter(None, [self._full])):
            if not task.done():
                task.cancel()


class LiveGenerator:
    """The branches of one question for one episode, keyed by branch id (the seed's branch)."""

    def __init__(self, client: CollectClient, plan: BranchPlan, question: str, prompt_ids: list[int],
                 prompt_text: str) -> None:
        self.client = client
        self.plan = plan
        self.question = question
        self.prompt_ids = list(prompt_ids)
        self.prompt_text = prompt_text
        self.spend = Spend()
        self.branches: dict[int, LiveBranch] = {}
        self._tasks: set[asyncio.Task] = set()
        self.closed = False

    @classmethod
    async def start(cls, client: CollectClient, plan: BranchPlan, settings: CollectSettings,
                    question: str) -> LiveGenerator:
        """Tokenise the chat prompt exactly as collection does (server chat template, then the
        server's own detokenisation for the thinking-block test)."""
        prompt_ids = await client.tokenize(settings.message(question))
        prompt_text = await client.detokenize(prompt_ids)
        return cls(client, plan, question, prompt_ids, prompt_text)

    def branch(self, branch_id: int) -> LiveBranch:
        b = self.branches.get(branch_id)
        if b is None:
            b = self.branches[branch_id] = LiveBranch(self, branch_id)
        return b

    def _spawn(self, coro: Any) -> asyncio.Task:
        if self.closed:
            coro.close()
            raise asyncio.CancelledError("the episode is over")
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed speculative task is not an unhandled error

    def in_flight(self) -> int:
        return sum(1 for t in self._tasks if not t.done())

    async def close(self) -> None:
        """Cancel whatever is still in flight (speculation the controller never used)."""
        self.closed = True
        pending = [t for t in self._tasks if not t.done()]
        self.spend.cancelled += len(pending)
        for t in pending:
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pending, return_exceptions=True)


class AnswerClasses:
    """Live answer classes of one question: each raw answer maps to the first-seen member of its
    math-verify class (or itself under ``exact``), as the store groups answers; ``ERR`` stays apart.

    The order is the order answers are revealed to the controller, so the mapping is deterministic
    whatever order the upstream requests finished in.
    """

    def __init__(self, checker: str = "math") -> None:
        self.checker = checker
        self._seen: list[str] = []
        self._map: dict[str, str] = {}

    def __call__(self, raw: str) -> str:
        rep = self._map.get(raw)
        if rep is None:
            self._seen.append(raw)
            if self.checker == "exact":
                self._map[raw] = raw
            else:
                mapping, _ = answer_classes(self._seen, self._seen[0], self.checker)
                self._map.update({a: mapping[a] for a in self._seen if a not in self._map})
            rep = self._map[raw]
        return rep
