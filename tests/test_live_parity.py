"""Replay is a cache of live inference (DESIGN §7): a store collected from a server, replayed, and
the same controllers run live against that server with the same seeds and branch order give the
same answers, tokens, sequential tokens and branches opened, episode by episode.

Answers are compared as classes: live inference has no gold, so a live class is named by its
first revealed member, while the store names a class by the gold's spelling (or its first member
in branch order). Each live answer is mapped through the store's raw → canonical table.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from live_fake import QUESTIONS, SETTINGS, FastFakeVLLM, collect_store

from ttsgym.controllers.live import LiveRunner, Speculation
from ttsgym.controllers.registry import parse_spec
from ttsgym.env.episodes import fresh_controller, run_episodes
from ttsgym.env.protocols import branch_order
from ttsgym.env.question import BranchPool, BudgetExhausted, Question
from ttsgym.store import load_replay
from ttsgym.store.schema import ERR

SEEDS = (0, 1)
USER_CLASS = textwrap.dedent('''
    from collections import Counter


    class Snoop:
        """Touches every part of the Question API and records what it saw after each call."""

        @staticmethod
        def schedule(beta):
            return {"width": 2 + round(3 * beta), "steps": 1 + round(3 * beta)}

        def __init__(self, config=None):
            self.hp = self.schedule((config or {}).get("beta", 0.5))
            self.log = []

        def snap(self, q, what):
            self.log.append((what, q.n_opened, q.depths(), q.active(), q.total_tokens, q.seq_tokens,
                             q.get_seq_and_total_tokens(), q.get_cost_per_branch_active(),
                             [q.is_finished(i) for i in range(q.n_opened)],
                             [q.is_pruned(i) for i in range(q.n_opened)],
                             [q.tokens_of(i) for i in range(q.n_opened)], q.tokens_left, q.pool_size))

        def solve(self, q):
            votes = Counter()
            for _ in range(min(self.hp["width"], q.pool_size - 1)):
                a, i, done = q.probe_new()
                self.snap(q, ("open", a, i, done))
            for _ in range(self.hp["steps"]):
                for i in q.active():
                    self.snap(q, ("more", i, *q.probe_more(i)))
            for i in q.active():
                if q.latest(i) == "ERR":
                    q.prune(i)
                    self.snap(q, ("prune", i))
            full = q.get_new_branch_final_answer()
            k = q.n_opened - 1
            self.snap(q, ("full", full, q.answers(k), [c is None for s, c in q.signals(k)]))
            q.trace("looked", answers=len(q.answers(k)))
            if q.n_opened:
                self.snap(q, ("again", q.extend(k)))
            for i in range(q.n_opened):
                for a in q.answers(i):
                    if a != "ERR":
                        votes[a] += 1
                self.snap(q, ("latest", i, q.latest(i), q.answers(i)))
            return votes.most_common(1)[0][0] if votes else q.majority()
''')


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A fast fake upstream, a store collected from it, and a live runner on it."""
    root = tmp_path_factory.mktemp("live")
    with FastFakeVLLM() as server:
        store = collect_store(server.base_url, root / "store")
        with LiveRunner(server.base_url, SETTINGS, pool_size=SETTINGS.branches) as runner:
            user = root / "snoop.py"
            user.write_text(USER_CLASS)
            yield SimpleNamespace(server=server, store=store, runner=runner, user=user)


def _classes(store: Path) -> dict[int, dict[str, str]]:
    """question_id → raw answer → the store's canonical answer."""
    out: dict[int, dict[str, str]] = {}
    columns = (("steps", "answer", "canonical"), ("branches", "final_answer", "final_canonical"))
    for table, raw, canon in columns:
        t = pq.read_table(store / table).to_pylist()
        for row in t:
            out.setdefault(row["question_id"], {})[row[raw]] = row[canon]
    return out


def _replay(spec, beta, arrays, seed: int, budget: int | None = None):
    """Per question: (answer, tokens, seq, opened, log) by replay, as run_episodes does it."""
    controller = fresh_controller(lambda: spec.make(beta), seed)
    out = []
    for q in range(arrays.n_questions):
        pool = BranchPool.from_arrays(arrays, q)
        question = Question(pool, branch_order("autotts", len(pool), seed), budget=budget)
        try:
            answer = controller.solve(question)
        except BudgetExhausted:
            answer = question.majority()
        out.append((answer, question.total_tokens, question.seq_tokens, question.n_opened,
                    list(getattr(controller, "log", []))))
        if hasattr(controller, "log"):
            controller.log.clear()
    return out


SPECS = [
    ("sc:n=8", None), ("asc:max_samples=8,threshold=0.9", None), ("esc:max_samples=8,window_size=3", None),
    ("parallel_probe:num_chains=6,T=2,warm_up=1,prune_patience=1", None),
    ("short_race", 0.2), ("short_race", 0.9), ("USER", 0.2), ("USER", 0.9),
]


