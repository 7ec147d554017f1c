"""Tests of the project's β-family (``short_race``): schedule contract, tiny pools, real-data claims.

The real-data tests import the shared AutoTTS replay data (``$TTSGYM_DATA``, default
``<repo>/../shared/data``) into a temporary store. Without the data they skip, unless
``TTSGYM_REQUIRE_DATA=1`` asks them to fail.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from ttsgym.controllers.baselines import (
    AdaptiveConsistency,
    EarlyStoppingConsistency,
    ParallelProbe,
    SelfConsistency,
)
from ttsgym.controllers.batched import run_batched
from ttsgym.controllers.family import ShortRace
from ttsgym.env.episodes import PoolCache, run_episodes
from ttsgym.env.question import BranchPool, Question

FINE_GRID = [k / 100 for k in range(101)]
COARSE_GRID = [k / 10 for k in range(11)]
DOMINATING_BETA = 0.5  # one β that must beat SC@64, ASC, ESC and Parallel-Probe at once


# -- schedule contract ----------------------------------------------------------------------


def test_schedule_covers_every_declared_parameter() -> None:
    for beta in FINE_GRID:
        hp = ShortRace.schedule(beta)
        assert set(hp) == set(ShortRace.SPEND), "schedule and SPEND must name the same parameters"
        for key, value in hp.items():
            assert isinstance(value, int | float) and not isinstance(value, bool), key
    assert ShortRace(beta=0.3).hp == ShortRace.schedule(0.3)


def test_schedule_moves_every_parameter_towards_spending_more() -> None:
    for lo, hi in pairwise(FINE_GRID):
        a, b = ShortRace.schedule(lo), ShortRace.schedule(hi)
        for key, direction in ShortRace.SPEND.items():
            if direction > 0:
                assert b[key] >= a[key], f"{key} falls between β={lo} and β={hi}"
            elif direction < 0:
                assert b[key] <= a[key], f"{key} rises between β={lo} and β={hi}"
            else:
                assert b[key] == a[key], f"{key} is documented as fixed but changes at β={hi}"
    lo, hi = ShortRace.schedule(0.0), ShortRace.schedule(1.0)
    for key, direction in ShortRace.SPEND.items():
        if direction:
            assert lo[key] != hi[key], f"{key} is declared scheduled but does not move"
    assert hi["max_branches"] == 64, "β = 1 must be allowed the full 64-branch budget"


def test_solve_reads_every_scheduled_parameter() -> None:
    pool = _tiny_pool()
    for key in ShortRace.SPEND:
        controller = ShortRace(beta=0.5)
        del controller.hp[key]
        with pytest.raises(KeyError):
            controller.solve(Question(pool))


# -- tiny hand-built pools ------------------------------------------------------------------


def _tiny_pool() -> BranchPool:
    probes = [
        ("7", "ERR", "42", "42"),  # ERR inside a run
        (),  # no probes: finishes on its first read
        ("ERR", "ERR"),  # unparseable throughout, final ERR too
        ("42", "13", "13", "13", "13"),
        ("13", "13", "42", "42", "42", "42", "42"),  # settles on 13, then revises to 42
        ("42", "42"),
        ("5", "5", "5", "5", "5", "5", "5", "5", "5"),
    ]
    tokens = [2300, 800, 1200, 2700, 3600, 1100, 4700]
    finals = ["42", "42", "ERR", "13", "42", "42", "5"]
    return BranchPool(probes=probes, tokens=tokens, finals=finals, interval=500)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_runs_on_a_tiny_pool(beta: float) -> None:
    pool = _tiny_pool()
    orders = [tuple(range(len(pool))), tuple(reversed(range(len(pool)))), (2, 6, 3, 0, 4, 1, 5)]
    for order in orders:
        runs = []
        for _ in range(2):
            q = Question(pool, order)
            answer = ShortRace(beta=beta).solve(q)
            runs.append((answer, q.total_tokens, q.n_opened))
            assert answer in {"42", "13", "5"}
            assert 0 < q.total_tokens <= sum(pool.tokens)
        assert runs[0] == runs[1], "the controller must be deterministic"


def test_all_err_pool_does_not_crash() -> None:
    pool = BranchPool(probes=[("ERR",), (), ("ERR", "ERR")], tokens=[700, 300, 1100],
                      finals=["ERR", "ERR", "ERR"], interval=500)
    q = Question(pool)
    assert ShortRace(beta=1.0).solve(q) in (None, "ERR")
    assert q.n_opened == 3


def test_revisions_count_against_an_answer_and_the_cap_prunes_long_branches() -> None:
    # Two short branches finish together, 155 first; two longer ones had settled on 155 and
    # moved to 110. Counting those revisions must turn the tie (won by 155) into a 110 win.
    probes = [("1", "155", "155"), ("3", "110", "110"),
              ("155", "155", "110", "110", "110", "110", "110"),
              ("155", "155", "110", "110", "110", "110", "110")]
    pool = BranchPool(probes=probes, tokens=[1700, 1700, 3700, 3700],
                      finals=["155", "110", "110", "110"], interval=500)
    q = Question(pool)
    assert ShortRace(beta=1.0).solve(q) == "110"
    assert q.is_pruned(2) and q.is_pruned(3), "branches longer than the cap finisher are pruned"
    blind = ShortRace(beta=1.0)
    blind.hp["revision_weight"] = 0.0
    assert blind.solve(Question(pool)) == "155"


# -- real data -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slices(real_store: Path) -> dict[str, tuple]:
    from ttsgym.store import Store, load_replay

    store = Store(real_store)
    models = [s.model for s in store.slices if s.dataset == "aime24"]
    assert len(models) == 4, f"expected the 4 Qwen3 models, found {models}"
    out = {}
    for m in models:
        arrays = load_replay(store, m, "aime24")
        out[m] = (arrays, PoolCache(arrays))
    return out


@pytest.mark.shared_data
def test_tokens_do_not_fall_as_beta_grows(slices: dict[str, tuple]) -> None:
    seeds = range(20)  # the full 100 hold too (benchmarks/beta_family.py); 20 keep this quick
    for model, (arrays, pools) in slices.items():
        tokens = [run_episodes(lambda b=beta: ShortRace(beta=b), arrays, seeds, pools=pools).tokens.mean()
                  for beta in COARSE_GRID]
        for (b0, t0), (b1, t1) in pairwise(zip(COARSE_GRID, tokens, strict=True)):
            assert t1 >= 0.99 * t0, f"{model}: tokens fall from {t0:.0f} (β={b0}) to {t1:.0f} (β={b1})"
        assert tokens[-1] > 3 * tokens[0], f"{model}: β barely changes the spend"


@pytest.mark.shared_data
def test_one_beta_dominates_sc_asc_esc_and_parallel_probe(slices: dict[str, tuple]) -> None:
    seeds = range(100)
    baselines = {
        "SC@64": SelfConsistency(n=64),
        "ASC(64,0.95)": AdaptiveConsistency(max_samples=64, threshold=0.95),
        "ESC(64,8)": EarlyStoppingConsistency(max_samples=64, window_size=8),
        "PP(64,T40,pp7,wu15)": ParallelProbe(num_chains=64, T=40, prune_patience=7, warm_up=15),
    }
    fam_acc, fam_tok = [], []
    base: dict[str, list[tuple[float, float]]] = {k: [] for k in baselines}
    for arrays, pools in slices.values():
        res = run_episodes(lambda: ShortRace(beta=DOMINATING_BETA), arrays, seeds, pools=pools)
        fam_acc.append(res.accuracy)
        fam_tok.append(res.tokens.mean())
        for label, controller in baselines.items():
            b = run_batched(controller, arrays, seeds)
            assert b is not None
            base[label].append((b.accuracy, b.tokens.mean()))
    acc, tok = float(np.mean(fam_acc)), float(np.mean(fam_tok))
    for label, rows in base.items():
        b_acc, b_tok = float(np.mean([r[0] for r in rows])), float(np.mean([r[1] for r in rows]))
        assert acc >= b_acc and tok <= b_tok, (
            f"β={DOMINATING_BETA}: {acc:.3f}% @ {tok:.0f} tokens does not dominate "
            f"{label}: {b_acc:.3f}% @ {b_tok:.0f}"
        )
