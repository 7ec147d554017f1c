"""`ttsgym` command line: eval (built-ins, user classes, determinism, output), import, store info."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import tiny_questions, write_autotts

from ttsgym.cli.main import main
from ttsgym.controllers.evaluate import evaluate
from ttsgym.env.results import RESULTS

USER_CONTROLLER = '''
class FirstTwoProbes:
    """An AutoTTS-style controller: config dict, the AutoTTS method names."""

    def __init__(self, config=None):
        self.config = config or {}

    def solve(self, question):
        width = 1 + round(2 * self.config.get("beta", 0.5))
        answers = []
        for _ in range(width):
            answer, index, finished = question.probe_new()
            if not finished:
                answer, finished = question.probe_more(index)
            answers.append(answer)
        return max(answers, key=answers.count)
'''


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_list_controllers_names_kinds_and_descriptions(capsys) -> None:
    code, out, _ = run_cli(["eval", "--list-controllers", "--format", "json"], capsys)
    assert code == 0
    listed = {c["name"]: c for c in json.loads(out)}
    assert {"sc", "asc", "esc", "parallel_probe"} <= set(listed)
    assert all(c["kind"] in ("baseline", "beta-family") and c["description"] for c in listed.values())
    assert listed["sc"]["kind"] == "baseline"


def test_user_class_is_built_with_config_beta(tiny_store: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "mine.py"
    path.write_text(USER_CONTROLLER)
    code, out, _ = run_cli(["eval", "--store", str(tiny_store), "--controller", f"{path}:FirstTwoProbes",
                            "--beta", "0,1", "--seeds", "4", "--format", "json", "--workers", "1"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [r["beta"] for r in rows] == [0.0, 1.0]
    assert rows[0]["episodes"] == 8 and rows[0]["avg_tokens"] < rows[1]["avg_tokens"]
    code, out, _ = run_cli(["eval", "--store", str(tiny_store), "--controller", f"{path}:FirstTwoProbes",
                            "--seeds", "2", "--format", "json", "--workers", "1"], capsys)
    assert code == 0 and [r["beta"] for r in json.loads(out)] == [None]


def test_results_do_not_depend_on_the_worker_count(tiny_store: Path, tmp_path: Path) -> None:
    path = tmp_path / "mine.py"
    path.write_text(USER_CONTROLLER)
    specs = [f"{path}:FirstTwoProbes", "sc:n=3", "parallel_probe:num_chains=3,T=2,warm_up=0"]
    one = evaluate(tiny_store, specs, betas=[0.5], seeds=35, workers=1).drop_columns(["seconds"])
    two = evaluate(tiny_store, specs, betas=[0.5], seeds=35, workers=2).drop_columns(["seconds"])
    assert one.equals(two)
    assert one.num_rows == 3


def test_out_writes_the_full_result_table(tiny_store: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results.parquet"
    code, _, _ = run_cli(["eval", "--store", str(tiny_store), "--controller", "sc:n=2", "--seeds", "3",
                          "--out", str(out), "--workers", "1"], capsys)
    assert code == 0
    table = pq.read_table(out)
    assert table.schema.equals(RESULTS)
    row = table.to_pylist()[0]
    assert len(row["q_accuracy"]) == 2 and len(row["seed_accuracy"]) == 3


def test_table_output_is_aligned_and_complete(tiny_store: Path, capsys) -> None:
    code, out, _ = run_cli(["eval", "--store", str(tiny_store), "--controller", "asc", "--seeds", "2",
                            "--workers", "1"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].split()[:3] == ["model", "dataset", "controller"]
    assert "tiny-model" in lines[2] and "asc" in lines[2]


@pytest.mark.parametrize(("argv", "message"), [
    (["--controller", "nope"], "unknown controller 'nope'"),
    (["--controller", "sc:m=3"], "sc: unknown parameter(s) m; valid: n"),
    (["--controller", "sc:n=abc"], "sc: parameter n must be int"),
    (["--controller", "sc", "--model", "other"], "no slice other/toy (slices: tiny-model/toy)"),
    (["--controller", "missing.py:Cls"], "missing.py: no such controller file"),
    (["--controller", "sc", "--protocol", "weird"], "unknown protocol 'weird'"),
])
def test_user_errors_exit_2_with_one_clear_line(tiny_store: Path, capsys, argv, message) -> None:
    code, _, err = run_cli(["eval", "--store", str(tiny_store), "--workers", "1", *argv], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_import_error_exits_2_naming_the_file(tmp_path: Path, capsys) -> None:
    questions = tiny_questions()
    questions[1]["each_branch"] = []
    bad = write_autotts(tmp_path / "src", "m", "toy", questions)
    code, _, err = run_cli(["import", "autotts", str(tmp_path / "src"), "--out", str(tmp_path / "s")], capsys)
    assert code == 2
    assert f"{bad}: question 1: field 'each_branch' is empty" in err
    assert not (tmp_path / "s").exists()


def test_store_info_prints_maj_at_k(tiny_store: Path, capsys) -> None:
    code, out, _ = run_cli(["store", "info", str(tiny_store)], capsys)
    assert code == 0
    assert "maj@64 %" in out.splitlines()[0] and "tiny-model" in out
    code, out, _ = run_cli(["store", "info", str(tiny_store), "--format", "json"], capsys)
    (row,) = json.loads(out)
    assert row["branches"] == 7 and row["maj_64"] is None, "no complete group of 64 branches"


def test_console_script_is_installed() -> None:
    exe = shutil.which("ttsgym", path=str(Path(sys.executable).parent))
    assert exe, "the ttsgym console script is not installed beside this Python"
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    for command in ("import", "export", "store", "eval"):
        assert command in done.stdout
