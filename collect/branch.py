"""One branch, chunk by chunk: generate Δ tokens with the chunk's derived seed, probe the prefix,
optionally score it, until end-of-sequence or the token limit.

This is the unit live inference repeats: the same prefixes, seeds and probe requests give the
same tokens and answers as the recorded branch.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from ttsgym.collect.answers import last_boxed
from ttsgym.collect.client import CollectClient, Sampling, Usage, think_open
from ttsgym.collect.seeds import chunk_seed
from ttsgym.store.schema import ERR


@dataclass(frozen=True)
class BranchPlan:
    """What is fixed for every branch of a collection."""

    interval: int                 # Δ
    max_tokens: int               # T_max
    sampling: Sampling
    store_seed: int
    probe_template: str
    probe_tokens: int
    suffix_think: list[int]       # token ids of the probe suffix when a thinking block is open
    suffix_plain: list[int]       # ... and when none is


@dataclass
class Probe:
    step: int
    tokens: int
    raw: str
    answer: str
    confidence: float | None
    score: float | None = None


@dataclass
class BranchResult:
    branch_id: int
    token_ids: list[int]
    text: str
    finish_reason: str
    final_answer: str
    seeds: list[int]
    probes: list[Probe]
    gen: Usage = field(default_factory=lambda: Usage(usage_reported=True))
    probe_usage: Usage = field(default_factory=lambda: Usage(usage_reported=True))

    def record(self) -> dict[str, Any]:
        return {
            "branch_id": self.branch_id, "n_tokens": len(self.token_ids), "token_ids": self.token_ids,
            "text": self.text, "finish_reason": self.finish_reason, "final_answer": self.final_answer,
            "seeds": self.seeds,
            "probes": [p.__dict__ for p in self.probes],
            "usage": {"gen": self.gen.as_dict(), "probe": self.probe_usage.as_dict()},
        }


def probe_positions(n_tokens: int, interval: int, finish_reason: str) -> list[int]:
    """Token positions probed for a branch of ``n_tokens`` ending with ``finish_reason``: every
    multiple of Δ, except the very end of a branch that stopped by itself (its final answer is
    there already). So step k sits at Δ·k ≤ T, as replay charges it."""
    last = n_tokens // interval
    if finish_reason == "stop" and last * interval == n_tokens:
        last -= 1
    return [interval * k for k in range(1, last + 1)]


async def collect_branch(client: CollectClient, plan: BranchPlan, question: str, branch_id: int,
                         prompt_ids: list[int], prompt_text: str,
                         scorer: CollectClient | None = None) -> BranchResult:
    """Generate and probe one branch; raises what the client raises when requests keep failing.

    The probe of chunk k runs while chunk k + 1 is generated (both need only the prefix up to
    k), one probe in flight per branch; the recorded data are the same as strictly in turn.
    """
    ids: list[int] = []
    pieces: list[str] = []
    seeds: list[int] = []
    probes: list[Probe] = []
    result = BranchResult(branch_id, ids, "", "length", ERR, seeds, probes)

    async def do_probe(prefix: list[int], text_so_far: str) -> None:
        suffix = plan.suffix_think if think_open(prompt_text + text_so_far) else plan.suffix_plain
        probe = await client.probe(prefix, suffix, plan.probe_tokens, plan.probe_template)
        result.probe_usage.add(probe.usage)
        score = await scorer.score(prompt_text + text_so_far) if scorer is not None else None
        probes.append(Probe(len(probes) + 1, len(prefix) - len(prompt_ids), probe.raw, probe.answer,
                            probe.confidence, score))

    pending: asyncio.Task | None = None
    chunk_index = 0
    finish = "length"
    try:
        while len(ids) < plan.max_tokens:
            want = min(plan.interval, plan.max_tokens - len(ids))
            seed = chunk_seed(plan.store_seed, question, branch_id, chunk_index)
            chunk = await client.generate_chunk(prompt_ids, ids, seed, want, plan.sampling)
            seeds.append(seed)
            ids.extend(chunk.token_ids)
            pieces.append(chunk.text)
            result.gen.add(chunk.usage)
            chunk_index += 1
            ended = (chunk.finish_reason == "stop" or len(chunk.token_ids) < want
                     or len(ids) >= plan.max_tokens)
            finish = "stop" if chunk.finish_reason == "stop" else "length"
            at_step = len(ids) % plan.interval == 0 and len(chunk.token_ids) == plan.interval
            if at_step and not (ended and finish == "stop"):
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(do_probe(prompt_ids + ids, "".join(pieces)))
            if ended:
                break
        if pending is not None:
            await pending
            pending = None
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
    result.text = "".join(pieces)
    result.finish_reason = finish
    result.final_answer = last_boxed(result.text) or ERR
    return result
