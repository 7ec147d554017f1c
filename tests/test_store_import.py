"""AutoTTS import/export: lossless round trip, clear errors, no partial store on failure."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import AUTOTTS, MODELS, need_shared_data, tiny_questions, write_autotts

from ttsgym.store import AutoTTSFormatError, Store, StoreError, export_autotts, import_autotts
from ttsgym.store.schema import BRANCHES, QUESTIONS, STEPS


def test_tables_follow_the_schema_and_manifest_counts(tiny_store: Path) -> None:
    store = Store(tiny_store)
    assert store.read("questions").schema.equals(QUESTIONS)
    assert store.read("branches").schema.equals(BRANCHES)
    assert store.read("steps").schema.equals(STEPS)
    (info,) = store.slices
    assert (info.model, info.dataset, info.interval_tokens) == ("tiny-model", "toy", 500)
    assert (info.questions, info.branches, info.probes) == (2, 7, 12)
    assert info.tokens == 1700 + 900 + 300 + 800 + 1200 + 450 + 1400
    assert store.manifest["source"]["kind"] == "import"
    assert store.manifest["answer_checker"] == "exact"
    assert store.manifest["synthetic"] is False


def test_steps_hold_probe_answers_in_order_with_tokens_and_correctness(tiny_store: Path) -> None:
    steps = Store(tiny_store).read("steps").to_pylist()
    first = [s for s in steps if s["question_id"] == 0 and s["branch_id"] == 0]
    assert [s["step"] for s in first] == [1, 2, 3]
    assert [s["tokens"] for s in first] == [500, 1000, 1500]
    assert [s["answer"] for s in first] == ["5", "ERR", "2"]
    assert [s["correct"] for s in first] == [False, False, True]
    assert all(s["score"] is None and s["confidence"] is None for s in steps)


def test_err_is_kept_as_data(tiny_store: Path) -> None:
    branches = Store(tiny_store).read("branches").to_pylist()
    err = [b for b in branches if b["final_answer"] == "ERR"]
    assert len(err) == 1 and err[0]["correct"] is False


def test_round_trip_of_a_tiny_tree_is_byte_identical(tmp_path: Path) -> None:
    src = write_autotts(tmp_path / "src", "tiny-model", "toy", tiny_questions())
    store = import_autotts(tmp_path / "src", tmp_path / "store")
    (out,) = export_autotts(store, tmp_path / "out")
    assert out == tmp_path / "out" / "tiny-model" / "toy.json"
    assert out.read_bytes() == src.read_bytes()


def test_round_trip_keeps_unusual_content(tmp_path: Path) -> None:
    """Key order, unknown keys and a final_answers_trace unlike the finals come back."""
    questions = tiny_questions()
    odd = questions[0]
    questions[0] = {"gold_answer": odd["gold_answer"], "question": odd["question"],
                    "each_branch": odd["each_branch"], "probe_freq": odd["probe_freq"],
                    "source": {"year": 2024, "tags": ["x"]}, "final_answers_trace": ["9"]}
    del questions[1]["final_answers_trace"]
    src = write_autotts(tmp_path / "src", "m", "d", questions)
    (out,) = export_autotts(import_autotts(src, tmp_path / "store"), tmp_path / "out")
    assert out.read_bytes() == src.read_bytes()
    assert json.loads(out.read_text()) == questions


def test_round_trip_of_the_shared_data_is_byte_identical(real_store: Path, tmp_path: Path) -> None:
    written = export_autotts(real_store, tmp_path / "out")
    assert sorted(p.parent.name for p in written) == sorted(MODELS)
    for path in written:
        assert path.read_bytes() == (AUTOTTS / path.parent.name / path.name).read_bytes(), path


def test_a_tree_a_model_folder_and_a_single_file_import_alike(tmp_path: Path) -> None:
    write_autotts(tmp_path / "src", "m1", "toy", tiny_questions())
    write_autotts(tmp_path / "src", "m2", "toy", tiny_questions())
    tree = Store(import_autotts(tmp_path / "src", tmp_path / "tree"))
    assert sorted(tree.models) == ["m1", "m2"] and tree.datasets == ["toy"]
    folder = Store(import_autotts(tmp_path / "src" / "m2", tmp_path / "folder"))
    single = Store(import_autotts(tmp_path / "src" / "m2" / "toy.json", tmp_path / "single"))
    assert folder.models == single.models == ["m2"]
    assert folder.read("steps").equals(single.read("steps"))


def test_two_models_must_agree_on_a_datasets_questions(tmp_path: Path) -> None:
    other = tiny_questions()
    other[1]["gold_answer"] = "7"
    write_autotts(tmp_path / "src", "m1", "toy", tiny_questions())
    write_autotts(tmp_path / "src", "m2", "toy", other)
    with pytest.raises(ValueError, match="disagree"):
        import_autotts(tmp_path / "src", tmp_path / "store")
    assert not (tmp_path / "store").exists()


def _break(mutate) -> list[dict]:
    questions = copy.deepcopy(tiny_questions())
    mutate(questions)
    return questions


BAD_INPUTS = {
    "missing key": (lambda qs: qs[1].pop("gold_answer"), r"question 1: missing field 'gold_answer'"),
    "wrong type": (lambda qs: qs[0].__setitem__("probe_freq", "500"),
                   r"question 0: field 'probe_freq' must be a positive integer"),
    "gold not a string": (lambda qs: qs[1].__setitem__("gold_answer", 7),
                          r"question 1: field 'gold_answer' must be a string, got int"),
    "empty branch list": (lambda qs: qs[1].__setitem__("each_branch", []),
                          r"question 1: field 'each_branch' is empty"),
    "branch of two items": (lambda qs: qs[0]["each_branch"].__setitem__(2, [[], 300]),
                            r"question 0: field 'each_branch\[2\]' must be \[list of str, int, str\]"),
    "probes not a list": (lambda qs: qs[0]["each_branch"].__setitem__(1, ["3", 900, "3"]),
                          r"question 0: field 'each_branch\[1\]\[0\]' \(probe answers\) must be a list"),
    "probe not a string": (
        lambda qs: qs[0]["each_branch"][0][0].__setitem__(1, 4),
        r"question 0: field 'each_branch\[0\]\[0\]\[1\]' \(probe answer\) must be a string",
    ),
    "tokens not an int": (lambda qs: qs[1]["each_branch"][0].__setitem__(1, "1200"),
                          r"question 1: field 'each_branch\[0\]\[1\]' \(branch tokens\)"),
    "tokens a bool": (lambda qs: qs[1]["each_branch"][0].__setitem__(1, True),
                      r"question 1: field 'each_branch\[0\]\[1\]' \(branch tokens\)"),
    "final not a string": (lambda qs: qs[1]["each_branch"][2].__setitem__(2, 7),
                           r"question 1: field 'each_branch\[2\]\[2\]' \(final answer\) must be a string"),
    "question not an object": (lambda qs: qs.__setitem__(0, ["not", "an", "object"]),
                               r"question 0: must be an object, got list"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_malformed_input_names_file_question_and_field(tmp_path: Path, case: str) -> None:
    mutate, message = BAD_INPUTS[case]
    write_autotts(tmp_path / "src", "a-good-model", "toy", tiny_questions())
    bad = write_autotts(tmp_path / "src", "z-bad-model", "toy", _break(mutate))
    with pytest.raises(AutoTTSFormatError, match=message) as err:
        import_autotts(tmp_path / "src", tmp_path / "store")
    assert str(bad) in str(err.value)
    _assert_nothing_left(tmp_path)


def test_truncated_json_names_file_and_position(tmp_path: Path) -> None:
    good = write_autotts(tmp_path / "src", "m", "toy", tiny_questions())
    good.write_text(good.read_text()[:-40])
    with pytest.raises(AutoTTSFormatError, match=r"invalid JSON at line \d+, column \d+") as err:
        import_autotts(tmp_path / "src", tmp_path / "store")
    assert str(good) in str(err.value)
    _assert_nothing_left(tmp_path)


def test_top_level_must_be_a_nonempty_list(tmp_path: Path) -> None:
    path = tmp_path / "m" / "toy.json"
    path.parent.mkdir()
    path.write_text('{"question": "x"}')
    with pytest.raises(AutoTTSFormatError, match="top level must be a list"):
        import_autotts(path, tmp_path / "store")
    path.write_text("[]")
    with pytest.raises(AutoTTSFormatError, match="list of questions is empty"):
        import_autotts(path, tmp_path / "store")
    _assert_nothing_left(tmp_path)


def _assert_nothing_left(tmp_path: Path) -> None:
    assert not (tmp_path / "store").exists()
    assert not list(tmp_path.glob(".store*")), "a temporary directory was left behind"


def test_existing_store_is_kept_unless_overwrite(tmp_path: Path) -> None:
    write_autotts(tmp_path / "src", "m", "toy", tiny_questions())
    store = import_autotts(tmp_path / "src", tmp_path / "store")
    with pytest.raises(FileExistsError, match="already exists"):
        import_autotts(tmp_path / "src", store)
    broken = _break(lambda qs: qs[0].pop("question"))
    write_autotts(tmp_path / "src", "m", "toy", broken)
    with pytest.raises(AutoTTSFormatError):
        import_autotts(tmp_path / "src", store, overwrite=True)
    assert Store(store).slices[0].questions == 2, "a failed overwrite must keep the old store"
    write_autotts(tmp_path / "src", "m", "toy", tiny_questions()[:1])
    import_autotts(tmp_path / "src", store, overwrite=True)
    assert Store(store).slices[0].questions == 1


def test_math_checker_groups_equivalent_answers(tmp_path: Path) -> None:
    questions = [{
        "question": "half?", "final_answers_trace": ["0.5", "\\frac{1}{2}", "1/2", "2", "ERR"],
        "each_branch": [[["1/2"], 600, "0.5"], [["ERR"], 600, "\\frac{1}{2}"], [[], 10, "1/2"],
                        [["0.5"], 700, "2"], [["2"], 800, "ERR"]],
        "gold_answer": "\\frac{1}{2}", "probe_freq": 500,
    }]
    write_autotts(tmp_path / "src", "m", "half", questions)
    store = Store(import_autotts(tmp_path / "src", tmp_path / "store", checker="math"))
    assert store.manifest["answer_checker"] == "math"
    branches = store.read("branches").to_pylist()
    assert [b["final_canonical"] for b in branches] == ["\\frac{1}{2}"] * 3 + ["2", "ERR"]
    assert [b["correct"] for b in branches] == [True, True, True, False, False]
    steps = store.read("steps").to_pylist()
    assert [s["canonical"] for s in steps] == ["\\frac{1}{2}", "ERR", "\\frac{1}{2}", "2"]
    exact = Store(import_autotts(tmp_path / "src", tmp_path / "exact"))
    assert [b["correct"] for b in exact.read("branches").to_pylist()] == [False, True, False, False, False]


def test_store_info_sql_matches_a_direct_computation(tiny_store: Path) -> None:
    from ttsgym.store.analysis import slice_stats

    (row,) = slice_stats(tiny_store, ks=(1, 2)).to_pylist()
    assert (row["questions"], row["branches"], row["probes"]) == (2, 7, 12)
    # branch accuracy: q0 has finals 2,3,2,ERR with gold 2; q1 never reaches its gold
    assert row["branch_accuracy"] == pytest.approx(2 / 7)
    assert row["maj_1"] == pytest.approx((2 / 4 + 0 / 3) / 2)
    # maj@2 over groups {0,1},{2,3} of q0: [2,3] -> tie, first seen "2" (right); [2,ERR] -> "2" (right)
    assert row["maj_2"] == pytest.approx((1.0 + 0.0) / 2)
    assert row["err_rate"] == pytest.approx(3 / 12)


def test_opening_something_else_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a ttsgym store"):
        Store(tmp_path)
    (tmp_path / "manifest.json").write_text('{"schema_version": 99}')
    with pytest.raises(StoreError, match="schema version 99"):
        Store(tmp_path)


def test_asking_for_a_missing_slice_lists_the_slices(tiny_store: Path) -> None:
    with pytest.raises(StoreError, match=r"no slice other/toy \(slices: tiny-model/toy\)"):
        Store(tiny_store).slice("other", "toy")


def test_shared_data_import_counts(real_store: Path) -> None:
    need_shared_data()
    store = Store(real_store)
    assert sorted(store.models) == sorted(MODELS)
    for info in store.slices:
        assert (info.questions, info.branches, info.interval_tokens) == (30, 3840, 500)
        steps = pq.read_metadata(real_store / "steps" / f"{info.stem}.parquet").num_rows
        assert steps == info.probes
