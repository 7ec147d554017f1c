"""evaluate_candidate: the good controller is accepted and scored like `ttsgym eval` scores it;
every bad one is rejected at the right stage with a reason, including a peeker that the static
checks cannot see (the non-anticipation audit catches it)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ttsgym.controllers.evaluate import evaluate
from ttsgym.search_agent.evaluation import Limits, SearchSplit, evaluate_candidate

HEAD = '''
from ttsgym.controllers.base import BetaController
from ttsgym.env.voting import majority


class Cand(BetaController):
    name = "cand"

    @classmethod
    def schedule(cls, beta):
        return {"n": 2 + round(6 * beta)}

'''

GOOD = HEAD + '''
    def solve(self, question):
        latest = []
        for _ in range(min(self.hp["n"], question.pool_size)):
            answer, i, finished = question.open()
            if not finished:
                answer, finished = question.extend(i)
            latest.append(answer)
        return majority(latest)
'''


def body(code: str) -> str:
    return HEAD + textwrap.indent(textwrap.dedent(code), "    ")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> SearchSplit:
    from ttsgym.store.synth import generate

    store = generate(tmp_path_factory.mktemp("syn") / "store", questions=6, branches=16, seed=3)
    return SearchSplit.open(store)


def run(code: str, split: SearchSplit, tmp_path: Path, *, timeout: float = 60.0, memory_mb: int = 2048,
        betas=(0.0, 0.5, 1.0)):
    return evaluate_candidate(code, split, betas=list(betas), seeds=range(3),
                              limits=Limits(timeout_s=timeout, memory_mb=memory_mb, workers=2),
                              scratch=tmp_path / "scratch", audit_episodes=3, trace_episodes=2)


def test_good_controller_is_accepted_and_scored_like_ttsgym_eval(split: SearchSplit, tmp_path: Path) -> None:
    res = run(GOOD, split, tmp_path)
    assert res.ok and res.stage == "done" and res.reason is None, res.reason
    assert res.class_name == "Cand" and res.audit["passed"] and res.audit["episodes"] == 3 * 6
    path = tmp_path / "cand.py"
    path.write_text(GOOD)
    table = evaluate(split.store, [f"{path}:Cand"], betas=[0.0, 0.5, 1.0], seeds=3, workers=1)
    want = {(r["model"], r["beta"]): (r["accuracy"], r["avg_tokens"]) for r in table.to_pylist()}
    got = {(r["model"], r["beta"]): (r["accuracy"], r["avg_tokens"]) for r in res.rows}
    assert got == want
    assert [c["beta"] for c in res.curve] == [0.0, 0.5, 1.0]
    assert len(res.traces) == 2 and all(t["events"] and "correct" in t for t in res.traces)


@pytest.mark.parametrize(("name", "code", "stage", "words"), [
    ("imports os", "import os\n" + GOOD.replace("return majority(latest)",
                                                 "open('/tmp/x', 'w')\n        return None"),
     "checks", "import of 'os' is not allowed"),
    ("private attributes", body("def solve(self, question):\n    return question._q._pool_fin[0]\n"),
     "checks", "private attribute access"),
    ("walks gc", "import gc\n" + body("def solve(self, question):\n    return str(len(gc.get_objects()))\n"),
     "checks", "import of 'gc' is not allowed"),
    ("reaches sys through statistics", "import statistics\n" + body(
        "def solve(self, question):\n    return str(statistics.sys.modules)\n"), "checks", "'sys'"),
])
def test_checks_reject_before_anything_runs(split, tmp_path, name, code, stage, words) -> None:
    res = run(code, split, tmp_path)
    assert not res.ok and res.stage == stage and words in res.reason, (name, res.reason)
    assert not (tmp_path / "scratch").exists(), "nothing may run when the checks fail"


def test_infinite_loop_times_out(split: SearchSplit, tmp_path: Path) -> None:
    res = run(body("def solve(self, question):\n    while True:\n        pass\n"), split, tmp_path,
              timeout=3.0)
    assert not res.ok and res.stage == "screen" and "timed out" in res.reason
    assert res.seconds < 10


def test_ten_gigabytes_hit_the_memory_limit(split: SearchSplit, tmp_path: Path) -> None:
    res = run(body("def solve(self, question):\n    return str(len(bytearray(10 * 2**30)))\n"), split,
              tmp_path)
    assert not res.ok and res.stage == "screen" and "out of memory" in res.reason


def test_an_exception_is_the_reason(split: SearchSplit, tmp_path: Path) -> None:
    res = run(body("def solve(self, question):\n    raise ValueError('no idea')\n"), split, tmp_path)
    assert not res.ok and res.stage == "screen"
    assert "Cand.solve failed" in res.reason and "ValueError: no idea" in res.reason
    assert "in solve" in res.reason


def test_an_answer_that_is_not_a_string_names_the_class(split: SearchSplit, tmp_path: Path) -> None:
    res = run(body("def solve(self, question):\n    question.open()\n    return 42\n"), split, tmp_path)
    assert not res.ok and "Cand.solve returned int 42" in res.reason


def test_a_schedule_that_is_not_monotone_is_refused(split: SearchSplit, tmp_path: Path) -> None:
    code = GOOD.replace('return {"n": 2 + round(6 * beta)}', 'return {"n": 2 + round(6 * beta * (1 - beta))}')
    res = run(code, split, tmp_path)
    assert not res.ok and res.stage == "load" and "'n' is not monotone" in res.reason


def test_spending_must_grow_with_beta(split: SearchSplit, tmp_path: Path) -> None:
    code = GOOD.replace('self.hp["n"]', '10 - self.hp["n"]')
    res = run(code, split, tmp_path)
    assert not res.ok and res.stage == "monotone" and "spending falls as β grows" in res.reason


PEEKER = body('''
def solve(self, question):
    question.open()
    # A format field built at run time: no dunder, no private name in the source, so the static
    # checks pass; it reads every final answer of the pool, opened or not.
    spec = "{0" + "." + "_" + "q." + "_" + "pool_fin}"
    text = spec.format(question)
    finals = [a.strip().strip("'") for a in text.strip("[]").split(",")]
    return majority(finals)
''')


def test_a_peeker_the_checks_miss_is_caught_by_the_audit(split: SearchSplit, tmp_path: Path) -> None:
    from ttsgym.search_agent.checks import check_code

    assert check_code(PEEKER).ok, "the peeker is meant to pass the static checks"
    res = run(PEEKER, split, tmp_path)
    assert not res.ok and res.stage == "audit" and res.reason.startswith("peeking"), res.reason
    assert res.rows, "it was scored before the audit rejected it"


def test_on_a_large_slice_the_audit_perturbs_a_sample_and_still_catches_peeking(
        split: SearchSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More questions than AUDIT_QUESTIONS: each run is re-run whole, a random sample of its
    questions is perturbed (so a 10,000-question slice costs the audit 64 per run, not all)."""
    from ttsgym.search_agent import evaluation

    monkeypatch.setattr(evaluation, "AUDIT_QUESTIONS", 2)
    good = run(GOOD, split, tmp_path / "good")
    assert good.ok, good.reason
    assert good.audit["episodes"] == 3 * 2
    bad = run(PEEKER, split, tmp_path / "bad")
    assert not bad.ok and bad.stage == "audit" and bad.reason.startswith("peeking"), bad.reason


