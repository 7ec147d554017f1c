"""Per-chunk sampling seeds: a pure function of (store seed, question, branch, chunk).

Collection and live inference derive the seed of every Δ-token chunk the same way, so a live
controller that reopens branch b of a question regenerates exactly the recorded tokens, chunk by
chunk, whatever order, server or concurrency the chunks are requested in.
"""

from __future__ import annotations

import hashlib

SEED_SCHEME = "sha256('ttsgym-chunk/v1|{seed}|{sha256(question)[:16]}|{branch}|{chunk}')[:8] & 0x7fffffff"


def question_key(question: str) -> str:
    """A short stable key of the question text (the text, not its position, so that a
    reordered or filtered question file keeps every branch's seeds)."""
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def chunk_seed(store_seed: int, question: str, branch: int, chunk: int) -> int:
    """The seed of chunk ``chunk`` (0-based) of branch ``branch`` (0-based); fits a signed int32."""
    if branch < 0 or chunk < 0:
        raise ValueError(f"branch and chunk must be non-negative, got {branch}, {chunk}")
    text = f"ttsgym-chunk/v1|{store_seed}|{question_key(question)}|{branch}|{chunk}"
    digest = hashlib.sha256(text.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFFFFFF
