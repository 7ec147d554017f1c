"""Learn a small width–depth policy for ``ttsgym/WidthDepth-v0`` with the cross-entropy method.

The policy is linear and library-free: every action gets a score from a handful of features
of the observation (per-branch depth, probed flag, agreement with the leader, finished flag;
global branches opened/active/finished, leader share, leader votes, vote margin, tokens),
illegal actions are masked out and the best score is played (ANSWER scores 0, the baseline).
The cross-entropy method samples weight vectors from a Gaussian, keeps the best quarter on
the training episodes and refits the Gaussian to them.

Objective: accuracy − γ·tokens/1000 with γ = 0.001 by default, i.e. one million tokens weigh
as much as one correct answer (the env's own default; on Qwen3-4B one full branch costs ~14k
tokens, self-consistency over 64 branches ~900k). The env's terminal reward is exactly this
per episode.

Training episodes: all questions under a few ``autotts`` branch orders (seeds 0..S-1).
Report: the same questions under held-out orders (seeds 100..). All of it is AIME24: 30
questions; "held out" means unseen branch orders, not unseen questions.

    python examples/cem_policy.py --store STORE [--model Qwen3-4B] [--gamma 0.001]

The store comes from --store or $TTSGYM_STORE (e.g. ``ttsgym import`` of the shared AutoTTS
data). Runs in a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

import numpy as np

from ttsgym.env import WidthDepthEnv, evaluate_policy

N_GLOBAL = 8
N_BRANCH = 4
N_PARAMS = N_GLOBAL + 3 * (N_BRANCH + N_GLOBAL)
STEP_CAP = 400  # the policy answers after this many actions (keeps bad candidates cheap)


def features(obs: dict) -> tuple[np.ndarray, np.ndarray]:
    """Global features (N_GLOBAL,) and per-branch features (M, N_BRANCH) of an observation."""
    status = obs["status"]
    label = obs["label"]
    voting = (label >= 0) & (status != 3)
    votes = np.bincount(label[voting]) if voting.any() else np.zeros(1, np.int64)
    top = np.sort(votes)[::-1]
    lead = float(top[0])
    second = float(top[1]) if len(top) > 1 else 0.0
    g = np.array([
        1.0,
        obs["opened"][0] / 8.0,
        np.count_nonzero(status == 1) / 8.0,
        np.count_nonzero(status == 2) / 8.0,
        obs["leader_share"][0],
        lead / 8.0,
        (lead - second) / 8.0,
        obs["tokens"][0] / 1e5,
    ])
    b = np.stack([obs["depth"] / 20.0, obs["probed"], obs["agree"], status == 2], axis=1).astype(np.float64)
    return g, b


class LinearPolicy:
    """Masked argmax over linear action scores. ``w`` = [BRANCH (N_GLOBAL), then for CONTINUE,
    PROBE and PRUNE each (N_BRANCH per-branch + N_GLOBAL global) weights]."""

    name = "cem-linear"

    def __init__(self, w: np.ndarray) -> None:
        self.w = np.asarray(w, dtype=np.float64)
        k = N_BRANCH + N_GLOBAL
        self.wb = self.w[:N_GLOBAL]
        self.wa = [self.w[N_GLOBAL + j * k : N_GLOBAL + (j + 1) * k] for j in range(3)]
        self.steps = 0

    def reset(self) -> None:
        self.steps = 0

    def act(self, obs: dict, info: dict) -> int:
        self.steps += 1
        if self.steps > STEP_CAP:
            return 0
        g, b = features(obs)
        scores = np.concatenate([[0.0, g @ self.wb],
                                 *[b @ w[:N_BRANCH] + g @ w[N_BRANCH:] for w in self.wa]])
        scores[info["action_mask"] == 0] = -np.inf
        return int(np.argmax(scores))

    __call__ = act


class RandomPolicy:
    """Uniform over the legal actions."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: dict, info: dict) -> int:
        legal = np.flatnonzero(info["action_mask"])
        return int(legal[self.rng.integers(len(legal))])


class ProbeEverything:
    """Open every branch allowed, then read every branch to its end probing every interval."""

    name = "probe-everything"

    def act(self, obs: dict, info: dict) -> int:
        mask = info["action_mask"]
        m = len(obs["depth"])
        probe = np.flatnonzero(mask[2 + m : 2 + 2 * m])
        if len(probe):
            return 2 + m + int(probe[0])
        if mask[1]:
            return 1
        cont = np.flatnonzero(mask[2 : 2 + m])
        return 2 + int(cont[0]) if len(cont) else 0


# -- CEM -------------------------------------------------------------------------------------

_ENV: WidthDepthEnv | None = None
_EPISODES: list[tuple[int, int]] = []


def _init_worker(store: str, model: str, gamma: float, episodes: list[tuple[int, int]]) -> None:
    global _ENV, _EPISODES
    _ENV = WidthDepthEnv(store, model, "aime24", gamma=gamma)
    _EPISODES = episodes


