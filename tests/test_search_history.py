"""The run directory: atomic history lines, torn tails, interrupted rounds, resume checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttsgym.search_agent.history import (
    RECORD_KEYS,
    RunDir,
    RunDirError,
    append_line,
    candidate_id,
    read_lines,
)


def record(r: int, **kw) -> dict:
    base = {k: None for k in RECORD_KEYS}
    base.update(id=candidate_id(r), round=r, proposer="offline", status="accepted", curve=[], meta={},
                cost_usd=0.0, tokens_in=0, tokens_out=0, seconds=0.0)
    base.update(kw)
    return base


def test_torn_tail_is_dropped_and_repaired(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.start({"rounds": 3}, resume=False) == []
    run.commit(record(0))
    run.commit(record(1))
    with open(run.history_path, "ab") as f:  # a kill in the middle of the third line
        f.write(b'{"id": "c0002", "rou')
    assert [r["id"] for r in run.history()] == ["c0000", "c0001"]
    (run.candidate("c0002")).mkdir(parents=True)  # the interrupted round's folder
    (run.candidate("c0002") / "code.py").write_text("x = 1\n")
    done = run.start({"rounds": 3}, resume=True)
    assert [r["id"] for r in done] == ["c0000", "c0001"]
    assert run.history_path.read_bytes().endswith(b"}\n")
    assert not run.candidate("c0002").exists()
    assert run.candidate("c0001").joinpath("record.json").exists()
    run.commit(record(2))
    assert [r["round"] for r in read_lines(run.history_path)] == [0, 1, 2]


def test_a_bad_line_in_the_middle_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(RunDirError, match="line 2"):
        read_lines(path)


def test_fresh_start_refuses_an_existing_run_and_resume_checks_settings(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.start({"rounds": 2, "seeds": 20, "store": "/a"}, resume=False)
    with pytest.raises(RunDirError, match="--resume"):
        run.start({"rounds": 2, "seeds": 20, "store": "/a"}, resume=False)
    with pytest.raises(RunDirError, match="seeds: 20 → 5"):
        run.start({"rounds": 2, "seeds": 5, "store": "/a"}, resume=True)
    run.start({"rounds": 4, "seeds": 20, "store": "/a"}, resume=True)  # more rounds is fine
    assert json.loads(run.settings_path.read_text())["rounds"] == 4
    other = tmp_path / "busy"
    other.mkdir()
    (other / "x").write_text("y")
    with pytest.raises(RunDirError, match="not empty"):
        RunDir(other).start({}, resume=False)


def test_commit_requires_every_key_and_append_is_whole_lines(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.start({}, resume=False)
    bad = record(0)
    del bad["lesson"]
    with pytest.raises(ValueError, match="lesson"):
        run.commit(bad)
    for i in range(50):
        append_line(tmp_path / "x.jsonl", {"i": i, "text": "é" * i})
    assert [r["i"] for r in read_lines(tmp_path / "x.jsonl")] == list(range(50))
