"""``ttsgym/WidthDepth-v0``: the Gymnasium face of the replay engine.

Covers Gymnasium's own checker (real and tiny stores), the published Parallel-Probe figures
reproduced through the env, the env and the Question API agreeing episode by episode
(SC/ASC/ESC/PP, with κ and budgets), an atomic-action PP policy that sees only observations,
10,000 random masked episodes, vector envs, rendering, reset options, rewards, costs, budgets,
and the gold answer staying out of observations and out of the controller's reach.
"""

from __future__ import annotations

import multiprocessing as mp
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import MODELS, reachable, tiny_questions, write_autotts
from gymnasium.utils.env_checker import check_env

from ttsgym.controllers.baselines import (
    AdaptiveConsistency,
    EarlyStoppingConsistency,
    ParallelProbe,
    SelfConsistency,
)
from ttsgym.controllers.evaluate import evaluate
from ttsgym.env import (
    ENV_ID,
    BranchPool,
    BudgetExhausted,
    EnvQuestion,
    Grader,
    PoolCache,
    Question,
    WidthDepthEnv,
    branch_order,
    evaluate_policy,
    majority,
    run_episodes,
    solve_episode,
)
from ttsgym.env.results import RESULTS
from ttsgym.store import ReplayArrays, import_autotts, load_replay

PUBLISHED_PP = "parallel_probe(64,K5,T40,pp7,wu15)"
SENTINEL = "GOLD-SENTINEL-42"
ANSWER, BRANCH = 0, 1


def tiny_env(store: Path, **kwargs) -> WidthDepthEnv:
    return WidthDepthEnv(store, "tiny-model", "toy", **{"max_branches": 8, **kwargs})


def real_env(store: Path, model: str = "Qwen3-4B", **kwargs) -> WidthDepthEnv:
    return WidthDepthEnv(store, model, "aime24", **kwargs)


# -- Gymnasium's checker --------------------------------------------------------------------


def _check_quietly(env: gym.Env) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]


def test_registered_and_made_with_gym_make(tiny_store: Path) -> None:
    assert ENV_ID == "ttsgym/WidthDepth-v0" and ENV_ID in gym.registry
    env = gym.make(ENV_ID, store=str(tiny_store), model="tiny-model", dataset="toy", max_branches=8)
    assert isinstance(env.unwrapped, WidthDepthEnv) and env.spec.id == ENV_ID
    assert env.action_space == gym.spaces.Discrete(2 + 3 * 8)
    obs, info = env.reset(seed=1)
    assert obs in env.observation_space and info["action_mask"].tolist()[:2] == [1, 1]


def test_check_env_passes_on_the_shared_aime24_data(real_store: Path) -> None:
    env = gym.make(ENV_ID, store=str(real_store), model="Qwen3-1.7B", dataset="aime24", render_mode="ansi")
    _check_quietly(env.unwrapped)


@pytest.mark.parametrize("kwargs", [{}, {"budget": 1200, "kappa": 50, "reward": "dense"},
                                    {"full_read": True, "protocol": "subset:3"}, {"max_branches": 2}])
def test_check_env_passes_on_a_tiny_store(tiny_store: Path, kwargs: dict) -> None:
    env = gym.make(ENV_ID, store=str(tiny_store), model="tiny-model", dataset="toy", render_mode="ansi",
                   **{"max_branches": 8, **kwargs})
    _check_quietly(env.unwrapped)


# -- the two faces agree: published Parallel-Probe figures through the env --------------------


@pytest.fixture(scope="module")
def pp_rows(real_store: Path) -> dict:
    """The published PP through EnvQuestion over 100 seeds × 30 questions, each model in a worker."""
    controller = ParallelProbe(num_chains=64, T=40, prune_patience=7, warm_up=15)
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
        futures = {m: pool.submit(evaluate_policy, controller, str(real_store), m, "aime24") for m in MODELS}
        return {m: f.result().to_pylist()[0] for m, f in futures.items()}


@pytest.mark.parametrize("model", MODELS)
def test_parallel_probe_through_the_env_reproduces_the_reference(pp_rows: dict, reference: dict,
                                                                 model: str) -> None:
    want = reference[model]["aime24"][PUBLISHED_PP]
    row = pp_rows[model]
    assert row["episodes"] == 3000
    assert abs(row["accuracy"] - want["acc"]) <= 1e-3, (row["accuracy"], want["acc"])
    assert abs(row["avg_tokens"] - want["avg_tokens"]) <= 1e-9 * want["avg_tokens"], (row["avg_tokens"], want)


