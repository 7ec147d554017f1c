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
    """Build the arrays of one slice from its Parquet tables (vectorised; no per-row Python).

    Memory stays a small multiple of the output: steps already in (question, branch, step)
    order are not re-sorted, per-probe work runs in blocks of rows, and answer classes are
    found question block by question block (a 10,000 × 256 synthetic slice, 69 M probes,
    compiles in 34 s at a 3.0 GB peak RSS; the one-shot version needed 63 s and 8.6 GB).
    """
    questions = pq.read_table(store.files("questions", dataset=dataset)[0],
                              columns=["question_id", "gold_canonical"]).sort_by("question_id")
    branches = store.read("branches", model, dataset,
                          columns=["question_id", "branch_id", "interval_tokens", "n_tokens",
                                   "n_probes", "final_canonical"])
    branches = branches.sort_by([("question_id", "ascending"), ("branch_id", "ascending")])
    step_cols = ["question_id", "branch_id", "step", "canonical"]
    info = store.slice(model, dataset)
    step_cols += [n for n, has in (("score", info.has_score), ("confidence", info.has_confidence)) if has]
    steps = _sorted_steps(store.read("steps", model, dataset, columns=step_cols))
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
    starts_flat = np.concatenate([[0], np.cumsum(n_probes_flat)[:-1]])
    s_q, s_b, step_no, steps = _step_keys(steps, qids, where)
    _check_steps(s_q, s_b, step_no, first, n_probes_flat, starts_flat, b_qid, b_bid, where)
    del s_b, step_no

    optional = {}
    for name in _OPTIONAL:
        if name in steps.column_names:
            optional[name] = steps.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
    probe_cls, final_local, gold_cls, n_classes, names = _classes(
        steps.column("canonical"), branches.column("final_canonical"),
        questions.column("gold_canonical"), s_q, n_branches)
    del steps, s_q
    class_start = np.concatenate([[0], np.cumsum(n_classes)[:-1]]).astype(np.int64)
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


_BLOCK = 1 << 22  # rows per block of per-probe work


def _sorted_steps(steps: pa.Table) -> pa.Table:
    """Steps in (question_id, branch_id, step) order; already ordered tables (what the
    importers and the synthetic generator write) are returned as they are, which is what the
    stable sort would give."""
    keys = [steps.column(c) for c in ("question_id", "branch_id", "step")]
    if _is_sorted(*keys):
        return steps
    return steps.sort_by([("question_id", "ascending"), ("branch_id", "ascending"),
                          ("step", "ascending")])


def _is_sorted(q: pa.ChunkedArray, b: pa.ChunkedArray, s: pa.ChunkedArray) -> bool:
    """Whether rows are in non-decreasing (q, b, s) order, checked block by block."""
    n = len(q)
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK + 1)  # one row of overlap with the next block
        if hi - lo < 2:
            break
        kq, kb, ks = (c.slice(lo, hi - lo).to_numpy() for c in (q, b, s))
        same_q, same_b = kq[1:] == kq[:-1], kb[1:] == kb[:-1]
        ok = (kq[1:] > kq[:-1]) | (same_q & ((kb[1:] > kb[:-1]) | (same_b & (ks[1:] >= ks[:-1]))))
        if not ok.all():
            return False
    return True


def _step_keys(steps: pa.Table, qids: np.ndarray,
               where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Table]:
    """(question position, branch id, step) of every sorted step row as NumPy arrays, and the
    table without those columns (each column is freed as soon as it is converted)."""
    s_qid = steps.column("question_id").to_numpy()
    steps = steps.drop_columns(["question_id"])
    # Rows are sorted by question, so map each run of one question id once.
    run_start = np.flatnonzero(np.concatenate([[True], s_qid[1:] != s_qid[:-1]])) if len(s_qid) else \
        np.zeros(0, np.int64)
    run_pos = _positions(s_qid[run_start], qids, where, "steps")
    lengths = np.diff(np.append(run_start, len(s_qid)))
    del s_qid
    s_q = np.repeat(run_pos.astype(np.int32), lengths)
    s_b = steps.column("branch_id").to_numpy()
    step_no = steps.column("step").to_numpy()
    return s_q, s_b, step_no, steps.drop_columns(["branch_id", "step"])


