"""The result table every evaluation writes: one row per (model, dataset, controller, β).

Rows keep per-question and per-seed vectors beside the aggregates, so metrics (bootstrap
confidence intervals over questions, spread over seeds, frontiers) are pure functions of the
table and never need the episodes again. ``ttsgym eval --out`` writes it as Parquet.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ttsgym.env.episodes import EpisodeResults

RESULTS = pa.schema([
    pa.field("model", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("controller", pa.string()),
    pa.field("name", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("beta", pa.float64()),
    pa.field("protocol", pa.string()),
    pa.field("kappa", pa.int64()),
    pa.field("budget", pa.int64()),
    pa.field("synthetic", pa.bool_()),
    pa.field("seeds", pa.int32()),
    pa.field("questions", pa.int32()),
    pa.field("episodes", pa.int64()),
    pa.field("accuracy", pa.float64()),
    pa.field("std_accuracy", pa.float64()),
    pa.field("avg_tokens", pa.float64()),
    pa.field("avg_seq_tokens", pa.float64()),
    pa.field("avg_opened", pa.float64()),
    pa.field("seconds", pa.float64()),
    pa.field("question_ids", pa.list_(pa.int32())),
    pa.field("q_accuracy", pa.list_(pa.float64())),
    pa.field("q_tokens", pa.list_(pa.float64())),
    pa.field("q_seq_tokens", pa.list_(pa.float64())),
    pa.field("seed_accuracy", pa.list_(pa.float64())),
    pa.field("seed_tokens", pa.list_(pa.float64())),
])

# What `--format json` and the printed table show of a row.
SUMMARY_FIELDS = ("model", "dataset", "controller", "kind", "beta", "accuracy", "std_accuracy",
                  "avg_tokens", "avg_seq_tokens", "avg_opened", "episodes", "seconds", "protocol",
                  "synthetic")


def summarize(res: EpisodeResults, *, model: str, dataset: str, controller: str, name: str,
              kind: str, beta: float | None, protocol: str, kappa: int = 0,
              budget: int | None = None, synthetic: bool = False, seconds: float = 0.0) -> dict[str, Any]:
    """One result row from the episodes of one (model, dataset, controller, β)."""
    correct = res.correct.astype(np.float64)
    seed_acc = correct.mean(axis=1) * 100.0
    return {
        "model": model, "dataset": dataset, "controller": controller, "name": name, "kind": kind,
        "beta": beta, "protocol": protocol, "kappa": int(kappa), "budget": budget,
        "synthetic": bool(synthetic),
        "seeds": int(correct.shape[0]), "questions": int(correct.shape[1]),
        "episodes": int(correct.size),
        "accuracy": float(correct.mean() * 100.0),
        "std_accuracy": float(seed_acc.std()),
        "avg_tokens": float(res.tokens.mean()),
        "avg_seq_tokens": float(res.seq_tokens.mean()),
        "avg_opened": float(res.opened.mean()),
        "seconds": float(seconds),
        "question_ids": [int(q) for q in res.question_ids],
        "q_accuracy": correct.mean(axis=0).tolist(),
        "q_tokens": res.tokens.mean(axis=0).tolist(),
        "q_seq_tokens": res.seq_tokens.mean(axis=0).tolist(),
        "seed_accuracy": seed_acc.tolist(),
        "seed_tokens": res.tokens.mean(axis=1).tolist(),
    }


def results_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RESULTS)
