"""``--backend ray`` against a real local Ray cluster: the same results as the local backend, row
for row, through worker kills; a lost cluster ends the command with a clear message, and a search
it interrupted is finished by ``--resume``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import MODELS
from tests.ray_cluster import LOOPBACK_ENV, Cluster, need_ray, start_cluster, stop_cluster
from ttsgym.cli.main import main

pytestmark = pytest.mark.ray

BASELINES = ["sc:n=1", "sc:n=8", "sc:n=64", "asc:max_samples=64,threshold=0.95",
             "esc:max_samples=64,window_size=8",
             "parallel_probe:num_chains=64,T=40,prune_patience=7,warm_up=15"]
USER_CLASS = '''
import random


class Vote:
    """Opens branches until two agree (random order of reads: the seed must be honoured)."""

    def __init__(self, config=None):
        self.beta = (config or {}).get("beta", 0.5)

    @classmethod
    def schedule(cls, beta):
        return {"width": 2 + int(6 * beta)}

    def solve(self, q):
        width = self.schedule(self.beta)["width"]
        seen = {}
        for _ in range(min(width, q.pool_size)):
            a, b, finished = q.open()
            for _ in range(random.randint(0, 3)):
                if finished:
                    break
                a, finished = q.extend(b)
            if a != "ERR":
                seen[a] = seen.get(a, 0) + 1
                if seen[a] >= 2:
                    return a
        return max(seen, key=seen.get) if seen else None
'''
SLOW_CLASS = '''
import time


class Slow:
    """Sleeps on every question, so a task runs long enough to be killed mid-way."""

    def __init__(self, config=None):
        self.beta = (config or {}).get("beta", 0.5)

    @classmethod
    def schedule(cls, beta):
        return {}

    def solve(self, q):
        time.sleep(0.02)
        a, b, finished = q.open()
        if not finished:
            a, _ = q.extend(b)
        return a
'''
VECTORS = ("question_ids", "q_accuracy", "q_tokens", "q_seq_tokens", "seed_accuracy", "seed_tokens")
COMPARED = ("model", "dataset", "controller", "beta", "accuracy", "std_accuracy", "avg_tokens",
            "avg_seq_tokens", "episodes")


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    need_ray()
    c = start_cluster(num_cpus=2)
    yield c
    import ray

    if ray.is_initialized():
        ray.shutdown()
    stop_cluster(c)


@pytest.fixture(scope="module")
def user_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("user") / "vote.py"
    path.write_text(USER_CLASS)
    return path


def eval_table(store: Path, out: Path, controllers: list[str], *extra: str) -> list[dict]:
    argv = ["eval", "--store", str(store), "--seeds", "20", "--beta", "0.2,0.5,0.9", "--out", str(out),
            "--format", "json", *extra]
    for c in controllers:
        argv += ["--controller", c]
    assert main(argv) == 0
    return pq.read_table(out).to_pylist()


def same_rows(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert {k: g[k] for k in COMPARED} == {k: w[k] for k in COMPARED}
        for vec in VECTORS:
            assert g[vec] == w[vec], (w["controller"], vec)


def test_eval_on_ray_equals_local_row_for_row(real_store: Path, cluster: Cluster, user_file: Path,
                                              tmp_path: Path) -> None:
    controllers = [*BASELINES, "short_race", f"{user_file}:Vote"]
    local = eval_table(real_store, tmp_path / "local.parquet", controllers)
    ray_rows = eval_table(real_store, tmp_path / "ray.parquet", controllers,
                          "--backend", "ray", "--ray-address", cluster.address)
    same_rows(ray_rows, local)
    assert {r["model"] for r in local} == set(MODELS)
    assert sum(r["controller"] == "short_race" for r in local) == 3 * len(MODELS)
    assert sum(r["controller"].endswith(":Vote") for r in local) == 3 * len(MODELS)
    assert len(local[0]["q_accuracy"]) == 30 and len(local[0]["seed_accuracy"]) == 20


def test_a_slice_is_read_zero_copy_by_workers(real_store: Path, cluster: Cluster) -> None:
    """load_replay's arrays are memory-mapped; put as they are, Ray would copy them per worker."""
    import numpy as np

    from ttsgym.controllers.ray_backend import connect, put_slice
    from ttsgym.store import load_replay

    ray = connect(cluster.address)
    arrays = load_replay(real_store, "Qwen3-4B", "aime24")
    ref = put_slice(ray, arrays)

    @ray.remote
    def flags(box: list) -> dict:
        from ttsgym.controllers.ray_backend import _worker_slice

        a, _ = _worker_slice(box)
        return {k: (v.flags.owndata, v.flags.writeable, int(v.sum()))
                for k, v in vars(a).items() if isinstance(v, np.ndarray)}

    got = ray.get(flags.remote([ref]))
    assert set(got) >= {"probe_cls", "tokens", "final_cls", "class_blob"}
    for name, (owns, writeable, total) in got.items():
        assert not owns and not writeable, f"{name} was copied into the worker"
        assert total == int(getattr(arrays, name).sum())