def _check_steps(s_q: np.ndarray, s_b: np.ndarray, step_no: np.ndarray, first: np.ndarray,
                 n_probes_flat: np.ndarray, starts_flat: np.ndarray, b_qid: np.ndarray,
                 b_bid: np.ndarray, where: str) -> None:
    """Every branch has exactly n_probes step rows, numbered 1, 2, 3, ... (block by block)."""
    n_b = len(n_probes_flat)
    counts = np.zeros(n_b, np.int64)
    numbered = True
    stray = None  # a step row that points past the last branch
    for lo in range(0, len(s_q), _BLOCK):
        hi = min(len(s_q), lo + _BLOCK)
        flat = first[s_q[lo:hi]] + s_b[lo:hi]
        outside = (flat < 0) | (flat >= n_b)
        if outside.any():
            stray = stray if stray is not None else lo + int(np.flatnonzero(outside)[0])
            flat = flat[~outside]
            numbered = False
        else:
            expected = np.arange(lo, hi) - starts_flat[flat] + 1
            numbered = numbered and np.array_equal(step_no[lo:hi], expected)
        counts += np.bincount(flat, minlength=n_b)
    if stray is not None:
        raise StoreError(f"{where}: step row {stray} refers to branch {int(s_b[stray])} of a question "
                         "that has no such branch")
    if not np.array_equal(counts, n_probes_flat):
        bad = int(np.flatnonzero(counts != n_probes_flat)[0])
        raise StoreError(
            f"{where}: question {int(b_qid[bad])} branch {int(b_bid[bad])} has "
            f"{int(counts[bad])} step rows but n_probes = {int(n_probes_flat[bad])}"
        )
    if not numbered:
        raise StoreError(f"{where}: steps of a branch must be numbered 1, 2, 3, ... without gaps")


def _classes(step_text: pa.ChunkedArray, final_text: pa.ChunkedArray, gold_text: pa.ChunkedArray,
             s_q: np.ndarray, n_branches: np.ndarray):
    """Answer class ids local to each question: (probe, final, gold ids, classes per question,
    class names in (question, id) order).

    One dictionary over every canonical answer in first-seen order (steps, then finals, then
    golds); a question's classes are its distinct dictionary ids in increasing order. Worked
    out for blocks of whole questions, so no step-sized sort or key array is ever built."""
    texts = pa.chunked_array(step_text.chunks + final_text.chunks + gold_text.chunks, type=pa.string())
    encoded = pc.dictionary_encode(texts)
    del texts
    dictionary = encoded.chunks[-1].dictionary
    ids = np.concatenate([c.indices.to_numpy() for c in encoded.chunks]) if encoded.num_chunks else \
        np.zeros(0, np.int32)
    del encoded
    n_q, n_s, n_b = len(n_branches), len(s_q), int(n_branches.sum())
    size = max(len(dictionary), 1)
    step_bounds = np.searchsorted(s_q, np.arange(n_q + 1))
    branch_bounds = np.concatenate([[0], np.cumsum(n_branches)])
    rows_before = step_bounds + branch_bounds + np.arange(n_q + 1)  # rows of questions < q
    probe_cls = np.empty(n_s, np.int32)
    final_local = np.empty(n_b, np.int32)
    gold_cls = np.empty(n_q, np.int32)
    n_classes = np.zeros(n_q, np.int32)
    name_ids = []
    qa = 0
    while qa < n_q:
        qb = max(qa + 1, int(np.searchsorted(rows_before, rows_before[qa] + _BLOCK, side="right")) - 1)
        qb = min(qb, n_q)
        sa, sb = step_bounds[qa], step_bounds[qb]
        ba, bb = branch_bounds[qa], branch_bounds[qb]
        owner = np.concatenate([s_q[sa:sb].astype(np.int64), np.repeat(np.arange(qa, qb), n_branches[qa:qb]),
                                np.arange(qa, qb)])
        gid = np.concatenate([ids[sa:sb], ids[n_s + ba : n_s + bb], ids[n_s + n_b + qa : n_s + n_b + qb]])
        uniq, inverse = np.unique(owner * size + gid, return_inverse=True)
        class_q = uniq // size
        counts = np.bincount(class_q - qa, minlength=qb - qa)
        n_classes[qa:qb] = counts
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        local = (np.arange(len(uniq)) - start[class_q - qa])[inverse].astype(np.int32)
        k_s, k_b = sb - sa, bb - ba
        probe_cls[sa:sb] = local[:k_s]
        final_local[ba:bb] = local[k_s : k_s + k_b]
        gold_cls[qa:qb] = local[k_s + k_b :]
        name_ids.append(uniq % size)
        qa = qb
    names = pc.take(dictionary, pa.array(np.concatenate(name_ids)))
    return probe_cls, final_local, gold_cls, n_classes, names


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

