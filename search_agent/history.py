"""The run directory of a search: what it holds, and how it survives being killed at any moment.

```
RUN_DIR/
  run.json              the run's settings (checked on --resume; never the API key)
  history.jsonl         one JSON object per proposal; a line is the commit point of its round
  spend.jsonl           the LLM cost ledger (reservations and settlements, see costs.py)
  baselines.json        the baselines' rows on the search split (computed once)
  candidates/<id>/      code.py, prompt.json, reply.txt, checks.json, audit.json, metrics.json,
                        traces.json, record.json
  finalists.json        re-scores of the finalists on fresh seeds (written once, atomically)
  selected/             controller.py (standalone) and selected.json
```

A round is complete exactly when its line is in ``history.jsonl``. A line is written with one
``write`` on an ``O_APPEND`` descriptor and fsynced, so a kill leaves either the whole line or a
torn tail that :meth:`RunDir.history` drops (and :meth:`RunDir.repair` truncates). A candidate
folder without its history line belongs to an interrupted round and is removed before the round
is redone, so ids and rounds are never duplicated or lost.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

HISTORY = "history.jsonl"

# Keys every history record has (DuckDB's read_json_auto reads the file as one table).
RECORD_KEYS = ("id", "round", "proposer", "status", "reason", "stage", "code", "class_name", "curve",
               "objective", "cost_usd", "tokens_in", "tokens_out", "lesson", "meta", "seconds")


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists without --resume, settings differ, …)."""


def candidate_id(round_no: int) -> str:
    """The id of a round's proposal: one proposal per round, so the round fixes the id."""
    return f"c{round_no:04d}"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (see :func:`write_text`)."""
    write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically: a temporary file in the same folder, fsynced, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_line(path: Path, obj: dict[str, Any]) -> None:
    """Append one JSON line with a single write, then fsync: the line is there whole or not at all."""
    data = (json.dumps(obj, default=_jsonable, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a short write on a regular file: disk full; never leave half
            raise OSError(f"{path}: short write ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of ``path``; a torn last line (a kill mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # only the unterminated tail may be torn
                break
            raise RunDirError(f"{path}: line {n} is not valid JSON") from None
    return out


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class RunDir:
    """Paths and atomic reads/writes of one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY

    @property
    def spend_path(self) -> Path:
        return self.path / "spend.jsonl"

    @property
    def settings_path(self) -> Path:
        return self.path / "run.json"

    @property
    def selected(self) -> Path:
        return self.path / "selected"

    def candidate(self, cid: str) -> Path:
        return self.path / "candidates" / cid

    def scratch(self) -> Path:
        """A scratch folder for sandboxed evaluations, emptied at the start of every run."""
        return self.path / "scratch"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, settings: dict[str, Any], *, resume: bool) -> list[dict[str, Any]]:
        """Create or reopen the run; the completed records (resume) or [] (fresh)."""
        if self.settings_path.exists():
            if not resume:
                raise RunDirError(f"{self.path} holds a run already; pass --resume to continue it "
                                  "or choose another --out")
            before = json.loads(self.settings_path.read_text())
            changed = sorted(k for k in settings if k in before and before[k] != settings[k]
                             and k not in RESUMABLE_SETTINGS)
            if changed:
                diffs = ", ".join(f"{k}: {before[k]!r} → {settings[k]!r}" for k in changed)
                raise RunDirError(f"{self.path}: --resume with other settings than the run had ({diffs})")
            merged = {**before, **{k: settings[k] for k in RESUMABLE_SETTINGS if k in settings}}
            write_json(self.settings_path, merged)
        else:
            if self.path.exists() and any(self.path.iterdir()):
                raise RunDirError(f"{self.path} exists and is not empty; choose another --out")
            self.path.mkdir(parents=True, exist_ok=True)
            write_json(self.settings_path, settings)
        self.repair()
        shutil.rmtree(self.scratch(), ignore_errors=True)
        self.scratch().mkdir(parents=True)
        return self.history()

    def repair(self) -> None:
        """Undo what an interrupted round left: a torn history tail, candidate folders without
        their history line, half-written temporary files."""
        path = self.history_path
        if path.exists():
            raw = path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                keep = raw[: raw.rfind(b"\n") + 1]
                with open(path, "r+b") as f:
                    f.truncate(len(keep))
                    f.flush()
                    os.fsync(f.fileno())
        done = {r["id"] for r in self.history()}
        root = self.path / "candidates"
        if root.exists():
            for folder in root.iterdir():
                if folder.name not in done:
                    shutil.rmtree(folder, ignore_errors=True)
        for tmp in self.path.rglob("*.tmp"):
            tmp.unlink(missing_ok=True)

    def history(self) -> list[dict[str, Any]]:
        return read_lines(self.history_path)

    def commit(self, record: dict[str, Any]) -> None:
        """Write the round's record into its folder, then append it: the round's commit point."""
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing:
            raise ValueError(f"history record lacks {', '.join(missing)}")
        write_json(self.candidate(record["id"]) / "record.json", record)
        append_line(self.history_path, record)


# Settings that may change on --resume (a longer run, a bigger budget, other limits).
RESUMABLE_SETTINGS = ("rounds", "budget_usd", "timeout", "memory_mb", "workers", "backend", "ray_address")
