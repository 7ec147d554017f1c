"""SIGKILL the collector at random moments (at least 20 times) on the fast fault server: nothing
written is ever lost or corrupt, and every resumed store equals an uninterrupted run row for row."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from fake_vllm import FakeVLLM
from test_collect import FAST_RETRY, QUESTIONS, write_questions

from ttsgym.collect import CollectSettings, RunOptions, collect
from ttsgym.collect.questions import load_questions
from ttsgym.store import Store

KILLS = 20
DRIVER = ("import argparse, sys\nfrom ttsgym.cli import collect_cmd\n"
          "p = argparse.ArgumentParser(); s = p.add_subparsers(); collect_cmd.register(s)\n"
          "a = p.parse_args(sys.argv[1:]); sys.exit(a.run(a))\n")
FAULTS = {"429": 0.02, "500": 0.02, "hang": 0.005, "truncated": 0.02, "bad_json": 0.02, "no_usage": 0.02,
          "drop": 0.02}
SIZE = {"branches": 3, "interval": 8, "max_tokens": 48, "probe_tokens": 6}


def cli_args(url: str, qfile: Path, out: Path) -> list[str]:
    return ["collect", "--base-url", url, "--model", "fake", "--questions", str(qfile), "--out", str(out),
            "--dataset", "toy", "--branches", "3", "--interval", "8", "--max-tokens", "48",
            "--probe-tokens", "6", "--concurrency", "4", "--retries", "12", "--backoff", "0.005",
            "--timeout", "0.5", "--no-progress"]


def read_tables(out: Path) -> dict:
    keys = {"questions": ["question_id"], "branches": ["question_id", "branch_id"],
            "steps": ["question_id", "branch_id", "step"], "traces": ["question_id", "branch_id"]}
    return {t: pq.read_table(next((out / t).glob("*.parquet"))).sort_by([(c, "ascending") for c in cols])
            for t, cols in keys.items()}


def check_intact(out: Path, n_branches: int) -> None:
    """Whatever is on disk after a kill is whole: every done file parses with all its branches,
    and a manifest, when present, opens as a store whose tables read."""
    for f in (out / "_collect" / "done").glob("q*.json"):
        rec = json.loads(f.read_text())
        assert len(rec["branches"]) == n_branches, f
    if (out / "manifest.json").exists():
        store = Store(out)
        assert store.read("branches").num_rows == store.slice("fake", "toy").branches


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    qfile = write_questions(tmp_path / "q.jsonl", QUESTIONS + [
        {"question": f"What is {i} times {i}?", "answer": str(i * i)} for i in range(2, 6)])
    rng = random.Random(8)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with FakeVLLM(faults=FAULTS, hang_s=1.0, fault_seed=1) as srv:
        reference = tmp_path / "reference"
        collect(load_questions(qfile), CollectSettings(model="fake", dataset="toy", **SIZE),
                RunOptions([srv.base_url], concurrency=4, retry=FAST_RETRY), reference)
        want = read_tables(reference)
        kills, rounds, compared = 0, 0, 0
        out = tmp_path / "run0"
        for _ in range(80):
            proc = subprocess.Popen([sys.executable, "-c", DRIVER, *cli_args(srv.base_url, qfile, out)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True)
            try:
                proc.wait(timeout=rng.uniform(0.2, 3.0))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                check_intact(out, 3)
                if kills >= KILLS:
                    break
                continue
            err = proc.stderr.read().decode()
            assert proc.returncode == 0, err
            got = read_tables(out)
            for name in want:
                assert got[name].equals(want[name]), (out, name)
            compared += 1
            rounds += 1
            out = tmp_path / f"run{rounds}"  # a fresh collection to keep killing
        assert kills >= KILLS
        rc = subprocess.run([sys.executable, "-c", DRIVER, *cli_args(srv.base_url, qfile, out)], env=env,
                            capture_output=True, timeout=120)
        assert rc.returncode == 0, rc.stderr.decode()
    got = read_tables(out)
    for name in want:
        assert got[name].equals(want[name]), (out, name)
    print(f'{kills} kills, {compared} runs completed by themselves and compared')