def score(w: np.ndarray) -> float:
    """Mean terminal reward (= correct − γ·tokens/1000) of the policy on the training episodes."""
    env, policy = _ENV, LinearPolicy(w)
    assert env is not None
    total = 0.0
    for seed, q in _EPISODES:
        policy.reset()
        obs, info = env.reset(options={"question": q, "permutation_seed": seed})
        done = False
        while not done:
            obs, reward, done, _, info = env.step(policy.act(obs, info))
        total += reward
    return total / len(_EPISODES)


def initial_mean() -> np.ndarray:
    """A neutral start: keep reading active branches, answer once something is revealed."""
    mu = np.zeros(N_PARAMS)
    k = N_BRANCH + N_GLOBAL
    mu[0] = 0.5  # BRANCH bias
    mu[5] = -1.0  # BRANCH less once the leader has votes
    mu[N_GLOBAL + N_BRANCH] = 1.0  # CONTINUE bias
    mu[N_GLOBAL + k + N_BRANCH] = 1.0  # PROBE bias
    mu[N_GLOBAL + 2 * k + N_BRANCH] = -2.0  # PRUNE rarely
    return mu


def _evaluate(args: tuple) -> dict:
    kind, w, store, model, gamma, seeds = args
    policy = {"learned": lambda: LinearPolicy(w), "random": lambda: RandomPolicy(0),
              "probe-everything": ProbeEverything}[kind]()
    row = evaluate_policy(policy, store, model, "aime24", seeds=seeds, gamma=gamma, name=kind)
    return row.to_pylist()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=os.environ.get("TTSGYM_STORE"), help="store directory ($TTSGYM_STORE)")
    ap.add_argument("--model", default="Qwen3-4B")
    ap.add_argument("--gamma", type=float, default=0.001, help="cost weight per 1,000 tokens (default 0.001)")
    ap.add_argument("--train-seeds", type=int, default=2, help="branch orders 0..S-1 to train on (default 2)")
    ap.add_argument("--test-seeds", type=int, default=10, help="held-out orders 100..100+N-1 (default 10)")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--population", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.store:
        ap.error("give --store or set TTSGYM_STORE")
    start = time.perf_counter()
    n_questions = len(WidthDepthEnv(args.store, args.model, "aime24").questions)
    episodes = [(s, q) for s in range(args.train_seeds) for q in range(n_questions)]
    rng = np.random.default_rng(args.seed)
    mu, sigma = initial_mean(), np.full(N_PARAMS, 1.0)
    n_elite = max(2, args.population // 4)
    best_w, best_score = mu.copy(), -np.inf
    ctx = mp.get_context("spawn")
    print(f"CEM on {args.model}/aime24: {N_PARAMS} weights, population {args.population}, "
          f"{args.iterations} iterations, {len(episodes)} training episodes "
          f"(orders 0..{args.train_seeds - 1}), γ = {args.gamma:g} per 1,000 tokens", flush=True)
    with ctx.Pool(args.workers, initializer=_init_worker,
                  initargs=(args.store, args.model, args.gamma, episodes)) as pool:
        for it in range(args.iterations):
            pop = mu + sigma * rng.standard_normal((args.population, N_PARAMS))
            pop[0] = mu
            scores = np.array(pool.map(score, list(pop), chunksize=1))
            elite = pop[np.argsort(scores)[::-1][:n_elite]]
            if scores.max() > best_score:
                best_score, best_w = float(scores.max()), pop[int(np.argmax(scores))].copy()
            mu = elite.mean(axis=0)
            sigma = elite.std(axis=0) + 0.3 * 0.7**it  # extra noise, decaying, against early collapse
            print(f"  iteration {it + 1:2d}: mean {scores.mean():+.3f}  best {scores.max():+.3f}  "
                  f"best so far {best_score:+.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    test_seeds = list(range(100, 100 + args.test_seeds))
    jobs = [(kind, best_w, args.store, args.model, args.gamma, test_seeds)
            for kind in ("learned", "random", "probe-everything")]
    with ctx.Pool(args.workers) as pool:
        rows = pool.map(_evaluate, jobs, chunksize=1)
    print()
    print(f"Held-out: {args.model}, AIME24 (all 30 questions — the same questions as in training), "
          f"branch orders {test_seeds[0]}..{test_seeds[-1]} ({rows[0]['episodes']} episodes); "
          f"objective = accuracy − γ·tokens/1000, γ = {args.gamma:g}")
    print(f"{'policy':<18}{'accuracy %':>11}{'avg tokens':>13}{'objective':>11}{'avg opened':>12}")
    objective = {}
    for row in rows:
        obj = row["accuracy"] / 100.0 - args.gamma * row["avg_tokens"] / 1000.0
        objective[row["controller"]] = obj
        print(f"{row['controller']:<18}{row['accuracy']:>11.2f}{row['avg_tokens']:>13,.0f}{obj:>11.3f}"
              f"{row['avg_opened']:>12.1f}")
    won = objective["learned"] > max(objective["random"], objective["probe-everything"])
    print(f"learned policy {'beats' if won else 'does NOT beat'} both baselines on the objective "
          f"({time.perf_counter() - start:.0f} s in all). All data is AIME24: small, and the "
          "held-out split varies only branch orders.")
    np.set_printoptions(precision=2, suppress=True)
    print("learned weights:", best_w)
    return 0 if won else 1


if __name__ == "__main__":
    sys.exit(main())
