"""The offline proposer: deterministic, never breeds from failures, never repeats a genome, uses at
most four drafts; and the rule critic's lesson follows its input."""

from __future__ import annotations

import ast
import copy
import math

from ttsgym.search_agent import space
from ttsgym.search_agent.offline import OfflineProposer, combine, diagnose, elites, known_keys
from ttsgym.search_agent.proposal import Proposal
from ttsgym.search_agent.rule_critic import rule_lesson


def fake_score(genome: dict) -> tuple[float, list[dict]]:
    """A cheap deterministic stand-in for an evaluation: rewards a cheap β = 0 and a wide range."""
    g = space.canonical(genome)
    curve = []
    for k in range(11):
        hp = space.schedule_values(g, k / 10)
        tokens = 15_000 * hp["width"] * (1 + math.log2(hp["max_votes"]))
        acc = 50 + 15 * (1 - math.exp(-tokens / 200_000)) + (2 if g["cap"] == "rank" else 0)
        curve.append({"beta": k / 10, "accuracy": acc, "avg_tokens": tokens})
    from ttsgym.search_agent.objective import frontier_area

    return frontier_area(curve), curve


class FakeTools:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def evaluate_draft(self, code: str) -> dict:
        self.calls.append(code)
        literal = code.split("GENOME = ", 1)[1].split("\n\n\n", 1)[0]  # the genome the module embeds
        genome = ast.literal_eval(literal)
        obj, curve = fake_score(genome)
        return {"ok": True, "reason": None, "curve": curve, "objective": obj}


def record(i: int, prop: Proposal, status: str = "accepted") -> dict:
    genome = prop.meta.get("genome")
    obj, curve = fake_score(genome) if genome else (None, [])
    ok = status == "accepted"
    return {"id": f"c{i:04d}", "round": i, "status": status, "reason": None if ok else "boom",
            "objective": obj if ok else None, "curve": curve if ok else [],
            "meta": prop.meta, "code": prop.code, "lesson": ""}


def run(rounds: int, seed: int = 0, fail_rounds: tuple[int, ...] = ()) -> tuple[list[dict], FakeTools]:
    proposer, tools, history = OfflineProposer(seed=seed), FakeTools(), []
    for r in range(rounds):
        before = len(tools.calls)
        prop = proposer.propose(r, history, tools)
        assert len(tools.calls) - before <= 4
        history.append(record(r, prop, "rejected" if r in fail_rounds else "accepted"))
    return history, tools


def test_round_zero_is_the_unrefined_seed_without_drafts() -> None:
    tools = FakeTools()
    prop = OfflineProposer(seed=5).propose(0, [], tools)
    assert prop.meta["op"] == "seed" and not tools.calls
    assert prop.meta["genome"] == space.canonical(space.seed_genome())
    assert prop.code == space.render(space.seed_genome())[0]


def test_same_inputs_give_the_same_proposal_and_seeds_differ() -> None:
    history, _ = run(3)
    a = OfflineProposer(seed=0).propose(3, copy.deepcopy(history), FakeTools())
    b = OfflineProposer(seed=0).propose(3, copy.deepcopy(history), FakeTools())
    assert a.code == b.code and a.meta == b.meta
    c = OfflineProposer(seed=1).propose(3, copy.deepcopy(history), FakeTools())
    assert c.meta["tried"] != a.meta["tried"]


def test_a_resumed_run_equals_an_uninterrupted_one() -> None:
    full, _ = run(5)
    part, _ = run(3)
    proposer = OfflineProposer(seed=0)
    for r in range(3, 5):
        part.append(record(r, proposer.propose(r, part, FakeTools())))
    assert [h["code"] for h in part] == [h["code"] for h in full]


def test_no_genome_is_proposed_or_screened_twice() -> None:
    history, tools = run(8)
    keys = [h["meta"]["key"] for h in history]
    assert len(set(keys)) == len(keys)
    tried = [k for h in history for k in h["meta"]["tried"]]
    assert len(set(tried)) == len(tried)
    assert len(set(tools.calls)) == len(tools.calls)


def test_the_objective_improves_over_the_first_candidate() -> None:
    history, _ = run(8)
    assert max(h["objective"] for h in history) > history[0]["objective"] + 1.0


