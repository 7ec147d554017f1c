"""The Parquet schema of a replay store (DESIGN §2), in one place.

A store is a directory::

    STORE/
      manifest.json
      questions/<dataset>.parquet            one row per question
      branches/<model>__<dataset>.parquet    one row per recorded branch
      steps/<model>__<dataset>.parquet       one row per probe of a branch
      extras/<model>__<dataset>.json         only when the source had non-standard fields

Every reader (DuckDB views, the compiler, the exporter) takes these schemas from here.
"""

from __future__ import annotations

import re

import pyarrow as pa

SCHEMA_VERSION = 1

QUESTIONS = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("question_id", pa.int32(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("gold_answer", pa.string(), nullable=False),
        pa.field("gold_canonical", pa.string(), nullable=False),
    ]
)

BRANCHES = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("question_id", pa.int32(), nullable=False),
        pa.field("branch_id", pa.int32(), nullable=False),
        pa.field("interval_tokens", pa.int32(), nullable=False),
        pa.field("n_tokens", pa.int64(), nullable=False),
        pa.field("n_probes", pa.int32(), nullable=False),
        pa.field("final_answer", pa.string(), nullable=False),
        pa.field("final_canonical", pa.string(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("finish_reason", pa.string()),
    ]
)

STEPS = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("question_id", pa.int32(), nullable=False),
        pa.field("branch_id", pa.int32(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("tokens", pa.int64(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("canonical", pa.string(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("confidence", pa.float32()),
    ]
)

TABLES = {"questions": QUESTIONS, "branches": BRANCHES, "steps": STEPS}

# The answer a probe gets when nothing could be parsed; kept as data, never equal to a gold.
ERR = "ERR"

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file-name-safe spelling of a model or dataset name (``Qwen/Qwen3-4B`` → ``Qwen_Qwen3-4B``)."""
    cleaned = _SAFE.sub("_", name).strip("_")
    if not cleaned:
        raise ValueError(f"cannot derive a file name from {name!r}")
    return cleaned


def slice_file_stem(model: str, dataset: str) -> str:
    """The file stem of the (model, dataset) slice in branches/, steps/ and extras/."""
    return f"{safe_name(model)}__{safe_name(dataset)}"
