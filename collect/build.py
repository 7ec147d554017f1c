"""Turn the completed questions of a collection into the store tables (DESIGN §2) plus a
``traces`` table with every branch's token ids, and publish them into the output directory.

The tables are a pure function of ``_collect/done/`` (answers are grouped into classes per
question here, gold included), so a collection that was killed and resumed gives the same rows
as one that ran straight through. Publishing writes the tables with the store writer into a
scratch directory, moves them into place, and writes ``manifest.json`` last: until it is there,
the directory is not a store.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ttsgym.collect.answers import answer_classes
from ttsgym.collect.client import THINK_CLOSE_TEXT
from ttsgym.collect.questions import QuestionRow
from ttsgym.collect.workdir import WorkDir, atomic_write_text
from ttsgym.store.schema import BRANCHES, QUESTIONS, STEPS, slice_file_stem
from ttsgym.store.writer import MANIFEST, StoreWriter

TRACES = pa.schema([
    pa.field("model", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("question_id", pa.int32(), nullable=False),
    pa.field("branch_id", pa.int32(), nullable=False),
    pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("chunk_seeds", pa.list_(pa.int64()), nullable=False),
    pa.field("probe_raw", pa.list_(pa.string()), nullable=False),
])
PUBLISHED = ("questions", "branches", "steps", "traces")


def _versions() -> dict[str, str]:
    out = {}
    for name in ("ttsgym", "httpx", "math-verify", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def store_is_current(work: WorkDir) -> bool:
    """Whether the published store already holds exactly the completed and failed questions."""
    path = work.out / MANIFEST
    if not path.is_file():
        return False
    try:
        coll = json.loads(path.read_text(encoding="utf-8")).get("collection") or {}
    except json.JSONDecodeError:
        return False
    return (coll.get("questions_done") == sorted(work.done_ids())
            and coll.get("failed") == {str(k): v for k, v in work.failed().items()})


def build_tables(work: WorkDir, questions: list[QuestionRow], model: str, dataset: str,
                 interval: int, checker: str) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """The four tables from the completed questions, and token totals over all of them."""
    q_cols: dict[str, list] = {n: [] for n in QUESTIONS.names}
    b_cols: dict[str, list] = {n: [] for n in BRANCHES.names}
    s_cols: dict[str, list] = {n: [] for n in STEPS.names}
    t_cols: dict[str, list] = {n: [] for n in TRACES.names}
    totals = {"gen": {}, "probe": {}}
    done = work.done_ids()
    for q in questions:
        if q.question_id not in done:
            continue
        rec = work.read_done(q.question_id)
        branches = rec["branches"]
        answers = [a for b in branches for a in (*(p["answer"] for p in b["probes"]), b["final_answer"])]
        canon, gold_c = answer_classes(answers, q.gold, checker)
        for name, value in zip(QUESTIONS.names, (dataset, q.question_id, q.question, q.gold, gold_c),
                               strict=True):
            q_cols[name].append(value)
        for b in branches:
            final_c = canon[b["final_answer"]]
            row = (model, dataset, q.question_id, b["branch_id"], interval, b["n_tokens"], len(b["probes"]),
                   b["final_answer"], final_c, final_c == gold_c, b["finish_reason"])
            for name, value in zip(BRANCHES.names, row, strict=True):
                b_cols[name].append(value)
            for p in b["probes"]:
                c = canon[p["answer"]]
                srow = (model, dataset, q.question_id, b["branch_id"], p["step"], p["tokens"], p["answer"], c,
                        c == gold_c, p["score"], p["confidence"])
                for name, value in zip(STEPS.names, srow, strict=True):
                    s_cols[name].append(value)
            trow = (model, dataset, q.question_id, b["branch_id"], rec["prompt_token_ids"], b["token_ids"],
                    b["text"], b["seeds"], [p["raw"] for p in b["probes"]])
            for name, value in zip(TRACES.names, trow, strict=True):
                t_cols[name].append(value)
            for kind in ("gen", "probe"):
                for k, v in b["usage"][kind].items():
                    if v is not None:
                        totals[kind][k] = totals[kind].get(k, 0) + v
    tables = {"questions": pa.table(q_cols, schema=QUESTIONS), "branches": pa.table(b_cols, schema=BRANCHES),
              "steps": pa.table(s_cols, schema=STEPS), "traces": pa.table(t_cols, schema=TRACES)}
    return tables, totals


def _overhead(totals: dict[str, Any]) -> dict[str, Any]:
    gen, probe = totals["gen"], totals["probe"]

    def ratio(a: str, b: str) -> float | None:
        return round(probe.get(a, 0) / gen[b], 4) if gen.get(b) else None

    return {"generated_tokens": ratio("completion_tokens", "completion_tokens"),
            "prompt_tokens": ratio("prompt_tokens", "prompt_tokens"),
            "request_seconds": ratio("seconds", "seconds")}


def build_store(work: WorkDir, questions: list[QuestionRow], settings, record: dict[str, Any], *,
                servers: list[dict[str, Any]], run_summary: dict[str, Any]) -> Path:
    """Rebuild and publish the store in ``work.out`` from the completed questions."""
    out = work.out
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the end, not a (complete) store
    tables, totals = build_tables(work, questions, settings.model, settings.dataset, settings.interval,
                                  settings.checker)
    done = sorted(work.done_ids())
    failed = {str(k): v for k, v in work.failed().items()}
    collection = {
        **record, "servers": servers, "versions": _versions(),
        "probe_suffix": {"thinking": THINK_CLOSE_TEXT + settings.probe_template,
                         "plain": "\n\n" + settings.probe_template},
        "sampling": {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k},
        "probe_decoding": {"temperature": 0.0, "max_tokens": settings.probe_tokens, "logprobs": 1},
        "questions_done": done, "failed": failed,
        "tokens": totals, "probe_overhead": _overhead(totals), "last_run": run_summary,
    }
    source = {"kind": "collection", "model": settings.model, "dataset": settings.dataset,
              "questions_file": record["questions_file"], "questions_sha256": record["questions_sha256"]}
    build = work.root / "build"
    shutil.rmtree(build, ignore_errors=True)
    stem = slice_file_stem(settings.model, settings.dataset)
    with StoreWriter(build, source=source, answer_checker=settings.checker, collection=collection) as w:
        w.add_questions(settings.dataset, tables["questions"])
        (w.directory / "traces").mkdir()
        pq.write_table(tables["traces"], w.directory / "traces" / f"{stem}.parquet")
        w.add_slice(settings.model, settings.dataset, tables["branches"], tables["steps"],
                    interval_tokens=settings.interval)
    for name in PUBLISHED:
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        os.rename(build / name, target)
    manifest = (build / MANIFEST).read_text(encoding="utf-8")
    atomic_write_text(out / MANIFEST, manifest)
    shutil.rmtree(build, ignore_errors=True)
    return out
