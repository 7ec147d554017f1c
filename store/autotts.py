"""The public AutoTTS / Parallel-Probe JSON layout: validate it, turn it into store tables, write it back.

A source file is ``<model>/<dataset>.json``: a list of questions, each an object with
``question``, ``final_answers_trace``, ``each_branch`` (a list of
``[probe_answers, branch_tokens, final_answer]``), ``gold_answer`` and ``probe_freq``.
Import is lossless: anything the tables do not hold (unknown keys, an unusual key order, a
``final_answers_trace`` that differs from the branches' finals) goes to the slice's extras and
comes back on export, which writes the same bytes as the published files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ttsgym.store.answers import canonical_map
from ttsgym.store.schema import BRANCHES, QUESTIONS, STEPS

KEY_ORDER = ("question", "final_answers_trace", "each_branch", "gold_answer", "probe_freq")
REQUIRED = ("question", "each_branch", "gold_answer", "probe_freq")
JSON_STYLE = {"indent": 2, "ensure_ascii": False}


class AutoTTSFormatError(ValueError):
    """A source file is not valid AutoTTS layout; the message names file, question and field."""


@dataclass
class SourceFile:
    path: Path
    model: str
    dataset: str


@dataclass
class SliceTables:
    """One (model, dataset) slice ready to be written: tables and what they cannot hold."""

    model: str
    dataset: str
    interval_tokens: int
    questions: pa.Table
    branches: pa.Table
    steps: pa.Table
    extras: dict[str, Any] = field(default_factory=dict)


def discover(src: str | Path) -> list[SourceFile]:
    """Source files under ``src``: one ``<model>/<dataset>.json`` file, a model folder or a tree."""
    src = Path(src)
    if src.is_file():
        return [SourceFile(src, src.parent.name, src.stem)]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or directory")
    files = sorted(src.glob("*.json"))
    if files:  # a single model's folder
        return [SourceFile(p, src.name, p.stem) for p in files]
    found = [SourceFile(p, p.parent.name, p.stem) for p in sorted(src.glob("*/*.json"))]
    if not found:
        raise FileNotFoundError(f"{src}: no <model>/<dataset>.json files below it")
    return found


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_questions(path: Path) -> list[dict[str, Any]]:
    """Read and validate one source file; every error names the file, question index and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AutoTTSFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AutoTTSFormatError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, list):
        raise AutoTTSFormatError(f"{path}: top level must be a list of questions, got {_type_name(data)}")
    if not data:
        raise AutoTTSFormatError(f"{path}: the list of questions is empty")
    for qi, q in enumerate(data):
        _check_question(path, qi, q)
    return data


