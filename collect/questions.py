"""Question files for collection: JSONL, CSV or Parquet with a question and an answer column.

A question's id is its row position in the file (0-based), as in the imported stores. Errors
name the file, the line or row and the column.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

FORMATS = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class QuestionRow:
    question_id: int
    question: str
    gold: str


def _text(value: object, where: str, column: str) -> str:
    if value is None:
        raise ValueError(f"{where}: column '{column}' is empty")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{where}: column '{column}' must be text or a number, got {type(value).__name__}")
    text = value if isinstance(value, str) else (str(int(value)) if float(value).is_integer() else str(value))
    if not text.strip():
        raise ValueError(f"{where}: column '{column}' is empty")
    return text


def load_questions(path: str | Path, question_column: str = "question",
                   answer_column: str = "answer") -> list[QuestionRow]:
    """Read the questions and gold answers; numbers in the answer column become their text."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such question file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records = _jsonl(path)
    elif suffix == ".csv":
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(strings_can_be_null=False))
        records = [(f"{path}: row {i + 2}", r) for i, r in enumerate(table.to_pylist())]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        records = [(f"{path}: row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    else:
        raise ValueError(f"{path}: unknown question file type {suffix!r}; use one of {', '.join(FORMATS)}")
    if not records:
        raise ValueError(f"{path}: holds no questions")
    rows = []
    for qid, (where, record) in enumerate(records):
        for column in (question_column, answer_column):
            if column not in record:
                have = ", ".join(sorted(record)) or "none"
                raise ValueError(f"{where}: no column '{column}' (columns: {have}); "
                                 "pass --question-column / --answer-column")
        rows.append(QuestionRow(qid, _text(record[question_column], where, question_column),
                                _text(record[answer_column], where, answer_column).strip()))
    return rows


def _jsonl(path: Path) -> list[tuple[str, dict]]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        out = [(f"{path}: item {i}", r) for i, r in enumerate(data)]
    else:
        out = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from None
            out.append((f"{path}: line {lineno}", record))
    for where, record in out:
        if not isinstance(record, dict):
            raise ValueError(f"{where}: each question must be a JSON object")
    return out


def questions_digest(rows: list[QuestionRow]) -> str:
    """A hash of the questions and gold answers (what a resumed run must agree on)."""
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r.question_id, r.question, r.gold], ensure_ascii=False).encode())
    return digest.hexdigest()
