"""Pieces of the Ray backend that need no cluster: shipping a user class file to a node that lacks
it, telling loopback addresses apart, the message without Ray."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ttsgym.controllers import ray_backend
from ttsgym.controllers.registry import parse_spec

CODE = ("class Mine:\n    def __init__(self, config=None):\n        pass\n\n"
        "    def solve(self, q):\n        return q.open_full()\n")


def test_a_user_file_missing_on_the_node_is_written_from_the_shipped_source(tmp_path: Path,
                                                                            monkeypatch) -> None:
    path = tmp_path / "mine.py"
    path.write_text(CODE)
    spec = f"{path}:Mine"
    sources = ray_backend.user_sources([spec, "sc:n=4"])
    assert list(sources) == [spec] and sources[spec] == ("mine.py", CODE)
    assert ray_backend._materialise(spec, sources) == spec  # same file here: used as it is
    assert ray_backend._materialise("sc:n=4", sources) == "sc:n=4"
    path.unlink()  # as on another node
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "node-tmp"))
    (tmp_path / "node-tmp").mkdir()
    moved = ray_backend._materialise(spec, sources)
    assert moved != spec and moved.endswith("mine.py:Mine")
    assert Path(moved.rpartition(":")[0]).read_text() == CODE
    assert parse_spec(moved).cls.__name__ == "Mine"
    path.write_text(CODE.replace("open_full", "majority"))  # another file under the same path
    assert ray_backend._materialise(spec, sources) == moved


@pytest.mark.parametrize(("address", "loopback"), [("127.0.0.1:6379", True), ("localhost:6379", True),
                                                   ("[::1]:6379", True), ("10.0.0.1:6379", False),
                                                   ("head.cluster:6379", False)])
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert ray_backend._is_loopback(address) is loopback


def test_without_ray_the_error_says_how_to_install(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ray_backend.RayUnavailable, match=r"pip install 'ttsgym\[ray\]'"):
        ray_backend.require_ray()
