"""Shared fixtures. Real data is found through one setting, ``TTSGYM_DATA`` (default
``<repo>/../shared/data``); tests that need it skip with the reason when it is absent, or fail
when ``TTSGYM_REQUIRE_DATA=1`` (as CI sets it)."""

from __future__ import annotations

import gc
import json
import os
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TTSGYM_DATA", REPO.parent / "shared" / "data")).resolve()
AUTOTTS = DATA / "autotts-replay"
REFERENCE = DATA.parent / "reference" / "autotts_aime24_reference.json"
MODELS = ("Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B")


def need_shared_data(path: Path = AUTOTTS) -> None:
    """Skip (or fail under TTSGYM_REQUIRE_DATA=1) when the shared replay data is absent."""
    if path.exists():
        return
    reason = f"shared replay data not found at {path} (set TTSGYM_DATA to the shared data folder)"
    if os.environ.get("TTSGYM_REQUIRE_DATA") == "1":
        pytest.fail(reason + "; TTSGYM_REQUIRE_DATA=1 forbids skipping")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared AIME24 data of all four models, imported once per test session."""
    need_shared_data()
    from ttsgym.store import import_autotts

    return import_autotts(AUTOTTS, tmp_path_factory.mktemp("real") / "store")


@pytest.fixture(scope="session")
def reference() -> dict:
    need_shared_data(REFERENCE)
    return json.loads(REFERENCE.read_text())["results"]


def write_autotts(root: Path, model: str, dataset: str, questions: list[dict]) -> Path:
    """Write questions in the AutoTTS layout (``root/<model>/<dataset>.json``)."""
    path = root / model / f"{dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(questions, indent=2, ensure_ascii=False))
    return path


def tiny_questions() -> list[dict]:
    """Two hand-made questions covering the replay edge cases: ERR probes, a branch without
    probes, T < Δ·L, ties in the vote, a gold answer nobody reaches."""
    return [
        {
            "question": "1+1?",
            "final_answers_trace": ["2", "3", "2", "ERR"],
            "each_branch": [
                [["5", "ERR", "2"], 1700, "2"],
                [["3"], 900, "3"],
                [[], 300, "2"],
                [["ERR", "ERR"], 800, "ERR"],
            ],
            "gold_answer": "2",
            "probe_freq": 500,
        },
        {
            "question": "the answer nobody finds",
            "final_answers_trace": ["7", "8", "7"],
            "each_branch": [
                [["8", "7"], 1200, "7"],
                [["8"], 450, "8"],
                [["7", "7", "7"], 1400, "7"],
            ],
            "gold_answer": "GOLD-SENTINEL-42",
            "probe_freq": 500,
        },
    ]


@pytest.fixture
def tiny_store(tmp_path: Path) -> Path:
    from ttsgym.store import import_autotts

    write_autotts(tmp_path / "src", "tiny-model", "toy", tiny_questions())
    return import_autotts(tmp_path / "src", tmp_path / "store")


_OPAQUE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.CodeType,
           types.MethodType)


def reachable(root: object) -> list[object]:
    """Everything reachable from ``root`` through gc.get_referents, not descending into modules,
    classes or functions (whose globals reach everything): what an object can hand out."""
    seen, stack, out = {id(root)}, [root], []
    while stack:
        obj = stack.pop()
        out.append(obj)
        if isinstance(obj, _OPAQUE):
            continue
        for ref in gc.get_referents(obj):
            if id(ref) not in seen:
                seen.add(id(ref))
                stack.append(ref)
    return out
