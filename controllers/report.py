"""``write_report``: a markdown summary and PNG plots from result tables of ``ttsgym eval``.

The report answers a researcher's first question, "which controller gives the best accuracy for
the tokens?": per (model, dataset) a table with 95 % CIs, the Pareto frontier and the comparison
with SC@64, plus accuracy-vs-tokens plots (log tokens, one panel per model and one for the mean
over models). Plots use matplotlib's object API (``Figure`` rendered by Agg), so importing this
module never changes the caller's pyplot backend.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ttsgym.controllers.metrics import (
    ALL_MODELS,
    CI_METHOD,
    CI_SEED,
    CONFIDENCE,
    N_RESAMPLES,
    Curve,
    auc_log_tokens,
    average_over_models,
    check_table,
    common_token_range,
    family_curves,
    metrics_table,
    natural_key,
    setting,
    tokens_to_match,
)

Source = pa.Table | str | os.PathLike
DEDUP_KEY = ("model", "dataset", "controller", "beta", "protocol", "kappa", "budget")
POINT_MARKERS = ("s", "D", "^", "v", "P", "X", "*", "h", "<", ">", "p", "d")
PLOTS = {"avg_tokens": ("accuracy_vs_tokens", "total tokens per question (log scale)"),
         "avg_seq_tokens": ("accuracy_vs_seq_tokens",
                            "sequential tokens per question, deepest branch (log scale)")}


# ---------------------------------------------------------------------------------------------
# Loading


def load_results(tables_or_paths: Source | Sequence[Source]) -> tuple[pa.Table, list[str], int]:
    """Read, check and concatenate result tables: (table, source names, rows replaced).

    Rows repeating a configuration (model, dataset, controller, β, protocol, κ, budget) of an
    earlier input replace it, so re-running a baseline into a second file does not double it.
    Errors name the file that caused them.
    """
    items = [tables_or_paths] if isinstance(tables_or_paths, pa.Table | str | os.PathLike) \
        else list(tables_or_paths)
    if not items:
        raise ValueError("no result tables given")
    tables, names = [], []
    for k, item in enumerate(items):
        if isinstance(item, pa.Table):
            name, table = f"table #{k + 1}", item
        else:
            name = str(item)
            if not Path(item).exists():
                raise FileNotFoundError(f"{name}: no such file")
            if not Path(item).is_file():
                raise ValueError(f"{name}: not a file (give the Parquet file `ttsgym eval --out` wrote)")
            try:
                table = pq.read_table(item)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ValueError(f"{name}: cannot be read as Parquet ({exc})") from None
        table = check_table(table, name)
        if table.num_rows == 0:
            raise ValueError(f"{name}: the results table has no rows")
        tables.append(table)
        names.append(name)
    rows = pa.concat_tables(tables).to_pylist()
    latest: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        latest[tuple(r[k] for k in DEDUP_KEY)] = i
    keep = sorted(latest.values())
    merged = pa.Table.from_pylist([rows[i] for i in keep], schema=tables[0].schema)
    return merged, names, len(rows) - len(keep)


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_tokens(x: float | None) -> str:
    """Compact token counts for tables and axes: 950, 15.9k, 1.01M."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.2f}M"
    if abs(x) >= 1e3:
        return f"{x / 1e3:.1f}k" if abs(x) < 1e5 else f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def _axis_tokens(x: float, _pos: Any = None) -> str:
    if x >= 1e6:
        return f"{x / 1e6:g}M"
    if x >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def _num(x: float | None, spec: str = ".2f", signed: bool = False) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:+{spec}}" if signed else f"{x:{spec}}"


def _ci(lo: float | None, hi: float | None, signed: bool = False) -> str:
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "n/a"
    return f"[{_num(lo, '.1f', signed)}, {_num(hi, '.1f', signed)}]"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "dataset"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _panel_title(model: str, models: list[str]) -> str:
    return f"mean of {len(models)} models" if model == ALL_MODELS else model


# ---------------------------------------------------------------------------------------------
# Plots


