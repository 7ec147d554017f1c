"""How fast candidate evaluation is: sandbox start-up, the screening sweep (11 β × every slice ×
30 questions × 20 seeds) of a CMC-expensive candidate, the audit, and the Question facade's
per-read cost against the plain Question's. Prints measured numbers; asserts nothing.

    python benchmarks/bench_search_eval.py [--store /work/stores/aime24] [--seeds 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit
from pathlib import Path

from ttsgym.controllers.evaluate import evaluate
from ttsgym.controllers.runner import Call
from ttsgym.env.question import BranchPool, Question
from ttsgym.search_agent.evaluation import Limits, SearchSplit, evaluate_candidate
from ttsgym.search_agent.facade import QuestionView
from ttsgym.search_agent.sandbox import isolation, sandbox_runner
from ttsgym.store import load_replay

HERE = Path(__file__).parent
BETAS = [i / 10 for i in range(11)]


def facade_cost(store: str) -> None:
    split = SearchSplit.open(store)
    arrays = load_replay(store, *split.slices[0])
    pool = BranchPool.from_arrays(arrays, 0)
    plain = Question(pool)
    plain.open()
    view = QuestionView(Question(pool))
    view.open()
    n = 200_000
    for label, stmt in (("extend(0) (a probe read)", "q.extend(0)"), ("latest(0)", "q.latest(0)"),
                        ("total_tokens", "q.total_tokens")):
        times = {}
        for name, q in (("Question", plain), ("facade", view)):
            if label.startswith("extend"):  # fresh episodes so every read is a real probe read
                def setup(name=name):
                    q = Question(pool) if name == "Question" else QuestionView(Question(pool))
                    q.open()
                    return q
                best = float("inf")
                for _ in range(200):
                    q = setup()
                    depth = len(pool.probes[0]) - 1
                    t = time.perf_counter()
                    for _ in range(depth):
                        q.extend(0)
                    if depth:
                        best = min(best, (time.perf_counter() - t) / depth)
                times[name] = best
            else:
                times[name] = min(timeit.repeat(stmt, globals={"q": q}, number=n, repeat=5)) / n
        plain_ns, view_ns = times["Question"] * 1e9, times["facade"] * 1e9
        print(f"  {label:28s} Question {plain_ns:6.0f} ns   facade {view_ns:6.0f} ns")


def startup(scratch: Path) -> None:
    t = time.perf_counter()
    with sandbox_runner(scratch, workers=1, deadline=None, memory_mb=4096, cpu_seconds=60) as runner:
        list(runner.map([Call("ttsgym.search_agent.worker:_jsonable", {"value": 1})]))
        first = time.perf_counter() - t
        t = time.perf_counter()
        list(runner.map([Call("ttsgym.search_agent.worker:_jsonable", {"value": 1})]))
        again = time.perf_counter() - t
    print(f"sandbox start-up ({isolation()}): first call {first:.3f} s, next call {again * 1000:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="/work/stores/aime24")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print("facade per-read cost (best of repeats):")
    facade_cost(args.store)
    with tempfile.TemporaryDirectory() as tmp:
        startup(Path(tmp) / "s")
        code = (HERE / "cmc_like.py").read_text()
        split = SearchSplit.open(args.store)
        for label, seeds in (("screening sweep", range(args.seeds)),):
            res = evaluate_candidate(code, split, betas=BETAS, seeds=seeds,
                                     limits=Limits(timeout_s=600, workers=args.workers),
                                     scratch=Path(tmp) / "c", progress=True)
            episodes = sum(r["episodes"] for r in res.rows)
            print(f"{label}: {len(BETAS)} β × {len(split.slices)} slices × {args.seeds} seeds = {episodes} "
                  f"episodes: ok={res.ok} ({res.reason or res.audit.get('detail')})")
            print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in res.timings.items())
                  + f"; total {res.seconds:.2f} s")
        t = time.perf_counter()
        evaluate(args.store, [f"{HERE / 'cmc_like.py'}:CostlyRace"], betas=BETAS, seeds=args.seeds,
                 workers=args.workers)
        print(f"same sweep through ttsgym eval (no sandbox, no audit): {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        evaluate(args.store, ["short_race"], betas=BETAS, seeds=args.seeds, workers=args.workers)
        print(f"short_race's sweep through ttsgym eval, for scale: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
