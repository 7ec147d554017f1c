"""``--concurrent K``: round r is proposed while up to K-1 earlier rounds are evaluated, sees a
view of the history fixed by K, and rounds are committed in order whatever finishes first."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from ttsgym.cli.main import main
from ttsgym.search_agent.evaluation import CandidateEvaluation
from ttsgym.search_agent.proposal import Proposal
from ttsgym.search_agent.run import Search, SearchSettings

CODE = ("class P{r}:\n    @classmethod\n    def schedule(cls, beta):\n        return {{'n': {r}}}\n\n"
        "    def solve(self, q):\n        return q.open_full()\n")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("syn") / "store"
    assert main(["synth", "--out", str(path), "--questions", "4", "--branches", "8", "--seed", "1"]) == 0
    return path


class Recorder:
    """A proposer that writes program r and remembers what it was shown."""

    def __init__(self) -> None:
        self.seen: dict[int, list[tuple[str, str]]] = {}

    def propose(self, round: int, history: list[dict], tools) -> Proposal:
        self.seen[round] = [(h["id"], h["status"]) for h in history]
        return Proposal(code=CODE.format(r=round), meta={"r": round})


class OutOfOrder:
    """A backend whose evaluations finish in reverse order of submission (later ones first)."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def submit(self, code, **kwargs) -> Future:
        future: Future = Future()
        name = code.split("class ")[1].split(":")[0]
        delay = 0.3 if name == "P0" else 0.05

        def work() -> None:
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            time.sleep(delay)
            with self.lock:
                self.running -= 1
            future.set_result(CandidateEvaluation(ok=False, stage="sweep", reason=f"{name} scored",
                                                  class_name=name))

        threading.Thread(target=work, daemon=True).start()
        return future

    def result(self, handle: Future) -> CandidateEvaluation:
        return handle.result()

    def close(self) -> None:
        pass


def run(store: Path, out: Path, concurrent: int, rounds: int = 5) -> tuple[Search, Recorder, OutOfOrder]:
    search = Search(SearchSettings(store=str(store), out=str(out), rounds=rounds, concurrent=concurrent,
                                   workers=1), progress=False)
    search._baselines = lambda: []  # the loop, not the baselines, is under test
    search.start(resume=False)
    search.proposer, search.backend = Recorder(), OutOfOrder()
    assert search.run_rounds() is None
    return search, search.proposer, search.backend


def test_the_view_is_fixed_by_k_and_rounds_commit_in_order(small_store: Path, tmp_path: Path) -> None:
    search, rec, backend = run(small_store, tmp_path / "k3", concurrent=3)
    assert [h["id"] for h in search.history] == [f"c000{r}" for r in range(5)]
    assert [h["reason"] for h in search.history] == [f"P{r} scored" for r in range(5)]
    assert backend.most == 3  # three evaluations really ran at once
    # round r sees the results of rounds < r-2 and the proposals of rounds r-2, r-1 as pending
    assert rec.seen[0] == []
    assert rec.seen[1] == [("c0000", "pending")]
    assert rec.seen[2] == [("c0000", "pending"), ("c0001", "pending")]
    assert rec.seen[3] == [("c0000", "rejected"), ("c0001", "pending"), ("c0002", "pending")]
    assert rec.seen[4] == [("c0000", "rejected"), ("c0001", "rejected"), ("c0002", "pending"),
                           ("c0003", "pending")]


def test_one_at_a_time_sees_the_whole_history(small_store: Path, tmp_path: Path) -> None:
    _, rec, backend = run(small_store, tmp_path / "k1", concurrent=1, rounds=3)
    assert backend.most == 1
    assert rec.seen[2] == [("c0000", "rejected"), ("c0001", "rejected")]


def test_resume_rebuilds_the_same_views(small_store: Path, tmp_path: Path) -> None:
    _, full, _ = run(small_store, tmp_path / "full", concurrent=3)
    out = tmp_path / "cut"
    run(small_store, out, concurrent=3, rounds=2)  # as if killed after two commits
    again = Search(SearchSettings(store=str(small_store), out=str(out), rounds=5, concurrent=3, workers=1),
                   progress=False)
    again._baselines = lambda: []
    again.start(resume=True)
    again.proposer, again.backend = Recorder(), OutOfOrder()
    assert again.run_rounds() is None
    assert {r: again.proposer.seen[r] for r in (2, 3, 4)} == {r: full.seen[r] for r in (2, 3, 4)}
