"""The synthetic store generator (ttsgym.store.synth): same schema as an import, deterministic,
labelled synthetic, replayable, calibrated to the real AIME24 data, and streamed at scale."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ttsgym.controllers.baselines import SelfConsistency
from ttsgym.controllers.batched import run_batched
from ttsgym.store import ERR, Store, load_replay
from ttsgym.store import synth as synth_mod
from ttsgym.store.schema import TABLES
from ttsgym.store.synth import DEFAULT_PRESET, PRESETS, check, generate, measure

MODEL, DATASET = PRESETS[DEFAULT_PRESET].model, PRESETS[DEFAULT_PRESET].dataset
# Seeds averaged by the calibration tests (the presets were fitted on seeds 101-104).
CALIBRATION_SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 questions × 32 branches, streamed in 20 chunks of 2 questions (chunk seams included)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth_mod, "CHUNK_BRANCHES", 64)
        return generate(tmp_path_factory.mktemp("synth") / "small", questions=40, branches=32, seed=5)


@pytest.fixture(scope="module")
def with_signals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "signals", questions=30, branches=64, seed=2,
                    signals=True)


def _table_files(store: Path) -> dict[str, Path]:
    st = Store(store)
    s = st.slices[0]
    return {"questions": st.files("questions", dataset=s.dataset)[0],
            "branches": st.files("branches", s.model, s.dataset)[0],
            "steps": st.files("steps", s.model, s.dataset)[0]}


def _average_stats(preset_name: str, out: Path) -> dict[str, float]:
    """Calibration statistics of a preset at its real sizes, averaged over CALIBRATION_SEEDS.

    Averaging three stores keeps the check about the model rather than about the luck of one
    30-question draw (single seeds pass too, but maj@64 can move by a question or two)."""
    p = PRESETS[preset_name]
    runs = [measure(generate(out / f"{preset_name}-{s}", preset=p, seed=s))[(p.model, p.dataset)]
            for s in CALIBRATION_SEEDS]
    return {k: float(np.mean([r[k] for r in runs])) for k in p.targets}


# --- schema, manifest, determinism ---------------------------------------------------------


def test_tables_have_the_store_schema(small: Path) -> None:
    for name, path in _table_files(small).items():
        assert pq.read_schema(path).remove_metadata() == TABLES[name], name


def test_schema_identical_to_an_imported_store(small: Path, real_store: Path) -> None:
    real, synthetic = _table_files(real_store), _table_files(small)
    for name in TABLES:
        assert pq.read_schema(synthetic[name]).remove_metadata() == \
            pq.read_schema(real[name]).remove_metadata(), name


def test_manifest_and_names_say_synthetic(small: Path) -> None:
    manifest = json.loads((small / "manifest.json").read_text())
    assert manifest["synthetic"] is True
    assert manifest["source"] == {
        "kind": "synthetic", "preset": DEFAULT_PRESET, "seed": 5, "generator": "ttsgym.store.synth",
        "calibrated_to": "Qwen3-4B/aime24", "questions": 40, "branches": 32, "signals": False}
    assert manifest["collection"]["synthetic"] is True
    (entry,) = manifest["slices"]
    assert "synthetic" in entry["model"] and "synthetic" in entry["dataset"]
    assert entry["questions"] == 40 and entry["branches"] == 40 * 32
    st = Store(small)
    assert st.synthetic
    texts = st.read("questions").column("question").to_pylist()
    assert all("synthetic" in t for t in texts)


def test_same_seed_same_store_other_seed_other_store(tmp_path: Path) -> None:
    def tables(path: Path) -> dict:
        st = Store(path)
        return {t: st.read(t) for t in TABLES}

    a = generate(tmp_path / "a", questions=25, branches=16, seed=11)
    b = generate(tmp_path / "b", questions=25, branches=16, seed=11)
    c = generate(tmp_path / "c", questions=25, branches=16, seed=12)
    ta, tb, tc = tables(a), tables(b), tables(c)
    assert all(ta[t].equals(tb[t]) for t in TABLES)
    assert Store(a).slices[0].content_sha256 == Store(b).slices[0].content_sha256
    assert not ta["branches"].equals(tc["branches"]) and not ta["steps"].equals(tc["steps"])
    assert Store(a).slices[0].content_sha256 != Store(c).slices[0].content_sha256


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    out = generate(tmp_path / "s", questions=3, branches=4)
    with pytest.raises(FileExistsError):
        generate(out, questions=3, branches=4)
    generate(out, questions=5, branches=4, overwrite=True)
    assert Store(out).slices[0].questions == 5


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        generate(tmp_path / "x", preset="qwen3-70b-like")
    with pytest.raises(ValueError, match="at least one question"):
        generate(tmp_path / "x", questions=0)
    assert not (tmp_path / "x").exists()


# --- replay --------------------------------------------------------------------------------


def test_replay_arrays_are_consistent(small: Path) -> None:
    a = load_replay(small, MODEL, DATASET)
    st = Store(small)
    branches = st.read("branches").sort_by([("question_id", "ascending"), ("branch_id", "ascending")])
    assert a.synthetic and a.n_questions == 40 and a.max_branches == 32
    assert (a.n_branches == 32).all() and (a.interval == 500).all()
    assert (a.n_probes >= 1).all() and len(a.probe_cls) == int(a.n_probes.sum())
    assert np.array_equal(a.tokens.ravel(), branches.column("n_tokens").to_numpy())
    correct = a.final_cls == a.gold_cls[:, None]
    assert np.array_equal(correct.ravel(), branches.column("correct").to_numpy())
    last = np.array([a.probes(q, b)[-1] for q in range(40) for b in range(32)]).reshape(40, 32)
    assert np.array_equal(last, a.final_cls)  # as in the real data: the last probe is the final
    assert (a.tokens < a.interval[:, None] * a.n_probes).any()  # some last probes after the end
    golds = [a.class_names(q)[a.gold_cls[q]] for q in range(40)]
    assert all(g.isdigit() and 0 <= int(g) <= 999 for g in golds)
    assert any(ERR in a.class_names(q) for q in range(40))


def test_probes_converge_to_the_final_answer(small: Path) -> None:
    """Early probes are noisy; the last few agree with the final; wrong finals scatter."""
    a = load_replay(small, MODEL, DATASET)
    early, late = [], []
    for q in range(a.n_questions):
        for b in range(a.max_branches):
            p = a.probes(q, b)
            if len(p) >= 6:
                early.append(p[0] == a.final_cls[q, b])
                late.append(p[-2] == a.final_cls[q, b])
    assert np.mean(late) > 0.8 > 0.3 > np.mean(early)
    wrong = a.final_cls != a.gold_cls[:, None]
    distinct = [len(set(a.final_cls[q][wrong[q]].tolist()))
                for q in range(a.n_questions) if wrong[q].sum() >= 8]
    assert distinct and np.mean(distinct) > 2


def test_batched_self_consistency_runs(small: Path) -> None:
    a = load_replay(small, MODEL, DATASET)
    r = run_batched(SelfConsistency(n=16), a, range(10))
    assert r is not None
    assert r.correct.shape == (10, 40) and (r.tokens > 0).all() and (r.opened == 16).all()
    # every episode reads 16 whole branches, so its cost is the sum of 16 branch lengths
    assert (r.tokens >= 16 * a.tokens.min()).all() and (r.tokens <= 16 * a.tokens.max()).all()


def test_signals_are_present_and_informative(with_signals: Path, small: Path) -> None:
    info = Store(with_signals).slices[0]
    assert info.has_score and info.has_confidence
    assert not Store(small).slices[0].has_score
    steps = Store(with_signals).read("steps")
    score = steps.column("score").to_numpy()
    conf = steps.column("confidence").to_numpy()
    assert steps.column("score").null_count == 0 and ((score > 0) & (score < 1)).all()
    assert ((conf > 0) & (conf < 1)).all()
    a = load_replay(with_signals, PRESETS[DEFAULT_PRESET].model, DATASET)
    assert a.score is not None and a.confidence is not None
    owner = np.repeat(np.arange(a.n_questions * a.max_branches), a.n_probes.ravel())
    agrees = a.probe_cls == a.final_cls.ravel()[owner]
    correct = (a.final_cls == a.gold_cls[:, None]).ravel()[owner]
    assert a.confidence[agrees].mean() > a.confidence[~agrees].mean() + 0.1
    assert a.score[correct].mean() > a.score[~correct].mean() + 0.1


# --- calibration ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_meets_its_stated_targets(preset: str, tmp_path: Path) -> None:
    """Runs without the real data: the presets carry the real statistics they target."""
    stats = _average_stats(preset, tmp_path)
    assert check(stats, PRESETS[preset]) == []


@pytest.fixture(scope="module")
def real_stats(real_store: Path) -> dict:
    """The real slices' statistics, measured afresh (slice_stats + depth profile)."""
    return measure(real_store)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_within_tolerance_of_the_real_data(preset: str, real_stats: dict, tmp_path: Path) -> None:
    p = PRESETS[preset]
    real = real_stats[(p.real_model, p.real_dataset)]
    for name, target in p.targets.items():  # the stored targets are the real statistics
        assert real[name] == pytest.approx(target, rel=1e-3, abs=1e-4), name
    stats = _average_stats(preset, tmp_path)
    assert check(stats, replace(p, targets={k: real[k] for k in p.targets})) == []


def test_check_reports_what_is_off() -> None:
    p = PRESETS[DEFAULT_PRESET]
    stats = dict(p.targets)
    assert check(stats, p) == []
    stats["maj_64"] += 0.2
    stats["mean_branch_tokens"] *= 1.5
    failures = check(stats, p)
    assert len(failures) == 2 and failures[0].startswith("maj_64") and "relative" in failures[1]


# --- CLI -----------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    from ttsgym.cli.synth_cmd import register

    parser = argparse.ArgumentParser(prog="ttsgym")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_generates_and_lists(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert _cli(["synth", "--out", str(out), "--preset", "qwen3-0.6b-aime24-like", "--questions", "6",
                 "--branches", "8", "--seed", "3", "--signals"]) == 0
    assert "synthetic" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["preset"] == "qwen3-0.6b-aime24-like" and manifest["source"]["seed"] == 3
    assert Store(out).slices[0].has_score
    assert _cli(["synth", "--list-presets", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["preset"] for r in listed] == list(PRESETS)
    assert set(listed[0]["targets"]) == set(listed[0]["tolerances"])
    with pytest.raises(ValueError, match="--out"):
        _cli(["synth"])


# --- scale ---------------------------------------------------------------------------------


def _child_peak_mb(code: str) -> float:
    """Run code in a fresh interpreter; its own peak RSS in MiB (os.wait4 reports one child)."""
    proc = subprocess.Popen([sys.executable, "-c", code])
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss / 1024  # Linux reports KiB


@pytest.mark.skipif(not hasattr(os, "wait4") or sys.platform != "linux", reason="needs Linux rusage")
def test_generation_streams_and_compiles_at_scale(tmp_path: Path) -> None:
    """Peak memory of generation does not grow with the number of questions (chunks are
    written and dropped), and a 2,000 × 256 store (≈14 M probes) compiles well within RAM."""
    gen = "from ttsgym.store.synth import generate; generate({!r}, questions={}, branches=256)"
    small = _child_peak_mb(gen.format(str(tmp_path / "s250"), 250))
    big = _child_peak_mb(gen.format(str(tmp_path / "s2000"), 2000))
    assert big - small < 150, (small, big)  # 8x the data, about the same memory
    assert big < 800, big
    load = ("from ttsgym.store import load_replay; "
            f"a = load_replay({str(tmp_path / 's2000')!r}, {MODEL!r}, {DATASET!r}); "
            "assert a.n_questions == 2000 and a.max_branches == 256 and len(a.probe_cls) > 10_000_000")
    assert _child_peak_mb(load) < 1500
