"""The replay store: Parquet tables + manifest, importers, DuckDB views, compiled arrays.

Tables in (importers, the synthetic generator, later the collector), tables out (pyarrow,
DuckDB) and arrays out (:func:`load_replay`) for the replay engine. Imports nothing above it.
"""

from ttsgym.store.autotts import AutoTTSFormatError, export_autotts, import_autotts
from ttsgym.store.compiled import ReplayArrays, load_replay
from ttsgym.store.schema import BRANCHES, ERR, QUESTIONS, SCHEMA_VERSION, STEPS
from ttsgym.store.store import SliceInfo, Store, StoreError

__all__ = [
    "BRANCHES", "ERR", "QUESTIONS", "SCHEMA_VERSION", "STEPS",
    "AutoTTSFormatError", "ReplayArrays", "SliceInfo", "Store", "StoreError",
    "export_autotts", "import_autotts", "load_replay",
]
