"""Replay: the Question API controllers call, the evaluator that grades them, and the
Gymnasium environment ``ttsgym/WidthDepth-v0`` over the same episodes.

Importing this package registers the Gymnasium environment.
"""

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

__all__ = [
    "BranchPool", "BranchPruned", "BudgetExhausted", "EpisodeResults", "Grader", "PoolCache",
    "PoolExhausted", "Question", "TracedQuestion", "branch_order", "majority", "order_matrix",
    "run_episodes", "vote_counts",
]
