"""Replay: the Question API controllers call, the evaluator that grades them, and the
Gymnasium environment ``ttsgym/WidthDepth-v0`` over the same episodes.

Importing this package registers the Gymnasium environment. Its classes (``WidthDepthEnv``,
``EnvQuestion``, ``evaluate_policy``, ``solve_episode``) load on first use, so importing the
package does not pull in the store's readers (DuckDB).
"""

from typing import Any

import gymnasium as _gym

from ttsgym.env.episodes import EpisodeResults, Grader, PoolCache, run_episodes
from ttsgym.env.protocols import branch_order, order_matrix
from ttsgym.env.question import (
    BranchPool,
    BranchPruned,
    BudgetExhausted,
    PoolExhausted,
    Question,
    TracedQuestion,
)
from ttsgym.env.voting import majority, vote_counts

ENV_ID = "ttsgym/WidthDepth-v0"
if ENV_ID not in _gym.registry:
    _gym.register(id=ENV_ID, entry_point="ttsgym.env.gym_env:WidthDepthEnv")

_LAZY = {"WidthDepthEnv": "ttsgym.env.gym_env", "EnvQuestion": "ttsgym.env.gym_adapters",
         "evaluate_policy": "ttsgym.env.gym_adapters", "solve_episode": "ttsgym.env.gym_adapters"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ttsgym.env' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "ENV_ID", "BranchPool", "BranchPruned", "BudgetExhausted", "EnvQuestion", "EpisodeResults", "Grader",
    "PoolCache", "PoolExhausted", "Question", "TracedQuestion", "WidthDepthEnv", "branch_order",
    "evaluate_policy", "majority", "order_matrix", "run_episodes", "solve_episode", "vote_counts",
]
