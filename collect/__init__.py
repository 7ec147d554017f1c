"""Collection stage (DESIGN §6): sample, probe and score branches from an OpenAI-compatible
(vLLM) server into a replay store.

Reusable by live inference: :class:`CollectClient` (async: ``tokenize``, ``generate_chunk``,
``probe``, ``score``), :func:`chunk_seed` (the per-chunk seed) and :func:`collect_branch` (one
branch, chunk by chunk, exactly as recorded).
"""

from ttsgym.collect.answers import answer_classes, last_boxed, probe_answer
from ttsgym.collect.branch import BranchPlan, BranchResult, collect_branch, probe_positions
from ttsgym.collect.client import (
    Chunk,
    CollectClient,
    ProbeResult,
    RequestFailed,
    RetryPolicy,
    Sampling,
    ServerError,
    Usage,
    probe_suffix,
    think_open,
)
from ttsgym.collect.collector import Collector, CollectSettings, RunOptions, collect
from ttsgym.collect.seeds import chunk_seed

__all__ = [
    "BranchPlan", "BranchResult", "Chunk", "CollectClient", "CollectSettings", "Collector", "ProbeResult",
    "RequestFailed", "RetryPolicy", "RunOptions", "Sampling", "ServerError", "Usage", "answer_classes",
    "chunk_seed", "collect", "collect_branch", "last_boxed", "probe_answer", "probe_positions",
    "probe_suffix", "think_open",
]