def test_evaluate_policy_rows_equal_ttsgym_eval_rows(pp_rows: dict, real_store: Path) -> None:
    table = evaluate(real_store, ["parallel_probe:T=40,prune_patience=7,warm_up=15"], workers=1)
    assert table.schema.equals(RESULTS)
    for row in table.to_pylist():
        mine = pp_rows[row["model"]]
        for field in RESULTS.names:
            if field != "seconds":
                assert mine[field] == row[field], field


# -- episode-by-episode equivalence with the Question API ------------------------------------


def _through_env(env: WidthDepthEnv, controller, seeds, questions) -> dict[str, np.ndarray]:
    out = {k: np.zeros((len(seeds), len(questions)), np.int64) for k in ("tokens", "seq_tokens", "opened")}
    out["correct"] = np.zeros((len(seeds), len(questions)), bool)
    for si, seed in enumerate(seeds):
        for qi, q in enumerate(questions):
            info = solve_episode(env, controller, question=q, permutation_seed=seed)
            out["tokens"][si, qi] = info["tokens"]
            out["seq_tokens"][si, qi] = info["seq_tokens"]
            out["opened"][si, qi] = info["branches_opened"]
            out["correct"][si, qi] = info["correct"]
    return out


EQUIV = [SelfConsistency(n=64), SelfConsistency(n=5), AdaptiveConsistency(), EarlyStoppingConsistency(),
         EarlyStoppingConsistency(max_samples=30, window_size=4), ParallelProbe(),
         ParallelProbe(num_chains=16, T=3, prune_patience=2, warm_up=1, max_steps=12)]


@pytest.mark.parametrize("model", MODELS)
def test_question_api_controllers_agree_episode_by_episode(real_store: Path, model: str) -> None:
    arrays = load_replay(real_store, model, "aime24")
    pools = PoolCache(arrays)
    env = real_env(real_store, model)
    seeds, questions = [0, 37, 99], list(range(30))
    for controller in EQUIV:
        want = run_episodes(lambda c=controller: c, arrays, seeds, pools=pools)
        got = _through_env(env, controller, seeds, questions)
        for field in ("correct", "tokens", "seq_tokens", "opened"):
            np.testing.assert_array_equal(got[field], getattr(want, field), err_msg=f"{controller} {field}")


@pytest.mark.parametrize("kwargs", [{"kappa": 37}, {"budget": 100_000}, {"budget": 30_000, "kappa": 11}])
def test_agreement_holds_with_kappa_and_budgets(real_store: Path, kwargs: dict) -> None:
    arrays = load_replay(real_store, "Qwen3-1.7B", "aime24")
    env = real_env(real_store, "Qwen3-1.7B", **kwargs)
    seeds, questions = [3, 4], list(range(30))
    controllers = (SelfConsistency(), ParallelProbe(T=10, warm_up=5, prune_patience=3), AdaptiveConsistency())
    for controller in controllers:
        want = run_episodes(lambda c=controller: c, arrays, seeds, **kwargs)
        got = _through_env(env, controller, seeds, questions)
        for field in ("correct", "tokens", "seq_tokens", "opened"):
            np.testing.assert_array_equal(got[field], getattr(want, field), err_msg=f"{controller} {field}")
        if "budget" in kwargs:
            assert got["tokens"].max() <= kwargs["budget"]


