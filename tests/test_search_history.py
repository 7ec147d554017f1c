"""The run directory: atomic history lines, torn tails, interrupted rounds, resume checks, and the
chained history that --resume accepts only when this run's search wrote it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ttsgym.search_agent.history import (
    CHAIN,
    GENESIS,
    RECORD_KEYS,
    RunDir,
    RunDirError,
    append_line,
    candidate_id,
    chain_link,
    read_lines,
    write_json,
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


# -- the chained history ----------------------------------------------------------------------

CODE = "class A:\n    def solve(self, q):\n        return q.open_full()\n"


def committed_run(tmp_path: Path, rounds: int = 3) -> RunDir:
    """A run with ``rounds`` rounds committed the way the search commits them (code.py first)."""
    run = RunDir(tmp_path / "run")
    run.start({"rounds": 9}, resume=False)
    for r in range(rounds):
        rec = record(r, code=CODE.replace("A", f"A{r}"), objective=10.0 + r)
        run.candidate(rec["id"]).mkdir(parents=True, exist_ok=True)
        (run.candidate(rec["id"]) / "code.py").write_text(rec["code"])
        run.commit(rec)
    return run


def lines(run: RunDir) -> list[dict]:
    return [json.loads(x) for x in run.history_path.read_text().splitlines()]


def rewrite(run: RunDir, recs: list[dict]) -> None:
    run.history_path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def forge(run: RunDir, rec: dict, previous: str, *, folder: bool = True) -> dict:
    """What an attacker who knows the rule writes: a correctly chained line for ``rec`` (and, with
    ``folder``, its record.json and code.py)."""
    body = {k: v for k, v in rec.items() if k != CHAIN}
    line = {**body, CHAIN: chain_link(previous, body)}
    if folder:
        write_json(run.candidate(rec["id"]) / "record.json", line)
        if rec["code"] is not None:
            (run.candidate(rec["id"]) / "code.py").write_text(rec["code"])
    return line


def test_a_valid_chained_history_resumes_and_goes_on(tmp_path: Path) -> None:
    run = committed_run(tmp_path)
    got = lines(run)
    assert all(len(r[CHAIN]) == 64 for r in got)
    assert got[0][CHAIN] == chain_link(GENESIS, {k: v for k, v in got[0].items() if k != CHAIN})
    again = RunDir(run.path)
    done = again.start({"rounds": 9}, resume=True)
    assert done == got and [r["round"] for r in done] == [0, 1, 2]
    again.commit(record(3))
    assert [r["round"] for r in RunDir(run.path).start({"rounds": 9}, resume=True)] == [0, 1, 2, 3]


def test_commit_keeps_the_sequence_and_needs_start(tmp_path: Path) -> None:
    run = committed_run(tmp_path, rounds=1)
    with pytest.raises(ValueError, match="round 2 with id 'c0002' where round 1"):
        run.commit(record(2))
    with pytest.raises(RunDirError, match="commit before start"):
        RunDir(run.path).commit(record(1))
    written = run.commit(record(1, meta={"k": (1, 2)}))
    assert written == lines(run)[1] and written["meta"] == {"k": [1, 2]}


def test_an_appended_line_with_a_wrong_chain_is_refused_by_its_line(tmp_path: Path) -> None:
    run = committed_run(tmp_path)
    fake = {**forge(run, record(3, code=CODE, objective=99.0), lines(run)[-1][CHAIN]), CHAIN: "0" * 64}
    write_json(run.candidate("c0003") / "record.json", fake)
    append_line(run.history_path, fake)
    with pytest.raises(RunDirError, match=re.escape("history.jsonl: line 4 does not follow the chain")):
        RunDir(run.path).start({"rounds": 9}, resume=True)


def test_an_edited_objective_is_refused_and_nothing_is_removed(tmp_path: Path) -> None:
    run = committed_run(tmp_path)
    recs = lines(run)
    recs[1].update(objective=99.0)
    rewrite(run, recs)
    (run.candidate("c0003")).mkdir()  # an interrupted round's folder: a repair would remove it
    with pytest.raises(RunDirError, match="line 2 does not follow the chain: it was edited"):
        RunDir(run.path).start({"rounds": 9}, resume=True)
    assert run.candidate("c0003").exists()
    assert sorted(p.name for p in (run.path / "candidates").iterdir()) == ["c0000", "c0001", "c0002", "c0003"]


def test_an_edited_line_with_its_chain_recomputed_breaks_the_next_line(tmp_path: Path) -> None:
    run = committed_run(tmp_path)
    recs = lines(run)
    recs[0] = forge(run, {**recs[0], "objective": 99.0}, GENESIS)
    rewrite(run, recs)
    with pytest.raises(RunDirError, match="line 2 does not follow the chain"):
        RunDir(run.path).history()


def test_a_correctly_chained_line_without_its_folder_is_refused(tmp_path: Path) -> None:
    run = committed_run(tmp_path)
    append_line(run.history_path, forge(run, record(3, code=CODE), lines(run)[-1][CHAIN], folder=False))
    with pytest.raises(RunDirError, match=re.escape("line 4 has no readable candidates/c0003/record.json")):
        RunDir(run.path).start({"rounds": 9}, resume=True)


def test_a_correctly_chained_line_whose_folder_differs_is_refused(tmp_path: Path) -> None:
    run = committed_run(tmp_path)
    line = forge(run, record(3, code=CODE, objective=99.0), lines(run)[-1][CHAIN])
    append_line(run.history_path, line)
    (run.candidate("c0003") / "code.py").write_text(CODE + "# other\n")
    with pytest.raises(RunDirError, match=re.escape("line 4 has other code than candidates/c0003/code.py")):
        RunDir(run.path).history()
    (run.candidate("c0003") / "code.py").write_text(CODE)
    write_json(run.candidate("c0003") / "record.json", {**line, "objective": 1.0})
    with pytest.raises(RunDirError, match=re.escape("line 4 differs from candidates/c0003/record.json")):
        RunDir(run.path).history()
    write_json(run.candidate("c0003") / "record.json", line)
    assert len(RunDir(run.path).history()) == 4  # all of it in place: the rule holds, as documented


@pytest.mark.parametrize(("rnd", "cid"), [(1, "c0001"), (4, "c0004"), (3, "c0004"), (3, "../c0003")])
def test_a_correctly_chained_line_out_of_sequence_is_refused(tmp_path: Path, rnd: int, cid: str) -> None:
    run = committed_run(tmp_path)
    append_line(run.history_path, forge(run, record(rnd, id=cid), lines(run)[-1][CHAIN], folder=False))
    with pytest.raises(RunDirError, match=f"line 4 is round {rnd} with id '{re.escape(cid)}' where round 3 "
                                          "with id 'c0003' comes next"):
        RunDir(run.path).start({"rounds": 9}, resume=True)


def test_a_history_from_before_the_chain_is_refused(tmp_path: Path) -> None:
    run = committed_run(tmp_path)
    rewrite(run, [{k: v for k, v in r.items() if k != CHAIN} for r in lines(run)])
    with pytest.raises(RunDirError, match='line 1 has no "chain": the history predates chained history'):
        RunDir(run.path).start({"rounds": 9}, resume=True)


def test_a_torn_tail_after_chained_lines_is_repaired_and_the_chain_goes_on(tmp_path: Path) -> None:
    run = committed_run(tmp_path)
    whole = (json.dumps(forge(run, record(3), lines(run)[-1][CHAIN])) + "\n").encode()
    with open(run.history_path, "ab") as f:  # a kill mid-write: even a tail that parses is torn
        f.write(whole[:-1])
    again = RunDir(run.path)
    assert [r["round"] for r in again.start({"rounds": 9}, resume=True)] == [0, 1, 2]
    assert not run.candidate("c0003").exists()
    again.commit(record(3))
    assert [r["round"] for r in RunDir(run.path).history()] == [0, 1, 2, 3]
