"""Metrics over the result table of ``ttsgym eval``: pure functions, tables in, tables or values out.

The result table (:data:`ttsgym.env.results.RESULTS`) has one row per (model, dataset,
controller, β) with aggregates and per-question / per-seed vectors. Everything here is computed
from those columns alone, so a report never needs the episodes again.

Definitions (units: accuracy in percent unless a name says fraction; tokens per question):

- **accuracy**: mean over seeds and questions of 1{correct}, in percent (the ``accuracy`` column).
- **total / sequential tokens**: ``avg_tokens`` / ``avg_seq_tokens``, the mean over seeds and
  questions of all tokens read / of the deepest branch's tokens (the latency proxy).
- **branches opened**: ``avg_opened``, mean branches opened per episode.
- **tokens per branch**: ``avg_tokens / avg_opened`` (a ratio of means, not a mean of ratios).
- **spread over seeds**: population standard deviation (ddof = 0) of the per-seed accuracies
  (``std_accuracy``); it measures sensitivity to branch order, not sampling of questions.
- **95 % CI**: a percentile bootstrap over questions of the mean of ``q_accuracy`` (each
  question's accuracy already averaged over seeds), ``scipy.stats.bootstrap``,
  10 000 resamples, fixed seed 0. It answers "how much would accuracy move on another draw of
  questions like these", the uncertainty that dominates on 30-question benchmarks.
- **Δ vs SC@64**: accuracy minus SC@64's accuracy on the same (model, dataset, protocol, κ),
  with a paired bootstrap CI over questions (resampling per-question differences).
- **Pareto frontier**: the points that no other point dominates in (fewer or equal tokens,
  higher or equal accuracy, one of them strictly).
- **tokens to match**: along a curve sorted by tokens, the first crossing of a target accuracy,
  linearly interpolated in log10 tokens.
- **AUC over log tokens**: the mean accuracy of the piecewise-linear (in log10 tokens) curve over
  a stated token range [lo, hi], i.e. the area divided by log10(hi / lo); in percent.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import stats

from ttsgym.env.results import RESULTS

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
CI_METHOD = "percentile"
CI_SEED = 0
ALL_MODELS = "all models (mean)"
SC64 = "SC@64"

# Columns a table must have for the metrics (all of the results schema but run bookkeeping).
REQUIRED_COLUMNS = tuple(n for n in RESULTS.names if n not in ("seconds", "episodes"))

# What metrics_table adds to each row.
METRIC_FIELDS = [
    pa.field("family", pa.string()),
    pa.field("sweep", pa.string()),
    pa.field("point", pa.string()),
    pa.field("tokens_per_branch", pa.float64()),
    pa.field("ci_low", pa.float64()),
    pa.field("ci_high", pa.float64()),
    pa.field("is_sc64", pa.bool_()),
    pa.field("sc64_accuracy", pa.float64()),
    pa.field("sc64_tokens", pa.float64()),
    pa.field("delta_accuracy", pa.float64()),
    pa.field("delta_ci_low", pa.float64()),
    pa.field("delta_ci_high", pa.float64()),
    pa.field("token_ratio", pa.float64()),
    pa.field("on_frontier", pa.bool_()),
]
METRICS = pa.schema([*RESULTS, *METRIC_FIELDS])

Point = tuple[float, float]  # (tokens, accuracy)


# ---------------------------------------------------------------------------------------------
# Checking and normalising tables


def check_table(table: pa.Table, source: str = "table") -> pa.Table:
    """The table restricted to the results schema; a ValueError naming ``source`` if it is not one.

    Checking up front turns a confusing KeyError deep in a report into one line a user can act on.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{source}: not a ttsgym results table (missing columns: {', '.join(missing)}); "
                         "write one with `ttsgym eval --out`")
    for name in ("seconds", "episodes"):
        if name not in table.column_names:
            fill = [0.0] * table.num_rows if name == "seconds" else [
                int(s) * int(q) for s, q in zip(table["seeds"].to_pylist(), table["questions"].to_pylist(),
                                                strict=True)]
            table = table.append_column(name, pa.array(fill, RESULTS.field(name).type))
    try:
        return table.select(RESULTS.names).cast(RESULTS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ValueError(f"{source}: columns have unexpected types ({exc})") from None


def _rows(table: pa.Table | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return table.to_pylist() if isinstance(table, pa.Table) else [dict(r) for r in table]


def setting(row: dict[str, Any]) -> tuple[str, int, int | None]:
    """The evaluation setting (protocol, κ, budget) that makes token counts comparable."""
    return (row["protocol"], int(row["kappa"] or 0), row["budget"])


# ---------------------------------------------------------------------------------------------
# Per-row statistics


def tokens_per_branch(avg_tokens: float, avg_opened: float) -> float:
    """Mean tokens per opened branch: ``avg_tokens / avg_opened`` (NaN when nothing was opened)."""
    return float(avg_tokens) / float(avg_opened) if avg_opened else math.nan


def seed_spread(seed_accuracy: Sequence[float]) -> float:
    """Population std (ddof = 0) of per-seed accuracies, as ``ttsgym eval`` reports it."""
    values = np.asarray(seed_accuracy, dtype=np.float64)
    return float(values.std()) if values.size else math.nan


def bootstrap_ci(
    values: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    method: str = CI_METHOD,
    seed: int = CI_SEED,
) -> tuple[float, float]:
    """Bootstrap CI of the mean of ``values`` (one value per question), in the values' units.

    ``scipy.stats.bootstrap`` with the given method (percentile by default) and a generator seeded
    with ``seed``, so the same table always gives the same interval. With fewer than two values
    there is nothing to resample and the interval is (NaN, NaN); when every value is equal the
    interval is that value (what any resample gives) without calling scipy, whose BCa would fail.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return (math.nan, math.nan)
    if np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    res = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                          method=method, vectorized=True, rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return (float(ci.low), float(ci.high))


def accuracy_ci(row: dict[str, Any], **kwargs: Any) -> tuple[float, float]:
    """95 % bootstrap CI over questions of a row's accuracy, in percent (see :func:`bootstrap_ci`)."""
    lo, hi = bootstrap_ci(row["q_accuracy"] or [], **kwargs)
    return (lo * 100.0, hi * 100.0)


def paired_delta_ci(
    row: dict[str, Any], reference: dict[str, Any], **kwargs: Any
) -> tuple[float, float]:
    """CI (percent points) of accuracy(row) − accuracy(reference), paired over shared questions.

    Resampling questions jointly for both controllers is the same as resampling the per-question
    differences, which removes the (large) variation of question difficulty from the interval.
    """
    a = dict(zip(row["question_ids"] or [], row["q_accuracy"] or [], strict=True))
    b = dict(zip(reference["question_ids"] or [], reference["q_accuracy"] or [], strict=True))
    shared = sorted(set(a) & set(b))
    lo, hi = bootstrap_ci([a[q] - b[q] for q in shared], **kwargs)
    return (lo * 100.0, hi * 100.0)


# ---------------------------------------------------------------------------------------------
# Curves: frontier, tokens to match, area under the curve


def _clean(curve: Iterable[Point]) -> list[Point]:
    """Points sorted by tokens; NaNs dropped; points at equal tokens merged (mean accuracy)."""
    merged: dict[float, list[float]] = defaultdict(list)
    for tokens, acc in curve:
        if tokens is None or acc is None or math.isnan(tokens) or math.isnan(acc):
            continue
        if tokens <= 0:
            raise ValueError(f"tokens must be positive on a log axis, got {tokens}")
        merged[float(tokens)].append(float(acc))
    return [(t, sum(a) / len(a)) for t, a in sorted(merged.items())]


def pareto_frontier(points: Sequence[Point]) -> list[int]:
    """Indices of the (tokens, accuracy) points on the Pareto frontier, cheapest first.

    A point is on the frontier when no other point has tokens ≤ and accuracy ≥ with at least one
    strict; exact duplicates of a frontier point are all kept. Points with NaN are never on it.
    """
    pts = np.asarray([(math.nan, math.nan) if p[0] is None or p[1] is None else p for p in points],
                     dtype=np.float64).reshape(-1, 2)
    ok = ~np.isnan(pts).any(axis=1)
    keep = []
    for i in np.flatnonzero(ok):
        t, a = pts[i]
        others = pts[ok]
        dominated = np.any((others[:, 0] <= t) & (others[:, 1] >= a)
                           & ((others[:, 0] < t) | (others[:, 1] > a)))
        if not dominated:
            keep.append(int(i))
    return sorted(keep, key=lambda i: (pts[i, 0], -pts[i, 1], i))


def tokens_to_match(curve: Iterable[Point], target_accuracy: float) -> float | None:
    """Fewest tokens at which a curve reaches ``target_accuracy``, or None if it never does.

    The curve is sorted by tokens (points at equal tokens averaged). If its cheapest point already
    reaches the target, that point's tokens are returned (no extrapolation below the curve).
    Otherwise the first segment (t0, a0) → (t1, a1) with a0 < target ≤ a1 is interpolated
    linearly in log10 tokens: log t = log t0 + (target − a0) / (a1 − a0) · (log t1 − log t0).
    """
    pts = _clean(curve)
    if not pts:
        return None
    if pts[0][1] >= target_accuracy:
        return pts[0][0]
    for (t0, a0), (t1, a1) in itertools.pairwise(pts):
        if a1 >= target_accuracy:
            frac = (target_accuracy - a0) / (a1 - a0)
            return float(10 ** (math.log10(t0) + frac * (math.log10(t1) - math.log10(t0))))
    return None


def auc_log_tokens(curve: Iterable[Point], lo: float, hi: float) -> float | None:
    """Mean accuracy of a curve over log10 tokens in [lo, hi]: ∫ acc d(log10 t) / log10(hi / lo).

    The curve is the piecewise-linear interpolation (in log10 tokens) of its points sorted by
    tokens. The result is in the curve's accuracy units and comparable across families only over
    the same [lo, hi] (see :func:`common_token_range`). None when the curve has fewer than two
    points or does not cover [lo, hi] (no extrapolation).
    """
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
    pts = _clean(curve)
    eps = 1e-9
    if len(pts) < 2 or pts[0][0] > lo * (1 + eps) or pts[-1][0] < hi * (1 - eps):
        return None
    x = np.log10([t for t, _ in pts])
    y = np.asarray([a for _, a in pts])
    a, b = math.log10(lo), math.log10(hi)
    inner = x[(x > a) & (x < b)]
    grid = np.concatenate([[a], inner, [b]])
    area = np.trapezoid(np.interp(grid, x, y), grid)
    return float(area / (b - a))


def common_token_range(curves: Iterable[Iterable[Point]]) -> tuple[float, float] | None:
    """The token range every curve with two or more points covers: (max of mins, min of maxes)."""
    spans = [(c[0][0], c[-1][0]) for c in (_clean(c) for c in curves) if len(c) >= 2]
    if not spans:
        return None
    lo, hi = max(s[0] for s in spans), min(s[1] for s in spans)
    return (lo, hi) if lo < hi else None


# ---------------------------------------------------------------------------------------------
# Families: which rows form one curve


@dataclass(frozen=True)
class Curve:
    """Rows of one (model, dataset, setting) that form one line: a family across β or one knob.

    ``sweep`` is "β" or the baseline parameter that varies (e.g. "n" for SC@N); None for a single
    configuration. ``rows`` index the table the curve was built from, sorted by tokens.
    """

    model: str
    dataset: str
    setting: tuple[str, int, int | None]
    family: str
    sweep: str | None
    rows: tuple[int, ...]
    labels: tuple[str, ...]
    points: tuple[Point, ...]


@functools.cache
def _defaults(name: str) -> dict[str, str]:
    try:
        from ttsgym.controllers.registry import builtins

        cls = builtins().get(name)
    except Exception:  # a broken built-in must not stop a report
        cls = None
    if cls is None:
        return {}
    return {k: (f"{v:g}" if isinstance(v, float) else str(v)) for k, v in cls.defaults.items()}


def spec_params(controller: str, name: str) -> dict[str, str]:
    """A controller label's parameters with built-in defaults filled in (``sc`` → {"n": "64"})."""
    params = dict(_defaults(name))
    head, _, tail = controller.partition(":")
    if head == name:
        for item in filter(None, tail.split(",")):
            key, _, value = item.partition("=")
            params[key.strip()] = value.strip()
    return params


def is_sc64(row: dict[str, Any]) -> bool:
    """Whether a row is SC@64 (self-consistency over 64 full reads, the reference baseline)."""
    return (row["name"] == "sc" and row["kind"] == "baseline" and row["beta"] is None
            and spec_params(row["controller"], "sc").get("n") == "64")


def family_curves(table: pa.Table | Sequence[dict[str, Any]]) -> list[Curve]:
    """Group rows into curves; every row lands in exactly one curve.

    - Rows with a β (β-families, user classes evaluated at several β) form one curve per
      controller label, across β.
    - Baseline rows of one name whose parameters differ in one knob form one curve across that
      knob (``sc:n=1 … sc:n=64`` → "sc across n"). When several knobs vary, the knob that puts
      the most rows on curves of two or more is swept and the other knobs are held fixed.
    - Anything else is a single-configuration point.

    Curves never mix evaluation settings (protocol, κ, budget); when a table holds more than one
    setting, family names end with the setting, e.g. "sc across n [κ=100]".
    """
    rows = _rows(table)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        base = (r["model"], r["dataset"], setting(r))
        if r["beta"] is not None:
            groups[(*base, "beta", r["controller"])].append(i)
        elif r["kind"] == "baseline":
            groups[(*base, "baseline", r["name"])].append(i)
        else:
            groups[(*base, "point", r["controller"])].append(i)
    settings = {setting(r) for r in rows}
    curves: list[Curve] = []
    for (model, dataset, sett, how, ident), idx in groups.items():
        if how == "beta":
            parts = [(idx, f"{ident} across β", "β", {i: f"β={rows[i]['beta']:g}" for i in idx})]
        elif how == "point" or len(idx) == 1:
            parts = [([i], rows[i]["controller"], None, {}) for i in idx]
        else:
            parts = _baseline_sweeps(rows, idx, ident)
        suffix = _setting_suffix(sett, settings)
        for members, family, sweep, labels in parts:
            order = sorted(members, key=lambda i: (rows[i]["avg_tokens"], i))
            curves.append(Curve(model, dataset, sett, family + suffix, sweep, tuple(order),
                                tuple(labels.get(i, "") for i in order),
                                tuple((rows[i]["avg_tokens"], rows[i]["accuracy"]) for i in order)))
    return curves


def _setting_suffix(sett: tuple[str, int, int | None], settings: set[tuple]) -> str:
    if len(settings) < 2:
        return ""
    names = ("protocol", "κ", "budget")
    varying = [k for k in range(3) if len({s[k] for s in settings}) > 1]
    return " [" + ", ".join(f"{names[k]}={sett[k]}" for k in varying) + "]"


def _baseline_sweeps(rows: list[dict[str, Any]], idx: list[int],
                     name: str) -> list[tuple[list[int], str, str | None, dict[int, str]]]:
    """Split one baseline's rows into sweeps over one knob and single points."""
    params = {i: spec_params(rows[i]["controller"], name) for i in idx}
    keys = list(dict.fromkeys(k for i in idx for k in params[i]))
    varying = [k for k in keys if len({params[i].get(k) for i in idx}) > 1]
    best: tuple[int, str, dict] | None = None
    for key in varying:
        by_rest: dict[tuple, list[int]] = defaultdict(list)
        for i in idx:
            by_rest[tuple(sorted((k, v) for k, v in params[i].items() if k != key))].append(i)
        covered = sum(len(g) for g in by_rest.values() if len(g) > 1)
        if covered and (best is None or covered > best[0]):
            best = (covered, key, by_rest)
    if best is None:
        return [([i], rows[i]["controller"], None, {}) for i in idx]
    _, key, by_rest = best
    defaults = _defaults(name)
    out: list[tuple[list[int], str, str | None, dict[int, str]]] = []
    for rest, members in by_rest.items():
        if len(members) == 1:
            out.append((members, rows[members[0]]["controller"], None, {}))
            continue
        fixed = ",".join(f"{k}={v}" for k, v in rest if defaults.get(k) != v)
        family = f"{name}:{fixed} across {key}" if fixed else f"{name} across {key}"
        out.append((members, family, key, {i: f"{key}={params[i][key]}" for i in members}))
    return out


# ---------------------------------------------------------------------------------------------
# Tables


def average_over_models(table: pa.Table | Sequence[dict[str, Any]]) -> pa.Table:
    """Rows averaged over models: one per (dataset, controller, β, setting), model = ALL_MODELS.

    Only datasets with two or more models are averaged, and only configurations present for
    every model of that dataset, so each mean is over the same models. Accuracy, tokens,
    sequential tokens and branches opened are plain means over models. Per-question vectors are
    averaged question by question (when the models share question ids), so the bootstrap CI of an
    averaged row is the CI of the multi-model mean. Per-seed accuracies are averaged seed by seed
    (when seed counts agree) and ``std_accuracy`` is the spread of that mean over seeds.
    """
    rows = [r for r in _rows(table) if r["model"] != ALL_MODELS]
    models_of: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        models_of[r["dataset"]].add(r["model"])
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["controller"], r["beta"], setting(r))].append(r)
    out = []
    for (dataset, _, _, _), members in groups.items():
        models = models_of[dataset]
        if len(models) < 2 or {m["model"] for m in members} != models or len(members) != len(models):
            continue
        out.append(_average(members))
    return pa.Table.from_pylist(out, schema=RESULTS)