class AtomicParallelProbe:
    """Parallel-Probe as a Gymnasium policy: atomic actions chosen from observations only
    (``label``/``leader_label`` for the votes, ``status`` for finished/pruned)."""

    def __init__(self, num_chains=64, T=14, prune_patience=8, warm_up=10, max_steps=100) -> None:
        self.p = dict(num_chains=num_chains, T=T, pp=prune_patience, warm_up=warm_up, max_steps=max_steps)
        self.reset()

    def reset(self) -> None:
        self._plan = None

    def act(self, obs, info) -> int:
        self._obs, self._mask = obs, info["action_mask"]
        if self._plan is None:
            self._plan = self._play()
        return next(self._plan)

    def _play(self):
        p, m = self.p, len(self._obs["depth"])
        probe0, prune0 = 2 + m, 2 + 2 * m

        def active(i: int) -> bool:
            return self._obs["status"][i] == 1

        for k in range(p["num_chains"]):
            if not self._mask[BRANCH]:
                break
            yield BRANCH
            if active(k):
                yield probe0 + k
        n = int(self._obs["opened"][0])
        pruned, off = [False] * n, [0] * n
        previous, stable = None, 0
        for step in range(p["max_steps"]):
            for i in range(n):
                if not pruned[i] and active(i):
                    yield 2 + i
                    if active(i):
                        yield probe0 + i
            winner = int(self._obs["leader_label"][0])
            if step >= p["warm_up"] and pruned.count(False) > 1:
                for i in range(n):
                    if not pruned[i] and active(i):
                        off[i] = off[i] + 1 if self._obs["label"][i] != winner else 0
                        if off[i] >= p["pp"]:
                            pruned[i] = True
                            yield prune0 + i
                winner = int(self._obs["leader_label"][0])
            stable = stable + 1 if step > 0 and winner == previous else 0
            previous = winner
            if stable >= p["T"] or all(pruned[i] or self._obs["status"][i] == 2 for i in range(n)):
                break
        yield ANSWER


def test_atomic_action_parallel_probe_matches_the_controller(real_store: Path) -> None:
    arrays = load_replay(real_store, "Qwen3-8B", "aime24")
    env = real_env(real_store, "Qwen3-8B")
    seeds = [0, 1]
    for params in ({"T": 40, "prune_patience": 7, "warm_up": 15}, {"num_chains": 12, "T": 4, "warm_up": 2}):
        want = run_episodes(lambda p=params: ParallelProbe(**p), arrays, seeds)
        policy = AtomicParallelProbe(**params)
        for si, seed in enumerate(seeds):
            for q in range(30):
                policy.reset()
                obs, info = env.reset(options={"question": q, "permutation_seed": seed})
                done = False
                while not done:
                    obs, _, done, _, info = env.step(policy.act(obs, info))
                assert info["tokens"] == want.tokens[si, q] and info["seq_tokens"] == want.seq_tokens[si, q]
                assert info["correct"] == want.correct[si, q]
    small = {"num_chains": 12, "T": 4, "warm_up": 2}
    row = evaluate_policy(AtomicParallelProbe(**small), real_store, "Qwen3-8B", "aime24", seeds=seeds)
    twin = evaluate_policy(ParallelProbe(**small), real_store, "Qwen3-8B", "aime24", seeds=seeds)
    row, twin = row.to_pylist()[0], twin.to_pylist()[0]
    assert row["kind"] == "gym-policy" and row["episodes"] == 60
    for field in ("accuracy", "avg_tokens", "avg_seq_tokens", "avg_opened", "q_tokens", "seed_accuracy"):
        assert row[field] == twin[field], field


# -- random masked episodes ------------------------------------------------------------------


class _FastSpaceCheck:
    """Batched bounds/dtype/shape checks with Gymnasium's definitions (validated on samples)."""

    def __init__(self, space: gym.spaces.Dict) -> None:
        self.space = space
        self.buf: dict[str, list[np.ndarray]] = {k: [] for k in space.spaces}
        self.n = 0

    def add(self, obs: dict) -> None:
        assert obs.keys() == self.space.spaces.keys()
        for k, v in obs.items():
            self.buf[k].append(v)
        self.n += 1
        if self.n % 97 == 0:
            assert obs in self.space  # Gymnasium's own check on a sample
        if self.n % 5000 == 0:
            self.flush()

    def flush(self) -> None:
        for k, sub in self.space.spaces.items():
            vals = self.buf[k]
            if not vals:
                continue
            assert all(v.dtype == sub.dtype and v.shape == sub.shape for v in vals), k
            stack = np.stack(vals)
            if isinstance(sub, gym.spaces.Box):
                assert (stack >= sub.low).all() and (stack <= sub.high).all(), k
            elif isinstance(sub, gym.spaces.MultiDiscrete):
                assert (stack >= 0).all() and (stack < sub.nvec).all(), k
            else:
                assert np.isin(stack, (0, 1)).all(), k
            self.buf[k] = []


