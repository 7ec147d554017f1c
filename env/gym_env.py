"""``ttsgym/WidthDepth-v0``: the replay engine as an atomic Gymnasium MDP (DESIGN §3, face 2).

The environment and the Question API are two faces of one engine. The replay state of an
episode lives in :class:`Engine` (no gold answer, no correctness); :class:`WidthDepthEnv` adds
spaces, rewards and grading around it, and :class:`~ttsgym.env.gym_adapters.EnvQuestion` drives
the same engine through the Question API. Costs follow :mod:`ttsgym.env.question` exactly:

- BRANCH opens the next branch of the episode's order and reads its first interval (Δ; a
  branch without probes finishes at once at cost T and shows its final answer);
- CONTINUE(i) reads one more interval of branch i without revealing its answer (Δ); the
  CONTINUE after the last probe reaches the end: it costs max(0, T − Δ·L), finishes the branch
  and reveals its final answer with no probe needed;
- PROBE(i) reveals the probe answer at branch i's current depth, once per depth, for κ;
- so Question.extend ≡ CONTINUE + PROBE (Δ + κ) and Question.open ≡ BRANCH + PROBE.

The hot path keeps its state in ``array.array`` buffers with NumPy views over them: scalar
updates go through the (fast) array objects, observations are copies of the views. Vote
counts and the leader are maintained incrementally.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ttsgym.env.episodes import Grader
from ttsgym.env.protocols import branch_order, parse_protocol
from ttsgym.env.question import BranchPool
from ttsgym.store import ReplayArrays, Store, load_replay

UNOPENED, ACTIVE, FINISHED, PRUNED = 0, 1, 2, 3
STATUS_NAMES = ("unopened", "active", "finished", "pruned")
ANSWER, BRANCH = 0, 1
_INF = float("inf")
_OPTIONS = ("question", "permutation_seed")


class Engine:
    """The replay state of one episode: branches opened in a fixed order, depths, revealed answers,
    votes, tokens and the legal-action mask. Shared by both faces; holds no gold and no
    correctness, so a controller holding it (through ``EnvQuestion``) cannot reach them.

    Slots are branches in opening order (slot 0 is the first branch opened). Answers are class
    ids of the current question; ``names[c]`` is the canonical string (``None`` for classes no
    branch of the pool produces).
    """

    __slots__ = (
        "_fill_f", "_legal0", "_neg_i", "_zero_b", "_zero_i", "agree", "agree_np", "agree_stale",
        "budget", "budgeted", "conf", "conf_np", "counts", "depth", "depth_np", "fill", "freq",
        "full0", "has_conf", "has_score", "interval", "kappa", "label", "label_np", "label_of",
        "latest", "latest_np", "leader", "legal", "legal_np", "limit", "mask", "mask_np",
        "max_branches", "n_actions", "names", "next_cost", "next_cost_np", "next_label", "opened",
        "order", "pool", "probe0", "probed", "probed_np", "prune0", "score", "score_np", "seq",
        "sl_bits", "sl_conf", "sl_final", "sl_n", "sl_probes", "sl_score", "sl_spent", "sl_tail",
        "sl_tokens", "status", "status_np", "tokens", "vote", "voters",
    )

    def __init__(self, max_branches: int, *, kappa: int = 0, budget: float = _INF,
                 full_read: bool = False, fill: float = -1.0) -> None:
        m = int(max_branches)
        self.max_branches = m
        self.kappa = int(kappa)
        self.budget = budget
        self.fill = float(fill)
        self.probe0 = 2 + m
        self.prune0 = 2 + 2 * m
        self.full0 = 2 + 3 * m if full_read else -1
        self.n_actions = 2 + 3 * m + (1 if full_read else 0)
        self._zero_b = array("b", bytes(m))
        self._zero_i = array("i", bytes(4 * m))
        self._neg_i = array("i", [-1] * m)
        self._fill_f = array("f", [self.fill] * m)
        self.depth = array("i", self._zero_i)
        self.status = array("b", self._zero_b)
        self.probed = array("b", self._zero_b)
        self.agree = array("b", self._zero_b)
        self.latest = array("i", self._neg_i)
        self.label = array("i", self._neg_i)
        self.score = array("f", self._fill_f)
        self.conf = array("f", self._fill_f)
        self.next_cost = array("q", bytes(8 * m))
        self.depth_np = np.frombuffer(self.depth, dtype=np.int32)
        self.status_np = np.frombuffer(self.status, dtype=np.int8)
        self.probed_np = np.frombuffer(self.probed, dtype=np.int8)
        self.agree_np = np.frombuffer(self.agree, dtype=np.int8)
        self.latest_np = np.frombuffer(self.latest, dtype=np.int32)
        self.label_np = np.frombuffer(self.label, dtype=np.int32)
        self.score_np = np.frombuffer(self.score, dtype=np.float32)
        self.conf_np = np.frombuffer(self.conf, dtype=np.float32)
        self.next_cost_np = np.frombuffer(self.next_cost, dtype=np.int64)
        self._legal0 = bytearray(self.n_actions)
        self._legal0[ANSWER] = 1
        self.legal = bytearray(self._legal0)
        self.legal_np = np.frombuffer(self.legal, dtype=np.int8)
        self.budgeted = budget != _INF
        if not self.budgeted:
            self.mask, self.mask_np = self.legal, self.legal_np
        else:
            self.mask = bytearray(self.n_actions)
            self.mask_np = np.frombuffer(self.mask, dtype=np.int8)
        self.sl_probes: list[tuple[int, ...]] = [()] * m
        self.sl_n = [0] * m
        self.sl_tokens = [0] * m
        self.sl_tail = [0] * m
        self.sl_final = [-1] * m
        self.sl_spent = [0] * m
        self.sl_bits = [0] * m
        self.sl_score: list[tuple[float, ...] | None] = [None] * m
        self.sl_conf: list[tuple[float, ...] | None] = [None] * m
        self.pool: BranchPool | None = None
        self.names: list[str | None] = []
        self.order: Sequence[int] = ()
        self.interval = 0
        self.limit = 0
        self.opened = 0
        self.tokens = 0
        self.seq = 0
        self.vote = [-1] * m
        self.counts: list[int] = []
        self.label_of: list[int] = []
        self.next_label = 0
        self.freq = [0] * (m + 3)
        self.voters = 0
        self.leader = -1
        self.agree_stale = False
        self.has_score = False
        self.has_conf = False

    # -- episode start ---------------------------------------------------------------------

    def load(self, pool: BranchPool, order: Sequence[int], names: list[str | None]) -> None:
        """Start an episode over ``pool`` (class-id answers) opened in ``order``."""
        m = self.max_branches
        self.pool = pool
        self.order = order
        self.names = names
        self.interval = pool.interval
        self.has_score = pool.scores is not None
        self.has_conf = pool.confidences is not None
        self.limit = min(len(order), m)
        self.opened = 0
        self.tokens = 0
        self.seq = 0
        self.depth[:] = self._zero_i
        self.status[:] = self._zero_b
        self.probed[:] = self._zero_b
        self.agree[:] = self._zero_b
        self.latest[:] = self._neg_i
        self.label[:] = self._neg_i
        self.label_of = [-1] * len(names)
        self.next_label = 0
        self.score[:] = self._fill_f
        self.conf[:] = self._fill_f
        self.vote = [-1] * m
        self.counts = [0] * len(names)
        self.freq = [0] * (m + 3)
        self.voters = 0
        self.leader = -1
        self.agree_stale = False
        self.legal[:] = self._legal0
        if self.limit:
            self.legal[BRANCH] = 1
            if self.full0 >= 0:
                self.legal[self.full0] = 1
        self._fit()

    # -- transitions (callers check legality; costs go to tokens and to the branch) ------------

    def branch(self) -> int:
        """BRANCH: open the next branch and read its first interval; returns its slot."""
        k = self._open()
        self.cont(k)
        return k

    def full(self) -> int:
        """Full read: open the next branch and read it to its end at once (cost T)."""
        k = self._open()
        cost = self.sl_tokens[k]
        n = self.sl_n[k]
        self.depth[k] = n + 1
        self.sl_bits[k] = (1 << (n + 2)) - 2  # a full read has seen every probe point
        self._finish(k, cost)
        return k

    def cont(self, i: int) -> None:
        """CONTINUE(i): one more interval of branch i (or its end, revealing the final answer)."""
        d = self.depth[i]
        n = self.sl_n[i]
        if d < n:
            d += 1
            self.depth[i] = d
            self.probed[i] = 0
            self.legal[self.probe0 + i] = 1
            cost = self.interval
            spent = self.sl_spent[i] + cost
            self.sl_spent[i] = spent
            self.tokens += cost
            if spent > self.seq:
                self.seq = spent
            if self.budgeted:
                self.next_cost[i] = cost if d < n else self.sl_tail[i]
                self._fit()
        else:
            self.depth[i] = n + 1
            self._finish(i, self.sl_tail[i])

    def probe(self, i: int) -> None:
        """PROBE(i): reveal the probe answer at branch i's current depth, for κ tokens."""
        d = self.depth[i]
        self.probed[i] = 1
        self.legal[self.probe0 + i] = 0
        self.sl_bits[i] |= 1 << d
        kappa = self.kappa
        if kappa:
            self.tokens += kappa
            spent = self.sl_spent[i] + kappa
            self.sl_spent[i] = spent
            if spent > self.seq:
                self.seq = spent
        if self.has_score:
            v = self.sl_score[i][d - 1]
            self.score[i] = v if v == v else self.fill  # NaN (a missing cell) → the fill
        if self.has_conf:
            v = self.sl_conf[i][d - 1]
            self.conf[i] = v if v == v else self.fill
        self._reveal(i, self.sl_probes[i][d - 1])
        if self.budgeted:
            self._fit()

    def prune(self, i: int) -> None:
        """PRUNE(i): branch i stops voting and cannot be read; its depth and answers stay."""
        self.status[i] = PRUNED
        legal = self.legal
        legal[2 + i] = 0
        legal[self.probe0 + i] = 0
        legal[self.prune0 + i] = 0
        c = self.vote[i]
        if c >= 0:
            self.vote[i] = -1
            x = self.counts[c]
            self.counts[c] = x - 1
            self.freq[x] -= 1
            self.freq[x - 1] += 1
            self.voters -= 1
            if c == self.leader:
                self._lead_lost(-1)
        if self.budgeted:
            self._fit()

    # -- internals -------------------------------------------------------------------------

    def _open(self) -> int:
        k = self.opened
        pool = self.pool
        b = self.order[k]
        probes = pool.probes[b]
        n = len(probes)
        t = pool.tokens[b]
        self.sl_probes[k] = probes
        self.sl_n[k] = n
        self.sl_tokens[k] = t
        tail = t - self.interval * n
        self.sl_tail[k] = tail if tail > 0 else 0
        self.sl_final[k] = pool.finals[b]
        self.sl_spent[k] = 0
        self.sl_bits[k] = 0
        if self.has_score:
            self.sl_score[k] = pool.scores[b]
        if self.has_conf:
            self.sl_conf[k] = pool.confidences[b]
        self.status[k] = ACTIVE
        self.opened = k + 1
        legal = self.legal
        legal[2 + k] = 1
        legal[self.prune0 + k] = 1
        if k + 1 >= self.limit:
            legal[BRANCH] = 0
            if self.full0 >= 0:
                legal[self.full0] = 0
        return k

    def _finish(self, i: int, cost: int) -> None:
        self.status[i] = FINISHED
        self.probed[i] = 1
        legal = self.legal
        legal[2 + i] = 0
        legal[self.probe0 + i] = 0
        self.score[i] = self.fill
        self.conf[i] = self.fill
        self.sl_bits[i] |= 1 << self.depth[i]
        spent = self.sl_spent[i] + cost
        self.sl_spent[i] = spent
        self.tokens += cost
        if spent > self.seq:
            self.seq = spent
        self._reveal(i, self.sl_final[i])
        if self.budgeted:
            self._fit()

    def _reveal(self, i: int, c: int) -> None:
        """Branch i's latest revealed answer becomes class c: update votes and the leader."""
        old = self.vote[i]
        if old == c:  # same answer as before (a non-pruned branch's vote is its latest answer)
            return
        self.latest[i] = c
        lab = self.label_of[c]
        if lab < 0:
            lab = self.label_of[c] = self.next_label
            self.next_label = lab + 1
        self.label[i] = lab
        self.vote[i] = c
        counts = self.counts
        freq = self.freq
        n = counts[c] + 1
        counts[c] = n
        freq[n - 1] -= 1
        freq[n] += 1
        lead = self.leader
        if old >= 0:
            x = counts[old]
            counts[old] = x - 1
            freq[x] -= 1
            freq[x - 1] += 1
            if old == lead:
                self._lead_lost(c)
                self.agree[i] = 1 if c == self.leader else -1
                return
        else:
            self.voters += 1
        if lead < 0:
            self.leader = c
            self.agree_stale = True
        elif c == lead:
            self.agree[i] = 1
        else:
            ln = counts[lead]
            if n > ln or (n == ln and self.vote.index(c) < self.vote.index(lead)):
                self.leader = c
                self.agree_stale = True
            else:
                self.agree[i] = -1

    def _lead_lost(self, c: int) -> None:
        """The leader just lost a vote (and class c, if >= 0, gained one): find the leader again,
        scanning the slots only when counts tie at the top."""
        if not self.voters:
            self.leader = -1
            self.agree_stale = True
            return
        counts, freq = self.counts, self.freq
        ln = counts[self.leader]
        # The top count is now ln, ln + 1 or ln + 2 (only c can have gone past the old top).
        if freq[ln + 1] == 0 and freq[ln + 2] == 0:
            if freq[ln] == 1:
                return  # still the only class with the most votes
        elif c >= 0 and counts[c] > ln and freq[counts[c]] == 1 and (counts[c] == ln + 2 or not freq[ln + 2]):
            self.leader = c
            self.agree_stale = True
            return
        self._rescan()

    def _rescan(self) -> None:
        """Recompute the leader: the most votes, ties to the class of the earliest slot."""
        counts = self.counts
        best, best_n = -1, 0
        vote = self.vote
        for k in range(self.opened):
            c = vote[k]
            if c >= 0:
                n = counts[c]
                if n > best_n:
                    best, best_n = c, n
        self.leader = best
        self.agree_stale = True

    def refresh_agree(self) -> None:
        """+1 where a branch's latest revealed answer is the leader's, −1 where not, 0 if none."""
        lat = self.latest_np
        ag = self.agree_np
        np.not_equal(lat, -1, out=ag, casting="unsafe")
        ag -= (lat != self.leader).view(np.int8) * 2 * ag
        self.agree_stale = False

    def _fit(self) -> None:
        """Apply the token budget to the legal actions (only when there is a budget)."""
        if not self.budgeted:
            return
        left = self.budget - self.tokens
        m = self.mask_np
        np.copyto(m, self.legal_np)
        k = self.opened
        if k < self.limit:
            b = self.order[k]
            t = self.pool.tokens[b]
            if (self.interval if self.pool.probes[b] else t) > left:
                m[BRANCH] = 0
            if self.full0 >= 0 and t > left:
                m[self.full0] = 0
        mm = self.max_branches
        m[2 : 2 + mm] *= self.next_cost_np <= left
        if self.kappa > left:
            m[self.probe0 : self.probe0 + mm] = 0

    # -- reading ---------------------------------------------------------------------------

    def share(self) -> float:
        return self.counts[self.leader] / self.voters if self.voters else 0.0

    def is_finished(self, i: int) -> bool:
        return self.depth[i] > self.sl_n[i]

    def revealed(self, i: int) -> list[tuple[int, int]]:
        """``(depth, class)`` of every revealed answer of branch i, shallowest first."""
        bits, n = self.sl_bits[i], self.sl_n[i]
        out = [(d, self.sl_probes[i][d - 1]) for d in range(1, n + 1) if bits >> d & 1]
        if bits >> (n + 1) & 1:
            out.append((n + 1, self.sl_final[i]))
        return out


