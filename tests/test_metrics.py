"""Metrics over result tables, checked against hand-computed values and direct scipy calls."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from ttsgym.controllers.metrics import (
    ALL_MODELS,
    METRICS,
    accuracy_ci,
    auc_log_tokens,
    average_over_models,
    bootstrap_ci,
    check_table,
    common_token_range,
    family_curves,
    is_sc64,
    metrics_table,
    natural_key,
    paired_delta_ci,
    pareto_frontier,
    spec_params,
    tokens_per_branch,
    tokens_to_match,
)
from ttsgym.env.results import RESULTS


def row(controller: str, q_acc, *, model: str = "m1", dataset: str = "d", name: str | None = None,
        kind: str = "baseline", beta: float | None = None, tokens: float = 1000.0, opened: float = 1.0,
        seed_acc=(50.0, 50.0), qids=None, synthetic: bool = False) -> dict:
    """A result row with the per-question accuracies given (fractions) and flat token vectors."""
    q_acc = [float(a) for a in q_acc]
    qids = list(range(len(q_acc))) if qids is None else list(qids)
    return {
        "model": model, "dataset": dataset, "controller": controller,
        "name": name or controller.partition(":")[0], "kind": kind, "beta": beta,
        "protocol": "autotts", "kappa": 0, "budget": None, "synthetic": synthetic,
        "seeds": len(seed_acc), "questions": len(q_acc), "episodes": len(seed_acc) * len(q_acc),
        "accuracy": 100.0 * float(np.mean(q_acc)), "std_accuracy": float(np.std(seed_acc)),
        "avg_tokens": tokens, "avg_seq_tokens": tokens / 2, "avg_opened": opened, "seconds": 0.0,
        "question_ids": qids, "q_accuracy": q_acc, "q_tokens": [tokens] * len(q_acc),
        "q_seq_tokens": [tokens / 2] * len(q_acc), "seed_accuracy": list(seed_acc),
        "seed_tokens": [tokens] * len(seed_acc),
    }


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RESULTS)


# --- Pareto frontier ------------------------------------------------------------------------


def test_pareto_frontier_hand_case() -> None:
    pts = [(1, 10), (2, 20), (2, 15), (3, 15), (4, 30), (4, 30), (5, 25), (0.5, math.nan)]
    # (2,15) and (3,15) lose to (2,20); (5,25) loses to (4,30); the duplicates of (4,30) both stay.
    assert pareto_frontier(pts) == [0, 1, 4, 5]


def test_pareto_frontier_orders_by_tokens_and_handles_empty() -> None:
    assert pareto_frontier([(100, 50), (10, 40), (1000, 60)]) == [1, 0, 2]
    assert pareto_frontier([]) == []
    assert pareto_frontier([(5, 1)]) == [0]


# --- tokens to match ------------------------------------------------------------------------


def test_tokens_to_match_interpolates_in_log_tokens() -> None:
    curve = [(10_000, 30.0), (1000, 10.0), (100_000, 50.0)]  # unsorted on purpose
    assert tokens_to_match(curve, 20.0) == pytest.approx(10 ** 3.5)
    assert tokens_to_match(curve, 40.0) == pytest.approx(10 ** 4.5)
    assert tokens_to_match(curve, 50.0) == pytest.approx(100_000)
    assert tokens_to_match(curve, 10.0) == 1000  # cheapest point already there
    assert tokens_to_match(curve, 5.0) == 1000  # no extrapolation below the curve
    assert tokens_to_match(curve, 50.01) is None


def test_tokens_to_match_takes_the_first_crossing_of_a_non_monotone_curve() -> None:
    curve = [(1000, 10.0), (10_000, 40.0), (100_000, 20.0), (1_000_000, 60.0)]
    assert tokens_to_match(curve, 30.0) == pytest.approx(10 ** (3 + 2 / 3))


def test_tokens_to_match_single_point_and_errors() -> None:
    assert tokens_to_match([(500, 70.0)], 60.0) == 500
    assert tokens_to_match([(500, 70.0)], 80.0) is None
    assert tokens_to_match([], 10.0) is None
    with pytest.raises(ValueError, match="positive"):
        tokens_to_match([(0, 10.0), (10, 20.0)], 15.0)


# --- AUC over log tokens --------------------------------------------------------------------


def test_auc_log_tokens_hand_cases() -> None:
    ramp = [(10, 0.0), (1000, 100.0)]  # linear in log10 tokens from 0 to 100 over two decades
    assert auc_log_tokens(ramp, 10, 1000) == pytest.approx(50.0)
    assert auc_log_tokens(ramp, 10, 100) == pytest.approx(25.0)  # 0 → 50 over the first decade
    assert auc_log_tokens(ramp, 100, 1000) == pytest.approx(75.0)
    step = [(10, 0.0), (100, 100.0), (1000, 100.0)]
    assert auc_log_tokens(step, 10, 1000) == pytest.approx(75.0)
    assert auc_log_tokens([(10, 42.0), (1e6, 42.0)], 50, 5000) == pytest.approx(42.0)


def test_auc_log_tokens_refuses_to_extrapolate() -> None:
    ramp = [(10, 0.0), (1000, 100.0)]
    assert auc_log_tokens(ramp, 5, 1000) is None
    assert auc_log_tokens(ramp, 10, 2000) is None
    assert auc_log_tokens([(10, 1.0)], 10, 10.5) is None
    with pytest.raises(ValueError):
        auc_log_tokens(ramp, 100, 10)


def test_common_token_range() -> None:
    curves = [[(10, 1.0), (1000, 2.0)], [(100, 1.0), (10_000, 2.0)], [(5, 1.0)]]
    assert common_token_range(curves) == (100, 1000)
    assert common_token_range([[(1, 1.0), (2, 1.0)], [(3, 1.0), (4, 1.0)]]) is None
    assert common_token_range([[(1, 1.0)]]) is None


# --- bootstrap CIs --------------------------------------------------------------------------


def test_bootstrap_ci_matches_a_direct_scipy_call() -> None:
    x = np.random.default_rng(3).uniform(size=30)
    direct = stats.bootstrap((x,), np.mean, confidence_level=0.95, n_resamples=10_000,
                             method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert bootstrap_ci(x) == pytest.approx((direct.low, direct.high))
    bca = stats.bootstrap((x,), np.mean, n_resamples=2000, method="BCa",
                          rng=np.random.default_rng(7)).confidence_interval
    assert bootstrap_ci(x, method="BCa", n_resamples=2000, seed=7) == pytest.approx((bca.low, bca.high))


def test_bootstrap_ci_contains_the_estimate_narrows_with_questions_and_is_reproducible() -> None:
    x = np.random.default_rng(1).integers(0, 2, size=30).astype(float)
    lo, hi = bootstrap_ci(x)
    assert lo < x.mean() < hi
    lo4, hi4 = bootstrap_ci(np.tile(x, 4))  # same mean, four times the questions
    assert lo <= lo4 < x.mean() < hi4 <= hi
    assert (hi4 - lo4) < 0.7 * (hi - lo)
    assert bootstrap_ci(x) == (lo, hi)


def test_bootstrap_ci_degenerate_inputs() -> None:
    assert bootstrap_ci(np.ones(30)) == (1.0, 1.0)
    assert bootstrap_ci(np.zeros(5)) == (0.0, 0.0)
    assert all(math.isnan(v) for v in bootstrap_ci([0.7]))
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    r = row("sc", [1.0] * 10)
    assert accuracy_ci(r) == (100.0, 100.0)


def test_accuracy_ci_is_in_percent() -> None:
    r = row("sc", [0, 1, 0.5, 0.25, 1, 0, 0.75, 1])
    lo, hi = accuracy_ci(r)
    flo, fhi = bootstrap_ci(r["q_accuracy"])
    assert (lo, hi) == pytest.approx((100 * flo, 100 * fhi))
    assert lo < r["accuracy"] < hi


def test_paired_delta_ci_pairs_questions_by_id() -> None:
    rng = np.random.default_rng(5)
    base = rng.uniform(size=20)
    better = np.clip(base + rng.normal(0.1, 0.05, 20), 0, 1)
    a = row("x", better)
    b = row("sc", base)
    lo, hi = paired_delta_ci(a, b)
    assert lo < 100 * (better - base).mean() < hi and lo > 0
    perm = rng.permutation(20)
    shuffled = row("sc", base[perm], qids=perm)  # same questions, stored in another order
    assert paired_delta_ci(a, shuffled) == (lo, hi)
    assert paired_delta_ci(b, b) == (0.0, 0.0)


# --- simple definitions ---------------------------------------------------------------------


def test_tokens_per_branch_and_sc64_detection() -> None:
    assert tokens_per_branch(1500.0, 3.0) == 500.0
    assert math.isnan(tokens_per_branch(0.0, 0.0))
    assert spec_params("sc", "sc") == {"n": "64"}
    assert spec_params("asc:threshold=0.9", "asc") == {"max_samples": "64", "threshold": "0.9"}
    assert is_sc64(row("sc", [1, 0])) and is_sc64(row("sc:n=64", [1, 0], name="sc"))
    assert not is_sc64(row("sc:n=16", [1, 0], name="sc"))
    assert not is_sc64(row("sc", [1, 0], kind="beta-family", beta=0.5))


def test_natural_key_orders_model_sizes() -> None:
    names = ["Qwen3-14B", "Qwen3-4B", "Qwen3-0.6B", "Qwen3-1.7B"]
    assert sorted(names, key=natural_key) == ["Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-14B"]


def test_check_table_names_the_source() -> None:
    bad = pa.table({"model": ["a"], "accuracy": [1.0]})
    with pytest.raises(ValueError, match=r"runs/x\.parquet: not a ttsgym results table.*dataset"):
        check_table(bad, "runs/x.parquet")
    good = table([row("sc", [1, 0])]).drop_columns(["seconds", "episodes"])
    assert check_table(good, "t").schema == RESULTS


# --- families, averages, the metrics table --------------------------------------------------


def test_family_curves_group_sweeps_betas_and_points() -> None:
    rows = [row("sc:n=4", [0, 1], tokens=4000, name="sc"), row("sc", [1, 1], tokens=64_000),
            row("sc:n=1", [0, 0], tokens=1000, name="sc"),
            row("parallel_probe", [1, 0], tokens=9000),
            row("parallel_probe:T=40,prune_patience=7,warm_up=15", [1, 1], tokens=20_000,
                name="parallel_probe"),
            row("cmc", [1, 0], kind="beta-family", beta=1.0, tokens=5000),
            row("cmc", [0, 0], kind="beta-family", beta=0.0, tokens=2000),
            row("my.py:Mine", [0, 1], name="Mine", kind="user"),
            row("sc", [1, 1], tokens=60_000, model="m2")]
    curves = {(c.model, c.family): c for c in family_curves(table(rows))}
    sc = curves[("m1", "sc across n")]
    assert sc.sweep == "n" and sc.rows == (2, 0, 1) and sc.labels == ("n=1", "n=4", "n=64")
    assert sc.points == ((1000, 0.0), (4000, 50.0), (64_000, 100.0))
    cmc = curves[("m1", "cmc across β")]
    assert cmc.sweep == "β" and cmc.rows == (6, 5) and cmc.labels == ("β=0", "β=1")
    # Two Parallel-Probe configurations differing in three knobs are separate points.
    assert curves[("m1", "parallel_probe")].rows == (3,)
    assert curves[("m1", "parallel_probe:T=40,prune_patience=7,warm_up=15")].sweep is None
    assert curves[("m1", "my.py:Mine")].rows == (7,)
    assert curves[("m2", "sc")].rows == (8,)  # a lone SC row is a point, not a curve
    assert sorted(i for c in curves.values() for i in c.rows) == list(range(len(rows)))


def test_average_over_models_averages_per_question_and_requires_every_model() -> None:
    a = row("sc", [1.0, 0.0, 0.5], model="m1", tokens=1000, opened=4, seed_acc=(40.0, 60.0))
    b = row("sc", [0.5, 1.0, 0.0], model="m2", tokens=3000, opened=8, seed_acc=(60.0, 60.0),
            qids=[2, 0, 1])  # question 2 has 0.5, question 0 has 1.0, question 1 has 0.0
    only_m1 = row("asc", [1.0, 1.0, 1.0], model="m1")
    other = row("sc", [1.0], model="m1", dataset="single")
    avg = average_over_models(table([a, b, only_m1, other])).to_pylist()
    assert len(avg) == 1
    r = avg[0]
    assert r["model"] == ALL_MODELS and r["controller"] == "sc" and r["dataset"] == "d"
    assert r["question_ids"] == [0, 1, 2]
    assert r["q_accuracy"] == pytest.approx([1.0, 0.0, 0.5])
    assert r["accuracy"] == pytest.approx((a["accuracy"] + b["accuracy"]) / 2)
    assert r["avg_tokens"] == 2000 and r["avg_opened"] == 6
    assert r["seed_accuracy"] == [50.0, 60.0] and r["std_accuracy"] == pytest.approx(5.0)


def test_metrics_table_reference_delta_ratio_and_frontier() -> None:
    rows = [row("sc:n=1", [0, 0, 1, 0], tokens=1000, name="sc"),
            row("sc:n=4", [0, 1, 1, 0], tokens=4000, opened=4, name="sc"),
            row("sc", [1, 1, 1, 0], tokens=64_000, opened=64),
            row("asc", [1, 1, 1, 0], tokens=16_000, opened=10),
            row("esc", [0, 1, 0, 0], tokens=20_000, opened=20),
            row("sc:n=4", [1, 1, 1, 1], tokens=4000, model="m2", name="sc")]
    m = metrics_table(table(rows))
    assert m.schema == METRICS
    out = m.to_pylist()
    assert [r["is_sc64"] for r in out] == [False, False, True, False, False, False]
    assert out[3]["delta_accuracy"] == 0.0 and out[3]["token_ratio"] == pytest.approx(0.25)
    assert out[0]["delta_accuracy"] == pytest.approx(-50.0)
    assert out[0]["sc64_accuracy"] == 75.0 and out[0]["sc64_tokens"] == 64_000
    assert out[3]["tokens_per_branch"] == 1600.0
    assert [r["on_frontier"] for r in out] == [True, True, False, True, False, True]
    assert out[5]["sc64_accuracy"] is None and out[5]["delta_accuracy"] is None  # m2 has no SC@64
    for r in out:
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    assert out[1]["family"] == "sc across n" and out[1]["point"] == "n=4"


def test_family_curves_sweep_one_knob_holding_others_and_split_settings() -> None:
    rows = [row("asc:max_samples=16,threshold=0.9", [0, 1], tokens=500, name="asc"),
            row("asc:max_samples=32,threshold=0.9", [1, 1], tokens=900, name="asc"),
            row("asc:max_samples=32", [1, 1], tokens=1200, name="asc")]
    curves = {c.family: c for c in family_curves(table(rows))}
    assert set(curves) == {"asc:threshold=0.9 across max_samples", "asc:max_samples=32"}
    assert curves["asc:threshold=0.9 across max_samples"].labels == ("max_samples=16", "max_samples=32")
    kappa = [dict(r, kappa=100) for r in rows[:2]]
    families = {c.family for c in family_curves(table(rows[:2] + kappa))}
    assert families == {"asc:threshold=0.9 across max_samples [κ=0]",
                        "asc:threshold=0.9 across max_samples [κ=100]"}


def test_sc64_reference_is_taken_from_the_same_setting() -> None:
    rows = [row("sc", [1, 1], tokens=64_000), row("sc", [0, 1], tokens=70_000),
            row("asc", [1, 0], tokens=30_000), row("asc", [1, 0], tokens=33_000)]
    rows[1]["kappa"] = rows[3]["kappa"] = 50
    out = metrics_table(table(rows)).to_pylist()
    assert out[2]["sc64_accuracy"] == 100.0 and out[3]["sc64_accuracy"] == 50.0
    assert out[3]["token_ratio"] == pytest.approx(33 / 70)
