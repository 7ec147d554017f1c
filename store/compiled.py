"""The compiled replay form of a (model, dataset) slice: integer arrays, cached and memory-mapped.

Replay never parses JSON or Parquet. The first load of a slice compiles its tables into the
arrays below and writes them as ``.npy`` files to a cache directory; later loads memory-map
them (a few milliseconds). The cache key covers the slice's content hash and the Parquet
files' size and modification time, so rewritten tables are compiled again.

Layout (Q questions, B = most branches of any question, P probes in all)::

    n_branches  (Q,)    int32   pool size of each question
    interval    (Q,)    int32   probe interval Δ in tokens
    tokens      (Q, B)  int64   branch length T
    n_probes    (Q, B)  int32   probes L of each branch
    final_cls   (Q, B)  int32   class id of the final answer (-1 for padding)
    probe_start (Q, B)  int64   where the branch's probes start in probe_cls
    probe_cls   (P,)    int32   class id of each probe answer, branch after branch
    gold_cls    (Q,)    int32   class id of the gold answer
    class_start (Q,)    int64   where the question's class names start
    n_classes   (Q,)    int32
    class_blob / class_offsets  UTF-8 class names (the canonical answers)
    score, confidence (P,) float32  only when the store has them

Probes are stored ragged (CSR) rather than as a (Q, B, L_max) cube so that a 10,000 × 256
synthetic store fits in memory; ``probe_cls[probe_start[q, b] + k]`` is probe k + 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ttsgym.store.store import Store, StoreError

COMPILED_FORMAT = 1
_ARRAYS = ("n_branches", "interval", "tokens", "n_probes", "final_cls", "probe_start",
           "probe_cls", "gold_cls", "class_start", "n_classes", "class_blob", "class_offsets",
           "question_ids")
_OPTIONAL = ("score", "confidence")


@dataclass(frozen=True, eq=False)
class ReplayArrays:
    """One slice in array form. Holds gold answers: only the evaluator may touch it."""

    model: str
    dataset: str
    synthetic: bool
    n_branches: np.ndarray
    interval: np.ndarray
    tokens: np.ndarray
    n_probes: np.ndarray
    final_cls: np.ndarray
    probe_start: np.ndarray
    probe_cls: np.ndarray
    gold_cls: np.ndarray
    class_start: np.ndarray
    n_classes: np.ndarray
    class_blob: np.ndarray
    class_offsets: np.ndarray
    question_ids: np.ndarray
    score: np.ndarray | None = None
    confidence: np.ndarray | None = None
    _names: dict = field(default_factory=dict, repr=False)

    @property
    def n_questions(self) -> int:
        return int(self.n_branches.shape[0])

    @property
    def max_branches(self) -> int:
        return int(self.tokens.shape[1])

    def class_names(self, q: int) -> list[str]:
        """The canonical answer strings of question ``q``, indexed by class id."""
        names = self._names.get(q)
        if names is None:
            start = int(self.class_start[q])
            offs = self.class_offsets[start : start + int(self.n_classes[q]) + 1]
            blob = self.class_blob
            names = [bytes(blob[a:b]).decode("utf-8") for a, b in pairwise(offs.tolist())]
            self._names[q] = names
        return names

    def probes(self, q: int, b: int) -> np.ndarray:
        start = int(self.probe_start[q, b])
        return self.probe_cls[start : start + int(self.n_probes[q, b])]


def cache_root(store: Store) -> Path:
    """Where compiled arrays go: $TTSGYM_CACHE, else inside the store, else the user cache."""
    env = os.environ.get("TTSGYM_CACHE")
    if env:
        return Path(env)
    inside = store.path / "_cache"
    if os.access(store.path, os.W_OK):
        return inside
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    tag = hashlib.sha256(str(store.path.resolve()).encode()).hexdigest()[:12]
    return base / "ttsgym" / tag


def cache_key(store: Store, model: str, dataset: str) -> str:
    info = store.slice(model, dataset)
    digest = hashlib.sha256(f"{COMPILED_FORMAT}:{info.content_sha256}".encode())
    for table in ("questions", "branches", "steps"):
        for f in store.files(table, model, dataset):
            st = f.stat()
            digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def load_replay(store: Store | str | Path, model: str, dataset: str) -> ReplayArrays:
    """The slice's arrays, memory-mapped from the cache; compiled first when the cache is stale."""
    store = store if isinstance(store, Store) else Store(store)
    info = store.slice(model, dataset)
    root = cache_root(store) / "compiled"
    target = root / f"{info.stem}-{cache_key(store, model, dataset)}"
    if not (target / "meta.json").is_file():
        _write_cache(compile_slice(store, model, dataset), root, target, info.stem)
    return _read_cache(target)


