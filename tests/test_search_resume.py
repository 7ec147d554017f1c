"""A search killed with SIGKILL at random moments and resumed ends with exactly R rounds, none
duplicated or lost, and the same history as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import command_lines
from ttsgym.cli.main import main

ROUNDS = 3
STABLE_KEYS = ("id", "round", "proposer", "status", "reason", "stage", "code", "class_name", "curve",
               "objective", "meta", "lesson")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("syn") / "store"
    assert main(["synth", "--out", str(path), "--questions", "6", "--branches", "24", "--seed", "3"]) == 0
    return path


def search_argv(store: Path, out: Path) -> list[str]:
    return ["search", "--store", str(store), "--out", str(out), "--proposer", "offline",
            "--rounds", str(ROUNDS), "--seeds", "2", "--final-seeds", "3", "--finalists", "2",
            "--drafts", "1", "--workers", "1", "--timeout", "120"]


def stable(history: list[dict]) -> list[dict]:
    return [{k: r[k] for k in STABLE_KEYS} for r in history]


def read_history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions ``text`` (the run directory)."""
    return [pid for pid, cmd in command_lines() if text in cmd]


def test_sigkill_at_random_moments_then_resume(small_store: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert main(search_argv(small_store, reference)) == 0
    expected = read_history(reference)
    assert [r["round"] for r in expected] == list(range(ROUNDS))

    run = tmp_path / "killed"
    rng = random.Random(7)
    cmd = [sys.executable, "-m", "ttsgym.cli.main", *search_argv(small_store, run)]
    kills = 0
    for attempt in range(40):
        argv = [*cmd, "--resume"] if attempt else cmd
        proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(0.3, 4.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            deadline = time.monotonic() + 10
            while processes_mentioning(str(run)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not processes_mentioning(str(run)), "a process of the killed run outlived it"
            if kills < 8:
                continue
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()
            break
        # enough kills: let the run finish
        final = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stderr
        break
    assert kills >= 5, f"only {kills} kills landed before the run finished; the test did not test much"
    got = read_history(run)
    assert [r["id"] for r in got] == [f"c{r:04d}" for r in range(ROUNDS)]
    assert stable(got) == stable(expected)
    selected = json.loads((run / "selected" / "selected.json").read_text())
    assert selected == json.loads((reference / "selected" / "selected.json").read_text())
    assert sorted(p.name for p in (run / "candidates").iterdir()) == [f"c{r:04d}" for r in range(ROUNDS)]


def test_resume_refuses_a_forged_accepted_line_and_selects_nothing(small_store: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    two = [*search_argv(small_store, run), "--rounds", "2"]  # the last --rounds wins
    assert main(two) == 0
    done = read_history(run)
    best = max((r for r in done if r["status"] == "accepted"), key=lambda r: r["objective"])
    selected = (run / "selected" / "selected.json").read_text()
    finalists = (run / "finalists.json").read_text()
    # A candidate that ran unsandboxed forges round 2: accepted, a huge objective, its own code,
    # and a matching folder; it does not know how the parent chains its lines.
    code = best["code"] + "\n# forged\n"
    forged = {**best, "id": "c0002", "round": 2, "status": "accepted", "objective": 1e9, "code": code,
              "chain": done[-1]["chain"]}
    folder = run / "candidates" / "c0002"
    folder.mkdir()
    (folder / "code.py").write_text(code)
    (folder / "record.json").write_text(json.dumps(forged))
    with open(run / "history.jsonl", "a") as f:
        f.write(json.dumps(forged) + "\n")
    capsys.readouterr()
    assert main([*search_argv(small_store, run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'history.jsonl'}: line 3 does not follow the chain" in err
    assert (run / "selected" / "selected.json").read_text() == selected  # nothing re-selected
    assert (run / "finalists.json").read_text() == finalists
    assert "c0002" not in selected and "c0002" not in finalists
    assert folder.exists()  # nothing removed on the word of a forged history
    assert len(read_history(run)) == 3  # and nothing appended after it
