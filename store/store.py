"""Open a store directory: its manifest, its tables (pyarrow), its DuckDB views."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from ttsgym.store.schema import SCHEMA_VERSION, TABLES, safe_name, slice_file_stem
from ttsgym.store.writer import MANIFEST


class StoreError(ValueError):
    """A store directory is missing, malformed or does not hold what was asked for."""


@dataclass(frozen=True)
class SliceInfo:
    """What the manifest says about one (model, dataset) slice."""

    model: str
    dataset: str
    stem: str
    interval_tokens: int
    questions: int
    branches: int
    probes: int
    tokens: int
    has_score: bool
    has_confidence: bool
    content_sha256: str


class Store:
    """A replay store on disk: ``Store(path)``; tables in with the writer, tables out here."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise StoreError(f"{self.path}: not a ttsgym store (no {MANIFEST})")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise StoreError(f"{manifest_path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        got = self.manifest.get("schema_version")
        if got != SCHEMA_VERSION:
            raise StoreError(
                f"{manifest_path}: schema version {got!r}, this ttsgym reads {SCHEMA_VERSION}"
            )

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, slices={len(self.slices)})"

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic"))

    @cached_property
    def slices(self) -> list[SliceInfo]:
        fields = SliceInfo.__dataclass_fields__
        return [SliceInfo(**{k: v for k, v in s.items() if k in fields}) for s in self.manifest["slices"]]

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(s.model for s in self.slices))

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(s.dataset for s in self.slices))

    def slice(self, model: str, dataset: str) -> SliceInfo:
        for s in self.slices:
            if s.model == model and s.dataset == dataset:
                return s
        have = ", ".join(f"{s.model}/{s.dataset}" for s in self.slices) or "none"
        raise StoreError(f"{self.path}: no slice {model}/{dataset} (slices: {have})")

    def files(self, table: str, model: str | None = None, dataset: str | None = None) -> list[Path]:
        """The Parquet files of ``table``, optionally of one model and/or dataset."""
        if table not in TABLES:
            raise StoreError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")
        if table == "questions":
            names = [dataset] if dataset is not None else self.datasets
            return [self.path / "questions" / f"{safe_name(d)}.parquet" for d in names]
        chosen = [s for s in self.slices
                  if (model is None or s.model == model) and (dataset is None or s.dataset == dataset)]
        if model is not None and dataset is not None and not chosen:
            self.slice(model, dataset)  # raises with the list of slices
        return [self.path / table / f"{s.stem}.parquet" for s in chosen]

    def read(self, table: str, model: str | None = None, dataset: str | None = None,
             columns: list[str] | None = None) -> pa.Table:
        """One table (all slices, or one model/dataset) as a pyarrow Table."""
        files = self.files(table, model, dataset)
        if not files:
            return TABLES[table].empty_table()
        return ds.dataset([str(f) for f in files], schema=TABLES[table], format="parquet").to_table(
            columns=columns
        )

    def extras(self, model: str, dataset: str) -> dict[str, Any]:
        path = self.path / "extras" / f"{slice_file_stem(model, dataset)}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def connect(self, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with views ``questions``, ``branches``, ``steps`` over the files."""
        con = con or duckdb.connect()
        for table in TABLES:
            pattern = str(self.path / table / "*.parquet").replace("'", "''")
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet('{pattern}')")
        return con