def family_styles(curves: list[Curve]) -> dict[str, dict[str, Any]]:
    """One colour and marker per family, shared by every panel and plot of the report."""
    sweeps = sorted({c.family for c in curves if c.sweep is not None},
                    key=lambda f: (not f.startswith("sc "), " across β" in f, natural_key(f)))
    points = sorted({c.family for c in curves if c.sweep is None} - set(sweeps), key=natural_key)
    families = sweeps + points
    palette = _palette(len(families))
    styles = {}
    for k, fam in enumerate(families):
        marker = "o" if fam in sweeps else POINT_MARKERS[(k - len(sweeps)) % len(POINT_MARKERS)]
        styles[fam] = {"color": palette[k], "marker": marker, "line": fam in sweeps}
    return styles


def _palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def accuracy_figure(rows: list[dict[str, Any]], curves: list[Curve], dataset: str, x: str,
                    styles: dict[str, dict[str, Any]], ci_bars: bool = False) -> Figure:
    """The figure for a dataset: a panel per model (+ the mean over models), accuracy vs log tokens.

    ``rows`` are rows of :func:`metrics_table`, ``curves`` their :func:`family_curves`, ``x`` is
    "avg_tokens" or "avg_seq_tokens", ``styles`` maps family → colour/marker (``family_styles``).

    Lines are families across β or one knob (points labelled with their β / knob value), other
    configurations are single markers, the dashed grey line is SC@64's accuracy; on the
    total-tokens plot a faint staircase traces the Pareto frontier. CI bars are off by default:
    unpaired question-level CIs (±10-15 points on 30 questions) overlap for nearly every pair and
    invite the wrong reading; the paired Δ vs SC@64 in the markdown is the comparison to use.
    Synthetic rows put "SYNTHETIC DATA" in the title and across every panel.
    """
    drows = [r for r in rows if r["dataset"] == dataset]
    models = sorted({r["model"] for r in drows if r["model"] != ALL_MODELS}, key=natural_key)
    panels = models + ([ALL_MODELS] if any(r["model"] == ALL_MODELS for r in drows) else [])
    synthetic = any(r["synthetic"] for r in drows)
    n = len(panels)
    ncols = 3 if n >= 5 else min(n, 2)
    nrows = math.ceil(n / ncols)
    spare = nrows * ncols - n
    fig = Figure(figsize=(5.4 * ncols + (3.2 if spare == 0 and n == 1 else 0), 4.3 * nrows + 0.8),
                 dpi=130)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    used_families: list[str] = []
    for ax, model in zip(axes, panels, strict=False):
        prow = [r for r in drows if r["model"] == model]
        for fam in _draw_panel(ax, prow, [c for c in curves if c.dataset == dataset and c.model == model],
                               rows, x, styles, frontier=(x == "avg_tokens"), ci_bars=ci_bars):
            if fam not in used_families:
                used_families.append(fam)
        title = _panel_title(model, models)
        if model == ALL_MODELS:
            title += " (" + ", ".join(models) + ")" if sum(len(m) + 2 for m in models) < 34 else ""
        ax.set_title(title, fontsize=11, fontweight="bold")
        if synthetic:
            ax.text(0.5, 0.5, "SYNTHETIC", transform=ax.transAxes, fontsize=38, color="tab:red",
                    alpha=0.13, ha="center", va="center", rotation=25, zorder=0)
    for ax in axes[n:]:
        ax.set_axis_off()
    handles = [_legend_handle(fam, styles[fam]) for fam in sorted(used_families, key=list(styles).index)]
    handles.append(Line2D([], [], color="0.35", linestyle="--", linewidth=1.2, label="SC@64 accuracy"))
    if x == "avg_tokens":
        handles.append(Line2D([], [], color="0.55", linewidth=4, alpha=0.3,
                              label="Pareto frontier (best accuracy so far)"))
    if ci_bars:
        handles.append(Line2D([], [], color="0.3", marker="|", markersize=10, linestyle="none",
                              label="95% CI over questions"))
    seeds = sorted({r["seeds"] for r in drows})
    questions = sorted({r["questions"] for r in drows})
    what = "total" if x == "avg_tokens" else "sequential"
    title = (f"{dataset}: accuracy vs {what} tokens per question — higher and further left is better\n"
             f"mean over {'/'.join(map(str, seeds))} seeds × {'/'.join(map(str, questions))} questions"
             + ("; bars: 95% bootstrap CI over questions" if ci_bars else
                "; 95% CIs and paired differences vs SC@64 are in report.md"))
    if synthetic:
        title = "SYNTHETIC DATA — " + title
    fig.suptitle(title, fontsize=12.5, color="tab:red" if synthetic else "black")
    if spare:
        slot = axes[n]
        slot.legend(handles=handles, loc="center", fontsize=9.5, frameon=False, title="controller",
                    title_fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    else:
        ncol = min(len(handles), 4 if ncols > 1 else 2)
        legend_height = 0.25 + 0.3 * math.ceil(len(handles) / ncol)
        fig.set_figheight(fig.get_figheight() + legend_height)  # room below, panels keep their size
        height = fig.get_figheight()
        fig.tight_layout(rect=(0, legend_height / height, 1, 0.95))
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9.5, frameon=False)
    return fig


