"""`ttsgym eval` through the process runner: --timeout, Ctrl-C, answers that are not strings,
one-line errors with the user's frames; and the search side's gold-free export and facade."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttsgym.cli.main import main
from ttsgym.env import Question, run_episodes
from ttsgym.search_agent.facade import CONSTANTS, COUNTERS, METHODS, QuestionView
from ttsgym.store import load_replay

BAD = '''
class Loop:
    def __init__(self, config=None):
        pass

    def solve(self, question):
        while True:
            pass


class FortyTwo:
    def __init__(self, config=None):
        pass

    def solve(self, question):
        question.probe_new()
        return 42


def helper(x):
    raise ValueError("boom " + str(x))


class Raises:
    def __init__(self, config=None):
        pass

    def solve(self, question):
        return helper(question.pool_size)
'''


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.py"
    path.write_text(BAD)
    return path


def _eval(store: Path, spec: str, capsys, *extra: str) -> tuple[int, str]:
    code = main(["eval", "--store", str(store), "--controller", spec, "--seeds", "30", *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_exception_prints_one_line_and_the_users_frames(tiny_store, bad, capsys, workers) -> None:
    code, err = _eval(tiny_store, f"{bad}:Raises", capsys, "--workers", workers)
    lines = [ln.rsplit("\r", 1)[-1] for ln in err.split("\n")]  # drop the progress bar's redraws
    lines = lines[next(i for i, ln in enumerate(lines) if ln.startswith("ttsgym eval: error:")):]
    assert code == 1
    assert "Raises.solve failed on question" in lines[0] and "ValueError: boom 4" in lines[0]
    assert lines[0].startswith("ttsgym eval: error:")
    frames = "\n".join(lines[1:])
    assert str(bad) in frames and "in helper" in frames
    assert "concurrent" not in err and "runner.py" not in err and "episodes.py" not in err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_answer_that_is_not_a_string_names_the_class(tiny_store, bad, capsys, workers) -> None:
    code, err = _eval(tiny_store, f"{bad}:FortyTwo", capsys, "--workers", workers)
    assert code in (1, 2) and "FortyTwo.solve returned int 42" in err and "str or None" in err


def test_timeout_bounds_a_task_and_kills_the_workers(tiny_store, bad, capsys) -> None:
    start = time.monotonic()
    code, err = _eval(tiny_store, f"{bad}:Loop", capsys, "--workers", "2", "--timeout", "1")
    assert code == 1 and "timed out after 1 s" in err and "Loop" in err
    assert time.monotonic() - start < 15


def _workers_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _default_sigint() -> None:
    """A suite started in the background by a shell (``make test &``) ignores SIGINT, and a child
    inherits that; the command under test must see Ctrl-C as a terminal would send it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_the_command_quickly_and_no_worker_outlives_it(tiny_store, bad) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ttsgym.cli.main", "eval", "--store", str(tiny_store),
                             "--controller", f"{bad}:Loop", "--seeds", "30", "--workers", "2"],
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    workers: list[int] = []
    for _ in range(200):  # wait until both workers run the loop
        workers = _workers_of(proc.pid)
        if len(workers) >= 2:
            break
        time.sleep(0.05)
    assert len(workers) >= 2, "the workers never started"
    time.sleep(0.5)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    assert time.monotonic() - start < 2.0
    assert proc.returncode == 130 and "interrupted" in proc.stderr.read()
    time.sleep(0.2)
    assert not [w for w in workers if _alive(w)], "a worker outlived Ctrl-C"


def test_exported_pools_hold_no_gold(tiny_store: Path, tmp_path: Path) -> None:
    from ttsgym.search_agent.evaluation import SearchSplit, export_pools

    split = SearchSplit.open(tiny_store)
    paths = export_pools(split, split.slices, tmp_path / "pools")
    blob = b"".join(Path(p).read_bytes() for p in paths.values())
    assert b"GOLD-SENTINEL-42" not in blob and b"7" in blob  # the branches' answers are there


def test_the_facade_offers_the_public_question_api(tiny_store: Path) -> None:
    arrays = load_replay(tiny_store, "tiny-model", "toy")
    seen: list[tuple] = []

    class Both:
        def solve(self, question: Question) -> str | None:
            view = QuestionView(question)
            view.open()
            view.extend(0)
            for name in (*CONSTANTS, *COUNTERS):
                seen.append((name, getattr(view, name), getattr(question, name)))
            for name in ("depths", "active", "majority", "get_seq_and_total_tokens"):
                seen.append((name, getattr(view, name)(), getattr(question, name)()))
            for name in ("answers", "latest", "depth", "signals", "tokens_of"):
                seen.append((name, getattr(view, name)(0), getattr(question, name)(0)))
            with pytest.raises(AttributeError):
                view.open = None
            return view.majority()

    run_episodes(Both, arrays, [0, 1])
    assert seen and all(a == b for _, a, b in seen)
    public = {n for n in dir(Question) if not n.startswith("_")}
    assert public <= set(METHODS) | set(CONSTANTS) | set(COUNTERS)