def _check_question(path: Path, qi: int, q: Any) -> None:
    where = f"{path}: question {qi}"
    if not isinstance(q, dict):
        raise AutoTTSFormatError(f"{where}: must be an object, got {_type_name(q)}")
    for key in REQUIRED:
        if key not in q:
            raise AutoTTSFormatError(f"{where}: missing field '{key}'")
    for key in ("question", "gold_answer"):
        if not isinstance(q[key], str):
            raise AutoTTSFormatError(f"{where}: field '{key}' must be a string, got {_type_name(q[key])}")
    if not _is_int(q["probe_freq"]) or q["probe_freq"] <= 0:
        raise AutoTTSFormatError(
            f"{where}: field 'probe_freq' must be a positive integer, got {q['probe_freq']!r}"
        )
    branches = q["each_branch"]
    if not isinstance(branches, list):
        raise AutoTTSFormatError(f"{where}: field 'each_branch' must be a list, got {_type_name(branches)}")
    if not branches:
        raise AutoTTSFormatError(f"{where}: field 'each_branch' is empty")
    for bi, b in enumerate(branches):
        field_name = f"each_branch[{bi}]"
        if not (isinstance(b, list) and len(b) == 3):
            raise AutoTTSFormatError(
                f"{where}: field '{field_name}' must be [list of str, int, str], got {_short(b)}"
            )
        probes, tokens, final = b
        if not isinstance(probes, list):
            raise AutoTTSFormatError(
                f"{where}: field '{field_name}[0]' (probe answers) must be a list, got {_type_name(probes)}"
            )
        for k, p in enumerate(probes):
            if not isinstance(p, str):
                raise AutoTTSFormatError(
                    f"{where}: field '{field_name}[0][{k}]' (probe answer) must be a string, "
                    f"got {_type_name(p)}"
                )
        if not _is_int(tokens) or tokens < 0:
            raise AutoTTSFormatError(
                f"{where}: field '{field_name}[1]' (branch tokens) must be a non-negative integer, "
                f"got {tokens!r}"
            )
        if not isinstance(final, str):
            raise AutoTTSFormatError(
                f"{where}: field '{field_name}[2]' (final answer) must be a string, got {_type_name(final)}"
            )
    trace = q.get("final_answers_trace")
    if "final_answers_trace" in q and not (
        isinstance(trace, list) and all(isinstance(a, str) for a in trace)
    ):
        raise AutoTTSFormatError(f"{where}: field 'final_answers_trace' must be a list of strings")


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_slice(
    model: str, dataset: str, questions: list[dict[str, Any]], checker: str = "exact"
) -> SliceTables:
    """Turn validated questions of one source file into the store's three tables."""
    q_cols: dict[str, list] = {name: [] for name in QUESTIONS.names}
    b_cols: dict[str, list] = {name: [] for name in BRANCHES.names}
    s_cols: dict[str, list] = {name: [] for name in STEPS.names}
    extras: dict[str, Any] = {}
    intervals = {q["probe_freq"] for q in questions}
    for qi, q in enumerate(questions):
        gold = q["gold_answer"]
        interval = q["probe_freq"]
        every = (a for probes, _, final in q["each_branch"] for a in (*probes, final))
        canon, gold_canon = canonical_map(every, gold, checker)
        q_cols["dataset"].append(dataset)
        q_cols["question_id"].append(qi)
        q_cols["question"].append(q["question"])
        q_cols["gold_answer"].append(gold)
        q_cols["gold_canonical"].append(gold_canon)
        for bi, (probes, tokens, final) in enumerate(q["each_branch"]):
            final_c = canon[final]
            for name, value in (
                ("model", model), ("dataset", dataset), ("question_id", qi), ("branch_id", bi),
                ("interval_tokens", interval), ("n_tokens", tokens), ("n_probes", len(probes)),
                ("final_answer", final), ("final_canonical", final_c),
                ("correct", final_c == gold_canon), ("finish_reason", None),
            ):
                b_cols[name].append(value)
            n = len(probes)
            s_cols["model"].extend([model] * n)
            s_cols["dataset"].extend([dataset] * n)
            s_cols["question_id"].extend([qi] * n)
            s_cols["branch_id"].extend([bi] * n)
            s_cols["step"].extend(range(1, n + 1))
            s_cols["tokens"].extend(range(interval, interval * n + 1, interval))
            s_cols["answer"].extend(probes)
            cs = [canon[p] for p in probes]
            s_cols["canonical"].extend(cs)
            s_cols["correct"].extend([c == gold_canon for c in cs])
        extra = _question_extras(q)
        if extra:
            extras[str(qi)] = extra
    s_cols["score"] = [None] * len(s_cols["step"])
    s_cols["confidence"] = [None] * len(s_cols["step"])
    return SliceTables(
        model=model,
        dataset=dataset,
        interval_tokens=intervals.pop() if len(intervals) == 1 else 0,
        questions=pa.table(q_cols, schema=QUESTIONS),
        branches=pa.table(b_cols, schema=BRANCHES),
        steps=pa.table(s_cols, schema=STEPS),
        extras=extras,
    )


def _question_extras(q: dict[str, Any]) -> dict[str, Any]:
    """What of one source question the tables do not hold, so that export restores it."""
    extra: dict[str, Any] = {}
    if tuple(q) != KEY_ORDER:
        extra["key_order"] = list(q)
    unknown = {k: v for k, v in q.items() if k not in KEY_ORDER}
    if unknown:
        extra["fields"] = unknown
    finals = [b[2] for b in q["each_branch"]]
    if "final_answers_trace" in q and q["final_answers_trace"] != finals:
        extra["final_answers_trace"] = q["final_answers_trace"]
    return extra