def _random_episodes(env: WidthDepthEnv, episodes: int, rng: np.random.Generator, answer_p: float) -> int:
    """Masked random play; asserts the budget, rewards and spaces. Returns steps taken."""
    check = _FastSpaceCheck(env.observation_space)
    steps = 0
    budget = env.budget if env.budget is not None else float("inf")
    for _ in range(episodes):
        obs, info = env.reset(seed=int(rng.integers(2**31)))
        check.add(obs)
        total, done = 0.0, False
        while not done:
            mask = info["action_mask"]
            assert mask[ANSWER] == 1 and np.array_equal(mask, env.action_masks())
            legal = np.flatnonzero(mask)
            if len(legal) > 1 and rng.random() >= answer_p:
                legal = legal[1:]
            obs, reward, done, truncated, info = env.step(int(legal[rng.integers(len(legal))]))
            assert not truncated and "invalid_action" not in info
            check.add(obs)
            total += reward
            steps += 1
            assert obs["tokens"][0] <= budget
        assert info["tokens"] <= budget and info["seq_tokens"] <= info["tokens"]
        assert obs["tokens"][0] == info["tokens"]
        assert total == pytest.approx(float(info["correct"]) - env.gamma * info["tokens"] / 1000, abs=1e-9)
    check.flush()
    return steps


def test_ten_thousand_random_masked_episodes(real_store: Path, tiny_store: Path) -> None:
    rng = np.random.default_rng(7)
    steps = 0
    envs = [
        (real_env(real_store, "Qwen3-1.7B", budget=12_000, kappa=25, reward="dense", max_branches=16),
         3000, 0.5),
        (real_env(real_store, "Qwen3-0.6B", budget=25_000, max_branches=64, full_read=True), 1500, 0.03),
        (tiny_env(tiny_store, budget=2000, kappa=100, protocol="subset:3"), 2500, 0.3),
        (tiny_env(tiny_store, reward="dense"), 3000, 0.1),
    ]
    for env, n, answer_p in envs:
        steps += _random_episodes(env, n, rng, answer_p)
    assert sum(n for _, n, _ in envs) == 10_000
    assert steps > 50_000


def test_leader_is_the_majority_of_the_latest_revealed_answers(real_store: Path) -> None:
    """The incrementally kept leader equals ttsgym.env.voting.majority at every step."""
    env = real_env(real_store, "Qwen3-1.7B", max_branches=12)
    rng = np.random.default_rng(11)
    checked = 0
    for episode in range(250):
        obs, info = env.reset(seed=episode)
        eq = EnvQuestion(env)
        done = False
        while not done:
            latest = [eq.latest(i) for i in range(eq.n_opened)]
            want = majority(a for i, a in enumerate(latest) if not eq.is_pruned(i))
            assert eq.majority() == want
            labels = obs["label"][: eq.n_opened]
            leader = obs["leader_label"][0]
            assert (leader == -1) == (want is None)
            for i, answer in enumerate(latest):
                assert (labels[i] == -1) == (answer is None)
                assert obs["agree"][i] == (0 if answer is None else 1 if answer == want else -1)
            checked += 1
            legal = np.flatnonzero(info["action_mask"])
            if len(legal) > 1 and rng.random() > 0.02:
                legal = legal[1:]
            obs, _, done, _, info = env.step(int(rng.choice(legal)))
        names = env.engine.names  # ANSWER returned the leader
        assert (info["answer_class"] == -1) if want is None else (names[info["answer_class"]] == want)
    assert checked > 5000


# -- vector envs, rendering, reset options ---------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_make_vec(real_store: Path, mode: str) -> None:
    envs = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode=mode, store=str(real_store),
                        model="Qwen3-4B", dataset="aime24", max_branches=8, gamma=0.01)
    try:
        obs, infos = envs.reset(seed=3)
        assert obs["depth"].shape == (2, 8) and infos["action_mask"].shape == (2, 2 + 24)
        rng = np.random.default_rng(0)
        ended = 0
        for _ in range(300):
            acts = [int(rng.choice(np.flatnonzero(m))) for m in infos["action_mask"]]
            obs, _, terminated, truncated, infos = envs.step(np.array(acts))
            assert obs in envs.observation_space
            ended += int(terminated.sum())
        assert ended > 0 and not truncated.any()
    finally:
        envs.close()