def _class_pool(arrays: ReplayArrays, q: int) -> tuple[BranchPool, list[str | None]]:
    """Question q's pool with class ids for answers (a :class:`BranchPool` of ints), and the
    names of the classes its branches produce (``None`` for the others, so a gold answer that
    no branch reaches never enters the engine)."""
    pool = BranchPool.from_arrays(arrays, q, class_ids=True)
    used = {c for probes in pool.probes for c in probes} | set(pool.finals)
    names = [s if c in used else None for c, s in enumerate(arrays.class_names(q))]
    return pool, names


class WidthDepthEnv(gym.Env):
    """Width–depth control of a reasoning model, replayed from recorded traces.

    ## Description

    Each episode is one question of a (model, dataset) slice of a ttsgym store. The question has
    a pool of recorded reasoning branches, each probed for its intermediate answer every Δ
    tokens. The agent decides how wide (how many branches) and how deep (how far each branch
    runs) to go, which intermediate answers to look at, which branches to drop, and when to
    stop; it is paid for a correct final answer and charged for every token read. Replay is
    exact: costs and answers are those of the Question API (:mod:`ttsgym.env.question`), so a
    controller gets the same tokens and answer through either face. The episode opens branches
    in a fixed order (the ``autotts`` permutation of a seed, or one sampled from ``np_random``).

    ## Action Space

    ``Discrete(2 + 3·M)`` (``+1`` with ``full_read=True``), M = ``max_branches``; slot i is
    the i-th branch opened:

    | action          | index          | effect (cost)                                              |
    |-----------------|----------------|------------------------------------------------------------|
    | ANSWER          | 0              | end with the majority of the latest revealed answers of    |
    |                 |                | non-pruned branches (ties: earliest slot) (0)              |
    | BRANCH          | 1              | open the next branch, read its first interval (Δ; T if it  |
    |                 |                | has no probes: it finishes and shows its final answer)     |
    | CONTINUE(i)     | 2 + i          | read one more interval, answer not revealed (Δ); after the |
    |                 |                | last probe: read to the end, finish, reveal the final      |
    |                 |                | answer (max(0, T − Δ·L))                                   |
    | PROBE(i)        | 2 + M + i      | reveal the answer at branch i's current depth, once per    |
    |                 |                | depth (κ)                                                  |
    | PRUNE(i)        | 2 + 2M + i     | branch i stops voting and can no longer be read (0)        |
    | FULL (optional) | 2 + 3M         | open the next branch and read it whole at once (T), as     |
    |                 |                | the Question API's ``open_full``                           |

    ``action_masks()`` and ``info["action_mask"]`` (int8, 1 = legal) give the legal actions,
    the token budget included; ANSWER is always legal (after the end it is the only action
    marked, though stepping a finished episode raises: call ``reset``). An illegal action
    changes nothing, earns 0 and sets ``info["invalid_action"]``.

    ## Observation Space

    A ``Dict`` of fixed-shape arrays, per-branch entries padded to M (unopened slots hold 0,
    or −1 for ``label`` and ``signal_fill`` for the signals):

    - ``depth`` (M,) int32: intervals read (a finished branch has depth L + 1);
    - ``status`` (M,) int8: 0 unopened, 1 active, 2 finished, 3 pruned;
    - ``probed`` (M,) int8: whether the answer at the current depth has been revealed;
    - ``agree`` (M,) int8: +1 if the branch's latest revealed answer is the leader's, −1 if
      it differs, 0 if the branch has revealed nothing;
    - ``label`` (M,) int32: the branch's latest revealed answer as an episode-local label
      (0 for the first distinct answer revealed in the episode, 1 for the next, …; −1 for
      none), so policies can count votes themselves without seeing answer strings;
    - ``leader_label`` (1,) int32: the label of the leader, −1 before any vote (the leader is
      what ANSWER would return);
    - ``score``, ``confidence`` (M,) float32: step score and confidence of the latest revealed
      probe where the store has them, else ``signal_fill`` (−1 by default: NaN would make
      Gymnasium's determinism checks fail, as NaN ≠ NaN; pass ``signal_fill=float("nan")``
      to get NaN);
    - ``leader_share`` (1,) float32: the leader's share of the votes (0 before any vote);
    - ``tokens`` (1,) float32: tokens spent so far;
    - ``budget_left`` (1,) float32: fraction of the token budget still unspent (1 without one);
    - ``opened`` (1,) int32: branches opened.

    Answer strings and correctness never appear in it.

    ## Rewards

    ``1{correct} − γ·tokens/1000``: all at the end with ``reward="terminal"``; with
    ``reward="dense"`` each step pays ``−γ·(its tokens)/1000`` and the end pays ``1{correct}``
    (the same sum).

    ## Starting State

    Nothing opened, no tokens spent. ``reset(options={"question": i, "permutation_seed": s})``
    fixes the question (position in the slice) and the opening order (the protocol's order of
    seed s, e.g. ``random.Random(s).shuffle`` for ``autotts``); either left out is drawn from
    ``self.np_random``: a question among ``questions``, and an order as the protocol describes
    (a uniform permutation for ``autotts``, a uniform subset for ``subset:N``). The reset
    ``info`` holds ``action_mask``, ``question`` (position) and ``question_id``.

    ## Episode End

    The episode terminates on ANSWER (or :meth:`answer_with`); it never truncates. ``info`` then
    holds ``answer_class`` (class id of the answer within the question, −1 for none),
    ``correct``, ``tokens``, ``seq_tokens`` (the deepest branch's tokens), ``question`` (its
    position), ``question_id`` and ``branches_opened``.

    ## Arguments

    - ``store``: store directory, :class:`~ttsgym.store.Store` or
      :class:`~ttsgym.store.ReplayArrays`;
    - ``model``, ``dataset``: the slice (may be left out when the store has only one);
    - ``max_branches`` (64): M, the most branches an episode may open (and the padding);
    - ``kappa`` (0): tokens charged per PROBE;
    - ``budget`` (None): token budget per episode; actions that would exceed it are masked;
    - ``gamma`` (0.001): cost weight per 1,000 tokens (1M tokens weigh as one correct answer);
    - ``reward``: ``"terminal"`` or ``"dense"``;
    - ``protocol``: ``autotts`` (default), ``stored`` or ``subset:N``;
    - ``questions``: question positions that plain ``reset`` samples from (default: all);
    - ``full_read`` (False): add the FULL action;
    - ``signal_fill`` (−1.0): value of ``score``/``confidence`` where there is none;
    - ``render_mode``: ``None`` or ``"ansi"`` (a text picture of the width–depth grid).

    Δ (the probe interval) comes from the store, per question.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012 - Gymnasium's convention

    def __init__(
        self,
        store: str | os.PathLike | Store | ReplayArrays,
        model: str | None = None,
        dataset: str | None = None,
        *,
        max_branches: int = 64,
        kappa: int = 0,
        budget: int | None = None,
        gamma: float = 0.001,
        reward: str = "terminal",
        protocol: str = "autotts",
        questions: Sequence[int] | None = None,
        full_read: bool = False,
        signal_fill: float = -1.0,
        render_mode: str | None = None,
    ) -> None:
        arrays = _resolve(store, model, dataset)
        if max_branches < 1:
            raise ValueError("max_branches must be at least 1")
        if kappa < 0:
            raise ValueError("kappa must be >= 0")
        if budget is not None and budget < 0:
            raise ValueError("budget must be >= 0 (or None for no budget)")
        if gamma < 0:
            raise ValueError("gamma must be >= 0")
        if reward not in ("terminal", "dense"):
            raise ValueError(f"reward must be 'terminal' or 'dense', got {reward!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self._protocol = parse_protocol(protocol)
        self.arrays_model, self.arrays_dataset = arrays.model, arrays.dataset
        self.synthetic = bool(arrays.synthetic)
        self.protocol = protocol
        self.max_branches = m = int(max_branches)
        self.kappa = int(kappa)
        self.budget = None if budget is None else int(budget)
        self.gamma = float(gamma)
        self.reward_mode = reward
        self.render_mode = render_mode
        nq = arrays.n_questions
        self.questions = list(range(nq)) if questions is None else [int(q) for q in questions]
        if not self.questions or not all(0 <= q < nq for q in self.questions):
            raise ValueError(f"questions must be positions in 0..{nq - 1}")
        self._arrays = arrays
        self._grade = Grader(arrays)
        self._qids = np.asarray(arrays.question_ids).tolist()
        self._n_branches = np.asarray(arrays.n_branches).tolist()
        self._pools: dict[int, tuple[BranchPool, list[str | None], dict[str, int]]] = {}
        self._cost_scale = self.gamma / 1000.0
        self._dense = reward == "dense"
        self._engine = e = Engine(m, kappa=self.kappa, budget=_INF if budget is None else float(budget),
                                  full_read=full_read, fill=signal_fill)
        self.n_actions = e.n_actions
        self.CONTINUE0, self.PROBE0, self.PRUNE0 = 2, e.probe0, e.prune0
        self.FULL = e.full0 if full_read else None
        self.action_space = spaces.Discrete(e.n_actions)
        self.observation_space = self._make_observation_space(arrays, signal_fill)
        self._q = -1
        self._seed = None
        self._done = True
        # After the end only ANSWER is marked, so masked samplers (and the dummy action a vector
        # env sends before its autoreset) always have a choice; stepping a finished episode raises.
        self._closed_mask = np.zeros(e.n_actions, dtype=np.int8)
        self._closed_mask[ANSWER] = 1
        self._scalars = array("f", [0.0, 0.0, 1.0])
        self._scalars_np = np.frombuffer(self._scalars, dtype=np.float32)

    def _make_observation_space(self, arrays: ReplayArrays, fill: float) -> spaces.Dict:
        m = self.max_branches
        n_probes = np.asarray(arrays.n_probes, dtype=np.int64)
        tokens = np.asarray(arrays.tokens, dtype=np.int64)
        per_branch = np.maximum(tokens, np.asarray(arrays.interval, dtype=np.int64)[:, None] * n_probes)
        max_tokens = float((per_branch.sum(axis=1) + self.kappa * n_probes.sum(axis=1)).max())
        max_label = max(int(np.asarray(arrays.n_classes).max()) - 1, 0)

        def signal_box(column: np.ndarray | None) -> spaces.Box:
            lo, hi = -1.0, 1.0
            if column is not None and len(column) and not np.isnan(column).all():
                lo, hi = min(lo, float(np.nanmin(column))), max(hi, float(np.nanmax(column)))
            if not np.isnan(fill):
                lo, hi = min(lo, fill), max(hi, fill)
            return spaces.Box(lo, hi, shape=(m,), dtype=np.float32)

        return spaces.Dict({
            "depth": spaces.Box(0, int(n_probes.max(initial=0)) + 1, shape=(m,), dtype=np.int32),
            "status": spaces.MultiDiscrete(np.full(m, 4), dtype=np.int8),
            "probed": spaces.MultiBinary(m),
            "agree": spaces.Box(-1, 1, shape=(m,), dtype=np.int8),
            "label": spaces.Box(-1, max_label, shape=(m,), dtype=np.int32),
            "leader_label": spaces.Box(-1, max_label, shape=(1,), dtype=np.int32),
            "score": signal_box(arrays.score),
            "confidence": signal_box(arrays.confidence),
            "leader_share": spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
            "tokens": spaces.Box(0.0, max(max_tokens, 1.0), shape=(1,), dtype=np.float32),
            "budget_left": spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
            "opened": spaces.Box(0, m, shape=(1,), dtype=np.int32),
        })

    # -- Gymnasium API ---------------------------------------------------------------------

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; ``options`` may fix ``question`` and ``permutation_seed``."""
        super().reset(seed=seed)
        q = perm_seed = None
        if options:
            for key in options:
                if key != "question" and key != "permutation_seed":
                    raise ValueError(f"unknown reset options {sorted(set(options) - set(_OPTIONS))}; "
                                     "valid: question, permutation_seed")
            q = options.get("question")
            perm_seed = options.get("permutation_seed")
        if q is None:
            q = self.questions[int(self.np_random.integers(len(self.questions)))]
        else:
            q = int(q)
            if not 0 <= q < len(self._qids):
                raise ValueError(f"question must be a position in 0..{len(self._qids) - 1}, got {q}")
        n = self._n_branches[q]
        order = self._sample_order(n) if perm_seed is None else branch_order(self.protocol, n, int(perm_seed))
        pool, names, _ = self._pool(q)
        self._engine.load(pool, order, names)
        self._q = q
        self._seed = None if perm_seed is None else int(perm_seed)
        self._done = False
        return self._obs(), {"action_mask": self._engine.mask_np.copy(), "question": q,
                             "question_id": self._qids[q]}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        """Apply one atomic action (see the class docstring for the layout and costs)."""
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset()")
        e = self._engine
        a = int(action)
        if a < 0 or a >= e.n_actions or not e.mask[a]:
            return self._obs(), 0.0, False, False, {"action_mask": e.mask_np.copy(), "invalid_action": True}
        if a == ANSWER:
            c = e.leader
            return self._end(c, e.names[c] if c >= 0 else None)
        before = e.tokens
        if a == BRANCH:
            e.branch()
        elif a < e.probe0:
            e.cont(a - 2)
        elif a < e.prune0:
            e.probe(a - e.probe0)
        elif a == e.full0:
            e.full()
        else:
            e.prune(a - e.prune0)
        reward = (before - e.tokens) * self._cost_scale if self._dense else 0.0
        return self._obs(), reward, False, False, {"action_mask": e.mask_np.copy()}

    def action_masks(self) -> np.ndarray:
        """Legal actions now (int8, 1 = legal), the token budget respected."""
        if self._done:
            return self._closed_mask.copy()
        return self._engine.mask_np.copy()

    def answer_with(self, answer: str | None) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool,
                                                      dict[str, Any]]:
        """End the episode with a given answer: how a Question-API controller (driving the engine
        through ``EnvQuestion``) submits what ``solve`` returned. Same return as :meth:`step`."""
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset()")
        index = self._pool(self._q)[2]
        c = index.get(answer, -1) if isinstance(answer, str) else -1
        return self._end(c, answer)

    def render(self) -> str | None:
        """A text picture of the width–depth grid (``render_mode="ansi"``)."""
        if self.render_mode != "ansi":
            return None
        return self._grid()

    # -- helpers ---------------------------------------------------------------------------

    def continue_action(self, i: int) -> int:
        return 2 + i

    def probe_action(self, i: int) -> int:
        return self._engine.probe0 + i

    def prune_action(self, i: int) -> int:
        return self._engine.prune0 + i

    def describe_action(self, action: int) -> str:
        """``"CONTINUE(3)"`` etc., for logs."""
        a, m = int(action), self.max_branches
        if a == ANSWER:
            return "ANSWER"
        if a == BRANCH:
            return "BRANCH"
        if self.FULL is not None and a == self.FULL:
            return "FULL"
        kind, i = divmod(a - 2, m)
        if 0 <= kind < 3:
            return f"{('CONTINUE', 'PROBE', 'PRUNE')[kind]}({i})"
        raise ValueError(f"no action {a} (the space has {self.n_actions})")

    @property
    def engine(self) -> Engine:
        """The episode's replay state (no gold inside): what ``EnvQuestion`` drives."""
        return self._engine

    def _obs(self) -> dict[str, np.ndarray]:
        e = self._engine
        if e.agree_stale:
            e.refresh_agree()
        sc = self._scalars  # leader_share, tokens, budget_left: set in place, copied once
        sc[0] = e.counts[e.leader] / e.voters if e.voters else 0.0
        sc[1] = e.tokens
        b = self.budget
        if b is not None:
            sc[2] = (b - e.tokens) / b if b else 0.0
        s = self._scalars_np.copy()
        return {
            "depth": e.depth_np.copy(),
            "status": e.status_np.copy(),
            "probed": e.probed_np.copy(),
            "agree": e.agree_np.copy(),
            "label": e.label_np.copy(),
            "leader_label": np.array((e.label_of[e.leader] if e.leader >= 0 else -1,), np.int32),
            "score": e.score_np.copy(),
            "confidence": e.conf_np.copy(),
            "leader_share": s[0:1],
            "tokens": s[1:2],
            "budget_left": s[2:3],
            "opened": np.array((e.opened,), np.int32),
        }

    def _end(self, c: int, answer: str | None) -> tuple:
        e = self._engine
        self._done = True
        correct = self._grade(self._q, answer)
        reward = float(correct) if self._dense else float(correct) - e.tokens * self._cost_scale
        info = {
            "action_mask": self._closed_mask.copy(), "answer_class": int(c), "correct": bool(correct),
            "tokens": int(e.tokens), "seq_tokens": int(e.seq), "question": self._q,
            "question_id": self._qids[self._q], "branches_opened": e.opened,
        }
        return self._obs(), reward, True, False, info

    def _pool(self, q: int) -> tuple[BranchPool, list[str | None], dict[str, int]]:
        entry = self._pools.get(q)
        if entry is None:
            pool, names = _class_pool(self._arrays, q)
            index = {s: c for c, s in enumerate(names) if s is not None}
            entry = self._pools[q] = (pool, names, index)
        return entry

    def _sample_order(self, n: int) -> list[int]:
        name, k = self._protocol
        if name == "stored":
            return list(range(n))
        if name == "subset":
            assert k is not None
            if k > n:
                raise ValueError(f"protocol subset:{k} needs at least {k} branches, the question has {n}")
            return self.np_random.choice(n, size=k, replace=False).tolist()
        return self.np_random.permutation(n).tolist()

    def _grid(self) -> str:
        e = self._engine
        if self._q < 0:
            return "(no episode: call reset())\n"
        letters: dict[int, str] = {}

        def letter(c: int) -> str:
            if c not in letters:
                k = len(letters)
                letters[c] = chr(ord("A") + k) if k < 26 else chr(ord("a") + k - 26) if k < 52 else "?"
            return letters[c]

        budget = "none" if self.budget is None else f"{self.budget - e.tokens:,}"
        seed = "sampled" if self._seed is None else str(self._seed)
        lines = [
            f"question {self._q} (id {self._qids[self._q]}) · order {self.protocol}/{seed} · "
            f"Δ={e.interval} κ={e.kappa} · tokens {e.tokens:,} (seq {e.seq:,}) · budget left {budget} · "
            f"opened {e.opened}/{e.limit}" + (" · done" if self._done else ""),
        ]
        rows = []
        width = 0
        for k in range(e.opened):
            cells = []
            d, n = e.depth[k], e.sl_n[k]
            bits = e.sl_bits[k]
            for j in range(1, d + 1):
                if j == n + 1:
                    cells.append("[" + letter(e.sl_final[k]) + "]")
                elif bits >> j & 1:
                    cells.append(letter(e.sl_probes[k][j - 1]))
                else:
                    cells.append("·")
            width = max(width, d)
            status = STATUS_NAMES[e.status[k]]
            if e.status[k] == PRUNED and e.is_finished(k):
                status = "pruned*"
            mark = "✓" if e.vote[k] >= 0 and e.vote[k] == e.leader else " "
            rows.append(f"b{k:02d} {status:<8} {mark} " + " ".join(cells))
        if e.leader >= 0:
            lines.append(f"leader {letter(e.leader)}: {e.counts[e.leader]}/{e.voters} votes "
                         f"({e.share():.0%})")
        else:
            lines.append("leader: none yet")
        if width:
            lines.append(" " * 14 + "depth 1.." + str(width) + " (· read, not probed; [X] final answer)")
        lines.extend(rows)
        if letters:
            legend = "  ".join(f"{v}={e.names[c]}" for c, v in letters.items())
            lines.append("answers: " + legend)
        return "\n".join(lines) + "\n"


def _resolve(store: Any, model: str | None, dataset: str | None) -> ReplayArrays:
    """The slice's arrays from a store path/Store (model/dataset optional when unique) or arrays."""
    if isinstance(store, ReplayArrays):
        if (model and model != store.model) or (dataset and dataset != store.dataset):
            raise ValueError(f"arrays hold {store.model}/{store.dataset}, not {model}/{dataset}")
        return store
    st = store if isinstance(store, Store) else Store(Path(store))
    if model is None:
        if len(st.models) != 1:
            raise ValueError(f"give model=...; the store has {', '.join(st.models)}")
        model = st.models[0]
    if dataset is None:
        if len(st.datasets) != 1:
            raise ValueError(f"give dataset=...; the store has {', '.join(st.datasets)}")
        dataset = st.datasets[0]
    return load_replay(st, model, dataset)
