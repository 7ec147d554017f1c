"""The main job in quick mode, on the embedded synthetic default and on a given store."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from ttsgym.cli.main import main
from ttsgym.controllers.registry import builtins


def test_quick_demo_on_the_synthetic_default(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("TTSGYM_STORE", raising=False)
    assert main(["demo", "--quick", "--out", str(tmp_path / "out"), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and "acc %" in out and "demo finished" in out
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert all(r["synthetic"] for r in table)
    families = [n for n, c in builtins().items() if c.kind == "beta-family"]
    for family in families:
        assert sorted(r["beta"] for r in table if r["controller"] == family) == [0.0, 0.5, 1.0]
        assert f"{family}: the cheapest β" in out
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "synthetic" in report.lower()
    assert list((tmp_path / "out" / "report").glob("*.png"))
    # a second run reuses the generated store
    assert main(["demo", "--quick", "--out", str(tmp_path / "out"), "--seeds", "2"]) == 0
    assert "generating a synthetic store" not in capsys.readouterr().out


def test_demo_takes_a_store(tiny_store: Path, tmp_path: Path, capsys) -> None:
    assert main(["demo", "--quick", "--store", str(tiny_store), "--out", str(tmp_path / "o"),
                 "--seeds", "3", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "tiny-model/toy" in out and "(real;" in out
