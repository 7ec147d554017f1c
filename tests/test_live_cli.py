"""``ttsgym run``: one question live, the trace, and ``--like STORE`` regenerating a store's branches."""

from __future__ import annotations

import json

import pytest
from live_fake import QUESTIONS, SETTINGS, FastFakeVLLM, collect_store

from ttsgym.cli.main import main
from ttsgym.controllers.registry import parse_spec
from ttsgym.env.episodes import run_episodes
from ttsgym.store import load_replay


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with FastFakeVLLM() as server:
        yield server, collect_store(server.base_url, tmp_path_factory.mktemp("cli") / "store")


def test_run_like_a_store_costs_what_replay_says(world, capsys) -> None:
    server, store = world
    arrays = load_replay(store, SETTINGS.model, SETTINGS.dataset)
    replay = run_episodes(lambda: parse_spec("short_race").make(0.3), arrays, [1])
    for q, row in enumerate(QUESTIONS):
        code = main(["run", "--base-url", server.base_url, "--model", "fake", "--controller", "short_race",
                     "--beta", "0.3", "--question", row.question, "--like", str(store), "--order-seed", "1",
                     "--format", "json"])
        assert code == 0
        out = json.loads(capsys.readouterr().out)
        assert out["tokens"] == int(replay.tokens[0, q]) and out["seq_tokens"] == int(replay.seq_tokens[0, q])
        assert out["opened"] == int(replay.opened[0, q])
        ops = [e["op"] for e in out["events"]]
        assert ops[0] == "open" and set(ops) <= {"open", "extend", "prune"}
        assert sum(e["cost"] for e in out["events"]) == out["tokens"]


def test_run_prints_a_trace_table(world, capsys) -> None:
    server, _ = world
    code = main(["run", "--base-url", server.base_url, "--model", "fake", "--controller", "sc:n=3",
                 "--question", "What is 3 + 4?", "--interval", "16", "--max-tokens", "64", "--branches", "4"])
    assert code == 0
    text = capsys.readouterr().out
    assert text.count("open_full") == 3
    assert "answer:" in text and "replay units:" in text and "upstream:" in text and "wall clock:" in text


def test_run_errors_name_the_flag(world, capsys) -> None:
    server, store = world
    base = ["run", "--base-url", server.base_url, "--model", "fake", "--question", "q"]
    assert main([*base, "--controller", "sc"]) == 2
    assert "--interval" in capsys.readouterr().err
    assert main([*base, "--controller", "sc", "--beta", "0.5", "--interval", "16"]) == 2
    assert "takes no β" in capsys.readouterr().err
    assert main([*base, "--controller", "nope", "--interval", "16"]) == 2
    assert "unknown controller" in capsys.readouterr().err
    assert main([*base, "--controller", "sc", "--like", str(store / "missing")]) == 2
    assert "manifest" in capsys.readouterr().err
    code = main([*base, "--controller", "sc:n=2", "--like", str(store), "--interval", "8",
                 "--format", "json"])
    assert code == 0
    assert "overrides the store's 16" in capsys.readouterr().err