@pytest.mark.parametrize(("spec_text", "beta"), SPECS)
def test_live_equals_replay_episode_by_episode(world, spec_text: str, beta: float | None) -> None:
    store, runner, user = world.store, world.runner, world.user
    spec = parse_spec(f"{user}:Snoop" if spec_text == "USER" else spec_text)
    arrays = load_replay(store, SETTINGS.model, SETTINGS.dataset)
    classes = _classes(store)
    official = run_episodes(lambda: spec.make(beta), arrays, list(SEEDS))
    for si, seed in enumerate(SEEDS):
        replayed = _replay(spec, beta, arrays, seed)
        controller = fresh_controller(lambda: spec.make(beta), seed)
        for q, (r_answer, r_tokens, r_seq, r_opened, r_log) in enumerate(replayed):
            qid = int(arrays.question_ids[q])
            order = branch_order("autotts", SETTINGS.branches, seed)
            live = runner.solve(lambda c=controller: c, QUESTIONS[qid].question, order=order)
            where = f"{spec.text} β={beta} seed {seed} question {qid}"
            assert (live.tokens, live.seq_tokens, live.opened) == (r_tokens, r_seq, r_opened), where
            assert (int(official.tokens[si, q]), int(official.seq_tokens[si, q])) == (r_tokens, r_seq)
            assert live.stop_reason == "answered"
            assert classes[qid].get(live.answer, live.answer) == r_answer, where
            if spec_text == "USER":
                live_log = list(controller.log)
                controller.log.clear()
                assert _map_log(live_log, classes[qid]) == r_log, where


def _map_log(log: list, table: dict[str, str]) -> list:
    def m(x):
        if isinstance(x, str):
            return table.get(x, x)
        if isinstance(x, list | tuple):
            return type(x)(m(v) for v in x)
        return x
    return [m(entry) for entry in log]


def test_a_budget_stops_live_where_replay_stops(world) -> None:
    store, runner = world.store, world.runner
    spec = parse_spec("short_race")
    arrays = load_replay(store, SETTINGS.model, SETTINGS.dataset)
    for seed in SEEDS:
        replayed = _replay(spec, 0.9, arrays, seed, budget=100)
        for q, (_, r_tokens, r_seq, r_opened, _) in enumerate(replayed):
            order = branch_order("autotts", SETTINGS.branches, seed)
            live = runner.solve(lambda: spec.make(0.9), QUESTIONS[q].question, order=order, budget=100)
            assert (live.tokens, live.seq_tokens, live.opened) == (r_tokens, r_seq, r_opened)
            assert live.tokens <= 100


def test_another_store_seed_gives_other_branches(world) -> None:
    """The comparison above can fail: live branches under a different chunk seed differ."""
    server, store = world.server, world.store
    other = type(SETTINGS)(**{**SETTINGS.__dict__, "seed": SETTINGS.seed + 1})
    spec = parse_spec("sc:n=8")
    arrays = load_replay(store, SETTINGS.model, SETTINGS.dataset)
    replayed = [r[1] for r in _replay(spec, None, arrays, 0)]
    with LiveRunner(server.base_url, other, pool_size=8) as shifted:
        live = [shifted.solve(lambda: spec.make(None), q.question).tokens for q in QUESTIONS]
    assert live != replayed


class _Counting:
    """Wraps a client's generate_chunk: the most chunk requests it ever had outstanding at once."""

    def __init__(self, client) -> None:
        self.inner = client.generate_chunk
        self.now = self.most = 0
        client.generate_chunk = self

    async def __call__(self, *args, **kwargs):
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return await self.inner(*args, **kwargs)
        finally:
            self.now -= 1


def test_reading_ahead_runs_branches_concurrently_and_is_not_charged(world) -> None:
    server = world.server
    spec = parse_spec("sc:n=8")
    question = QUESTIONS[2].question
    results, most = [], []
    for speculation in (Speculation(), Speculation(lookahead=0, max_window=0, first_window=0)):
        with LiveRunner(server.base_url, SETTINGS, pool_size=8, speculation=speculation) as live:
            counter = _Counting(live.session.client)
            results.append(live.solve(lambda: spec.make(None), question))
            most.append(counter.most)
    ahead, serial = results
    assert most[1] == 1 and most[0] > 1, most
    assert (ahead.tokens, ahead.seq_tokens, ahead.answer) == (serial.tokens, serial.seq_tokens, serial.answer)
    assert serial.speculative_tokens == 0 and serial.upstream["cancelled_requests"] == 0
    assert serial.completion_tokens == serial.tokens  # SC reads whole branches and nothing else


def test_speculation_that_goes_unused_is_reported_apart(world) -> None:
    """ESC stopping after its first window leaves read-ahead branches unread: reported, not charged."""
    store, runner = world.store, world.runner
    spec = parse_spec("esc:max_samples=8,window_size=2")
    arrays = load_replay(store, SETTINGS.model, SETTINGS.dataset)
    replayed = _replay(spec, None, arrays, 0)
    spent = []
    for q, row in enumerate(replayed):
        order = branch_order("autotts", SETTINGS.branches, 0)
        live = runner.solve(lambda: spec.make(None), QUESTIONS[q].question, order=order)
        assert live.tokens == row[1]
        generated = live.upstream["generation"]["completion_tokens"]
        assert generated == live.tokens + live.speculative_tokens
        spent.append(live.speculative_tokens)
    assert any(spent)


def test_err_and_classes_are_kept(world) -> None:
    from ttsgym.collect.live import AnswerClasses

    classes = AnswerClasses("math")
    assert classes("0.5") == "0.5"
    assert classes("\\frac{1}{2}") == "0.5"
    assert classes(ERR) == ERR
    assert classes("7") == "7"
    assert AnswerClasses("exact")("\\frac{1}{2}") == "\\frac{1}{2}"


class _Lockstep:
    """Parallel-Probe's shape written with the batch calls where the question offers them."""

    def __init__(self, batched: bool) -> None:
        self.batched = batched

    def solve(self, q):
        first = q.open_many(4) if self.batched else [q.open() for _ in range(4)]
        latest = {i: a for a, i, _ in first}
        for _ in range(3):
            active = q.active()
            reads = q.extend_many(active) if self.batched else [q.extend(i) for i in active]
            latest.update({i: a for i, (a, _) in zip(active, reads, strict=True)})
        fulls = q.open_full_many(2) if self.batched else [q.open_full() for _ in range(2)]
        votes = [*latest.values(), *fulls]
        return max(votes, key=votes.count)


def test_batch_calls_give_the_sequential_results(world) -> None:
    order = branch_order("autotts", SETTINGS.branches, 3)
    for row in QUESTIONS:
        one = world.runner.solve(lambda: _Lockstep(False), row.question, order=order, trace=True)
        many = world.runner.solve(lambda: _Lockstep(True), row.question, order=order, trace=True)
        assert (many.answer, many.tokens, many.seq_tokens, many.opened) == (
            one.answer, one.tokens, one.seq_tokens, one.opened)
        strip = [{k: v for k, v in e.items() if k != "t"} for e in one.events]
        assert [{k: v for k, v in e.items() if k != "t"} for e in many.events] == strip


class _PruneThenLook:
    """Prunes branches while their read-ahead is in flight, then asks for their answers."""

    def solve(self, q):
        q.open()
        q.open_full()
        q.prune(0)
        q.prune(1)
        seen = [*q.answers(0), *q.answers(1), *q.answers(1)]
        q.trace("seen", n=len(seen))
        _, j, _ = q.open()
        q.extend(j)
        return max(seen, key=seen.count)


def test_pruned_branches_still_show_their_answers(world) -> None:
    arrays = load_replay(world.store, SETTINGS.model, SETTINGS.dataset)
    classes = _classes(world.store)
    for q, row in enumerate(QUESTIONS):
        pool = BranchPool.from_arrays(arrays, q)
        replay = Question(pool)
        answer = _PruneThenLook().solve(replay)
        live = world.runner.solve(_PruneThenLook, row.question)
        assert classes[q].get(live.answer, live.answer) == answer
        assert (live.tokens, live.seq_tokens, live.opened) == (replay.total_tokens, replay.seq_tokens, 3)


def test_work_cancelled_by_a_prune_is_redone_when_asked_for(world) -> None:
    """A prune cancels a branch's read-ahead; asking for that branch's probes later still works."""
    import asyncio

    from ttsgym.collect.client import CollectClient
    from ttsgym.collect.live import LiveGenerator, make_plan

    steps = [r for r in pq.read_table(world.store / "steps").to_pylist()
             if r["question_id"] == 0 and r["branch_id"] == 0]

    async def scenario() -> list[str]:
        async with CollectClient(world.server.base_url, SETTINGS.model) as client:
            plan = await make_plan(client, SETTINGS)
            gen = await LiveGenerator.start(client, plan, SETTINGS, QUESTIONS[0].question)
            branch = gen.branch(0)
            branch.probe(0)
            branch.chunk(1)
            branch.cancel()  # both still in flight
            probes = await branch.all_probes()
            await gen.close()
            return [p.answer for p in probes]

    assert asyncio.run(scenario()) == [r["answer"] for r in sorted(steps, key=lambda r: r["step"])]
