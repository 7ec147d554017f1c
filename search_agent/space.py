"""The offline proposer's search space: controller programs assembled from components.

A *genome* is a JSON-serialisable dict that picks one option per component of a lockstep
race controller and a β-schedule per numeric knob:

- **width** (branches read in lockstep) and how it adapts (``width_rule``): fixed, grown by
  ``width_step`` per distinct finished answer beyond the first (disagreement widens the race),
  or grown by ``width_step`` after every ``width`` finishes without a verdict (escalation);
- the **depth cap** (``cap``): none, or ``cap_slack`` × the depth of the ``cap_rank``-th
  finisher, after which running branches that reach it are pruned;
- **probe votes** (``probe_vote``): none; ``confirm`` (a running branch whose last ``settle_run``
  probes agree on an answer some branch finished with adds ``support_weight``); ``settled``
  (any settled running branch adds ``support_weight``, finished or not);
- **revisions** (``revision_weight``): votes removed from an answer per branch that settled on
  it and later settled elsewhere; **length weighting** (``length_gamma``): a finished vote
  weighs ``min(1, d_first / d) ** gamma`` where d is its depth and d_first the first finisher's;
- the **stop rule** (``stop``): ASC's Beta posterior ``1 - I_½(top + 1, second + 1) > theta``,
  a vote ``margin``, or a unanimous ``window`` of the latest finishes; always also after
  ``max_votes`` finished votes or ``max_branches`` branches;
- **tie-breaking** (``tie``): first finished, shortest finisher (fewest tokens), or most running
  support; the **fallback** when nothing finished with a parsable answer (``fallback``).

Scheduled knobs are ``{"lo": v0, "hi": v1, "shape": s}`` with v0 ≤ v1 and a shape in
``SHAPES``, so every scheduled knob grows with β and spends more (``SPEND``); the others are
single values. All knobs are unit-free (branch and vote counts, depth ratios, probabilities),
so a program carries no constant tied to one benchmark's lengths.

:func:`render` turns a genome into a standalone module (imports only the allow-listed
modules) that defines one class with ``schedule(beta)`` and ``solve(question)``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pprint
import random
from typing import Any

SHAPES = ("lin", "geo", "sqrt", "square")

# Scheduled knobs: allowed endpoint values (kept discrete so duplicates are detectable),
# the kind of value, and the direction that spends more (+1: larger spends more).
SCHEDULED: dict[str, dict[str, Any]] = {
    "width": {"values": [1, 2, 3, 4, 6, 8, 12, 16], "kind": "int"},
    "max_votes": {"values": [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64], "kind": "int"},
    "max_branches": {"values": [8, 16, 32, 48, 64], "kind": "int"},
    "theta": {"values": [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999],
              "kind": "prob"},
    "margin": {"values": [1, 2, 3, 4, 5, 6, 8, 10], "kind": "int"},
    "window": {"values": [1, 2, 3, 4, 5, 6, 8], "kind": "int"},
    "cap_rank": {"values": [1, 2, 3, 4, 6], "kind": "int"},
    "cap_slack": {"values": [1.0, 1.1, 1.25, 1.5, 2.0], "kind": "float"},
}
# Fixed knobs (same value at every β) and their allowed values.
FIXED: dict[str, list[Any]] = {
    "width_step": [1, 2, 4],
    "settle_run": [1, 2, 3, 4],
    "support_weight": [0.5, 1.0, 1.5],
    "revision_weight": [0.0, 0.5, 1.0, 1.5, 2.0],
    "length_gamma": [0.0, 0.5, 1.0, 2.0],
}
CHOICES: dict[str, tuple[str, ...]] = {
    "width_rule": ("fixed", "disagree", "escalate"),
    "cap": ("none", "rank"),
    "probe_vote": ("none", "confirm", "settled"),
    "stop": ("beta", "margin", "window"),
    "tie": ("first", "shortest", "support"),
    "fallback": ("settled", "majority"),
}
STOP_KNOB = {"beta": "theta", "margin": "margin", "window": "window"}
GENES = (*CHOICES, *SCHEDULED, *FIXED)


def seed_genome() -> dict[str, Any]:
    """Round 0: a plain lockstep race with ASC's stop rule — reasonable, deliberately unrefined."""
    return {
        "width_rule": "fixed", "cap": "none", "probe_vote": "none", "stop": "beta",
        "tie": "first", "fallback": "majority",
        "width": {"lo": 4, "hi": 8, "shape": "lin"},
        "max_votes": {"lo": 4, "hi": 16, "shape": "lin"},
        "max_branches": {"lo": 64, "hi": 64, "shape": "lin"},
        "theta": {"lo": 0.8, "hi": 0.95, "shape": "lin"},
        "margin": {"lo": 2, "hi": 6, "shape": "lin"},
        "window": {"lo": 2, "hi": 5, "shape": "lin"},
        "cap_rank": {"lo": 2, "hi": 2, "shape": "lin"},
        "cap_slack": {"lo": 1.0, "hi": 1.0, "shape": "lin"},
        "width_step": 1, "settle_run": 2, "support_weight": 1.0, "revision_weight": 0.0,
        "length_gamma": 0.0,
    }


