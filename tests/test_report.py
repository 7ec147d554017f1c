"""`ttsgym report`: files written, plots a reader can interpret, markdown content, errors."""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import need_shared_data

import ttsgym.cli.main as cli_main
from ttsgym.controllers.metrics import family_curves, metrics_table
from ttsgym.controllers.report import accuracy_figure, family_styles, load_results, write_report
from ttsgym.env.results import RESULTS

MODELS = ("tiny-1B", "tiny-8B")
SC_N = (1, 4, 16, 64)


def _row(model: str, controller: str, name: str, kind: str, beta: float | None, q_acc: np.ndarray,
         tokens: float, opened: float, synthetic: bool) -> dict:
    seed_acc = [100 * float(q_acc.mean()) + d for d in (-1.0, 0.0, 1.0)]
    return {
        "model": model, "dataset": "toy", "controller": controller, "name": name, "kind": kind,
        "beta": beta, "protocol": "autotts", "kappa": 0, "budget": None, "synthetic": synthetic,
        "seeds": 3, "questions": len(q_acc), "episodes": 3 * len(q_acc),
        "accuracy": 100 * float(q_acc.mean()), "std_accuracy": float(np.std(seed_acc)),
        "avg_tokens": tokens, "avg_seq_tokens": tokens / opened ** 0.5, "avg_opened": opened,
        "seconds": 0.1, "question_ids": list(range(len(q_acc))), "q_accuracy": q_acc.tolist(),
        "q_tokens": [tokens] * len(q_acc), "q_seq_tokens": [tokens / opened ** 0.5] * len(q_acc),
        "seed_accuracy": seed_acc, "seed_tokens": [tokens] * 3,
    }


def results(synthetic: bool = False, models: tuple[str, ...] = MODELS) -> pa.Table:
    """SC@N across N, a β-family across β and two single baselines, for each model."""
    rng = np.random.default_rng(0)
    rows = []
    for m, model in enumerate(models):
        skill = rng.uniform(0.2, 0.8, size=12) * (0.7 + 0.3 * m)
        for n in SC_N:
            q = np.clip(skill + 0.04 * np.log2(n), 0, 1)
            rows.append(_row(model, "sc" if n == 64 else f"sc:n={n}", "sc", "baseline", None, q,
                             15_000.0 * n, float(n), synthetic))
        for beta in (0.0, 0.5, 1.0):
            q = np.clip(skill + 0.05 + 0.2 * beta, 0, 1)
            rows.append(_row(model, "cmc", "cmc", "beta-family", beta, q, 20_000 * 10 ** (1.3 * beta),
                             2 + 20 * beta, synthetic))
        rows.append(_row(model, "asc", "asc", "baseline", None, np.clip(skill + 0.2, 0, 1), 300_000.0,
                         20.0, synthetic))
        rows.append(_row(model, "parallel_probe", "parallel_probe", "baseline", None, skill.copy(),
                         500_000.0, 64.0, synthetic))
    return pa.Table.from_pylist(rows, schema=RESULTS)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def figure(table: pa.Table, x: str = "avg_tokens"):
    from ttsgym.controllers.metrics import average_over_models

    rows = metrics_table(pa.concat_tables([table, average_over_models(table)]), n_resamples=500)
    rows = rows.to_pylist()
    curves = family_curves(rows)
    return accuracy_figure(rows, curves, "toy", x, family_styles(curves))


def texts(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One report over the two-model results, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("report") / "rep"
    path = write_report(results(), out, n_resamples=500)
    assert path == out / "report.md"
    return path


def test_report_writes_markdown_csv_and_valid_pngs(report: Path) -> None:
    path = report
    assert path.is_file() and (path.parent / "metrics.csv").is_file()
    pngs = sorted(path.parent.glob("*.png"))
    assert [p.name for p in pngs] == ["accuracy_vs_seq_tokens_toy.png", "accuracy_vs_tokens_toy.png"]
    for png in pngs:
        width, height = png_size(png)
        assert 900 <= width <= 4000 and 500 <= height <= 3000, (width, height)
        pixels = matplotlib.image.imread(png)
        assert pixels.shape[:2] == (height, width)
        assert pixels.std() > 0.05  # not a blank canvas
        assert f"]({png.name})" in path.read_text()


def test_markdown_names_every_model_and_controller_and_sc64(report: Path) -> None:
    md = report.read_text()
    for model in MODELS:
        assert f"### {model} — toy" in md
    assert "### mean of 2 models (tiny-1B, tiny-8B) — toy" in md
    for controller in ("sc:n=1", "sc:n=4", "sc:n=16", "sc (SC@64)", "cmc β=0.5", "asc", "parallel_probe"):
        assert f"`{controller}`" in md, controller
    assert "### Comparison with SC@64 — toy" in md
    assert "| `cmc across β` |" in md and "| `sc across n` |" in md
    assert "95% CI" in md and "★" in md and "reference" in md
    assert "synthetic" not in md.lower()


def test_synthetic_rows_are_labelled_everywhere(tmp_path: Path) -> None:
    md = write_report(results(synthetic=True), tmp_path, n_resamples=500).read_text()
    assert "**SYNTHETIC DATA.**" in md
    assert "## toy (synthetic)" in md and "### tiny-1B — toy (synthetic)" in md
    fig = figure(results(synthetic=True))
    assert fig.get_suptitle().startswith("SYNTHETIC DATA")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert all(any(t.get_text() == "SYNTHETIC" for t in ax.texts) for ax in panels)
    real = figure(results())
    assert "SYNTHETIC" not in real.get_suptitle()
    assert not any(t.get_text() == "SYNTHETIC" for ax in real.axes for t in ax.texts)


def test_plot_has_a_log_panel_per_model_labels_and_legend() -> None:
    for x in ("avg_tokens", "avg_seq_tokens"):
        fig = figure(results(), x)
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title() for ax in panels] == ["tiny-1B", "tiny-8B",
                                                    "mean of 2 models (tiny-1B, tiny-8B)"]
        for ax in panels:
            assert ax.get_xscale() == "log"
            assert "tokens per question" in ax.get_xlabel() and "log scale" in ax.get_xlabel()
            assert ax.get_ylabel() == "accuracy (%)"
            assert any(line.get_linestyle() == "--" for line in ax.get_lines())  # SC@64 reference
        assert "toy: accuracy vs" in fig.get_suptitle()
        labels = texts(fig)
        for family in ("sc across n", "cmc across β", "asc", "parallel_probe", "SC@64 accuracy"):
            assert family in labels, (family, labels)
    # β values and N values label the points of their lines.
    ax = figure(results()).axes[0]
    notes = {t.get_text() for t in ax.texts}
    assert {"n=1", "n=64", "β=0", "β=1"} <= notes


