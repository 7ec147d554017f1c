"""The candidate contract: what a searched controller may use, as data (for the checks) and as
text (for prompts and the README). One source, so the prompt never promises what the checks
refuse."""

from __future__ import annotations

# Modules a candidate may import (``import X``, ``import X as Y``, ``from X import name``).
# ``random`` is allowed because the evaluator seeds it per seed (a fresh, unseeded
# ``random.Random()`` is nondeterministic and fails the audit).
ALLOWED_MODULES: frozenset[str] = frozenset({
    "__future__", "math", "collections", "itertools", "heapq", "functools", "statistics", "random",
    "typing", "dataclasses", "numpy", "numpy.random", "numpy.linalg", "scipy.stats", "scipy.special",
    "ttsgym.controllers.base", "ttsgym.env.voting",
})

# Built-in names a candidate may not use at all: they reach attributes by string, run code, or
# touch the outside world.
FORBIDDEN_NAMES: frozenset[str] = frozenset({
    "getattr", "setattr", "delattr", "hasattr", "vars", "dir", "globals", "locals", "eval", "exec",
    "compile", "open", "__import__", "breakpoint", "input", "help", "exit", "quit", "memoryview",
})

# Attribute names refused on any object: file I/O and introspection handles that live on
# ordinary objects (numpy arrays, frames, generators), whatever the receiver is.
FORBIDDEN_ATTRIBUTES: frozenset[str] = frozenset({
    "tofile", "dump", "dumps", "load", "loads", "save", "savez", "savez_compressed", "savetxt",
    "loadtxt", "fromfile", "genfromtxt", "fromregex", "memmap", "ctypes", "ctypeslib", "DataSource",
    "f_globals", "f_locals", "f_back", "f_builtins", "gi_frame", "cr_frame", "ag_frame", "tb_frame",
    "tb_next", "get_type_hints", "ForwardRef", "make_dataclass", "SystemRandom", "seterrcall",
    "show_config", "lookfor",
})

# Builtins a module-level or class-level value may call (definitions only, no side effects).
PURE_BUILTINS: frozenset[str] = frozenset({
    "abs", "bool", "dict", "float", "frozenset", "int", "len", "list", "max", "min", "range",
    "round", "set", "sorted", "str", "sum", "tuple", "pow", "zip", "enumerate", "reversed",
    "staticmethod", "classmethod", "property",
})

CONTRACT = """\
## The candidate contract

Submit one Python module that defines **one controller class** with

- `schedule(beta)` as a `@classmethod` or `@staticmethod`: returns a dict of every internal
  hyper-parameter derived from the single knob β in [0, 1]. Numeric values must be monotone in β
  (each key either never decreases or never increases over the β grid), keys the same for every β.
  Larger β must spend more: mean tokens may not fall as β grows (tolerance: 2 % or 1,000 tokens).
- a constructor taking `config={"beta": b}` (subclassing `ttsgym.controllers.base.BetaController`
  gives you that and `self.hp = schedule(beta)`; a plain class is accepted too);
- `solve(question) -> str | None`: the answer for one episode.

One controller object is made per seed (after `random` and `numpy.random` are seeded with the
seed) and solves that seed's questions in order; keep per-question state local to `solve`.

### The Question API (all a controller gets)

- `open()` / `probe_new()` -> `(answer, index, finished)`: opens the next branch and reads its
  first interval; costs Δ (+κ), or the whole branch if it has no probes.
- `extend(i)` / `probe_more(i)` -> `(answer, finished)`: the next interval of open branch `i`;
  costs Δ (+κ); the read after the last probe returns the final answer for max(0, T − Δ·L).
- `open_full()` / `get_new_branch_final_answer()` -> the final answer of the next branch, for its
  whole length T.
- `prune(i)`: marks branch `i` inactive (it keeps its answers); free.
- Free reads of state: `depth(i)`, `depths()`, `tokens_of(i)`, `is_finished(i)`, `is_pruned(i)`,
  `active()`, `answers(i)` (revealed answers), `latest(i)`, `signals(i)` (`(score, confidence)` per
  revealed probe, `None` when absent), `majority()` (of the latest answers of unpruned branches).
- Numbers: `n_opened`, `pool_size`, `interval` (Δ), `kappa`, `budget`, `total_tokens`,
  `seq_tokens`, `tokens_left`; AutoTTS aliases `get_seq_and_total_tokens()`,
  `get_cost_per_branch_active()`.
- `trace(event, **data)`: records your own event in the episode trace.

Branch indices are the order of opening (0 = first opened). Reading a finished branch again returns
its final answer for free; reading a pruned branch raises. Opening past `pool_size` raises
`ValueError`. Answers are canonical strings; `"ERR"` is a probe that could not be parsed.

### Allowed

Imports only from: `math`, `collections`, `itertools`, `heapq`, `functools`, `statistics`, `random`,
`typing`, `dataclasses`, `numpy` (with `numpy.random`, `numpy.linalg`), `scipy.stats`, `scipy.special`,
`ttsgym.controllers.base` (`BetaController`, `Controller`), `ttsgym.env.voting` (`majority`,
`vote_counts`).

### Forbidden (rejected before anything runs)

- any other import; using a module other than as `module.name` (no aliasing or passing modules),
  or reaching a module that is not allowed through an allowed one;
- attribute names starting with `_` (private and dunder), except `super().__init__(...)`; names
  starting with `__`; string constants containing `__` or a format field with attribute or index
  access (`"{0.x}"`, `"{0[k]}"`);
- the built-ins `getattr`, `setattr`, `delattr`, `hasattr`, `vars`, `dir`, `globals`, `locals`,
  `eval`, `exec`, `compile`, `open`, `__import__`, `breakpoint`, `input`, `help`, `exit`, `quit`,
  `memoryview`; file and introspection attributes (`tofile`, `load`, `save`, `fromfile`,
  `memmap`, `ctypes`, frame attributes, ...);
- module-level statements other than imports, `def`, `class`, docstrings and constant assignments.

### What is enforced at run time

The controller runs in a separate process that holds no gold answers, under a wall-clock limit,
a CPU limit and a memory limit (inside bubblewrap where available: no network, read-only file
system). Any crash, timeout, exception or answer that is not `str`/`None` rejects the candidate.
Then the **non-anticipation audit** re-runs sampled seeds in fresh processes with every cell the
controller did not read replaced by other data: any change in its calls or answers rejects it as
peeking (or nondeterministic). A controller may depend only on what it has read.
"""
