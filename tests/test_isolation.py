"""The gold answer and correctness never enter the object a controller holds (DESIGN §3).

Question 1 of the tiny store has the gold answer ``GOLD-SENTINEL-42``, which no branch ever
produces, so finding that string anywhere reachable from the Question means it leaked.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
from conftest import reachable

from ttsgym.env import PoolCache, Question, TracedQuestion, run_episodes
from ttsgym.env.episodes import Grader
from ttsgym.store import ReplayArrays, load_replay

SENTINEL = "GOLD-SENTINEL-42"


def _capture_question(store: Path, cls=Question) -> Question:
    arrays = load_replay(store, "tiny-model", "toy")
    held: list[Question] = []

    class Grab:
        def solve(self, question):
            question.probe_new()
            held.append(question)
            return "7"

    if cls is Question:
        run_episodes(Grab, arrays, [0], questions=[1])
    else:
        run_episodes(Grab, arrays, [0], questions=[1], trace=True)
    return held[0]




def test_nothing_reachable_from_the_question_holds_the_gold(tiny_store: Path) -> None:
    for cls in (Question, TracedQuestion):
        question = _capture_question(tiny_store, cls)
        for obj in reachable(question):
            assert not (isinstance(obj, str) and SENTINEL in obj), f"gold reachable via {type(obj)}"
            assert not isinstance(obj, ReplayArrays | Grader | PoolCache | np.ndarray), type(obj)


def test_attributes_slots_and_private_names_hold_no_gold(tiny_store: Path) -> None:
    question = _capture_question(tiny_store)
    assert not hasattr(question, "__dict__")
    try:
        vars(question)
    except TypeError:
        pass
    else:  # pragma: no cover - only if someone gives Question a __dict__
        raise AssertionError("Question should not have a __dict__")
    names = [n for klass in type(question).__mro__ for n in getattr(klass, "__slots__", ())]
    assert not [n for n in names if "gold" in n.lower() or "correct" in n.lower()]
    for name in dir(question):
        if name.startswith("__"):
            continue
        value = getattr(question, name)
        assert SENTINEL not in repr(value)[:100000], name


def test_methods_carry_no_closures_over_grading_state(tiny_store: Path) -> None:
    question = _capture_question(tiny_store)
    for name in dir(question):
        member = getattr(type(question), name, None)
        func = getattr(member, "__func__", member)
        if isinstance(func, types.FunctionType):
            assert func.__closure__ is None, name
            assert func.__defaults__ is None or SENTINEL not in repr(func.__defaults__), name


def test_the_grader_does_know_the_gold(tiny_store: Path) -> None:
    """The sentinel really is the gold, so the searches above could have found it."""
    arrays = load_replay(tiny_store, "tiny-model", "toy")
    grade = Grader(arrays)
    assert grade(1, SENTINEL) and not grade(1, "7")
    assert any(isinstance(o, str) and o == SENTINEL for o in reachable(grade))
