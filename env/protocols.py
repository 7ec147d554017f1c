"""Permutation protocols: which branches an episode sees, and in what order.

``autotts`` reproduces the published numbers: for seed s the episode opens branches in the
order ``random.Random(s).shuffle`` puts the list of all B branches. ``subset:n`` draws n of
the B branches (``random.Random(s).sample``), to replay a smaller sampling budget; ``stored``
keeps the recorded order for every seed.
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np


def parse_protocol(spec: str) -> tuple[str, int | None]:
    name, _, arg = spec.partition(":")
    if name in ("autotts", "stored") and not arg:
        return name, None
    if name == "subset":
        try:
            n = int(arg.removeprefix("n="))
        except ValueError:
            raise ValueError(f"protocol {spec!r}: write subset:N with an integer N") from None
        if n <= 0:
            raise ValueError(f"protocol {spec!r}: N must be positive")
        return name, n
    raise ValueError(f"unknown protocol {spec!r}; choose autotts, stored or subset:N")


@lru_cache(maxsize=4096)
def _order(spec: str, n_branches: int, seed: int) -> tuple[int, ...]:
    name, n = parse_protocol(spec)
    if name == "autotts":
        order = list(range(n_branches))
        random.Random(seed).shuffle(order)
        return tuple(order)
    if name == "stored":
        return tuple(range(n_branches))
    assert n is not None
    if n > n_branches:
        raise ValueError(f"protocol subset:{n} needs at least {n} branches, the question has {n_branches}")
    return tuple(random.Random(seed).sample(range(n_branches), n))


def branch_order(spec: str, n_branches: int, seed: int) -> tuple[int, ...]:
    """Pool indices in the order an episode opens them."""
    return _order(spec, int(n_branches), int(seed))


def order_matrix(spec: str, n_branches: int, seeds: list[int] | range) -> np.ndarray:
    """Orders of several seeds stacked as an (S, n) int64 array, for batched kernels."""
    return np.array([branch_order(spec, n_branches, s) for s in seeds], dtype=np.int64)
