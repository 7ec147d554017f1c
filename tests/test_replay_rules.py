"""Every replay rule of DESIGN §3, on hand-made branches whose costs are worked out by hand."""

from __future__ import annotations

import random

import pytest

from ttsgym.env import (
    BranchPool,
    BranchPruned,
    BudgetExhausted,
    PoolExhausted,
    Question,
    TracedQuestion,
    branch_order,
)

# branch 0: three probes, T = 1700 > 3·500 → tail read costs 200
# branch 1: one probe, T = 300 < 500 → tail read costs 0
# branch 2: no probes, T = 800 → finishes on its first read at cost 800
POOL = BranchPool(probes=[("5", "ERR", "2"), ("3",), ()], tokens=[1700, 300, 800],
                  finals=["2", "3", "4"], interval=500)


def q(**kwargs) -> Question:
    return Question(POOL, [0, 1, 2], **kwargs)


def test_interval_reads_return_probes_then_the_final_answer() -> None:
    question = q()
    assert question.open() == ("5", 0, False)
    assert question.extend(0) == ("ERR", False)
    assert question.extend(0) == ("2", False)
    assert question.total_tokens == 1500
    assert question.extend(0) == ("2", True)
    assert question.total_tokens == 1700
    assert question.depth(0) == 4 and question.is_finished(0)
    assert question.answers(0) == ["5", "ERR", "2", "2"]


def test_tail_read_costs_nothing_when_the_branch_ended_before_its_last_probe() -> None:
    question = q()
    question.open()
    question.open()
    assert question.extend(1) == ("3", True)
    assert question.total_tokens == 500 + 500 + 0


def test_branch_without_probes_finishes_on_its_first_read() -> None:
    question = q()
    question.open_full()
    question.open_full()
    assert question.open() == ("4", 2, True)
    assert question.tokens_of(2) == 800
    assert question.is_finished(2)


def test_full_read_costs_the_whole_branch_and_finishes_it() -> None:
    question = q()
    assert question.open_full() == "2"
    assert question.total_tokens == 1700
    assert question.is_finished(0) and question.depth(0) == 4
    assert question.answers(0) == ["5", "ERR", "2", "2"]


def test_reading_a_finished_branch_again_is_free() -> None:
    question = q()
    question.open_full()
    for _ in range(3):
        assert question.extend(0) == ("2", True)
    assert question.total_tokens == 1700


def test_pruned_branch_keeps_its_state_and_cannot_be_read() -> None:
    question = q()
    question.open()
    question.extend(0)
    question.open()
    question.prune(0)
    assert question.is_pruned(0) and question.depth(0) == 2
    assert question.answers(0) == ["5", "ERR"]
    assert question.latest(0) == "ERR"
    with pytest.raises(BranchPruned):
        question.extend(0)
    assert question.active() == [1]
    assert question.majority() == "3", "pruned branches do not vote"


def test_exhausted_pool_raises_a_value_error() -> None:
    question = q()
    for _ in range(3):
        question.open()
    with pytest.raises(PoolExhausted):
        question.open()
    with pytest.raises(ValueError):
        question.open_full()
    assert question.n_opened == 3


def test_reading_a_branch_that_is_not_open_is_an_index_error() -> None:
    question = q()
    question.open()
    for bad in (1, -1, 5):
        with pytest.raises(IndexError):
            question.extend(bad)


def test_budget_cap_refuses_the_read_and_changes_nothing() -> None:
    question = q(budget=1200)
    question.open()
    question.extend(0)
    assert question.tokens_left == 200
    for read in (lambda: question.extend(0), question.open, question.open_full):
        with pytest.raises(BudgetExhausted):
            read()
    assert (question.total_tokens, question.n_opened, question.depth(0)) == (1000, 1, 2)


def test_budget_allows_reads_that_fit_exactly() -> None:
    question = q(budget=1700)
    question.open_full()
    assert question.tokens_left == 0
    with pytest.raises(BudgetExhausted):
        question.open()


def test_kappa_is_charged_per_probe_and_not_for_final_answers() -> None:
    question = q(kappa=7)
    question.open()                    # probe: 500 + 7
    question.extend(0)                 # probe: 507
    question.extend(0)                 # probe: 507
    question.extend(0)                 # tail: 200, no probe
    question.open_full()               # full read: 300, no probe
    assert question.total_tokens == 3 * 507 + 200 + 300


def test_sequential_tokens_follow_the_deepest_branch() -> None:
    question = q()
    question.open()
    question.open()
    question.extend(0)
    assert question.get_seq_and_total_tokens() == (1000, 1500)
    question.open_full()
    assert question.get_seq_and_total_tokens() == (1000, 2300)
    question.extend(0)
    question.extend(0)
    assert question.seq_tokens == 1700
    assert question.get_cost_per_branch_active() == [1700, 500, 800]


def test_autotts_aliases_behave_like_the_native_names() -> None:
    a, b = q(), q()
    assert a.probe_new() == b.open()
    assert a.probe_more(0) == b.extend(0)
    assert a.get_new_branch_final_answer() == b.open_full()
    assert a.get_seq_and_total_tokens() == (b.seq_tokens, b.total_tokens)


def test_traced_question_records_every_read_with_its_cost() -> None:
    question = TracedQuestion(POOL, [0, 1, 2])
    question.open()
    question.extend(0)
    question.open_full()
    question.prune(0)
    question.trace("decision", why="test")
    ops = [(e["op"], e.get("branch"), e.get("cost")) for e in question.events]
    assert ops == [("open", 0, 500), ("extend", 0, 500), ("open_full", 1, 300), ("prune", 0, 0),
                   ("event", None, None)]
    assert question.events[-1] == {"op": "event", "event": "decision", "why": "test"}


def test_untraced_trace_calls_are_free_no_ops() -> None:
    question = q()
    assert question.trace("anything", x=1) is None
    assert not hasattr(question, "events")


def test_opening_order_follows_the_permutation() -> None:
    pool = BranchPool(probes=[()] * 6, tokens=[10] * 6, finals=[f"a{i}" for i in range(6)], interval=500)
    order = branch_order("autotts", 6, 3)
    question = Question(pool, order)
    assert [question.open_full() for _ in range(6)] == [f"a{i}" for i in order]


@pytest.mark.parametrize("n_branches", [1, 2, 7, 128])
def test_autotts_protocol_is_pythons_random_shuffle(n_branches: int) -> None:
    for seed in range(100):
        branches = [object() for _ in range(n_branches)]
        shuffled = list(branches)
        random.Random(seed).shuffle(shuffled)
        assert list(branch_order("autotts", n_branches, seed)) == [branches.index(b) for b in shuffled]


def test_other_protocols() -> None:
    assert branch_order("stored", 5, 9) == (0, 1, 2, 3, 4)
    subset = branch_order("subset:3", 10, 4)
    assert len(subset) == 3 and len(set(subset)) == 3
    assert list(subset) == random.Random(4).sample(range(10), 3)
    with pytest.raises(ValueError, match="unknown protocol"):
        branch_order("bogus", 5, 0)
    with pytest.raises(ValueError, match="needs at least"):
        branch_order("subset:11", 10, 0)