def test_failed_records_are_never_parents() -> None:
    history, _ = run(4, fail_rounds=(1, 3))
    # Make the failed records look tempting: a huge objective must not make them elites.
    for h in history:
        if h["status"] == "rejected":
            h["objective"] = 1e9
    failed = {h["id"] for h in history if h["status"] == "rejected"}
    assert failed.isdisjoint(r["id"] for r, _ in elites(history))
    prop = OfflineProposer(seed=0).propose(4, history, FakeTools())
    assert prop.meta["parent"] not in failed
    assert prop.meta["key"] not in known_keys(history)


def test_records_without_a_genome_are_tolerated() -> None:
    history = [{"id": "c0000", "round": 0, "status": "accepted", "objective": 60.0, "curve": [],
                "meta": {}, "code": "class X: pass"}]
    prop = OfflineProposer().propose(1, history, None)
    assert prop.code is not None and prop.meta["parent"] is None  # bred from the built-in seed


def test_diagnosis_reads_the_curve() -> None:
    expensive = [{"beta": b / 10, "accuracy": 60 + b, "avg_tokens": 60_000 * (1 + b / 2)} for b in range(11)]
    assert diagnose(expensive)[:2] == ["cheapen", "extend"]
    cheap_flat = [{"beta": b / 10, "accuracy": 60.0, "avg_tokens": 20_000.0} for b in range(11)]
    assert "cheapen" not in diagnose(cheap_flat) and "reshape" in diagnose(cheap_flat)


def test_combine_takes_both_changes() -> None:
    parent = space.seed_genome()
    a = {**parent, "cap": "rank"}
    b = {**parent, "probe_vote": "confirm"}
    both = combine(parent, a, b)
    assert both["cap"] == "rank" and both["probe_vote"] == "confirm"


def test_rule_lesson_follows_its_input() -> None:
    history, _ = run(3)
    failed = {"id": "c0009", "status": "rejected", "stage": "audit", "reason": "answer changed under swap",
              "objective": None, "curve": [], "meta": {"op": "mutate"}, "code": "x"}
    lesson = rule_lesson(failed, history)
    assert "audit" in lesson and "answer changed under swap" in lesson and "never a parent" in lesson
    best = max(history, key=lambda h: h["objective"])
    worse = copy.deepcopy(best)
    worse["id"] = "c0010"
    worse["objective"] = best["objective"] - 3
    worse["curve"] = [{**p, "accuracy": p["accuracy"] - 10 if p["avg_tokens"] < 350_000 else p["accuracy"]}
                      for p in best["curve"]]
    text = rule_lesson(worse, history)
    assert "no gain" in text and "mid-token band" in text
    better = {**worse, "objective": best["objective"] + 1, "curve": best["curve"]}
    assert "new best" in rule_lesson(better, history)
    with_baseline = {**better, "baselines": [{"controller": "SC@64", "accuracy": 99.0, "avg_tokens": 9e5}]}
    assert "Never reaches SC@64" in rule_lesson(with_baseline, history)


def test_a_raising_tool_costs_the_draft_not_the_round() -> None:
    class Broken:
        def evaluate_draft(self, code: str) -> dict:
            raise RuntimeError("sandbox down")

    history, _ = run(2)
    prop = OfflineProposer().propose(2, history, Broken())
    assert prop.code is not None
    assert all(not d["ok"] and "sandbox down" in d["reason"] for d in prop.meta["drafts"])


def test_critic_credits_the_gene_change_of_a_child_over_its_parent() -> None:
    from ttsgym.search_agent.rule_critic import component_effects

    parent_g = space.canonical(space.seed_genome())
    child_g = space.canonical({**parent_g, "cap": "rank"})
    history = [
        {"id": "a", "status": "accepted", "objective": 50.0, "meta": {"genome": parent_g}},
        {"id": "b", "status": "accepted", "objective": 53.0, "meta": {"genome": child_g, "parent": "a"}},
        {"id": "c", "status": "rejected", "objective": None, "meta": {"genome": parent_g, "parent": "b"}},
    ]
    effects = component_effects(history)
    assert len(effects) == 1 and effects[0].startswith("cap none ⇒ rank") and "+3.00" in effects[0]