def _legend_handle(family: str, style: dict[str, Any]) -> Line2D:
    return Line2D([], [], color=style["color"], marker=style["marker"], markersize=7,
                  linestyle="-" if style["line"] else "none", linewidth=1.8, label=family)


def _draw_panel(ax: Any, prow: list[dict[str, Any]], curves: list[Curve], rows: list[dict[str, Any]],
                x: str, styles: dict[str, dict[str, Any]], frontier: bool, ci_bars: bool) -> list[str]:
    drawn = []
    labels: list[tuple[float, float, str, Any]] = []
    for curve in sorted(curves, key=lambda c: list(styles).index(c.family)):
        members = sorted((rows[i] for i in curve.rows), key=lambda r: r[x])
        st = styles[curve.family]
        xs = [r[x] for r in members]
        ys = [r["accuracy"] for r in members]
        if ci_bars:
            _ci_bars(ax, members, xs, ys, st["color"])
        ax.plot(xs, ys, color=st["color"], marker=st["marker"], markersize=6 if st["line"] else 8,
                linestyle="-" if st["line"] and len(xs) > 1 else "none", linewidth=1.8, zorder=3,
                markeredgecolor="white" if not st["line"] else st["color"], markeredgewidth=0.6)
        if curve.sweep is not None:
            labels.extend((r[x], r["accuracy"], _short_label(r["point"]), st["color"]) for r in members)
        drawn.append(curve.family)
    sc = [r for r in prow if r["is_sc64"] and r["budget"] is None]
    if sc:
        ax.axhline(sc[0]["accuracy"], color="0.35", linestyle="--", linewidth=1.2, zorder=1)
        ax.annotate(f"SC@64 {sc[0]['accuracy']:.1f}%", (0.01, sc[0]["accuracy"]),
                    xycoords=("axes fraction", "data"), textcoords="offset points", xytext=(2, 3),
                    fontsize=7.5, color="0.3")
    if frontier:  # one staircase per (protocol, κ): frontiers are computed within a setting
        for sett in sorted({setting(r)[:2] for r in prow}):
            front = sorted((r for r in prow if r["on_frontier"] and setting(r)[:2] == sett),
                           key=lambda r: r[x])
            ax.plot([r[x] for r in front], [r["accuracy"] for r in front], color="0.55", linewidth=4,
                    alpha=0.3, drawstyle="steps-post", solid_capstyle="butt", zorder=1)
    ax.set_xscale("log")
    lo = min(r[x] for r in prow)
    hi = max(r[x] for r in prow)
    narrow = hi / lo < 20
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if narrow
                                          else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(_axis_tokens))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo / 1.35, hi * 1.35)
    ax.margins(y=0.12)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlabel(PLOTS[x][1], fontsize=9.5)
    ax.set_ylabel("accuracy (%)", fontsize=9.5)
    _place_labels(ax, labels)
    return drawn


def _short_label(point: str | None) -> str:
    """``n=16`` and ``β=0.5`` stay; long knob names drop to the value (the legend names the knob)."""
    key, _, value = (point or "").partition("=")
    return point or "" if len(key) <= 2 else value


