"""Evaluate the project's β-family (``short_race``) over a β grid against the published baselines.

For every model of a store (one dataset, 100 seeds by default) it prints accuracy, mean total
tokens and mean sequential tokens per β, the baselines' figures next to them, the average over
models, and whether some β dominates each of SC@64, ASC, ESC and Parallel-Probe (accuracy at
least as high, tokens at most as many). When the AutoTTS reference file is found, CMC's figures
are shown too, with the family's accuracy interpolated at CMC's token counts.

    .venv/bin/python benchmarks/beta_family.py --store /tmp/st
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ttsgym.controllers.baselines import PUBLISHED_SPECS
from ttsgym.controllers.evaluate import evaluate
from ttsgym.controllers.family import ShortRace
from ttsgym.controllers.registry import parse_spec
from ttsgym.store import Store

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "autotts_aime24_reference.json"

# label -> key of the published reference table; the first four are the ones to dominate.
BASELINES: dict[str, str] = {
    "SC@64": "sc@64",
    "ASC(64,0.95)": "asc(64,0.95)",
    "ESC(64,8)": "esc(64,8)",
    "PP(64,T40,pp7,wu15)": "parallel_probe(64,K5,T40,pp7,wu15)",
    "SC@16": "sc@16",
}
MUST_DOMINATE = ("SC@64", "ASC(64,0.95)", "ESC(64,8)", "PP(64,T40,pp7,wu15)")

Row = tuple[float, float, float]  # accuracy %, mean tokens, mean sequential tokens


def run_all(store: str, models: list[str], dataset: str, betas: list[float], n_seeds: int,
            workers: int | None) -> tuple[dict[str, dict[float, Row]], dict[str, dict[str, Row]]]:
    """(family per model and β, baselines per model and label), through ``ttsgym eval``'s harness."""
    label_of = {parse_spec(PUBLISHED_SPECS[key]).text: label for label, key in BASELINES.items()}
    table = evaluate(store, [*(PUBLISHED_SPECS[k] for k in BASELINES.values()), ShortRace.name],
                     models=models, datasets=[dataset], betas=betas, seeds=n_seeds, workers=workers)
    family: dict[str, dict[float, Row]] = {m: {} for m in models}
    baselines: dict[str, dict[str, Row]] = {m: {} for m in models}
    for r in table.to_pylist():
        row = (r["accuracy"], r["avg_tokens"], r["avg_seq_tokens"])
        if r["controller"] == ShortRace.name:
            family[r["model"]][r["beta"]] = row
        else:
            baselines[r["model"]][label_of[r["controller"]]] = row
    return family, baselines


def load_cmc(path: Path | None, models: list[str], dataset: str) -> dict[str, dict[float, Row]]:
    """CMC's published (acc, tokens) per model and β from the reference file, if it covers them."""
    if path is None or not path.is_file():
        return {}
    results = json.loads(path.read_text()).get("results", {})
    out: dict[str, dict[float, Row]] = {}
    for m in models:
        entries = results.get(m, {}).get(dataset, {})
        points = {float(k[len("cmc(beta="):-1]): (v["acc"], v["avg_tokens"], float("nan"))
                  for k, v in entries.items() if k.startswith("cmc(beta=")}
        if not points:
            return {}
        out[m] = points
    return out


def average(per_model: dict[str, dict[Any, Row]]) -> dict[Any, Row]:
    """Mean over models of each key present for all of them."""
    models = list(per_model)
    keys = [k for k in per_model[models[0]] if all(k in per_model[m] for m in models)]
    return {k: tuple(float(np.mean([per_model[m][k][j] for m in models])) for j in range(3)) for k in keys}


def _fmt_row(label: str, row: Row, extra: str = "") -> str:
    acc, tok, seq = row
    seq_s = "      -" if np.isnan(seq) else f"{seq / 1000:6.1f}k"
    return f"  {label:<22} {acc:7.3f}  {tok / 1000:8.1f}k  {seq_s}{extra}"


def print_table(title: str, family: dict[float, Row], baselines: dict[str, Row],
                cmc: dict[float, Row] | None) -> None:
    print(f"\n== {title} ==")
    print(f"  {'controller':<22} {'acc %':>7}  {'tokens':>9}  {'seq':>7}")
    for b in sorted(family):
        print(_fmt_row(f"short_race β={b:g}", family[b]))
    for label, row in baselines.items():
        print(_fmt_row(label, row))
    if cmc:
        curve = sorted(family.values(), key=lambda r: r[1])
        xs, ys = [r[1] for r in curve], [r[0] for r in curve]
        for b in sorted(cmc):
            acc, tok, _ = cmc[b]
            mine = float(np.interp(tok, xs, ys, left=np.nan, right=np.nan))
            extra = "" if np.isnan(mine) else f"   short_race at equal tokens: {mine:.2f} ({mine - acc:+.2f})"
            print(_fmt_row(f"CMC β={b:g} (reference)", cmc[b], extra))


def dominance(family: dict[float, Row], baselines: dict[str, Row]) -> dict[str, list[float]]:
    """For each baseline to beat, the βs with accuracy ≥ and tokens ≤ the baseline's."""
    return {label: [b for b in sorted(family)
                    if family[b][0] >= baselines[label][0] and family[b][1] <= baselines[label][1]]
            for label in MUST_DOMINATE if label in baselines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=os.environ.get("TTSGYM_STORE"),
                        help="replay store directory (default: $TTSGYM_STORE)")
    parser.add_argument("--dataset", default="aime24")
    parser.add_argument("--models", default=None,
                        help="comma-separated (default: every model with the dataset)")
    parser.add_argument("--betas", default=",".join(f"{k / 10:g}" for k in range(11)),
                        help="comma-separated β grid (default 0,0.1,...,1)")
    parser.add_argument("--seeds", type=int, default=100, help="seeds 0..N-1 (default 100)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                        help="AutoTTS reference JSON for CMC's figures (skipped if absent)")
    args = parser.parse_args(argv)
    if not args.store:
        parser.error("give --store or set TTSGYM_STORE")
    start = time.perf_counter()
    store = Store(args.store)
    models = args.models.split(",") if args.models else [
        s.model for s in store.slices if s.dataset == args.dataset]
    if not models:
        parser.error(f"the store has no slice of dataset {args.dataset!r}")
    betas = [float(b) for b in args.betas.split(",")]

    family, baselines = run_all(str(store.path), models, args.dataset, betas, args.seeds, args.workers)
    cmc = load_cmc(args.reference, models, args.dataset) if args.seeds == 100 else {}

    print(f"short_race on {args.dataset}: {len(models)} model(s), {args.seeds} seeds, β grid {betas}")
    print("schedule:", {b: ShortRace.schedule(b) for b in (0.0, 0.5, 1.0)})
    for m in models:
        print_table(f"{m} / {args.dataset}", family[m], baselines[m], cmc.get(m))
    avg_family, avg_base = average(family), average(baselines)
    print_table(f"average over {len(models)} model(s)", avg_family, avg_base, average(cmc) if cmc else None)

    print("\nDominance (some β with accuracy ≥ and tokens ≤ the baseline, on the average):")
    ok = True
    for label, betas_ok in dominance(avg_family, avg_base).items():
        acc, tok, _ = avg_base[label]
        verdict = f"yes, β ∈ {{{', '.join(f'{b:g}' for b in betas_ok)}}}" if betas_ok else "NO"
        ok &= bool(betas_ok)
        print(f"  {label:<22} {acc:7.3f}% @ {tok / 1000:7.1f}k  dominated: {verdict}")
    print(f"\nran in {time.perf_counter() - start:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
