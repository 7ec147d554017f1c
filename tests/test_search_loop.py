"""The search loop on a small synthetic store with the offline proposer: records, duplicates,
selection, the standalone selected controller and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttsgym.cli.main import main
from ttsgym.search_agent.checks import check_code
from ttsgym.search_agent.run import code_key


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("syn") / "store"
    assert main(["synth", "--out", str(path), "--questions", "6", "--branches", "24", "--seed", "3"]) == 0
    return path


def test_code_key_ignores_docstrings_and_comments_only() -> None:
    a = 'class A:\n    """one"""\n    def solve(self, q):  # hi\n        return q.open_full()\n'
    b = 'class A:\n    """two"""\n    def solve(self, q):\n        return q.open_full()\n'
    c = 'class A:\n    def solve(self, q):\n        return q.majority()\n'
    assert code_key(a) == code_key(b) != code_key(c)


def test_a_decorator_imported_by_name_from_an_allowed_module_passes_the_checks() -> None:
    code = ("from functools import lru_cache\n\n@lru_cache(maxsize=64)\ndef f(x):\n    return x\n\n"
            "class A:\n    @classmethod\n    def schedule(cls, beta):\n        return {'n': 1}\n\n"
            "    def solve(self, q):\n        return q.open_full()\n")
    assert check_code(code).ok, check_code(code).errors
    home_made = code.replace("from functools import lru_cache\n", "def lru_cache(maxsize):\n    return f\n")
    assert not check_code(home_made).ok


def test_offline_search_records_selects_and_reports(small_store: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    argv = ["search", "--store", str(small_store), "--out", str(run), "--rounds", "2", "--seeds", "2",
            "--final-seeds", "3", "--finalists", "2", "--drafts", "1", "--workers", "1"]
    assert main(argv) == 0
    assert "selected c000" in capsys.readouterr().out
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["id"] for h in history] == ["c0000", "c0001"]
    assert all(h["proposer"] == "offline" and h["lesson"] for h in history)
    for h in history:
        if h["status"] == "accepted":
            assert h["reason"] is None and h["objective"] > 0
            assert [p["beta"] for p in h["curve"]] == [i / 10 for i in range(11)]
        folder = run / "candidates" / h["id"]
        assert (folder / "code.py").read_text() == h["code"]
        assert json.loads((folder / "record.json").read_text()) == h
    sel = json.loads((run / "selected" / "selected.json").read_text())
    assert sel["id"] in {h["id"] for h in history if h["status"] == "accepted"}
    assert sel["final_seeds"] == [1000, 1002]
    # The selected file runs under `ttsgym eval` on its own (nothing imported from RUN_DIR).
    spec = f"{run / 'selected' / 'controller.py'}:{sel['class']}"
    assert main(["eval", "--store", str(small_store), "--controller", spec, "--beta", "0,1", "--seeds", "2",
                 "--workers", "1", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and rows[0]["avg_tokens"] <= rows[1]["avg_tokens"]
    # Rerunning into the same directory without --resume is refused; with it, nothing is redone.
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert len((run / "history.jsonl").read_text().splitlines()) == 2
    assert main(["search", "report", str(run), "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "## Objective per round" in report and sel["id"] in report
    assert "| SC@64 |" in report and "| ASC |" in report and "| selected β=1 |" in report
    pngs = {p.name for p in (tmp_path / "rep").glob("*.png")}
    assert pngs == {"objective.png", "frontier.png", "spend.png"}