def _average(members: list[dict[str, Any]]) -> dict[str, Any]:
    first = members[0]
    row = {k: first[k] for k in ("dataset", "controller", "name", "kind", "beta", "protocol", "kappa",
                                 "budget")}
    row["model"] = ALL_MODELS
    row["synthetic"] = any(m["synthetic"] for m in members)
    for col in ("accuracy", "avg_tokens", "avg_seq_tokens", "avg_opened"):
        row[col] = float(np.mean([m[col] for m in members]))
    row["seeds"] = min(m["seeds"] for m in members)
    row["questions"] = first["questions"]
    row["episodes"] = sum(m["episodes"] for m in members)
    row["seconds"] = sum(m["seconds"] or 0.0 for m in members)
    ids = [list(m["question_ids"] or []) for m in members]
    if all(sorted(i) == sorted(ids[0]) for i in ids) and ids[0]:
        qids = sorted(ids[0])
        row["question_ids"] = qids
        for col in ("q_accuracy", "q_tokens", "q_seq_tokens"):
            per = [dict(zip(m["question_ids"], m[col], strict=True)) for m in members]
            row[col] = [float(np.mean([p[q] for p in per])) for q in qids]
    else:
        row.update(question_ids=[], q_accuracy=[], q_tokens=[], q_seq_tokens=[])
    if len({len(m["seed_accuracy"] or []) for m in members}) == 1 and first["seed_accuracy"]:
        row["seed_accuracy"] = np.mean([m["seed_accuracy"] for m in members], axis=0).tolist()
        row["seed_tokens"] = np.mean([m["seed_tokens"] for m in members], axis=0).tolist()
        row["std_accuracy"] = seed_spread(row["seed_accuracy"])
    else:
        row.update(seed_accuracy=[], seed_tokens=[], std_accuracy=math.nan)
    return row