def test_single_model_report_has_one_panel_and_no_mean(tmp_path: Path) -> None:
    table = results(models=("solo",))
    fig = figure(table)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["solo"]
    assert texts(fig)
    md = write_report(table, tmp_path, n_resamples=500).read_text()
    assert "mean of" not in md.replace("mean of N models", "")
    width, height = png_size(tmp_path / "accuracy_vs_tokens_toy.png")
    assert width >= 600 and height >= 400


def test_later_inputs_replace_repeated_configurations(tmp_path: Path) -> None:
    first = tmp_path / "a.parquet"
    pq.write_table(results(models=("solo",)), first)
    changed = results(models=("solo",)).to_pylist()
    changed[0]["accuracy"] = 99.0
    table, names, replaced = load_results([first, pa.Table.from_pylist(changed, schema=RESULTS)])
    assert names == [str(first), "table #2"] and table.num_rows == pq.read_table(first).num_rows
    assert replaced == table.num_rows  # every row of the first input was repeated
    assert table.to_pylist()[0]["accuracy"] == 99.0
    md = write_report([first, first], tmp_path / "rep", n_resamples=500).read_text()
    assert "repeated configurations: the later input's row was kept" in md


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.parquet"
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet: no such file"):
        write_report([missing], tmp_path / "out")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(ValueError, match=r"garbage\.parquet: cannot be read as Parquet"):
        write_report(garbage, tmp_path / "out")
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"model": ["m"], "accuracy": [1.0]}), wrong)
    with pytest.raises(ValueError, match=r"wrong\.parquet: not a ttsgym results table"):
        write_report([wrong], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the inputs were checked


def _cli(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> tuple[int, str, str]:
    modules = tuple(dict.fromkeys((*cli_main.COMMAND_MODULES, "report_cmd")))
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", modules)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_exits_2_naming_a_bad_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(results(models=("solo",)), good)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(results().drop_columns(["q_accuracy"]), wrong)
    code, _, err = _cli(monkeypatch, ["report", str(good), str(wrong), "--out", str(tmp_path / "r")])
    assert code == 2
    assert "ttsgym report: error:" in err and "wrong.parquet" in err and "q_accuracy" in err
    code, out, _ = _cli(monkeypatch, ["report", str(good), "--out", str(tmp_path / "r"),
                                      "--resamples", "500"])
    assert code == 0 and (tmp_path / "r" / "report.md").is_file() and "report.md" in out


@pytest.mark.shared_data
def test_report_on_real_evaluation(real_store: Path, tmp_path: Path) -> None:
    need_shared_data()
    from ttsgym.controllers.evaluate import evaluate

    table = evaluate(real_store, ["sc:n=1", "sc:n=4", "sc:n=64", "asc"], models=["Qwen3-0.6B", "Qwen3-8B"],
                     seeds=5, workers=1)
    md = write_report(table, tmp_path, n_resamples=500).read_text()
    assert "### Qwen3-0.6B — aime24" in md and "### Qwen3-8B — aime24" in md
    assert "mean of 2 models" in md and "`sc (SC@64)`" in md and "`asc`" in md
    assert "synthetic" not in md.lower()
    width, height = png_size(tmp_path / "accuracy_vs_tokens_aime24.png")
    assert width >= 900 and height >= 500


def test_two_settings_stay_apart(tmp_path: Path) -> None:
    base = results(models=("solo",)).to_pylist()
    kappa = [dict(r, kappa=100, avg_tokens=r["avg_tokens"] * 1.2) for r in base]
    both = pa.Table.from_pylist(base + kappa, schema=RESULTS)
    md = write_report(both, tmp_path, n_resamples=300).read_text()
    assert "`sc:n=4 [autotts, κ=100]`" in md and "`sc:n=4 [autotts, κ=0]`" in md
    assert "| `sc across n [κ=100]` |" in md
    # each κ is compared with its own SC@64, so SC@64 of either setting is its own reference
    assert md.count("(SC@64)` |") == 2 and md.count("| reference | 1.00× |") == 2
