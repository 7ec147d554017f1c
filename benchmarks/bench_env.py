"""Env steps per second of ``ttsgym/WidthDepth-v0`` with trivial policies (targets: ≥ 100,000
steps/s for the raw env in one process).

Modes: the raw env (``WidthDepthEnv``), the ``gym.make`` env (OrderEnforcing + PassiveEnvChecker
wrappers), and ``gym.make_vec(num_envs=2)`` sync and async (one sub-process per env). Policies:

- ``deep``: BRANCH, then CONTINUE(0) until the branch finishes, then ANSWER (long episodes: the
  step path dominates);
- ``branch-answer``: BRANCH, ANSWER, reset (one reset per two steps: the reset path dominates);
- ``probe``: BRANCH, then CONTINUE(0)/PROBE(0) alternately until finished, then ANSWER.

Resets are counted in the time, not in the steps. Ratios are printed, not asserted.

    python benchmarks/bench_env.py [--store STORE] [--model Qwen3-4B] [--seconds 2]

Without --store it imports the shared AutoTTS data ($TTSGYM_DATA, default ../shared/data)
into a temporary store first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import ttsgym.env  # noqa: F401 - registers ttsgym/WidthDepth-v0
from ttsgym.env import WidthDepthEnv

REPO = Path(__file__).resolve().parents[1]


def ensure_store(path: str | None) -> Path:
    if path:
        return Path(path)
    from ttsgym.store import import_autotts

    data = Path(os.environ.get("TTSGYM_DATA", REPO.parent / "shared" / "data")).resolve()
    return import_autotts(data / "autotts-replay", Path(tempfile.mkdtemp(prefix="ttsgym-bench-")) / "store")


def next_action(policy: str, status0: int, probed0: int, m: int = 64) -> int:
    """The trivial policies, from the first slot's status (0 unopened, 1 active, 2 finished)."""
    if status0 == 0:
        return 1  # BRANCH
    if policy == "branch-answer" or status0 != 1:
        return 0  # ANSWER
    if policy == "probe" and not probed0:
        return 2 + m  # PROBE(0)
    return 2  # CONTINUE(0)


def bench_single(env: gym.Env, policy: str, seconds: float) -> float:
    steps = 0
    obs, _ = env.reset(seed=0)
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            a = next_action(policy, obs["status"][0], obs["probed"][0])
            obs, _, terminated, truncated, _ = env.step(a)
            steps += 1
            if terminated or truncated:
                obs, _ = env.reset()
        if time.perf_counter() > deadline:
            break
    return steps / (time.perf_counter() - start)


def bench_vec(store: Path, model: str, mode: str, policy: str, seconds: float, num_envs: int = 2) -> float:
    envs = gym.make_vec("ttsgym/WidthDepth-v0", num_envs=num_envs, vectorization_mode=mode,
                        store=str(store), model=model, dataset="aime24")
    try:
        obs, _ = envs.reset(seed=0)
        steps = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(200):
                acts = np.array([next_action(policy, s[0], p[0])
                                 for s, p in zip(obs["status"], obs["probed"], strict=True)])
                obs, _, _, _, _ = envs.step(acts)
                steps += num_envs
        return steps / (time.perf_counter() - start)
    finally:
        envs.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store")
    ap.add_argument("--model", default="Qwen3-4B")
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    store = ensure_store(args.store)
    raw = WidthDepthEnv(store, args.model, "aime24")
    wrapped = gym.make("ttsgym/WidthDepth-v0", store=str(store), model=args.model, dataset="aime24")
    print(f"store {store}, model {args.model}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'mode':<28}{'policy':<16}{'steps/s':>12}")
    results = {}
    for policy in ("deep", "probe", "branch-answer"):
        for label, env in (("raw WidthDepthEnv", raw), ("gym.make (wrapped)", wrapped)):
            rate = bench_single(env, policy, args.seconds)
            results[(label, policy)] = rate
            print(f"{label:<28}{policy:<16}{rate:>12,.0f}")
    for mode in ("sync", "async"):
        rate = bench_vec(store, args.model, mode, "deep", args.seconds)
        results[(mode, "deep")] = rate
        print(f"{'make_vec ' + mode + ' (2 envs)':<28}{'deep':<16}{rate:>12,.0f}")
    base = results[("raw WidthDepthEnv", "deep")]
    print(f"ratios to raw/deep: wrapped {results[('gym.make (wrapped)', 'deep')] / base:.2f}, "
          f"sync {results[('sync', 'deep')] / base:.2f}, async {results[('async', 'deep')] / base:.2f}")


if __name__ == "__main__":
    main()
