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

The history is the parent's (DESIGN §5: only the parent writes the run directory). Every line
carries ``chain = sha256(previous line's chain + canonical_json(the line without "chain"))``,
the first line chaining from ``""``; the parent keeps its own last chain in memory and never
reads it back from the file. :meth:`RunDir.history` accepts a line only when its chain follows,
its round and id are the next in sequence (0, 1, 2, … and ``candidate_id(round)``), and its
folder agrees (``record.json`` equal to the line, ``code.py`` equal to its code). Anything else
stops with a :class:`RunDirError` naming the file and line, before :meth:`RunDir.repair` removes
anything. A history without chains (written before this check) is refused the same way.

What the chain catches: lines appended or edited by anything that is not the parent's
:meth:`RunDir.commit` and does not also recompute the chain and rewrite the candidate folder —
a forged line, a raised objective, a flipped status, a record with other code, a line copied
from elsewhere, a line appended while the parent runs (the parent's next line then no longer
follows). What it does not: a process that can read and write RUN_DIR can recompute every
digest and folder, because the rule is public. A per-run HMAC key would not change that: the
key would live in RUN_DIR, readable by the same user, and by a bubblewrapped candidate too (the
sandbox maps ``/`` read-only, and RUN_DIR cannot be hidden since scratch lies inside it). So
there is no key; against a writer of RUN_DIR the sandbox is the defence, not this check.
"""

from __future__ import annotations

import hashlib
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
CHAIN = "chain"  # the key commit adds to every line (see the module docstring)
GENESIS = ""  # what the first line chains from


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
    return [obj for _, obj in _numbered_lines(path)]


def _numbered_lines(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed JSON) of every complete line. A line is complete with its newline,
    written in the same ``write``: an unterminated tail is torn even when it parses, as
    :meth:`RunDir.repair` truncates it."""
    if not path.exists():
        return []
    out = []
    lines = path.read_bytes().split(b"\n")
    for n, line in enumerate(lines[:-1], 1):  # the last piece follows the last newline: the tail
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError:
            raise RunDirError(f"{path}: line {n} is not valid JSON") from None
    return out


def canonical_json(obj: Any) -> str:
    """The one text of a JSON value that digests are taken of: sorted keys, no spaces, UTF-8
    characters as they are (numpy scalars and paths as :func:`write_json` writes them)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_jsonable)


def chain_link(previous: str, body: dict[str, Any]) -> str:
    """The chain of a line: the digest of the previous line's chain and this record without its
    own chain, so an edit anywhere breaks the line edited and a foreign line breaks the next."""
    return hashlib.sha256((previous + canonical_json(body)).encode()).hexdigest()


def _missing(record: dict[str, Any]) -> list[str]:
    return [k for k in RECORD_KEYS if k not in record]


def _out_of_sequence(index: int, record: dict[str, Any]) -> str | None:
    """Why ``record`` cannot be the history's entry ``index`` (round ``index``), or None."""
    if record.get("round") == index and record.get("id") == candidate_id(index):
        return None
    return (f"is round {record.get('round')!r} with id {record.get('id')!r} where round {index} "
            f"with id {candidate_id(index)!r} comes next")


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
        self._tip: tuple[int, str] | None = None  # (next round, last chain), set by start()

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
        done = self.repair()
        shutil.rmtree(self.scratch(), ignore_errors=True)
        self.scratch().mkdir(parents=True)
        self._tip = (len(done), done[-1][CHAIN] if done else GENESIS)
        return done

    def repair(self) -> list[dict[str, Any]]:
        """Undo what an interrupted round left: a torn history tail, candidate folders without
        their history line, half-written temporary files. The history is checked first, so a
        forged one stops the run before anything is removed. Returns the committed records."""
        done = self.history()
        path = self.history_path
        if path.exists():
            raw = path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                keep = raw[: raw.rfind(b"\n") + 1]
                with open(path, "r+b") as f:
                    f.truncate(len(keep))
                    f.flush()
                    os.fsync(f.fileno())
        ids = {r["id"] for r in done}
        root = self.path / "candidates"
        if root.exists():
            for folder in root.iterdir():
                if folder.name not in ids:
                    shutil.rmtree(folder, ignore_errors=True)
        for tmp in self.path.rglob("*.tmp"):
            tmp.unlink(missing_ok=True)
        return done

    def history(self) -> list[dict[str, Any]]:
        """The committed records, each checked to be one this run's search wrote (see the module
        docstring); the first that is not stops with a RunDirError naming its line."""
        path = self.history_path
        records = []
        previous = GENESIS
        for n, rec in _numbered_lines(path):
            problem = self._untrusted(len(records), rec, previous)
            if problem:
                raise RunDirError(f"{path}: line {n} {problem}; refusing a history this run's search "
                                  "did not write (start a new run with another --out)")
            records.append(rec)
            previous = rec[CHAIN]
        return records

    def _untrusted(self, index: int, rec: Any, previous: str) -> str | None:
        """Why ``rec`` cannot be entry ``index`` of this run's history after a line chained
        ``previous``, or None. The sequence is checked before the id names a folder."""
        if not isinstance(rec, dict):
            return "is not a JSON object"
        if CHAIN not in rec:
            return ('has no "chain": the history predates chained history lines (or the line was not '
                    "written by the search), so it cannot be checked")
        missing = _missing(rec)
        if missing:
            return f"lacks {', '.join(missing)}"
        body = {k: v for k, v in rec.items() if k != CHAIN}
        if rec[CHAIN] != chain_link(previous, body):
            return "does not follow the chain: it was edited, or written by something other than the search"
        wrong = _out_of_sequence(index, rec)
        if wrong:
            return wrong
        folder = self.candidate(rec["id"])
        rel = folder.relative_to(self.path)
        try:
            saved = json.loads((folder / "record.json").read_text())
        except (OSError, ValueError):
            return f"has no readable {rel}/record.json"
        if canonical_json(saved) != canonical_json(rec):
            return f"differs from {rel}/record.json"
        if rec["code"] is not None:
            try:
                code = (folder / "code.py").read_text()
            except (OSError, ValueError):
                return f"has code but no readable {rel}/code.py"
            if code != rec["code"]:
                return f"has other code than {rel}/code.py"
        return None

    def commit(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain the round's record to the last one this process committed, write it into its
        folder, then append it: the round's commit point. Returns the line as written (what a
        resumed run reads back), ``chain`` included."""
        if self._tip is None:
            raise RunDirError(f"{self.path}: commit before start(): only the search that opened the run "
                              "commits to it")
        missing = _missing(record)
        if missing:
            raise ValueError(f"history record lacks {', '.join(missing)}")
        index, previous = self._tip
        wrong = _out_of_sequence(index, record)
        if wrong:
            raise ValueError(f"history record {wrong}")
        # Through JSON once, so the digest is of exactly what a reader parses back.
        body = json.loads(json.dumps({k: v for k, v in record.items() if k != CHAIN}, default=_jsonable,
                                     ensure_ascii=False))
        line = {**body, CHAIN: chain_link(previous, body)}
        write_json(self.candidate(line["id"]) / "record.json", line)
        append_line(self.history_path, line)
        self._tip = (index + 1, line[CHAIN])
        return line


# Settings that may change on --resume (a longer run, a bigger budget, other limits).
RESUMABLE_SETTINGS = ("rounds", "budget_usd", "timeout", "memory_mb", "workers", "backend", "ray_address")