def test_render_ansi_draws_the_width_depth_grid(tiny_store: Path) -> None:
    env = tiny_env(tiny_store, protocol="stored", render_mode="ansi")
    env.reset(options={"question": 0})
    for a in (BRANCH, env.probe_action(0), 2, 2, env.probe_action(0), 2, BRANCH, BRANCH, BRANCH,
              env.prune_action(3)):
        env.step(a)
    text = env.render()
    assert "b00 finished" in text and "b02 finished" in text and "b03 pruned" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("b0")}
    assert rows["b00"].split()[-4:] == ["A", "·", "B", "[B]"]  # 5, unprobed, 2, final 2
    assert "A=5" in text and "B=2" in text and "leader B" in text
    env.reset(options={"question": 1})
    env.step(BRANCH)
    env.step(2)
    assert SENTINEL not in env.render()
    assert tiny_env(tiny_store).render() is None


def test_reset_options_fix_question_and_order(real_store: Path) -> None:
    env = real_env(real_store, "Qwen3-1.7B")
    arrays = load_replay(real_store, "Qwen3-1.7B", "aime24")
    pools = PoolCache(arrays)
    for q, s in ((0, 0), (7, 42), (29, 99)):
        _, info = env.reset(options={"question": q, "permutation_seed": s})
        assert info["question"] == q and info["question_id"] == int(arrays.question_ids[q])
        reference = Question(pools[q], branch_order("autotts", 128, s))
        eq = EnvQuestion(env)
        for _ in range(5):
            assert eq.open() == reference.open()
        assert eq.answers(4) == reference.answers(4) and eq.total_tokens == reference.total_tokens


def test_plain_reset_samples_from_np_random(real_store: Path) -> None:
    env = real_env(real_store, "Qwen3-4B", questions=[3, 5, 8])

    def trajectory(seed: int | None) -> list:
        _, info = env.reset(seed=seed)
        eq = EnvQuestion(env)
        return [info["question"], *[eq.open()[0] for _ in range(6)]]

    a, b = trajectory(11), trajectory(11)
    assert a == b
    seen = {trajectory(s)[0] for s in range(40)}
    assert seen == {3, 5, 8}
    assert len({tuple(trajectory(None)) for _ in range(20)}) > 1
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"questoin": 1})


# -- costs, κ, budgets, rewards --------------------------------------------------------------


def _walk(env: WidthDepthEnv) -> list[tuple]:
    """A scripted episode on tiny question 0 (stored order): returns (tokens, obs, reward) per step."""
    p, c = env.probe_action, env.continue_action
    script = [BRANCH, p(0), c(0), c(0), p(0), c(0), BRANCH, c(1), BRANCH, BRANCH, p(3), c(3), c(3),
              env.prune_action(2), ANSWER]
    obs, info = env.reset(options={"question": 0})
    out = []
    for a in script:
        assert info["action_mask"][a] == 1, env.describe_action(a)
        obs, reward, done, _, info = env.step(a)
        out.append((int(obs["tokens"][0]), obs, reward, info))
    assert done
    return out


def test_costs_reveals_and_masks_follow_the_replay_rules(tiny_store: Path) -> None:
    env = tiny_env(tiny_store, protocol="stored", kappa=7, gamma=0.5)
    steps = _walk(env)
    tokens = [t for t, *_ in steps]
    # BRANCH Δ, PROBE κ, CONTINUE Δ, Δ, PROBE κ, tail 1700−1500, BRANCH Δ, tail 900−500,
    # BRANCH of a branch without probes (T=300), BRANCH Δ, PROBE κ, CONTINUE Δ, tail max(0, 800−1000)
    assert tokens == [500, 507, 1007, 1507, 1514, 1714, 2214, 2614, 2914, 3414, 3421, 3921, 3921, 3921, 3921]
    o = steps[0][1]
    assert o["depth"][0] == 1 and o["status"][0] == 1 and o["probed"][0] == 0 and o["label"][0] == -1
    o = steps[1][1]
    assert o["probed"][0] == 1 and o["label"][0] == 0 and o["leader_label"][0] == 0 and o["agree"][0] == 1
    assert steps[1][3]["action_mask"][env.probe_action(0)] == 0  # once per depth
    o = steps[2][1]
    assert o["depth"][0] == 2 and o["probed"][0] == 0 and o["label"][0] == 0  # not revealed: stays "5"
    o = steps[5][1]
    assert o["status"][0] == 2 and o["depth"][0] == 4 and o["probed"][0] == 1 and o["label"][0] == 1
    assert steps[5][3]["action_mask"][2] == 0 and steps[5][3]["action_mask"][env.prune_action(0)] == 1
    o = steps[7][1]  # b1 finished with "3": a 1–1 tie, the earliest slot's "2" leads
    assert o["label"][1] == 2 and o["leader_label"][0] == 1 and o["agree"].tolist()[:2] == [1, -1]
    assert o["leader_share"][0] == pytest.approx(0.5)
    o = steps[8][1]
    assert o["status"][2] == 2 and o["depth"][2] == 1  # no probes: finished on BRANCH
    assert steps[12][3]["action_mask"][BRANCH] == 0  # the pool of 4 is exhausted
    o = steps[13][1]
    assert o["status"][2] == 3 and o["depth"][2] == 1 and o["leader_label"][0] == 1
    info = steps[-1][3]
    assert info["correct"] and info["tokens"] == 3921 and info["seq_tokens"] == 1714
    assert info["branches_opened"] == 4 and info["answer_class"] >= 0 and info["question_id"] == 0
    assert steps[-1][2] == pytest.approx(1 - 0.5 * 3921 / 1000)
    assert all(r == 0 for _, _, r, _ in steps[:-1])