def _place_labels(ax: Any, labels: list[tuple[float, float, str, Any]], size: float = 7.0) -> None:
    """Write each point label up-left of its point unless it would overlap one already written.

    Overlap is judged on boxes estimated in display pixels (glyph width ≈ 0.6 em), which is
    enough to keep dense sweeps readable without a layout solver.
    """
    ax.get_ylim()  # settle autoscaling so data → pixel transforms are final
    fig_dpi = ax.figure.dpi
    em = size * fig_dpi / 72
    pad = 4 * fig_dpi / 72
    placed: list[tuple[float, float, float, float]] = []
    for xv, yv, text, color in labels:
        if not text:
            continue
        px, py = ax.transData.transform((xv, yv))
        box = (px - pad - 0.6 * em * len(text), py + pad, px - pad, py + pad + em)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            continue
        placed.append(box)
        ax.annotate(text, (xv, yv), textcoords="offset points", xytext=(-4, 4), ha="right", va="bottom",
                    fontsize=size, color=color, zorder=4)


def _ci_bars(ax: Any, members: list[dict[str, Any]], xs: list[float], ys: list[float], color: Any) -> None:
    err = [[max(0.0, r["accuracy"] - r["ci_low"]) if _finite(r["ci_low"]) else 0.0 for r in members],
           [max(0.0, r["ci_high"] - r["accuracy"]) if _finite(r["ci_high"]) else 0.0 for r in members]]
    ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=color, elinewidth=0.9, alpha=0.45, capsize=0, zorder=2)


def _finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


# ---------------------------------------------------------------------------------------------
# Markdown


def _row_name(r: dict[str, Any], multi: bool) -> str:
    name = r["controller"] + (f" β={r['beta']:g}" if r["beta"] is not None else "")
    if multi:
        budget = f", budget={r['budget']}" if r["budget"] is not None else ""
        name += f" [{r['protocol']}, κ={r['kappa']}{budget}]"
    return name


