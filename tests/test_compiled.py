"""Compiled replay arrays: consistent with the tables, memory-mapped, rebuilt when tables change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ttsgym.store import Store, StoreError, load_replay
from ttsgym.store.compiled import cache_root


def test_arrays_reproduce_the_tables(tiny_store: Path) -> None:
    a = load_replay(tiny_store, "tiny-model", "toy")
    assert a.n_branches.tolist() == [4, 3]
    assert a.interval.tolist() == [500, 500]
    assert a.tokens[0].tolist() == [1700, 900, 300, 800]
    assert a.tokens[1, :3].tolist() == [1200, 450, 1400]
    assert a.final_cls[1, 3] == -1, "padding past a question's pool"
    names0 = a.class_names(0)
    assert [names0[c] for c in a.probes(0, 0)] == ["5", "ERR", "2"]
    assert a.probes(0, 2).size == 0
    assert [names0[c] for c in a.final_cls[0, :4]] == ["2", "3", "2", "ERR"]
    assert names0[a.gold_cls[0]] == "2"
    assert a.class_names(1)[a.gold_cls[1]] == "GOLD-SENTINEL-42"
    assert a.score is None and a.confidence is None


def test_warm_load_is_memory_mapped_from_the_cache(tiny_store: Path) -> None:
    load_replay(tiny_store, "tiny-model", "toy")
    warm = load_replay(tiny_store, "tiny-model", "toy")
    assert isinstance(warm.tokens, np.memmap) and isinstance(warm.probe_cls, np.memmap)
    store = Store(tiny_store)
    assert len(list((cache_root(store) / "compiled").glob("tiny-model__toy-*"))) == 1


def test_cache_is_rebuilt_when_the_parquet_content_changes(tiny_store: Path) -> None:
    before = load_replay(tiny_store, "tiny-model", "toy")
    assert before.tokens[0, 0] == 1700
    path = tiny_store / "branches" / "tiny-model__toy.parquet"
    table = pq.read_table(path)
    tokens = pc.if_else(pc.equal(table["n_tokens"], 1700), 1900, table["n_tokens"])
    pq.write_table(table.set_column(table.schema.get_field_index("n_tokens"), "n_tokens",
                                    tokens.cast(pa.int64())), path)
    after = load_replay(tiny_store, "tiny-model", "toy")
    assert after.tokens[0, 0] == 1900
    caches = list((cache_root(Store(tiny_store)) / "compiled").glob("tiny-model__toy-*"))
    assert len(caches) == 1, "the stale cache is removed"


def test_cache_goes_to_ttsgym_cache_when_set(tiny_store: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TTSGYM_CACHE", str(tmp_path / "elsewhere"))
    load_replay(tiny_store, "tiny-model", "toy")
    assert list((tmp_path / "elsewhere" / "compiled").glob("tiny-model__toy-*"))


def test_inconsistent_steps_are_reported(tiny_store: Path) -> None:
    path = tiny_store / "steps" / "tiny-model__toy.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)  # drop the first probe of question 0, branch 0
    with pytest.raises(StoreError, match="question 0 branch 0 has 2 step rows but n_probes = 3"):
        load_replay(tiny_store, "tiny-model", "toy")


def test_real_arrays_match_the_shared_json(real_store: Path) -> None:
    import json

    from conftest import AUTOTTS

    data = json.loads((AUTOTTS / "Qwen3-8B" / "aime24.json").read_text())
    a = load_replay(real_store, "Qwen3-8B", "aime24")
    for q in (0, 17, 29):
        names = a.class_names(q)
        assert names[a.gold_cls[q]] == data[q]["gold_answer"]
        for b in (0, 63, 127):
            probes, tokens, final = data[q]["each_branch"][b]
            assert [names[c] for c in a.probes(q, b)] == probes
            assert (int(a.tokens[q, b]), names[a.final_cls[q, b]]) == (tokens, final)