def sc64_reference(rows: Sequence[dict[str, Any]]) -> dict[tuple, int]:
    """Index of the SC@64 row (no budget) per (model, dataset, protocol, κ); first one wins."""
    ref: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        if is_sc64(r) and r["budget"] is None:
            ref.setdefault((r["model"], r["dataset"], *setting(r)[:2]), i)
    return ref


def metrics_table(
    table: pa.Table | Sequence[dict[str, Any]],
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    method: str = CI_METHOD,
    seed: int = CI_SEED,
) -> pa.Table:
    """The result table with every metric per row (schema :data:`METRICS`).

    Added columns: ``family`` / ``sweep`` / ``point`` (the curve a row belongs to, see
    :func:`family_curves`), ``tokens_per_branch``, ``ci_low`` / ``ci_high`` (bootstrap CI of
    accuracy over questions, percent), ``is_sc64``, ``sc64_accuracy`` / ``sc64_tokens`` (the
    reference of the same model, dataset, protocol and κ), ``delta_accuracy`` (percent points)
    with its paired CI, ``token_ratio`` (avg_tokens / SC@64's), and ``on_frontier`` (Pareto
    frontier of total tokens vs accuracy among rows of the same model, dataset, protocol, κ).
    """
    rows = _rows(table)
    ci_kwargs = {"confidence": confidence, "n_resamples": n_resamples, "method": method, "seed": seed}
    for curve in family_curves(rows):
        for i, label in zip(curve.rows, curve.labels, strict=True):
            rows[i].update(family=curve.family, sweep=curve.sweep, point=label)
    ref = sc64_reference(rows)
    for r in rows:
        r["tokens_per_branch"] = tokens_per_branch(r["avg_tokens"], r["avg_opened"])
        r["ci_low"], r["ci_high"] = accuracy_ci(r, **ci_kwargs)
        r["is_sc64"] = is_sc64(r)
        j = ref.get((r["model"], r["dataset"], *setting(r)[:2]))
        if j is None:
            r.update(sc64_accuracy=None, sc64_tokens=None, delta_accuracy=None, delta_ci_low=None,
                     delta_ci_high=None, token_ratio=None)
            continue
        sc = rows[j]
        r["sc64_accuracy"], r["sc64_tokens"] = sc["accuracy"], sc["avg_tokens"]
        r["delta_accuracy"] = r["accuracy"] - sc["accuracy"]
        r["delta_ci_low"], r["delta_ci_high"] = paired_delta_ci(r, sc, **ci_kwargs)
        r["token_ratio"] = r["avg_tokens"] / sc["avg_tokens"] if sc["avg_tokens"] else None
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[(r["model"], r["dataset"], *setting(r)[:2])].append(i)
    for idx in groups.values():
        front = set(pareto_frontier([(rows[i]["avg_tokens"], rows[i]["accuracy"]) for i in idx]))
        for k, i in enumerate(idx):
            rows[i]["on_frontier"] = k in front
    return pa.Table.from_pylist(rows, schema=METRICS)


def natural_key(text: str) -> list[Any]:
    """Sort key that orders "Qwen3-4B" before "Qwen3-14B" (numbers compared as numbers)."""
    return [(0, float(p), "") if re.fullmatch(r"\d+(?:\.\d+)?", p) else (1, 0.0, p)
            for p in re.split(r"(\d+(?:\.\d+)?)", text) if p]