# -- validation, canonical form, identity ------------------------------------------------------


def validate(genome: dict[str, Any]) -> dict[str, Any]:
    """Check every gene; raise ValueError naming the gene. Returns a normalised deep copy."""
    if not isinstance(genome, dict):
        raise ValueError(f"genome must be a dict, got {type(genome).__name__}")
    g = copy.deepcopy(genome)
    missing = [k for k in GENES if k not in g]
    extra = [k for k in g if k not in GENES]
    if missing or extra:
        raise ValueError(f"genome genes: missing {missing}, unknown {extra}")
    for key, options in CHOICES.items():
        if g[key] not in options:
            raise ValueError(f"genome[{key!r}] = {g[key]!r}; choose one of {options}")
    for key, spec in SCHEDULED.items():
        s = g[key]
        if not isinstance(s, dict) or set(s) != {"lo", "hi", "shape"}:
            raise ValueError(f"genome[{key!r}] must be {{'lo', 'hi', 'shape'}}, got {s!r}")
        if s["shape"] not in SHAPES:
            raise ValueError(f"genome[{key!r}]['shape'] = {s['shape']!r}; choose one of {SHAPES}")
        for end in ("lo", "hi"):
            if s[end] not in spec["values"]:
                raise ValueError(f"genome[{key!r}][{end!r}] = {s[end]!r}; allowed {spec['values']}")
        if s["lo"] > s["hi"]:
            s["lo"], s["hi"] = s["hi"], s["lo"]  # keep every schedule spending more with β
    for key, options in FIXED.items():
        if g[key] not in options:
            raise ValueError(f"genome[{key!r}] = {g[key]!r}; allowed {options}")
    return g


def active_genes(genome: dict[str, Any]) -> set[str]:
    """The genes the genome's component choices actually use."""
    used = {*CHOICES, "width", "max_votes", "max_branches", STOP_KNOB[genome["stop"]], "revision_weight",
            "length_gamma"}
    if (genome["probe_vote"] != "none" or genome["revision_weight"] or genome["fallback"] == "settled"
            or genome["tie"] == "support"):
        used.add("settle_run")  # settling only matters to the rules that read it
    if genome["width_rule"] != "fixed":
        used.add("width_step")
    if genome["cap"] == "rank":
        used |= {"cap_rank", "cap_slack"}
    if genome["probe_vote"] != "none":
        used.add("support_weight")
    return used


def canonical(genome: dict[str, Any]) -> dict[str, Any]:
    """The genome with unused genes reset to the seed's values and constant schedules made 'lin',
    so that programs that behave the same compare equal."""
    g = validate(genome)
    base = seed_genome()
    used = active_genes(g)
    for key in GENES:
        if key not in used:
            g[key] = copy.deepcopy(base[key])
    for key in SCHEDULED:
        if g[key]["lo"] == g[key]["hi"]:
            g[key]["shape"] = "lin"
    return g


