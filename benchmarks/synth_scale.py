"""Scale benchmark: generate a 10,000-question × 256-branch synthetic store, compile and load it.

Each phase runs in its own child process so that its peak RSS is its own (``ru_maxrss`` of a
process only grows; ``os.wait4`` reports one child's). Prints wall time and peak RSS of
generate / compile (first ``load_replay``) / warm load (second ``load_replay``, memory-mapped)
plus a small replay (SC@16 over 10 seeds) on the loaded arrays.

    python benchmarks/synth_scale.py [--questions 10000] [--branches 256] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = {
    "generate": """
from ttsgym.store.synth import generate
generate(STORE, questions=Q, branches=B, seed=0, progress=True)
""",
    "compile": """
from ttsgym.store import load_replay
a = load_replay(STORE, "synthetic-qwen3-4b", "synthetic-aime24")
print(json.dumps({"probes": int(a.probe_cls.shape[0]), "branches": int(a.n_branches.sum())}))
""",
    "warm load": """
import numpy as np
from ttsgym.controllers.baselines import SelfConsistency
from ttsgym.controllers.batched import run_batched
from ttsgym.store import load_replay
t = time.perf_counter()
a = load_replay(STORE, "synthetic-qwen3-4b", "synthetic-aime24")
load = time.perf_counter() - t
t = time.perf_counter()
r = run_batched(SelfConsistency(n=16), a, range(10))
print(json.dumps({"load_s": load, "sc16_10_seeds_s": time.perf_counter() - t,
                  "sc16_accuracy": float(r.accuracy)}))
""",
}


def run_phase(name: str, store: Path, n_q: int, n_b: int) -> dict:
    """One phase in a child process: wall time, the child's peak RSS and what it printed."""
    code = f"import json, time\nSTORE, Q, B = {str(store)!r}, {n_q}, {n_b}\n" + PHASES[name]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: child exited with status {proc.returncode}")
    info = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {"phase": name, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, **info}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=10_000)
    ap.add_argument("--branches", type=int, default=256)
    ap.add_argument("--keep", help="write the store here and keep it (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ttsgym-synth-scale-"))
    store = root / "store"
    try:
        rows = [run_phase(name, store, args.questions, args.branches) for name in PHASES]
        size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file() and "_cache" not in f.parts)
        cache = sum(f.stat().st_size for f in (store / "_cache").rglob("*") if f.is_file())
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"synthetic store {args.questions:,} questions × {args.branches} branches "
          f"(Parquet {size / 2**20:,.0f} MiB, compiled cache {cache / 2**20:,.0f} MiB)")
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in ("phase", "wall_s", "peak_rss_mb")}
        shown = ", ".join(f"{k} {v:,.3f}" if isinstance(v, float) else f"{k} {v:,}" for k, v in extra.items())
        print(f"  {r['phase']:10s} wall {r['wall_s']:7.2f} s   "
              f"peak RSS {r['peak_rss_mb']:8,.0f} MiB   {shown}")
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"  this process peak RSS {me:,.0f} MiB; largest child {kids:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