def test_a_killed_worker_is_retried_and_the_result_is_identical(real_store: Path, cluster: Cluster,
                                                                tmp_path: Path) -> None:
    from ttsgym.controllers.evaluate import evaluate

    slow = tmp_path / "slow.py"
    slow.write_text(SLOW_CLASS)
    args = dict(models=["Qwen3-0.6B"], betas=[0.5], seeds=40)
    want = evaluate(real_store, [f"{slow}:Slow"], workers=2, **args).to_pylist()
    out: dict = {}

    def run() -> None:
        try:
            out["rows"] = evaluate(real_store, [f"{slow}:Slow"], backend="ray", ray_address=cluster.address,
                                   **args).to_pylist()
        except BaseException as exc:  # reported by the assertion below
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        pids = cluster.worker_pids("ray::ttsgym.eval")
        if pids:
            time.sleep(0.3)  # into the task, past the slice fetch
            os.kill(pids[0], 9)
            killed = pids[0]
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed is not None, "no evaluation task was seen running"
    assert "error" not in out, out.get("error")
    got = out["rows"]
    assert [{k: r[k] for k in COMPARED} for r in got] == [{k: r[k] for k in COMPARED} for r in want]
    assert got[0]["episodes"] == 40 * 30


def test_without_ray_the_backend_says_how_to_install(real_store: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    code = main(["eval", "--store", str(real_store), "--controller", "sc", "--backend", "ray"])
    err = capsys.readouterr().err
    assert code == 1
    assert "pip install 'ttsgym[ray]'" in err


# -- search ----------------------------------------------------------------------------------

SEARCH_KEYS = ("id", "round", "proposer", "status", "reason", "stage", "code", "class_name", "curve",
               "objective", "meta", "lesson")


def search_argv(store: Path, out: Path, *extra: str) -> list[str]:
    return ["search", "--store", str(store), "--out", str(out), "--proposer", "offline", "--rounds", "3",
            "--split", "Qwen3-1.7B:aime24", "--seeds", "3", "--final-seeds", "4", "--finalists", "2",
            "--drafts", "1", "--workers", "1", "--concurrent", "2", "--timeout", "300", *extra]


def history(run: Path) -> list[dict]:
    lines = (run / "history.jsonl").read_text().splitlines()
    return [{k: r[k] for k in SEARCH_KEYS} for r in map(json.loads, filter(str.strip, lines))]


@pytest.fixture(scope="module")
def local_search(real_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("search") / "local"
    assert main(search_argv(real_store, run)) == 0
    return run


def test_search_on_ray_has_the_local_history(real_store: Path, cluster: Cluster, local_search: Path,
                                             tmp_path: Path) -> None:
    run = tmp_path / "ray"
    assert main(search_argv(real_store, run, "--backend", "ray", "--ray-address", cluster.address)) == 0
    want = history(local_search)
    assert [r["round"] for r in want] == [0, 1, 2]
    assert any(r["status"] == "accepted" for r in want)
    assert history(run) == want
    sel = json.loads((run / "selected" / "selected.json").read_text())
    assert sel == json.loads((local_search / "selected" / "selected.json").read_text())
    assert json.loads((run / "run.json").read_text())["backend"] == "ray"


def cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, **LOOPBACK_ENV}
    return subprocess.Popen([sys.executable, "-m", "ttsgym.cli.main", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


def test_lost_cluster_ends_eval_with_a_clear_message(real_store: Path, tmp_path: Path) -> None:
    own = start_cluster(num_cpus=2)
    try:
        slow = tmp_path / "slow.py"
        slow.write_text(SLOW_CLASS)
        proc = cli("eval", "--store", str(real_store), "--controller", f"{slow}:Slow", "--beta", "0.5",
                   "--seeds", "200", "--backend", "ray", "--ray-address", own.address)
        deadline = time.monotonic() + 60
        while not own.worker_pids("ray::ttsgym.eval") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert own.worker_pids("ray::ttsgym.eval"), "the evaluation never started on the cluster"
        lost_at = time.monotonic()
        own.kill()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err[-2000:]
        assert f"lost the Ray cluster at {own.address}" in err
        assert "nothing written" in err
        assert time.monotonic() - lost_at < 40  # noticed by the driver, not by Ray's 60 s give-up
    finally:
        stop_cluster(own)


def test_lost_cluster_stops_search_and_resume_finishes_it(real_store: Path, local_search: Path,
                                                          tmp_path: Path) -> None:
    own = start_cluster(num_cpus=2)
    run = tmp_path / "run"
    try:
        proc = cli(*search_argv(real_store, run, "--backend", "ray", "--ray-address", own.address))
        deadline = time.monotonic() + 300
        hist = run / "history.jsonl"
        while time.monotonic() < deadline and proc.poll() is None and not (
                hist.exists() and hist.read_text().count("\n") >= 1):
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        own.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        stop_cluster(own)
    assert proc.returncode == 1, err[-2000:]
    assert f"lost the Ray cluster at {own.address}" in err
    assert "--resume" in err
    done = len(history(run))
    assert 1 <= done < 3
    # the cluster is gone for good: finish on this machine
    assert main([*search_argv(real_store, run, "--backend", "local"), "--resume"]) == 0
    assert history(run) == history(local_search)