def _row_table(prow: list[dict[str, Any]], multi: bool) -> list[str]:
    has_sc = any(r["sc64_accuracy"] is not None for r in prow)
    mixed = len({r["synthetic"] for r in prow}) > 1
    head = ["frontier", "controller", "acc %", "95% CI", "± seeds", "tokens", "seq tokens", "tokens/branch",
            "branches"]
    if has_sc:
        head += ["Δacc vs SC@64 [95% CI]", "tokens ÷ SC@64"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":-:", "---"] + ["--:"] * (len(head) - 2)) + "|"]
    for r in sorted(prow, key=lambda r: (r["avg_tokens"], r["controller"])):
        name = _row_name(r, multi)
        if r["is_sc64"]:
            name += " (SC@64)"
        if mixed and r["synthetic"]:
            name += " (synthetic)"
        cells = ["★" if r["on_frontier"] else "", f"`{_md_cell(name)}`", _num(r["accuracy"]),
                 _ci(r["ci_low"], r["ci_high"]), _num(r["std_accuracy"]), fmt_tokens(r["avg_tokens"]),
                 fmt_tokens(r["avg_seq_tokens"]), fmt_tokens(r["tokens_per_branch"]),
                 _num(r["avg_opened"], ".1f")]
        if has_sc:
            if r["delta_accuracy"] is None:
                cells += ["—", "—"]
            elif r["is_sc64"]:
                cells += ["reference", "1.00×"]
            else:
                cells += [f"{_num(r['delta_accuracy'], '.2f', True)} "
                          f"{_ci(r['delta_ci_low'], r['delta_ci_high'], True)}",
                          f"{r['token_ratio']:.2f}×" if r["token_ratio"] is not None else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _frontier_line(prow: list[dict[str, Any]], multi: bool) -> str:
    front = sorted((r for r in prow if r["on_frontier"]), key=lambda r: r["avg_tokens"])
    parts = []
    for r in front:
        name = _row_name(r, multi)
        parts.append(f"`{_md_cell(name)}` ({fmt_tokens(r['avg_tokens'])}, {r['accuracy']:.1f}%)")
    return " → ".join(parts) if parts else "(none)"


def _comparison(drows: list[dict[str, Any]], curves: list[Curve], panels: list[str],
                models: list[str]) -> list[str]:
    target: dict[tuple, dict[str, Any]] = {}
    for r in drows:
        if r["is_sc64"] and r["budget"] is None:
            target.setdefault((r["model"], *setting(r)[:2]), r)
    if not target:
        return ["No SC@64 row in these results (SC with n = 64, no budget); add "
                "`--controller sc:n=64` to `ttsgym eval` for this comparison.", ""]
    cols = [p for p in panels if any(k[0] == p for k in target)]
    fams = sorted({c.family for c in curves},
                  key=lambda f: (not f.startswith("sc "), " across " not in f, natural_key(f)))
    out = ["Tokens per question each controller needs to reach SC@64's accuracy on the same model "
           "(first crossing along the family's curve sorted by tokens, interpolated linearly in "
           "log10 tokens; a single configuration counts only if it reaches it by itself), and "
           "that amount as a fraction of SC@64's tokens. — = never reaches it (its best accuracy in "
           "brackets).", ""]
    head = ["controller / family", *[_panel_title(p, models) for p in cols]]
    out += ["| " + " | ".join(head) + " |", "|---" + "|--:" * len(cols) + "|",
            "| *SC@64 accuracy, tokens* | " + " | ".join(
                "; ".join(f"{t['accuracy']:.2f}%, {fmt_tokens(t['avg_tokens'])}"
                          for k, t in target.items() if k[0] == p) for p in cols) + " |"]
    for fam in fams:
        cells = []
        for p in cols:
            mine = [c for c in curves if c.model == p and c.family == fam]
            ref_row = target.get((p, *mine[0].setting[:2])) if mine else None
            if ref_row is None:
                cells.append("")
                continue
            need = tokens_to_match(mine[0].points, ref_row["accuracy"])
            ref = ref_row["avg_tokens"]
            best = max(a for _, a in mine[0].points)
            cells.append(f"— (best {best:.2f}%)" if need is None
                         else f"{fmt_tokens(need)} ({need / ref:.2f}×)")
        out.append(f"| `{_md_cell(fam)}` | " + " | ".join(cells) + " |")
    out.append("")
    auc_lines = []
    for p in cols:
        mine = [c for c in curves if c.model == p and len(c.points) >= 2]
        rng = common_token_range([c.points for c in mine])
        if rng is None:
            continue
        aucs = [(c.family, auc_log_tokens(c.points, *rng))
                for c in sorted(mine, key=lambda c: natural_key(c.family))]
        # a curve whose points collapse to one token count (e.g. SC capped by a small pool) has no area
        vals = ", ".join(f"`{_md_cell(fam)}` {auc:.2f}%" for fam, auc in aucs if auc is not None)
        if not vals:
            continue
        auc_lines.append(f"- {_panel_title(p, models)} — over {fmt_tokens(rng[0])}–{fmt_tokens(rng[1])} "
                         f"tokens: {vals}")
    if auc_lines:
        out += ["Area under accuracy vs log10 tokens, normalised to a mean accuracy (%) over the token "
                "range every curve of the panel covers (families with two or more points only):", "",
                *auc_lines, ""]
    return out


def write_report(
    tables_or_paths: Source | Sequence[Source],
    out_dir: str | os.PathLike,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = CI_SEED,
    ci_bars: bool = False,
) -> Path:
    """Write ``report.md``, ``metrics.csv`` and one PNG per dataset and token kind into ``out_dir``.

    Input: result tables of ``ttsgym eval`` (pyarrow tables or Parquet paths), concatenated. The
    mean over models is added per dataset with two or more models. ``ci_bars`` draws 95 % CI
    bars on the plots (off by default, see :func:`accuracy_figure`). Returns the path of
    ``report.md``.
    """
    table, sources, replaced = load_results(tables_or_paths)
    full = pa.concat_tables([table, average_over_models(table)])
    mtable = metrics_table(full, n_resamples=n_resamples, seed=seed)
    rows = mtable.to_pylist()
    curves = family_curves(rows)
    styles = family_styles(curves)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scalar = [f.name for f in mtable.schema if not pa.types.is_list(f.type)]
    pacsv.write_csv(mtable.select(scalar), out / "metrics.csv")

    synthetic = any(r["synthetic"] for r in rows)
    multi = len({setting(r) for r in rows}) > 1
    datasets = sorted({r["dataset"] for r in rows}, key=natural_key)
    md = ["# ttsgym report: accuracy vs tokens", ""]
    if synthetic:
        md += ["> **SYNTHETIC DATA.** Some or all rows come from a synthetic store: they describe "
               "generated traces, not a real model. Do not quote these numbers as results.", ""]
    md += [f"Inputs: {', '.join(f'`{s}`' for s in sources)} — {table.num_rows} result rows"
           + (f" ({replaced} repeated configurations: the later input's row was kept)" if replaced else "")
           + f"; protocol(s): {', '.join(sorted({r['protocol'] for r in rows}))}.", "",
           "How to read the tables:", "",
           "- **acc %**: mean over seeds and questions of 1{correct}.",
           f"- **95% CI**: {CI_METHOD} bootstrap over questions of the per-question accuracy (already "
           f"averaged over seeds), `scipy.stats.bootstrap`, {n_resamples} resamples, seed {seed}, "
           f"confidence {CONFIDENCE:.0%}. It reflects which questions were asked; **± seeds** is the "
           "standard deviation over seeds (branch orders) of the accuracy.",
           "- **tokens**: mean total tokens read per question; **seq tokens**: the deepest branch's tokens "
           "(latency proxy); **tokens/branch** = tokens ÷ branches; **branches**: mean branches opened.",
           "- **Δacc vs SC@64**: accuracy minus SC@64's on the same model, in points, with a paired "
           "bootstrap CI over questions; **tokens ÷ SC@64**: this row's tokens over SC@64's.",
           "- **★**: on the Pareto frontier (no other row of the table has fewer-or-equal tokens and "
           "higher-or-equal accuracy, one strictly).",
           "- **mean of N models** rows: the same configuration averaged over the models "
           "of the dataset (only configurations every model has), per question, so the CI is the "
           "CI of the mean.", ""]
    for dataset in datasets:
        drows = [r for r in rows if r["dataset"] == dataset]
        dcurves = [c for c in curves if c.dataset == dataset]
        models = sorted({r["model"] for r in drows if r["model"] != ALL_MODELS}, key=natural_key)
        panels = ([ALL_MODELS] if any(r["model"] == ALL_MODELS for r in drows) else []) + models
        dsyn = any(r["synthetic"] for r in drows)
        md += [f"## {dataset}" + (" (synthetic)" if dsyn else ""), ""]
        head = panels[0]
        md += [f"**Frontier, {_panel_title(head, models)}** (cheapest first): "
               + _frontier_line([r for r in drows if r["model"] == head], multi), ""]
        for x, (stem, _) in PLOTS.items():
            png = out / f"{stem}_{_slug(dataset)}.png"
            accuracy_figure(rows, curves, dataset, x, styles, ci_bars=ci_bars).savefig(
                png, bbox_inches="tight", pad_inches=0.15)  # long titles never clipped
            what = "total" if x == "avg_tokens" else "sequential"
            md += [f"![{dataset}: accuracy vs {what} tokens]({png.name})", ""]
        md += [f"### Comparison with SC@64 — {dataset}", "",
               *_comparison(drows, dcurves, panels, models)]
        for model in panels:
            prow = [r for r in drows if r["model"] == model]
            title = _panel_title(model, models)
            if model == ALL_MODELS:
                title += f" ({', '.join(models)})"
            psyn = any(r["synthetic"] for r in prow)
            qs = sorted({r["questions"] for r in prow})
            ss = sorted({r["seeds"] for r in prow})
            md += [f"### {title} — {dataset}" + (" (synthetic)" if psyn else ""), "",
                   f"{'/'.join(map(str, qs))} questions × {'/'.join(map(str, ss))} seeds. "
                   f"Frontier: {_frontier_line(prow, multi)}", "", *_row_table(prow, multi), ""]
    md.append("Every row with all metrics (no per-question vectors): [metrics.csv](metrics.csv).")
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path