def genome_key(genome: dict[str, Any]) -> str:
    """A short stable identity of the canonical genome (for novelty checks and class names)."""
    text = json.dumps(canonical(genome), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- schedules ---------------------------------------------------------------------------------


def curve(lo: float, hi: float, shape: str, b: float) -> float:
    """The fraction-of-the-way value of a schedule at β = b (the rendered code computes the same)."""
    if shape == "lin":
        f = b
    elif shape == "sqrt":
        f = b**0.5
    elif shape == "square":
        f = b * b
    elif shape == "geo":
        return lo * (hi / lo) ** b
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return lo + (hi - lo) * f


def _num(x: float) -> str:
    return repr(round(float(x), 6))


def schedule_expr(key: str, s: dict[str, Any]) -> str:
    """Python source of the knob's value as a function of ``b`` (β clipped to [0, 1])."""
    kind = SCHEDULED[key]["kind"]
    lo, hi, shape = s["lo"], s["hi"], s["shape"]
    if lo == hi:
        return _num(lo) if kind != "int" else str(int(lo))
    power = {"lin": "b", "sqrt": "b ** 0.5", "square": "b * b"}
    if kind == "prob" and shape == "geo":  # geometric in the miss rate 1 - θ
        return f"1.0 - {_num(1 - lo)} * {_num((1 - hi) / (1 - lo))} ** b"
    if shape == "geo":
        expr = f"{_num(lo)} * {_num(hi / lo)} ** b"
    else:
        expr = f"{_num(lo)} + {_num(hi - lo)} * {power[shape]}"
    return f"round({expr})" if kind == "int" else expr


def schedule_values(genome: dict[str, Any], beta: float) -> dict[str, Any]:
    """The knobs the rendered class's ``schedule(beta)`` returns (same formulas, computed here)."""
    g = canonical(genome)
    b = min(max(float(beta), 0.0), 1.0)
    out: dict[str, Any] = {}
    for key in _knobs(g):
        if key in SCHEDULED:
            s = g[key]
            kind = SCHEDULED[key]["kind"]
            if s["lo"] == s["hi"]:
                out[key] = s["lo"]
            elif kind == "prob" and s["shape"] == "geo":
                out[key] = 1.0 - (1 - s["lo"]) * ((1 - s["hi"]) / (1 - s["lo"])) ** b
            else:
                v = curve(s["lo"], s["hi"], s["shape"], b)
                out[key] = round(v) if kind == "int" else v
        else:
            out[key] = g[key]
    return out


def _knobs(g: dict[str, Any]) -> list[str]:
    used = active_genes(g)
    return [k for k in (*SCHEDULED, *FIXED) if k in used]


def spend_directions(genome: dict[str, Any]) -> dict[str, int]:
    """+1 for every scheduled knob that moves with β (larger spends more), 0 for fixed ones."""
    g = canonical(genome)
    return {k: (1 if k in SCHEDULED and g[k]["lo"] != g[k]["hi"] else 0) for k in _knobs(g)}


# -- variation operators -----------------------------------------------------------------------


def random_genome(rng: random.Random) -> dict[str, Any]:
    """A uniformly drawn genome (used by tests and to diversify a stalled population)."""
    g: dict[str, Any] = {}
    for key, options in CHOICES.items():
        g[key] = rng.choice(options)
    for key, spec in SCHEDULED.items():
        a, b = rng.choice(spec["values"]), rng.choice(spec["values"])
        g[key] = {"lo": min(a, b), "hi": max(a, b), "shape": rng.choice(SHAPES)}
    for key, options in FIXED.items():
        g[key] = rng.choice(options)
    return validate(g)


def _step(values: list, current: Any, rng: random.Random) -> Any:
    k = values.index(current)
    k = min(max(k + rng.choice((-2, -1, 1, 2)), 0), len(values) - 1)
    return values[k]


def mutate_gene(genome: dict[str, Any], key: str, rng: random.Random) -> dict[str, Any]:
    """A copy of the genome with one gene moved: a neighbouring value, another option or shape."""
    g = copy.deepcopy(genome)
    if key in CHOICES:
        g[key] = rng.choice([o for o in CHOICES[key] if o != g[key]])
    elif key in FIXED:
        g[key] = _step(FIXED[key], g[key], rng)
    else:
        s = dict(g[key])
        what = rng.choice(("lo", "hi", "hi", "lo", "shape"))
        if what == "shape":
            s["shape"] = rng.choice([x for x in SHAPES if x != s["shape"]])
        else:
            s[what] = _step(SCHEDULED[key]["values"], s[what], rng)
        if s["lo"] > s["hi"]:
            s["lo"], s["hi"] = s["hi"], s["lo"]
        g[key] = s
    return validate(g)


def mutate(genome: dict[str, Any], rng: random.Random, n: int = 1,
           focus: list[str] | None = None) -> dict[str, Any]:
    """Move ``n`` genes among the active ones (or among ``focus`` when given)."""
    g = validate(genome)
    for _ in range(n):
        pool = focus or sorted(active_genes(g))
        g = mutate_gene(g, rng.choice(pool), rng)
    return g


def crossover(a: dict[str, Any], b: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Uniform crossover gene by gene (a component travels with its schedule)."""
    g = {key: copy.deepcopy(a[key] if rng.random() < 0.5 else b[key]) for key in GENES}
    return validate(g)


# -- description and rendering -----------------------------------------------------------------


def _sched_text(key: str, s: dict[str, Any]) -> str:
    if s["lo"] == s["hi"]:
        return f"{s['lo']} (fixed)"
    return f"{s['lo']} → {s['hi']} ({s['shape']})"


def describe(genome: dict[str, Any]) -> list[str]:
    """One line per component choice, in words (the rendered docstring and the proposal prompt)."""
    g = canonical(genome)
    w = _sched_text("width", g["width"])
    lines = []
    if g["width_rule"] == "fixed":
        lines.append(f"width: {w} branches read in lockstep, refilled as branches finish or are pruned")
    elif g["width_rule"] == "disagree":
        lines.append(f"width: {w} in lockstep, + {g['width_step']} per distinct finished answer "
                     "beyond the first (disagreement widens the race)")
    else:
        lines.append(f"width: {w} in lockstep, + {g['width_step']} after every `width` finishes "
                     "without a verdict (escalation)")
    if g["cap"] == "rank":
        lines.append(f"depth cap: {_sched_text('cap_slack', g['cap_slack'])} × the depth of finisher "
                     f"number {_sched_text('cap_rank', g['cap_rank'])}; "
                     "running branches reaching it are pruned")
    else:
        lines.append("depth cap: none (branches run to their end)")
    pv = {"none": "probes never vote; only finished branches do",
          "confirm": f"a running branch whose last {g['settle_run']} parsable probes agree on an answer "
                     f"some branch finished with adds {g['support_weight']} vote",
          "settled": f"every running branch whose last {g['settle_run']} parsable probes agree adds "
                     f"{g['support_weight']} vote to that answer"}
    lines.append("probe votes: " + pv[g["probe_vote"]])
    if g["revision_weight"]:
        lines.append(f"revisions: each branch that settled on an answer and later left it removes "
                     f"{g['revision_weight']} vote from it")
    else:
        lines.append("revisions: ignored")
    if g["length_gamma"]:
        lines.append(f"length weighting: a finished vote weighs min(1, d_first / d) ** {g['length_gamma']}")
    else:
        lines.append("length weighting: none (one vote per finished branch)")
    stop = {"beta": f"ASC Beta posterior 1 - I_0.5(top + 1, second + 1) > theta, theta "
                    f"{_sched_text('theta', g['theta'])}",
            "margin": f"leader ahead by margin {_sched_text('margin', g['margin'])} votes",
            "window": f"the last {_sched_text('window', g['window'])} finished answers agree"}
    lines.append(f"stop: {stop[g['stop']]}; or after max_votes {_sched_text('max_votes', g['max_votes'])} "
                 f"finished votes; at most max_branches {_sched_text('max_branches', g['max_branches'])}")
    tie = {"first": "the answer that finished first", "shortest": "the answer of the shortest finisher",
           "support": "the answer with more settled running branches, then the first finished"}
    lines.append("ties: " + tie[g["tie"]])
    fb = {"settled": "majority of the answers branches settled on, else of the latest answers",
          "majority": "majority of the latest answers of the non-pruned branches"}
    lines.append("fallback (no parsable finish): " + fb[g["fallback"]])
    return lines


def class_name(genome: dict[str, Any]) -> str:
    return "OfflineRace" + genome_key(genome)[:6].upper()


def render(genome: dict[str, Any]) -> tuple[str, str]:
    """Standalone module source for the genome and the name of the class it defines."""
    g = canonical(genome)
    name = class_name(g)
    knobs = _knobs(g)
    spend = spend_directions(g)
    doc = "\n".join(f"- {line}" for line in describe(g))
    sched = "\n".join(
        f"            {k!r}: {schedule_expr(k, g[k]) if k in SCHEDULED else repr(g[k])},"
        for k in knobs)
    spend_txt = ", ".join(f"{k!r}: {v}" for k, v in spend.items())
    literal = pprint.pformat(g, width=96, sort_dicts=True).replace("\n", "\n" + " " * 9)
    parts = [_HEADER.format(doc=doc, key=genome_key(g), genome=literal),
             _CLASS.format(name=name, sched=sched, spend=spend_txt, nm=name.lower()),
             _solve(g)]
    return "\n".join(parts), name


_HEADER = '''"""A controller found by ttsgym's offline proposer (genome {key}).

A lockstep race over the question's branches, assembled from these component choices:

{doc}

Every scheduled knob grows with beta (larger beta spends more); see ``schedule``.
"""

import functools
import math

from scipy.stats import beta as beta_law

from ttsgym.controllers.base import BetaController
from ttsgym.env.voting import majority

ERR = "ERR"
INF = float("inf")
GENOME = {genome}


@functools.lru_cache(maxsize=65536)
def leader_confidence(top, second):
    """P(the leading answer is the true majority) under ASC's Beta model."""
    return float(1.0 - beta_law.cdf(0.5, top + 1.0, second + 1.0))
'''

_CLASS = '''

class {name}(BetaController):
    """See the module docstring for the component choices."""

    name = "{nm}"
    summary = "offline-searched lockstep race"
    defaults = {{"beta": 0.5}}
    SPEND = {{{spend}}}

    @classmethod
    def schedule(cls, beta):
        """Every knob from beta in [0, 1]."""
        b = min(max(float(beta), 0.0), 1.0)
        return {{
{sched}
        }}
'''


def _solve(g: dict[str, Any]) -> str:
    """The body of ``solve`` for the genome's choices (only the code its components need)."""
    L: list[str] = []

    def add(block: str, indent: int = 2) -> None:
        pad = "    " * indent
        block = block[1:] if block.startswith("\n") else block
        for line in block.rstrip("\n").split("\n"):
            L.append((pad + line) if line.strip() else "")

    add('''
def solve(self, question):
    """Run the race on one episode and return the leading answer of the net tally."""
    q = question
    hp = self.hp
    width = int(hp["width"])
    max_votes = int(hp["max_votes"])
    max_branches = min(int(hp["max_branches"]), q.pool_size)
    revision_weight = float(hp["revision_weight"])
''', 1)
    if "settle_run" in active_genes(g):
        add('settle = int(hp["settle_run"])')
    else:
        add('settle = 2  # no rule of this program reads settled answers')
    stop = g["stop"]
    if stop == "beta":
        add('theta = float(hp["theta"])')
    elif stop == "margin":
        add('margin = float(hp["margin"])')
    else:
        add('window = int(hp["window"])')
    if g["cap"] == "rank":
        add('cap_rank = int(hp["cap_rank"])\ncap_slack = float(hp["cap_slack"])')
    if g["probe_vote"] != "none":
        add('support_weight = float(hp["support_weight"])')
    if g["width_rule"] != "fixed":
        add('width_step = int(hp["width_step"])')
    gamma = bool(g["length_gamma"])
    if gamma:
        add('gamma = float(hp["length_gamma"])')
    add('''
votes = {}  # finished answer -> vote weight, in first-finished order
revised = {}  # answer -> branches that settled on it and later left it
finish_depths = []  # depth of every finished branch
depth = []  # reads per branch, by opening index
last = []  # latest parsable answer per branch
run_len = []  # length of the current run of that answer
held = []  # latest settled answer per branch
settled = []  # every answer each branch has settled on
state = {"n_votes": 0, "first_depth": 0}
''')
    if stop == "window":
        add('finished_seq = []  # parsable finished answers in order')
    if g["tie"] == "shortest":
        add('shortest = {}  # answer -> fewest tokens of a branch that finished with it')
    add('''

def hold(i, answer):
    """Branch i settles on answer: what it held before counts as revised."""
    before = held[i]
    if before == answer:
        return
    if before is not None:
        revised[before] = revised.get(before, 0) + 1
    if answer in settled[i]:
        revised[answer] -= 1
    else:
        settled[i].add(answer)
    held[i] = answer

def see(i, answer, finished):
    """Record one read of branch i; True while it is still running."""
    depth[i] += 1
    if finished:
        finish_depths.append(depth[i])
        if answer != ERR:''')
    if gamma:
        add('''
if not state["first_depth"]:
    state["first_depth"] = depth[i]
weight = min(1.0, state["first_depth"] / depth[i]) ** gamma''', 5)
    else:
        add('weight = 1.0', 5)
    add('''
votes[answer] = votes.get(answer, 0.0) + weight
state["n_votes"] += 1''', 5)
    if stop == "window":
        add('finished_seq.append(answer)', 5)
    if g["tie"] == "shortest":
        add('''
spent = q.tokens_of(i)
if spent < shortest.get(answer, INF):
    shortest[answer] = spent''', 5)
    add('''
            hold(i, answer)
        return False
    if answer != ERR:
        if answer == last[i]:
            run_len[i] += 1
        else:
            last[i] = answer
            run_len[i] = 1
        if run_len[i] >= settle:
            hold(i, answer)
    return True

def open_branch():
    """Open the next branch (one interval); its index while it is still running."""
    answer, i, finished = q.open()
    while len(depth) <= i:
        depth.append(0)
        last.append(None)
        run_len.append(0)
        held.append(None)
        settled.append(set())
    return i if see(i, answer, finished) else None

def tally(running):
    """Net votes per answer: finished votes, minus revisions, plus probe support."""
    net = dict(votes)
    if revision_weight and revised:
        for answer in net:
            n = revised.get(answer)
            if n:
                net[answer] -= revision_weight * n''')
    if g["probe_vote"] == "confirm":
        add('''
for i in running:
    answer = last[i]
    if run_len[i] >= settle and answer in net:
        net[answer] += support_weight''', 3)
    elif g["probe_vote"] == "settled":
        add('''
for i in running:
    if run_len[i] >= settle:
        net[last[i]] = net.get(last[i], 0.0) + support_weight''', 3)
    add('    return net')
    add('''

def leader(net, running):
    """(best answer, its net votes, the runner-up's net votes) under the tie rule."""''')
    if g["tie"] == "first":
        add('''
    best, top, second = None, -INF, 0.0
    for answer, v in net.items():  # dict order is first-finished order: > keeps the first
        if v > top:
            if best is not None:
                second = max(second, top)
            best, top = answer, v
        else:
            second = max(second, v)
    return best, top, second''')
    else:
        if g["tie"] == "shortest":
            add('''
    def rank(answer):
        return (net[answer], -shortest.get(answer, INF))''')
        else:
            add('''
    backing = {}
    for i in running:
        if run_len[i] >= settle:
            backing[last[i]] = backing.get(last[i], 0) + 1

    def rank(answer):
        return (net[answer], backing.get(answer, 0))''')
        add('''
    if not net:
        return None, -INF, 0.0
    order = sorted(net, key=rank, reverse=True)  # stable: equal ranks keep first-finished order
    best = order[0]
    second = max(0.0, net[order[1]]) if len(order) > 1 else 0.0
    return best, net[best], second''')
    add('''

def verdict(running):
    """The answer to stop with, or None to keep racing."""
    best, top, second = leader(tally(running), running)
    if state["n_votes"] >= max_votes:
        return best''')
    if stop == "beta":
        add('''
    if top > 0 and leader_confidence(top, second) > theta:
        return best''')
    elif stop == "margin":
        add('''
    if top > 0 and top - second >= margin:
        return best''')
    else:
        add('''
    if len(finished_seq) >= window and len(set(finished_seq[-window:])) == 1:
        return finished_seq[-1]''')
    add('''
    return None

running = []
cap = INF
while True:
    still = []
    for i in running:
        answer, finished = q.extend(i)
        if see(i, answer, finished):
            still.append(i)
    running = still''')
    if g["width_rule"] == "fixed":
        add('target = width', 3)
    elif g["width_rule"] == "disagree":
        add('target = width + width_step * max(0, len(votes) - 1)  # disagreement widens', 3)
    else:
        add('target = width + width_step * (len(finish_depths) // width)  # escalation', 3)
    add('''
    while len(running) < target and q.n_opened < max_branches:
        i = open_branch()
        if i is not None:
            running.append(i)
    if votes:
        answer = verdict(running)
        if answer is not None:
            return answer
    if not running:
        break''')
    if g["cap"] == "rank":
        add('''
    if cap == INF and len(finish_depths) >= cap_rank:
        cap = math.ceil(cap_slack * sorted(finish_depths)[cap_rank - 1])
    if cap < INF:
        keep = []
        for i in running:
            if depth[i] >= cap:
                q.prune(i)
            else:
                keep.append(i)
        running = keep''')
    add('''
if votes:
    return leader(tally([]), [])[0]''')
    if g["fallback"] == "settled":
        add('return majority(held) or q.majority()')
    else:
        add('return q.majority()')
    return "\n".join(L) + "\n"