def rebuild_questions(
    questions: pa.Table, branches: pa.Table, steps: pa.Table, extras: dict[str, Any]
) -> list[dict[str, Any]]:
    """The inverse of :func:`build_slice`: the source file's list of question objects."""
    probes_by_branch: dict[tuple[int, int], list[str]] = {}
    for qid, bid, answer in zip(
        steps.column("question_id").to_pylist(),
        steps.column("branch_id").to_pylist(),
        steps.column("answer").to_pylist(),
        strict=True,
    ):
        probes_by_branch.setdefault((qid, bid), []).append(answer)
    by_question: dict[int, list[tuple[int, list, int, str, int]]] = {}
    for qid, bid, tokens, final, interval in zip(
        *(branches.column(c).to_pylist() for c in
          ("question_id", "branch_id", "n_tokens", "final_answer", "interval_tokens")),
        strict=True,
    ):
        by_question.setdefault(qid, []).append(
            (bid, probes_by_branch.get((qid, bid), []), tokens, final, interval)
        )
    out = []
    for qid, text, gold in zip(
        *(questions.column(c).to_pylist() for c in ("question_id", "question", "gold_answer")),
        strict=True,
    ):
        rows = sorted(by_question.get(qid, []))
        extra = extras.get(str(qid), {})
        values = {
            "question": text,
            "final_answers_trace": extra.get("final_answers_trace", [r[3] for r in rows]),
            "each_branch": [[r[1], r[2], r[3]] for r in rows],
            "gold_answer": gold,
            "probe_freq": rows[0][4] if rows else 0,
            **extra.get("fields", {}),
        }
        out.append({k: values[k] for k in extra.get("key_order", KEY_ORDER)})
    return out


def dumps(questions: list[dict[str, Any]]) -> str:
    """The published files' exact JSON style."""
    return json.dumps(questions, **JSON_STYLE)


def import_autotts(src: str | Path, out: str | Path, *, checker: str = "exact",
                   overwrite: bool = False, progress: bool = False) -> Path:
    """Import one AutoTTS file or a tree of them into a new store at ``out`` (atomically)."""
    from tqdm import tqdm

    from ttsgym.store.writer import StoreWriter, file_sha256

    sources = discover(src)
    source = {
        "kind": "import", "layout": "autotts",
        "files": [{"path": str(s.path), "model": s.model, "dataset": s.dataset,
                   "sha256": file_sha256(s.path)} for s in sources],
    }
    with StoreWriter(out, overwrite=overwrite, source=source, answer_checker=checker) as writer:
        for s in tqdm(sources, desc="import", unit="file", disable=not progress):
            tables = build_slice(s.model, s.dataset, load_questions(s.path), checker)
            writer.add_questions(s.dataset, tables.questions)
            writer.add_slice(s.model, s.dataset, tables.branches, tables.steps,
                             interval_tokens=tables.interval_tokens, extras=tables.extras)
    return Path(out)


def export_autotts(store: str | Path, out: str | Path, *, models: list[str] | None = None,
                   datasets: list[str] | None = None) -> list[Path]:
    """Write ``out/<model>/<dataset>.json`` for the store's slices, in the published style."""
    from ttsgym.store.store import Store

    store = store if isinstance(store, Store) else Store(store)
    written = []
    for info in store.slices:
        if (models and info.model not in models) or (datasets and info.dataset not in datasets):
            continue
        questions = store.read("questions", dataset=info.dataset).sort_by("question_id")
        branches = store.read("branches", info.model, info.dataset)
        steps = store.read("steps", info.model, info.dataset).sort_by(
            [("question_id", "ascending"), ("branch_id", "ascending"), ("step", "ascending")])
        data = rebuild_questions(questions, branches, steps, store.extras(info.model, info.dataset))
        path = Path(out) / info.model / f"{info.dataset}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(dumps(data), encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written
