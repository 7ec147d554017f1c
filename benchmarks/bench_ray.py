"""Local backend against Ray on the same machine, and what a 10,000 × 256 store costs Ray.

Measures, and prints as a table (``--json`` also writes the numbers):

1. the baseline table (SC@1..64, ASC, ESC, Parallel-Probe × every slice × 100 seeds) and a
   short_race β-sweep (11 β × every slice × 100 seeds) through ``evaluate`` on the local
   process pool and on a Ray cluster started here with the same cores; the tables must be equal;
2. one search candidate (the offline proposer's first program) through the whole sandboxed
   pipeline (11 β × every slice × 20 seeds, audit included) on both backends: the per-candidate
   cost the capacity note in the README is computed from;
3. the object store with a synthetic 10,000-question × 256-branch slice: bytes, ``ray.put``
   seconds, a worker's first read (zero-copy: the arrays are views into shared memory) and its
   per-slice branch-pool build, one SC@16 task over 10 seeds on the worker, a candidate's sandbox
   pool export, and (``--scale-candidate-seeds N``) one whole candidate on that slice.

    python benchmarks/bench_ray.py [--store STORE] [--workers 2] [--skip-scale | --only-scale]
                                   [--scale-candidate-seeds 20] [--json out.json]

Without ``--store`` the shared AIME24 data (``TTSGYM_DATA``) is imported into a temporary store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _store(path: str | None, tmp: Path) -> str:
    if path:
        return path
    from ttsgym.store import import_autotts

    data = Path(os.environ.get("TTSGYM_DATA", ROOT.parent / "shared" / "data")) / "autotts-replay"
    if not data.exists():
        raise SystemExit(f"no --store and no shared data at {data} (set TTSGYM_DATA)")
    return str(import_autotts(data, tmp / "store"))


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _same(a, b) -> bool:
    drop = {"seconds"}
    return [{k: v for k, v in r.items() if k not in drop} for r in a.to_pylist()] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b.to_pylist()]


def eval_phase(store: str, workers: int, results: dict) -> None:
    from ttsgym.controllers.evaluate import evaluate
    from ttsgym.search_agent.run import BASELINE_SPECS, BETA_GRID

    jobs = {"baseline table": dict(controllers=list(BASELINE_SPECS)),
            "short_race β-sweep": dict(controllers=["short_race"], betas=list(BETA_GRID))}
    for name, job in jobs.items():
        local, t_local = _timed(evaluate, store, seeds=100, workers=workers, **job)
        ray_t, t_ray = _timed(evaluate, store, seeds=100, backend="ray", **job)
        episodes = sum(local.column("episodes").to_pylist())
        results[name] = {"local_s": t_local, "ray_s": t_ray, "ray_over_local": t_ray / t_local,
                         "episodes": episodes, "equal": _same(local, ray_t),
                         "task_cpu_s": sum(local.column("seconds").to_pylist())}


def candidate_phase(store: str, workers: int, results: dict) -> None:
    from ttsgym.search_agent.backends import LocalCandidates, RayCandidates
    from ttsgym.search_agent.evaluation import Limits, SearchSplit
    from ttsgym.search_agent.offline import OfflineProposer
    from ttsgym.search_agent.run import BETA_GRID

    code = OfflineProposer(seed=0).propose(0, [], None).code
    split = SearchSplit.open(store)
    limits = Limits(timeout_s=1800, workers=workers)
    out = {}
    for name, make in (("local", lambda: LocalCandidates(split)), ("ray", lambda: RayCandidates(split))):
        backend = make()
        with tempfile.TemporaryDirectory() as scratch:
            start = time.perf_counter()
            ev = backend.result(backend.submit(code, betas=BETA_GRID, seeds=range(20), limits=limits,
                                               scratch=Path(scratch) / "c"))
            out[name] = {"seconds": time.perf_counter() - start, "ok": ev.ok, "timings": ev.timings,
                         "curve": ev.curve}
        backend.close()
    episodes = len(split.slices) * len(BETA_GRID) * 20 * split.arrays(*split.slices[0]).n_questions
    results["one candidate"] = {
        "local_s": out["local"]["seconds"], "ray_s": out["ray"]["seconds"],
        "ray_over_local": out["ray"]["seconds"] / out["local"]["seconds"], "episodes": episodes,
        "equal": out["local"]["curve"] == out["ray"]["curve"] and out["local"]["ok"] and out["ray"]["ok"],
        "stages_local_s": {k: round(v, 2) for k, v in out["local"]["timings"].items()},
        "cpu_s_per_candidate": out["local"]["seconds"] * workers}


def scale_phase(results: dict, questions: int, branches: int, candidate_seeds: int, workers: int) -> None:
    import numpy as np

    from ttsgym.controllers.ray_backend import connect, put_slice
    from ttsgym.store import load_replay
    from ttsgym.store.synth import generate

    ray = connect(None)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TTSGYM_BENCH_TMP")) as tmp:
        store = Path(tmp) / "big"
        _, t_gen = _timed(generate, store, questions=questions, branches=branches, seed=0)
        (model, dataset), = {(m, d) for m, d in _slices(store)}
        arrays, t_compile = _timed(load_replay, store, model, dataset)
        nbytes = sum(v.nbytes for v in vars(arrays).values() if isinstance(v, np.ndarray))
        ref, t_put = _timed(put_slice, ray, arrays)

        @ray.remote(num_cpus=1)
        def first_read(box: list) -> dict:
            import numpy as np

            from ttsgym.controllers.ray_backend import _SLICES, _worker_slice

            t = time.perf_counter()
            a, pools = _worker_slice(box)
            got = time.perf_counter() - t
            arrays = [v for v in vars(a).values() if isinstance(v, np.ndarray)]
            zero_copy = not any(v.flags.owndata or v.flags.writeable for v in arrays)
            t = time.perf_counter()
            for q in range(a.n_questions):
                pools[q]
            build = time.perf_counter() - t
            from ttsgym.controllers.baselines import SelfConsistency
            from ttsgym.controllers.batched import run_batched

            t = time.perf_counter()
            run_batched(SelfConsistency(n=16), a, range(10))
            sc = time.perf_counter() - t
            _SLICES.clear()
            return {"get_s": got, "zero_copy": zero_copy, "pools_s": build, "sc16_10_seeds_s": sc}

        worker = ray.get(first_read.remote([ref]))
        # what a candidate's evaluation writes for its sandbox: the gold-free pools of the slice
        from ttsgym.search_agent.evaluation import SearchSplit, export_pools

        split = SearchSplit(store=store, slices=[(model, dataset)], _arrays={(model, dataset): arrays})
        _, t_export = _timed(export_pools, split, split.slices, Path(tmp) / "pools")
        export_mb = sum(f.stat().st_size for f in (Path(tmp) / "pools").iterdir()) / 2**20
        results["10k × 256 object store"] = {
            "questions": questions, "branches": branches, "generate_s": t_gen, "compile_s": t_compile,
            "object_mb": nbytes / 2**20, "put_s": t_put, **worker, "export_pools_s": t_export,
            "export_pools_mb": export_mb}
        if candidate_seeds:  # one whole candidate on the big slice (local backend: the same pipeline)
            from ttsgym.search_agent.evaluation import Limits, evaluate_candidate
            from ttsgym.search_agent.offline import OfflineProposer
            from ttsgym.search_agent.run import BETA_GRID

            code = OfflineProposer(seed=0).propose(0, [], None).code
            ev, t_cand = _timed(evaluate_candidate, code, split, betas=BETA_GRID,
                                seeds=range(candidate_seeds), limits=Limits(timeout_s=7200, workers=workers),
                                scratch=Path(tmp) / "cand")
            results["10k × 256 candidate"] = {"seeds": candidate_seeds, "ok": ev.ok, "reason": ev.reason,
                                             "seconds": t_cand, "cpu_s": t_cand * workers,
                                             "stages_s": {k: round(v, 1) for k, v in ev.timings.items()}}


def _slices(store: Path) -> list[tuple[str, str]]:
    from ttsgym.store import Store

    return [(s.model, s.dataset) for s in Store(store).slices]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--skip-scale", action="store_true", help="skip the 10,000 × 256 object-store phase")
    parser.add_argument("--only-scale", action="store_true", help="only the 10,000 × 256 phase")
    parser.add_argument("--scale-candidate-seeds", type=int, default=0, metavar="N",
                        help="also evaluate one candidate on the big slice at N seeds "
                             "(20: ~5 min on 2 cores)")
    parser.add_argument("--questions", type=int, default=10_000)
    parser.add_argument("--branches", type=int, default=256)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)
    from ttsgym.controllers.ray_backend import cluster_cpus, connect

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(args.store, Path(tmp))
        ray, t_start = _timed(connect, None)  # a new local cluster on this machine's cores
        results["cluster"] = {"start_s": t_start, "cpus": cluster_cpus(ray)[0], "workers": args.workers}
        if not args.only_scale:
            eval_phase(store, args.workers, results)
            candidate_phase(store, args.workers, results)
        if not args.skip_scale:
            scale_phase(results, args.questions, args.branches, args.scale_candidate_seeds, args.workers)
    print(f"Ray {ray.__version__}, local cluster of {results['cluster']['cpus']} CPUs started in "
          f"{results['cluster']['start_s']:.1f} s; local backend with {args.workers} workers")
    jobs = [n for n in ("baseline table", "short_race β-sweep", "one candidate") if n in results]
    if jobs:
        print(f"{'job':<22} {'episodes':>9} {'local s':>8} {'ray s':>8} {'ray/local':>9}  equal")
    for name in jobs:
        r = results[name]
        print(f"{name:<22} {r['episodes']:>9} {r['local_s']:>8.1f} {r['ray_s']:>8.1f} "
              f"{r['ray_over_local']:>9.2f}  {r['equal']}")
    if "one candidate" in results:
        c = results["one candidate"]
        print(f"one candidate, stages on the local backend (s): {c['stages_local_s']}; "
              f"{c['cpu_s_per_candidate']:.0f} CPU-s per candidate")
    if "10k × 256 object store" in results:
        s = results["10k × 256 object store"]
        print(f"{s['questions']:,} × {s['branches']} slice: generate {s['generate_s']:.0f} s, compile "
              f"{s['compile_s']:.0f} s, {s['object_mb']:.0f} MB in the object store, put {s['put_s']:.2f} s; "
              f"a worker's first read {s['get_s']:.3f} s (zero-copy: {s['zero_copy']}), its branch pools "
              f"{s['pools_s']:.1f} s once per slice, SC@16 × 10 seeds {s['sc16_10_seeds_s']:.1f} s; "
              f"a candidate's sandbox pool export {s['export_pools_s']:.0f} s, {s['export_pools_mb']:.0f} MB")
    if "10k × 256 candidate" in results:
        c = results["10k × 256 candidate"]
        reason = f"; {c['reason']}" if c["reason"] else ""
        print(f"one candidate on that slice at {c['seeds']} seeds: ok={c['ok']} {c['seconds']:.0f} s "
              f"({c['cpu_s']:.0f} CPU-s), stages {c['stages_s']}{reason}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    ray.shutdown()
    return 0 if all(results[n]["equal"] for n in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
