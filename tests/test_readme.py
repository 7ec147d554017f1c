"""The README's code examples run as written (on the tiny store instead of a real one)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import REPO

from ttsgym.cli.main import main

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def _block(marker: str) -> str:
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, f"README has {len(found)} python blocks containing {marker!r}"
    return found[0]


def test_controller_example_runs_under_eval(tiny_store: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "my_controllers.py"
    path.write_text(_block("class ProbeThenVote"))
    argv = ["eval", "--store", str(tiny_store), "--controller", f"{path}:ProbeThenVote",
            "--beta", "0,0.5,1", "--seeds", "5", "--format", "json", "--workers", "1"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["beta"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[0]["avg_tokens"] <= rows[-1]["avg_tokens"]


def test_duckdb_example_runs(tiny_store: Path, capsys) -> None:
    code = _block(".connect()").replace('"stores/aime24"', repr(str(tiny_store)))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "probe_accuracy" in out and "tiny-model" in out


def test_gym_example_runs(tiny_store: Path) -> None:
    code = _block('gym.make("ttsgym/WidthDepth-v0"').replace('"stores/aime24"', repr(str(tiny_store)))
    code = code.replace('"Qwen3-4B"', '"tiny-model"').replace('"aime24"', '"toy"')
    code = code.replace('"question": 3', '"question": 1')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["obs"]["opened"][0] == 1 and not scope["terminated"]
