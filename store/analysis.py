"""Per-slice statistics of a store, computed by DuckDB straight over the Parquet files.

``maj@k`` is the accuracy of a majority vote (ties to the lowest branch id) over disjoint
groups of k consecutive recorded branches (branch ids ``g·k … g·k+k−1``; incomplete groups are
dropped), averaged over groups within a question, then over questions. ``maj@1`` is thus the
mean branch accuracy with every question weighted equally.
"""

from __future__ import annotations

import pyarrow as pa

from ttsgym.store.schema import ERR
from ttsgym.store.store import Store

MAJ_KS = (1, 8, 64)

SLICE_STATS_SQL = """
WITH ks AS (SELECT unnest($ks::INTEGER[]) AS k),
base AS (
    SELECT model, dataset,
           count(DISTINCT question_id) AS questions,
           count(*) AS branches,
           sum(n_probes) AS probes,
           sum(n_tokens) AS tokens,
           avg(correct::DOUBLE) AS branch_accuracy,
           avg(n_tokens) AS mean_branch_tokens,
           avg(n_probes) AS probes_per_branch
    FROM branches GROUP BY model, dataset
),
probe_stats AS (
    SELECT model, dataset,
           avg((answer = $err)::DOUBLE) AS err_rate,
           avg(correct::DOUBLE) AS probe_accuracy,
           avg(CASE WHEN step > 1 THEN (canonical <> prev)::DOUBLE END) AS answer_change_rate
    FROM (SELECT *, lag(canonical) OVER (PARTITION BY model, dataset, question_id, branch_id
                                         ORDER BY step) AS prev FROM steps)
    GROUP BY model, dataset
),
votes AS (
    SELECT model, dataset, k, question_id, branch_id // k AS grp, final_canonical,
           count(*) AS n, min(branch_id) AS first_seen, bool_or(correct) AS correct
    FROM branches, ks GROUP BY ALL
),
groups AS (
    SELECT model, dataset, k, question_id, grp, sum(n) AS size,
           arg_max(correct, n * 1000000000 - first_seen) AS correct
    FROM votes GROUP BY ALL
),
per_question AS (
    SELECT model, dataset, k, question_id, avg(correct::DOUBLE) AS acc
    FROM groups WHERE size = k GROUP BY ALL
),
maj AS (SELECT model, dataset, k, avg(acc) AS acc FROM per_question GROUP BY ALL)
SELECT base.*, probe_stats.err_rate, probe_stats.probe_accuracy, probe_stats.answer_change_rate,
       {maj_columns}
FROM base
LEFT JOIN probe_stats USING (model, dataset)
LEFT JOIN maj USING (model, dataset)
GROUP BY ALL
ORDER BY model, dataset
"""


def slice_stats(store: Store | str, ks: tuple[int, ...] = MAJ_KS) -> pa.Table:
    """One row per (model, dataset): sizes, accuracies, maj@k, ERR and answer-change rates."""
    store = store if isinstance(store, Store) else Store(store)
    con = store.connect()
    maj_columns = ", ".join(f"max(maj.acc) FILTER (WHERE maj.k = {int(k)}) AS maj_{int(k)}" for k in ks)
    sql = SLICE_STATS_SQL.format(maj_columns=maj_columns)
    # pa.table() reads the relation through the Arrow C stream: no copy, no version-specific API
    table = pa.table(con.sql(sql, params={"ks": list(ks), "err": ERR}))
    return table.cast(pa.schema([
        pa.field(f.name, pa.int64()) if pa.types.is_decimal(f.type) else f for f in table.schema
    ]))
