"""The published figures, reproduced by `ttsgym eval`, and the two baseline paths agreeing.

The reference file gives accuracy (4 decimals) and mean tokens of six baseline configurations
on four models; `ttsgym eval` must match every one: accuracy within 1e-3 points, tokens within
1e-6 relative. The Question-API implementations and their vectorised twins must agree
episode by episode.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS

from ttsgym.cli.main import main
from ttsgym.controllers.baselines import PUBLISHED_SPECS as SPECS
from ttsgym.controllers.baselines import (
    AdaptiveConsistency,
    EarlyStoppingConsistency,
    ParallelProbe,
    SelfConsistency,
)
from ttsgym.controllers.batched import run_batched
from ttsgym.controllers.registry import parse_spec
from ttsgym.env import PoolCache, run_episodes
from ttsgym.store import load_replay


@pytest.fixture(scope="module")
def eval_rows(real_store: Path) -> dict:
    """One `ttsgym eval --format json` run over all six specs and four models."""
    import contextlib
    import io

    out = io.StringIO()
    argv = ["eval", "--store", str(real_store), "--format", "json", "--workers", "2"]
    for spec in SPECS.values():
        argv += ["--controller", spec]
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    rows = json.loads(out.getvalue())
    return {(r["model"], r["controller"]): r for r in rows}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", list(SPECS))
def test_eval_reproduces_the_reference(eval_rows: dict, reference: dict, model: str, method: str) -> None:
    want = reference[model]["aime24"][method]
    row = eval_rows[(model, parse_spec(SPECS[method]).text)]
    assert row["episodes"] == 3000
    assert abs(row["accuracy"] - want["acc"]) <= 1e-3, (row["accuracy"], want["acc"])
    assert abs(row["avg_tokens"] - want["avg_tokens"]) <= 1e-6 * want["avg_tokens"]


def test_eval_json_rows_have_the_documented_fields(eval_rows: dict) -> None:
    row = next(iter(eval_rows.values()))
    for field in ("model", "dataset", "controller", "beta", "accuracy", "avg_tokens", "avg_seq_tokens",
                  "std_accuracy", "episodes", "seconds"):
        assert field in row
    assert row["beta"] is None and row["dataset"] == "aime24"


CONTROLLERS = [SelfConsistency(n=64), SelfConsistency(n=5), AdaptiveConsistency(),
               AdaptiveConsistency(max_samples=20, threshold=0.8), EarlyStoppingConsistency(),
               EarlyStoppingConsistency(max_samples=30, window_size=4), ParallelProbe(),
               ParallelProbe(T=40, prune_patience=7, warm_up=15),
               ParallelProbe(num_chains=16, T=3, prune_patience=2, warm_up=1, max_steps=12)]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("controller", CONTROLLERS, ids=repr)
def test_vectorised_twin_matches_the_question_api(real_store: Path, model: str, controller) -> None:
    arrays = load_replay(real_store, model, "aime24")
    seeds = range(0, 100, 9)
    fast = run_batched(controller, arrays, seeds)
    slow = run_episodes(lambda: controller, arrays, seeds, pools=_pools(real_store, model, arrays))
    for field in ("correct", "tokens", "seq_tokens", "opened"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(slow, field), err_msg=field)


def test_vectorised_twin_matches_with_kappa(real_store: Path) -> None:
    arrays = load_replay(real_store, "Qwen3-1.7B", "aime24")
    controller = ParallelProbe(T=10, warm_up=5, prune_patience=3)
    fast = run_batched(controller, arrays, range(5), kappa=37)
    slow = run_episodes(lambda: controller, arrays, range(5), kappa=37)
    np.testing.assert_array_equal(fast.tokens, slow.tokens)
    np.testing.assert_array_equal(fast.correct, slow.correct)


def test_no_kernel_under_a_budget(real_store: Path) -> None:
    arrays = load_replay(real_store, "Qwen3-4B", "aime24")
    assert run_batched(SelfConsistency(), arrays, range(2), budget=100_000) is None
    res = run_episodes(SelfConsistency, arrays, range(3), budget=100_000)
    assert res.tokens.max() <= 100_000 and res.correct.any()


_POOLS: dict = {}


def _pools(store: Path, model: str, arrays) -> PoolCache:
    key = (str(store), model)
    if key not in _POOLS:
        _POOLS[key] = PoolCache(arrays)
    return _POOLS[key]
