"""Write a store atomically: everything goes to a hidden temporary directory beside the target,
which is renamed into place only when complete, so a failed or interrupted import leaves no
partial store behind.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ttsgym.store.schema import SCHEMA_VERSION, TABLES, safe_name, slice_file_stem

MANIFEST = "manifest.json"


def ttsgym_version() -> str:
    try:
        return version("ttsgym")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0+unknown"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class StoreWriter:
    """Collects tables for one new store and publishes them with a single rename.

    Use as a context manager; on an exception the temporary directory is removed and the
    target is untouched. ``overwrite=True`` replaces an existing store only after the new one
    is complete.
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False, source: dict[str, Any],
                 answer_checker: str, synthetic: bool = False,
                 collection: dict[str, Any] | None = None) -> None:
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"{self.out}: already exists (pass --overwrite to replace it)")
        self.overwrite = overwrite
        self.manifest: dict[str, Any] = {
            "format": "ttsgym-store",
            "schema_version": SCHEMA_VERSION,
            "created_by": f"ttsgym {ttsgym_version()}",
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "synthetic": synthetic,
            "answer_checker": answer_checker,
            "source": source,
            "collection": collection,
            "datasets": {},
            "slices": [],
        }
        self._questions: dict[str, pa.Table] = {}
        self._tmp: Path | None = None

    def __enter__(self) -> StoreWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o777 & ~umask)  # mkdtemp makes it private; a store is shared data
        for name in TABLES:
            (self._tmp / name).mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._tmp is not None
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        try:
            self._finish()
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    @property
    def directory(self) -> Path:
        """The temporary directory being filled (for writers that stream their own batches)."""
        if self._tmp is None:
            raise RuntimeError("StoreWriter is used outside its `with` block")
        return self._tmp

    def add_questions(self, dataset: str, table: pa.Table) -> None:
        """Questions of a dataset; a second slice of the same dataset must agree with the first."""
        known = self._questions.get(dataset)
        if known is None:
            self._questions[dataset] = table
            return
        if not known.select(["question_id", "question", "gold_answer"]).equals(
            table.select(["question_id", "question", "gold_answer"])
        ):
            raise ValueError(
                f"dataset {dataset!r}: two sources disagree on its questions or gold answers "
                "(question ids are positions in the file, so both must list the same questions "
                "in the same order)"
            )

    def add_slice(self, model: str, dataset: str, branches: pa.Table | None, steps: pa.Table | None,
                  *, interval_tokens: int, extras: dict[str, Any] | None = None,
                  meta: dict[str, Any] | None = None) -> None:
        """One (model, dataset) slice. Pass ``None`` tables when they were streamed to
        ``directory/branches/<stem>.parquet`` and ``.../steps/<stem>.parquet`` already."""
        stem = slice_file_stem(model, dataset)
        if any(s["stem"] == stem for s in self.manifest["slices"]):
            raise ValueError(f"slice {model}/{dataset} is given twice (file stem {stem!r})")
        tmp = self.directory
        if branches is not None:
            pq.write_table(branches, tmp / "branches" / f"{stem}.parquet")
        if steps is not None:
            pq.write_table(steps, tmp / "steps" / f"{stem}.parquet", row_group_size=1 << 20)
        if extras:
            (tmp / "extras").mkdir(exist_ok=True)
            (tmp / "extras" / f"{stem}.json").write_text(json.dumps(extras, ensure_ascii=False))
        self.manifest["slices"].append(
            {"model": model, "dataset": dataset, "stem": stem,
             "interval_tokens": interval_tokens, **(meta or {})}
        )

    def _finish(self) -> None:
        tmp = self.directory
        for dataset, table in self._questions.items():
            pq.write_table(table, tmp / "questions" / f"{safe_name(dataset)}.parquet")
            self.manifest["datasets"][dataset] = {
                "file": f"questions/{safe_name(dataset)}.parquet", "questions": table.num_rows,
            }
        for entry in self.manifest["slices"]:
            entry.update(_slice_counts(tmp, entry))
        (tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n")
        _publish(tmp, self.out, self.overwrite)


def _slice_counts(root: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Counts and a content hash of one slice, read back from the files just written."""
    stem = entry["stem"]
    files = [root / "branches" / f"{stem}.parquet", root / "steps" / f"{stem}.parquet",
             root / "questions" / f"{safe_name(entry['dataset'])}.parquet"]
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"slice {entry['model']}/{entry['dataset']}: {f.name} was not written")
    branches = pq.read_table(files[0], columns=["question_id", "n_tokens", "correct"])
    steps_meta = pq.read_metadata(files[1])
    digest = hashlib.sha256()
    for f in files:
        digest.update(file_sha256(f).encode())
    return {
        "questions": len(pc.unique(branches.column("question_id"))),
        "branches": branches.num_rows,
        "probes": steps_meta.num_rows,
        "tokens": int(pc.sum(branches.column("n_tokens")).as_py() or 0),
        "has_score": _has_values(files[1], steps_meta, "score"),
        "has_confidence": _has_values(files[1], steps_meta, "confidence"),
        "content_sha256": digest.hexdigest(),
    }


def _has_values(path: Path, meta: pq.FileMetaData, column: str) -> bool:
    """Whether a nullable column holds any value, from row-group statistics when present."""
    index = meta.schema.to_arrow_schema().get_field_index(column)
    nulls = 0
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(index).statistics
        if stats is None or not stats.has_null_count:
            return pq.read_table(path, columns=[column]).column(column).null_count < meta.num_rows
        nulls += stats.null_count
    return nulls < meta.num_rows


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    if not overwrite:
        raise FileExistsError(f"{out}: appeared while the store was being written")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