def test_dense_and_terminal_rewards_sum_to_the_same(tiny_store: Path) -> None:
    terminal = sum(r for *_, r, _ in _walk(tiny_env(tiny_store, protocol="stored", kappa=3, gamma=0.2)))
    dense_steps = _walk(tiny_env(tiny_store, protocol="stored", kappa=3, gamma=0.2, reward="dense"))
    assert dense_steps[0][2] == pytest.approx(-0.2 * 500 / 1000) and dense_steps[-1][2] == 1.0
    assert sum(r for *_, r, _ in dense_steps) == pytest.approx(terminal, abs=1e-12)


def test_budget_masks_what_would_overspend(tiny_store: Path) -> None:
    env = tiny_env(tiny_store, protocol="stored", kappa=100, budget=1200)
    obs, info = env.reset(options={"question": 0})
    obs, _, _, _, info = env.step(BRANCH)
    obs, _, _, _, info = env.step(2)
    mask = info["action_mask"]
    assert obs["tokens"][0] == 1000 and obs["budget_left"][0] == pytest.approx(200 / 1200)
    assert mask[2] == 0 and mask[BRANCH] == 0 and mask[env.probe_action(0)] == 1  # Δ > 200 ≥ κ
    _, reward, done, _, info = env.step(2)  # masked: nothing happens
    assert info["invalid_action"] and reward == 0 and not done and env.engine.tokens == 1000
    _, _, _, _, info = env.step(env.probe_action(0))
    assert np.flatnonzero(info["action_mask"]).tolist() == [ANSWER, env.prune_action(0)]
    _, _, done, _, info = env.step(ANSWER)
    assert done and not info["correct"] and info["tokens"] == 1100  # "ERR" at depth 2
    with pytest.raises(RuntimeError, match="reset"):
        env.step(ANSWER)


def test_env_question_budget_errors_change_nothing(tiny_store: Path) -> None:
    env = tiny_env(tiny_store, protocol="stored", kappa=100, budget=1200)
    env.reset(options={"question": 0})
    eq = EnvQuestion(env)
    assert eq.open() == ("5", 0, False)
    assert eq.extend(0) == ("ERR", False)
    before = (eq.total_tokens, eq.depths(), eq.answers(0))
    for call in (eq.open, lambda: eq.extend(0), eq.open_full):
        with pytest.raises(BudgetExhausted):
            call()
        assert (eq.total_tokens, eq.depths(), eq.answers(0)) == before
    assert eq.tokens_left == 0 and eq.majority() == "ERR"


def test_full_read_action_costs_the_whole_branch(tiny_store: Path) -> None:
    env = tiny_env(tiny_store, protocol="stored", full_read=True)
    env.reset(options={"question": 1})
    assert env.action_space.n == 2 + 3 * 8 + 1 and env.describe_action(env.FULL) == "FULL"
    obs, *_ = env.step(env.FULL)
    assert obs["tokens"][0] == 1200 and obs["status"][0] == 2 and obs["depth"][0] == 3
    eq = EnvQuestion(env)
    assert eq.answers(0) == ["8", "7", "7"] and eq.open_full() == "8" and eq.total_tokens == 1650
    obs, *_ = env.step(env.FULL)  # branch 2: T = 1400 < Δ·L = 1500
    assert obs["tokens"][0] == 1650 + 1400
    # Interval by interval the same branch costs Δ·L + max(0, T − Δ·L) = 1500.
    env.reset(options={"question": 1})
    env.step(BRANCH), env.step(BRANCH), env.step(BRANCH)
    for _ in range(3):
        obs, *_ = env.step(env.continue_action(2))
    assert obs["status"][2] == 2 and obs["tokens"][0] == 2 * 500 + 1500  # b0, b1 one interval each


def test_env_question_state_matches_question(real_store: Path) -> None:
    arrays = load_replay(real_store, "Qwen3-0.6B", "aime24")
    pool = PoolCache(arrays)[4]
    env = real_env(real_store, "Qwen3-0.6B", kappa=5)
    env.reset(options={"question": 4, "permutation_seed": 8})
    a, b = EnvQuestion(env), Question(pool, branch_order("autotts", 128, 8), kappa=5)
    for q in (a, b):
        q.probe_new(), q.probe_new(), q.get_new_branch_final_answer(), q.open()
        for _ in range(6):
            q.probe_more(0)
        q.extend(3)
        q.prune(1)
    for name in ("n_opened", "pool_size", "total_tokens", "seq_tokens", "tokens_left", "kappa", "interval"):
        if name == "pool_size":
            assert a.pool_size == 64 and b.pool_size == 128
            continue
        assert getattr(a, name) == getattr(b, name), name
    assert a.depths() == b.depths() and a.active() == b.active() and a.majority() == b.majority()
    assert a.get_seq_and_total_tokens() == b.get_seq_and_total_tokens()
    assert a.get_cost_per_branch_active() == b.get_cost_per_branch_active()
    for i in range(4):
        assert a.answers(i) == b.answers(i) and a.latest(i) == b.latest(i) and a.signals(i) == b.signals(i)
        assert a.is_finished(i) == b.is_finished(i) and a.is_pruned(i) == b.is_pruned(i)
        assert a.tokens_of(i) == b.tokens_of(i) and a.depth(i) == b.depth(i)
    with pytest.raises(IndexError):
        a.extend(9)


# -- the gold answer stays out of reach ------------------------------------------------------


def test_observations_are_numbers_only_and_do_not_depend_on_the_gold(tmp_path: Path) -> None:
    questions = tiny_questions()
    write_autotts(tmp_path / "a", "tiny-model", "toy", questions)
    for q in questions:
        q["gold_answer"] = "3" if q["gold_answer"] == "2" else "8"
    write_autotts(tmp_path / "b", "tiny-model", "toy", questions)
    env_a = tiny_env(import_autotts(tmp_path / "a", tmp_path / "sa"))
    env_b = tiny_env(import_autotts(tmp_path / "b", tmp_path / "sb"))
    rng = np.random.default_rng(3)
    rewards = set()
    for episode in range(300):
        oa, ia = env_a.reset(seed=episode)
        ob, ib = env_b.reset(seed=episode)
        done = False
        while not done:
            for key, value in oa.items():
                assert isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.number), key
                np.testing.assert_array_equal(value, ob[key], err_msg=key)
            np.testing.assert_array_equal(ia["action_mask"], ib["action_mask"])
            a = int(rng.choice(np.flatnonzero(ia["action_mask"])))
            oa, _, done, _, ia = env_a.step(a)
            ob, _, _, _, ib = env_b.step(a)
        rewards.add((ia["correct"], ib["correct"]))
    assert (True, False) in rewards or (False, True) in rewards  # grading did differ




def test_env_question_holds_no_gold(tiny_store: Path) -> None:
    env = tiny_env(tiny_store)
    held = []

    class Grab:
        def solve(self, question):
            question.probe_new()
            held.append(question)
            return "7"

    info = solve_episode(env, Grab(), question=1, permutation_seed=0)
    assert not info["correct"]
    for obj in reachable(held[0]):
        assert not (isinstance(obj, str) and SENTINEL in obj), "gold reachable from EnvQuestion"
        assert not isinstance(obj, ReplayArrays | Grader | WidthDepthEnv | gym.Env), type(obj)
    assert isinstance(env.engine.pool, BranchPool)
    assert env.answer_with is not None and Grader(load_replay(tiny_store, "tiny-model", "toy"))(1, SENTINEL)
