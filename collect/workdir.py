"""The collection's working state inside the output directory, written so that a kill at any
moment loses nothing written and duplicates nothing.

    OUT/_collect/settings.json      what the collection is (a rerun must agree on it)
    OUT/_collect/done/q000007.json  one complete question: every branch's token ids, chunks, probes
    OUT/_collect/failed/q000009.json  a question whose requests kept failing, with the reason

Every file is written to a temporary name, flushed to disk and renamed into place, so a reader
sees a whole file or none. The store tables (``OUT/questions``, ``branches``, ``steps``,
``traces``, then ``manifest.json`` last) are rebuilt from ``done/`` whenever it changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

WORK = "_collect"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that the file is either the old one or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class WorkDir:
    """``OUT/_collect``: settings, completed and failed questions."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.root = self.out / WORK
        self.done_dir = self.root / "done"
        self.failed_dir = self.root / "failed"
        self.settings_path = self.root / "settings.json"

    @property
    def exists(self) -> bool:
        return self.settings_path.is_file()

    def open(self, settings: dict[str, Any], *, resume: bool) -> bool:
        """Create the work state or check that an existing one is the same collection.

        Returns True when earlier work was found. ``resume=True`` insists that there is some.
        """
        if self.exists:
            old = json.loads(self.settings_path.read_text(encoding="utf-8"))
            diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
            if diff:
                shown = "; ".join(f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now" for k in diff[:4])
                raise ValueError(f"{self.settings_path}: {self.out} holds a different collection "
                                 f"({shown}); use another --out or the same settings")
            self._clean_tmp()
            return True
        if resume:
            raise FileNotFoundError(f"{self.out}: no collection to resume (no {WORK}/settings.json)")
        if self.out.exists() and any(self.out.iterdir()):
            raise FileExistsError(f"{self.out}: exists and is not a collection; choose a new --out")
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.settings_path, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
        return False

    def _clean_tmp(self) -> None:
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        for d in (self.root, self.done_dir, self.failed_dir):
            for p in d.glob(".*.tmp-*"):
                p.unlink(missing_ok=True)

    @staticmethod
    def _name(question_id: int) -> str:
        return f"q{question_id:06d}.json"

    def done_ids(self) -> set[int]:
        return {int(p.stem[1:]) for p in self.done_dir.glob("q*.json")}

    def failed(self) -> dict[int, str]:
        out = {}
        for p in sorted(self.failed_dir.glob("q*.json")):
            out[int(p.stem[1:])] = json.loads(p.read_text(encoding="utf-8"))["reason"]
        return out

    def write_done(self, question_id: int, record: dict[str, Any]) -> None:
        atomic_write_text(self.done_dir / self._name(question_id),
                          json.dumps(record, ensure_ascii=False, separators=(",", ":")))
        (self.failed_dir / self._name(question_id)).unlink(missing_ok=True)

    def write_failed(self, question_id: int, reason: str) -> None:
        atomic_write_text(self.failed_dir / self._name(question_id),
                          json.dumps({"question_id": question_id, "reason": reason}, ensure_ascii=False))

    def read_done(self, question_id: int) -> dict[str, Any]:
        return json.loads((self.done_dir / self._name(question_id)).read_text(encoding="utf-8"))
