"""The offline search space: rendered programs are standalone, pass a static screen, run, and keep
their β-schedules monotone; the short_race genome reproduces short_race episode by episode."""

from __future__ import annotations

import ast
import importlib.util
import random
from itertools import pairwise
from pathlib import Path

import pytest

from ttsgym.controllers.evaluate import evaluate
from ttsgym.search_agent import space

ALLOWED = {"math", "collections", "itertools", "heapq", "functools", "statistics", "numpy", "scipy.stats",
           "ttsgym.controllers.base", "ttsgym.env.voting"}
FORBIDDEN_CALLS = {"getattr", "setattr", "delattr", "vars", "dir", "globals", "locals", "eval", "exec",
                   "compile", "open", "__import__"}
GRID = [k / 50 for k in range(51)]


def screen(source: str) -> list[str]:
    """A basic static screen, independent of the project's checker: what the contract forbids."""
    tree = ast.parse(source)
    problems = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.ClassDef):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant | ast.Dict | ast.Call):
            if isinstance(node.value, ast.Call) and not (
                    isinstance(node.value.func, ast.Name) and node.value.func.id == "float"):
                problems.append(f"module-level call at line {node.lineno}")
            continue
        problems.append(f"module-level statement {type(node).__name__} at line {node.lineno}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [f"import {a.name}" for a in node.names if a.name not in ALLOWED]
        elif isinstance(node, ast.ImportFrom) and node.module not in ALLOWED:
            problems.append(f"from {node.module} import")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            problems.append(f"attribute {node.attr} at line {node.lineno}")
        elif isinstance(node, ast.Name) and (node.id in FORBIDDEN_CALLS or node.id.startswith("__")):
            problems.append(f"name {node.id} at line {node.lineno}")
        elif isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:  # a module's function (functools.lru_cache) or a method kind
                func = d.func if isinstance(d, ast.Call) else d
                if not (isinstance(func, ast.Attribute) or (isinstance(func, ast.Name) and func.id in (
                        "classmethod", "staticmethod"))):
                    problems.append(f"decorator at line {d.lineno}")
    return problems


def load(source: str, name: str, tmp_path: Path) -> type:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def genomes(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [space.seed_genome(), *(space.random_genome(rng) for _ in range(n))]


def test_the_screen_can_fail() -> None:
    assert screen("import os\n")
    assert screen("x = [1]\nx.__class__\n")
    assert screen("def f(q):\n    return q._pool_fin\n")
    assert screen("print('side effect')\n")
    assert screen("from functools import cache\n@cache\ndef f():\n    return 1\n")


@pytest.mark.parametrize("genome", genomes(40), ids=lambda g: space.genome_key(g))
def test_rendered_code_passes_the_static_screen(genome: dict) -> None:
    source, name = space.render(genome)
    assert screen(source) == []
    tree = ast.parse(source)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == [name]
    assert ast.get_docstring(tree) and "genome" in ast.get_docstring(tree)


def test_schedules_are_monotone_and_match_the_python_side(tmp_path: Path) -> None:
    for genome in genomes(25, seed=1):
        source, name = space.render(genome)
        cls = load(source, name, tmp_path)
        assert set(cls.SPEND) == set(cls.schedule(0.0))
        for lo, hi in pairwise(GRID):
            a, b = cls.schedule(lo), cls.schedule(hi)
            for key, direction in cls.SPEND.items():
                assert (b[key] >= a[key]) if direction > 0 else (b[key] == a[key]), (key, lo, hi)
        for beta in (0.0, 0.3, 1.0):
            assert cls.schedule(beta) == pytest.approx(space.schedule_values(genome, beta))
        assert cls(config={"beta": 0.25}).hp == cls.schedule(0.25)


def test_rendered_programs_run_on_a_tiny_store(tiny_store: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    picks = [space.seed_genome(), *(space.random_genome(rng) for _ in range(7))]
    specs = []
    for g in picks:
        source, name = space.render(g)
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        specs.append(f"{path}:{name}")
    rows = evaluate(tiny_store, specs, betas=[0, 0.5, 1], seeds=3, workers=1).to_pylist()
    assert len(rows) == 3 * len(picks)
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 100.0 and r["avg_tokens"] > 0


def short_race_genome() -> dict:
    g = space.seed_genome()
    g.update({"max_votes": {"lo": 2, "hi": 32, "shape": "geo"},
              "theta": {"lo": 0.8, "hi": 0.99, "shape": "lin"}, "cap": "rank", "probe_vote": "confirm",
              "revision_weight": 1.0, "fallback": "settled"})
    return g


def test_short_race_genome_reproduces_short_race(tmp_path: Path) -> None:
    from ttsgym.store.synth import generate

    store = generate(tmp_path / "synth", questions=6, branches=32, seed=3)
    source, name = space.render(short_race_genome())
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    ours = evaluate(store, [f"{path}:{name}"], betas=[0, 0.5, 1], seeds=5, workers=1).to_pylist()
    theirs = evaluate(store, ["short_race"], betas=[0, 0.5, 1], seeds=5, workers=1).to_pylist()
    for a, b in zip(ours, theirs, strict=True):
        assert a["q_tokens"] == b["q_tokens"] and a["q_accuracy"] == b["q_accuracy"]


def test_canonical_form_merges_unused_genes_and_validate_names_the_gene() -> None:
    a = space.seed_genome()
    b = space.seed_genome()
    b["margin"] = {"lo": 1, "hi": 10, "shape": "geo"}  # unused under the Beta stop rule
    assert space.genome_key(a) == space.genome_key(b)
    b["stop"] = "margin"
    assert space.genome_key(a) != space.genome_key(b)
    bad = space.seed_genome()
    bad["width"] = {"lo": 5, "hi": 8, "shape": "lin"}
    with pytest.raises(ValueError, match="width"):
        space.validate(bad)
    swapped = space.seed_genome()
    swapped["width"] = {"lo": 8, "hi": 2, "shape": "lin"}
    assert space.validate(swapped)["width"] == {"lo": 2, "hi": 8, "shape": "lin"}