def _read_cache(target: Path) -> ReplayArrays:
    meta = json.loads((target / "meta.json").read_text())
    arrays = {name: np.load(target / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    for name in _OPTIONAL:
        if name in meta["optional"]:
            arrays[name] = np.load(target / f"{name}.npy", mmap_mode="r")
    return ReplayArrays(model=meta["model"], dataset=meta["dataset"], synthetic=meta["synthetic"],
                        **arrays)


def _write_cache(arrays: ReplayArrays, root: Path, target: Path, stem: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        optional = [n for n in _OPTIONAL if getattr(arrays, n) is not None]
        for name in (*_ARRAYS, *optional):
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(arrays, name)))
        (tmp / "meta.json").write_text(json.dumps({
            "format": COMPILED_FORMAT, "model": arrays.model, "dataset": arrays.dataset,
            "synthetic": arrays.synthetic, "optional": optional,
        }))
        try:
            os.rename(tmp, target)
        except OSError:  # another process published the same key first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in root.glob(f"{stem}-*"):  # older versions of this slice
        if stale != target and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def compile_slice(store: Store, model: str, dataset: str) -> ReplayArrays:
    """Build the arrays of one slice from its Parquet tables (vectorised; no per-row Python)."""
    questions = pq.read_table(store.files("questions", dataset=dataset)[0],
                              columns=["question_id", "gold_canonical"]).sort_by("question_id")
    branches = store.read("branches", model, dataset,
                          columns=["question_id", "branch_id", "interval_tokens", "n_tokens",
                                   "n_probes", "final_canonical"])
    branches = branches.sort_by([("question_id", "ascending"), ("branch_id", "ascending")])
    step_cols = ["question_id", "branch_id", "step", "canonical"]
    info = store.slice(model, dataset)
    step_cols += [n for n, has in (("score", info.has_score), ("confidence", info.has_confidence)) if has]
    steps = store.read("steps", model, dataset, columns=step_cols)
    steps = steps.sort_by([("question_id", "ascending"), ("branch_id", "ascending"),
                           ("step", "ascending")])
    where = f"{store.path}: slice {model}/{dataset}"

    qids = questions.column("question_id").to_numpy()
    n_q = len(qids)
    b_qid = branches.column("question_id").to_numpy()
    b_bid = branches.column("branch_id").to_numpy()
    b_q = _positions(b_qid, qids, where, "branches")
    n_branches = np.bincount(b_q, minlength=n_q).astype(np.int32)
    if (n_branches == 0).any():
        missing = qids[n_branches == 0][:5].tolist()
        raise StoreError(f"{where}: questions without branches: {missing}")
    b_max = int(n_branches.max())
    first = np.concatenate([[0], np.cumsum(n_branches)[:-1]])
    b_col = np.arange(len(b_q)) - first[b_q]  # position of the branch within its question
    if not np.array_equal(b_bid, b_col):
        raise StoreError(f"{where}: branch ids of a question must be 0, 1, 2, ... without gaps")

    n_probes_flat = branches.column("n_probes").to_numpy().astype(np.int64)
    s_q = _positions(steps.column("question_id").to_numpy(), qids, where, "steps")
    s_b = steps.column("branch_id").to_numpy()
    flat_branch = first[s_q] + s_b
    counts = np.bincount(flat_branch, minlength=len(b_q))
    if not np.array_equal(counts, n_probes_flat):
        bad = int(np.flatnonzero(counts != n_probes_flat)[0])
        raise StoreError(
            f"{where}: question {int(b_qid[bad])} branch {int(b_bid[bad])} has "
            f"{int(counts[bad])} step rows but n_probes = {int(n_probes_flat[bad])}"
        )
    starts_flat = np.concatenate([[0], np.cumsum(n_probes_flat)[:-1]])
    expected_step = np.arange(len(s_q)) - starts_flat[flat_branch] + 1
    if not np.array_equal(steps.column("step").to_numpy(), expected_step):
        raise StoreError(f"{where}: steps of a branch must be numbered 1, 2, 3, ... without gaps")

    # Class ids: one dictionary over every canonical answer, then ids local to each question.
    texts = pa.chunked_array(
        steps.column("canonical").chunks + branches.column("final_canonical").chunks
        + questions.column("gold_canonical").chunks
    ).combine_chunks()
    encoded = pc.dictionary_encode(texts)
    global_ids = encoded.indices.to_numpy().astype(np.int64)
    dictionary = encoded.dictionary
    owner = np.concatenate([s_q, b_q, np.arange(n_q)]).astype(np.int64)
    combined = owner * len(dictionary) + global_ids
    uniq, inverse = np.unique(combined, return_inverse=True)
    class_q = uniq // len(dictionary)
    n_classes = np.bincount(class_q, minlength=n_q).astype(np.int32)
    class_start = np.concatenate([[0], np.cumsum(n_classes)[:-1]]).astype(np.int64)
    local = (np.arange(len(uniq)) - class_start[class_q])[inverse].astype(np.int32)
    n_s, n_b = len(s_q), len(b_q)
    probe_cls = local[:n_s]
    final_local = local[n_s : n_s + n_b]
    gold_cls = local[n_s + n_b :]
    names = pc.take(dictionary, pa.array(uniq % len(dictionary)))
    blob, offsets = _string_blob(names)

    def dense(values: np.ndarray, fill, dtype) -> np.ndarray:
        out = np.full((n_q, b_max), fill, dtype=dtype)
        out[b_q, b_col] = values
        return out

    intervals = branches.column("interval_tokens").to_numpy()
    interval = np.zeros(n_q, dtype=np.int32)
    interval[b_q] = intervals
    if not np.array_equal(interval[b_q], intervals):
        raise StoreError(f"{where}: branches of one question use different probe intervals")
    optional = {}
    for name in _OPTIONAL:
        if name in steps.column_names:
            optional[name] = steps.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
    return ReplayArrays(
        model=model, dataset=dataset, synthetic=store.synthetic,
        n_branches=n_branches, interval=interval,
        tokens=dense(branches.column("n_tokens").to_numpy(), 0, np.int64),
        n_probes=dense(n_probes_flat, 0, np.int32),
        final_cls=dense(final_local, -1, np.int32),
        probe_start=dense(starts_flat, 0, np.int64),
        probe_cls=probe_cls, gold_cls=gold_cls, class_start=class_start, n_classes=n_classes,
        class_blob=blob, class_offsets=offsets, question_ids=qids.astype(np.int32), **optional,
    )


def _positions(values: np.ndarray, qids: np.ndarray, where: str, table: str) -> np.ndarray:
    """Row → question position; every question id must be one of the dataset's questions."""
    order = np.argsort(qids)
    pos = np.searchsorted(qids, values, sorter=order)
    pos = np.minimum(pos, len(qids) - 1)
    found = order[pos]
    bad = qids[found] != values
    if bad.any():
        raise StoreError(f"{where}: {table} refer to unknown question id {int(values[bad][0])}")
    return found.astype(np.int64)


def _string_blob(names: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Arrow strings → (UTF-8 bytes, offsets), the form that memory-maps."""
    names = names.cast(pa.large_string())
    offsets = np.frombuffer(names.buffers()[1], dtype=np.int64)[names.offset : names.offset + len(names) + 1]
    data = names.buffers()[2]
    blob = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return blob[offsets[0] : offsets[-1]].copy(), (offsets - offsets[0]).copy()

