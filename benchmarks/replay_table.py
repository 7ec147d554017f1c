"""Time the reference table: 6 baselines × 4 models × 100 seeds × 30 questions = 72,000 episodes.

Prints wall seconds and episodes per second of `ttsgym eval`'s path (worker start included),
the same work through the Question API one episode at a time (what a per-episode Python
replay costs), the Question API's cost per interval read for a plain Python controller, and
the warm load time of a compiled slice. Targets: table ≤ 3 s wall on 2 cores, ≤ 1 µs per
read, warm load < 50 ms.

    python benchmarks/replay_table.py [--store STORE] [--repeat 3] [--skip-python]

Without --store it imports the shared AutoTTS data ($TTSGYM_DATA, default ../shared/data)
into a temporary store first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from ttsgym.controllers.baselines import PUBLISHED_SPECS as SPECS

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    return Path(os.environ.get("TTSGYM_DATA", REPO.parent / "shared" / "data")).resolve()


def ensure_store(path: str | None) -> Path:
    if path:
        return Path(path)
    from ttsgym.store import import_autotts

    src = shared_data() / "autotts-replay"
    if not src.exists():
        raise SystemExit(f"no --store given and no shared data at {src} (set TTSGYM_DATA)")
    return import_autotts(src, Path(tempfile.mkdtemp(prefix="ttsgym-bench-")) / "store")


def time_table(store: Path, workers: int | None, repeat: int) -> tuple[list[float], object]:
    from ttsgym.controllers.evaluate import evaluate

    walls, table = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        table = evaluate(store, list(SPECS.values()), seeds=100, workers=workers)
        walls.append(time.perf_counter() - start)
    return walls, table


def check_reference(table, reference_path: Path) -> tuple[float, float] | None:
    if not reference_path.exists():
        return None
    from ttsgym.controllers.registry import parse_spec

    ref = json.loads(reference_path.read_text())["results"]
    rows = {(r["model"], r["controller"]): r for r in table.to_pylist()}
    worst_acc = worst_tok = 0.0
    for model, datasets in ref.items():
        for method, spec in SPECS.items():
            want = datasets["aime24"][method]
            row = rows[(model, parse_spec(spec).text)]
            worst_acc = max(worst_acc, abs(row["accuracy"] - want["acc"]))
            worst_tok = max(worst_tok, abs(row["avg_tokens"] - want["avg_tokens"]) / want["avg_tokens"])
    return worst_acc, worst_tok


def time_python_path(store: Path) -> float:
    """The same 72,000 episodes through the Question API, one process, one episode at a time."""
    from ttsgym.controllers.registry import parse_spec
    from ttsgym.env import PoolCache, run_episodes
    from ttsgym.store import Store, load_replay

    start = time.perf_counter()
    for info in Store(store).slices:
        arrays = load_replay(store, info.model, info.dataset)
        pools = PoolCache(arrays)
        for spec_text in SPECS.values():
            spec = parse_spec(spec_text)
            run_episodes(spec.make, arrays, range(100), pools=pools)
    return time.perf_counter() - start


def time_reads(store: Path) -> tuple[float, int]:
    """ns per interval read of a plain Python controller: open 64 branches, read each to its end."""
    from ttsgym.env import PoolCache, Question, branch_order
    from ttsgym.store import Store, load_replay

    info = Store(store).slices[0]
    arrays = load_replay(store, info.model, info.dataset)
    pools = [PoolCache(arrays)[q] for q in range(arrays.n_questions)]
    reads = 0
    start = time.perf_counter()
    for seed in range(10):
        for pool in pools:
            question = Question(pool, branch_order("autotts", len(pool), seed))
            for _ in range(min(64, len(pool))):
                _, i, finished = question.probe_new()
                reads += 1
                while not finished:
                    _, finished = question.probe_more(i)
                    reads += 1
    return (time.perf_counter() - start) / reads * 1e9, reads


def time_warm_load(store: Path) -> float:
    from ttsgym.store import Store, load_replay

    info = Store(store).slices[0]
    load_replay(store, info.model, info.dataset)
    samples = []
    for _ in range(20):
        start = time.perf_counter()
        load_replay(store, info.model, info.dataset)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=os.environ.get("TTSGYM_STORE"))
    parser.add_argument("--workers", type=int, default=None, help="default: all cores")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-python", action="store_true", help="skip the slow per-episode timing")
    args = parser.parse_args()
    store = ensure_store(args.store)
    from ttsgym.controllers.evaluate import default_workers

    workers = args.workers or default_workers()
    print(f"store: {store}   cores available: {default_workers()}   workers: {workers}")

    warm_ms = time_warm_load(store)
    print(f"warm load of a compiled slice: {warm_ms:.2f} ms (target < 50 ms)")

    walls, table = time_table(store, workers, args.repeat)
    episodes = sum(r["episodes"] for r in table.to_pylist())
    best, median = min(walls), statistics.median(walls)
    print(f"reference table via ttsgym eval: {episodes:,} episodes, wall best {best:.2f} s, "
          f"median {median:.2f} s over {len(walls)} runs -> {episodes / best:,.0f} episodes/s "
          f"(target <= 3 s on 2 cores)")
    checked = check_reference(table, shared_data().parent / "reference" / "autotts_aime24_reference.json")
    if checked:
        print(f"  vs reference: max |Δ accuracy| = {checked[0]:.2e} points, "
              f"max relative |Δ tokens| = {checked[1]:.2e}")

    ns, reads = time_reads(store)
    print(f"Question API: {ns:.0f} ns per interval read, controller loop included "
          f"({reads:,} reads; target <= 1000 ns)")

    if not args.skip_python:
        slow = time_python_path(store)
        print(f"same table through the Question API, one episode at a time, 1 process: {slow:.1f} s "
              f"-> the vectorised path is {slow / best:.1f}x faster")


if __name__ == "__main__":
    main()