def test_a_nondeterministic_controller_fails_the_audit(split: SearchSplit, tmp_path: Path) -> None:
    code = "import random\n" + GOOD.replace(
        'for _ in range(min(self.hp["n"], question.pool_size)):',
        'for _ in range(min(self.hp["n"] + random.Random().randint(0, 3), question.pool_size)):')
    res = run(code, split, tmp_path)
    assert not res.ok and res.stage == "audit", res.reason
    assert "not reproducible" in res.reason or "peeking" in res.reason


def test_a_store_with_fewer_questions_than_the_screen_works(tiny_store: Path, tmp_path: Path) -> None:
    res = run(GOOD, SearchSplit.open(tiny_store), tmp_path)
    assert res.ok, res.reason
    assert {r["episodes"] for r in res.rows} == {2 * 3}


def test_the_donor_index_from_arrays_equals_the_one_from_pools(split: SearchSplit) -> None:
    from ttsgym.env.question import BranchPool
    from ttsgym.search_agent.audit import donor_index, donor_index_from_arrays

    arrays = split.arrays(*split.slices[0])
    pools = [BranchPool.from_arrays(arrays, q) for q in range(arrays.n_questions)]
    entries, lengths = donor_index_from_arrays(arrays)
    assert (entries, lengths) == donor_index(pools)
    assert len(entries) == sum(len(p) for p in pools) and lengths == sorted(lengths)
