"""The project's own β-family: the revision-aware short race (``short_race``).

Three regularities of recorded reasoning branches, each cheap to observe through the probes,
drive it (figures: the AIME24 search split, Qwen3 0.6B–8B):

1. **Short branches are more often right.** Within a question, branches that finish early are
   more accurate than ones that keep going (Qwen3-1.7B: 62% of the shortest quarter are right,
   29% of the longest). Reading a few branches in lockstep makes the short ones finish first,
   so the first votes are the good ones, and a depth cap set by an early finisher prunes the
   overthinkers without reading them to the end.
2. **Probes confirm finished answers.** Early probe answers are guesses that many branches share
   (often the same wrong number), so a probe alone never creates a candidate. But a running
   branch whose last ``settle_run`` probes agree on an answer some branch has *finished* with
   is close to finishing with it too, and counts as a vote while it shows it. ERR probes carry
   no vote and do not break a run.
3. **Revisions count against an answer.** A branch that settled on answer A (``settle_run``
   equal probes in a row) and later settled on B has found something wrong with A. Branches
   that settle on the right answer leave it 1–7% of the time; branches that settle on a wrong
   answer that some branch finishes with leave it 53–73% of the time. So every such revision
   removes ``revision_weight`` votes from A.

The race: keep ``width`` branches running in lockstep, one interval per step, refilling from the
pool as branches finish or are pruned. Finished branches vote with their final answer. Once
``cap_rank`` branches have finished, the depth of that finisher becomes the cap: running
branches that reach it are pruned (the 2nd finisher rather than the 1st, so a single freakishly
short branch does not set it; a wider race puts the cap at a lower length quantile). After
each step the net tally (finished votes + confirming running branches − revisions) is tested
with the ASC Beta rule, ``1 - I_½(top1 + 1, top2 + 1) > theta``; the race also stops after
``max_votes`` finished votes or when ``max_branches`` branches are spent and read. Ties go to the
answer that finished first. Width therefore adapts to the state (agreement stops the race after
a handful of branches, disagreement keeps opening more, up to the whole budget), and so does
depth (the cap is learned per question from its own finishers, and the race ends as soon as the
evidence suffices).

Schedule (β in [0, 1], larger spends more; every value below is derived from β):

========================  ============================  ===================================
parameter                 β = 0 → 1                     role
========================  ============================  ===================================
``width``                 4 → 8 (4 + round(4β))         branches read in lockstep
``max_votes``             2 → 32 (round(2·16^β))        finished votes that end the race
``theta``                 0.80 → 0.99 (0.80 + 0.19β)    confidence that ends the race early
``max_branches``          64 (fixed)                    branch budget: the full pool budget
``cap_rank``              2 (fixed)                     finisher whose depth sets the cap
``settle_run``            2 (fixed)                     equal probes that settle an answer
``support_weight``        1.0 (fixed)                   vote of a confirming running branch
``revision_weight``       1.0 (fixed)                   votes removed per revision
========================  ============================  ===================================

``SPEND`` records, per parameter, the direction that spends more (+1 up, -1 down, 0 fixed);
the tests hold the schedule to it. The fixed values are the natural unit choices (one vote per
branch, two probes to settle); moving them shifts a point along the same frontier rather than
above it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

from scipy.special import betainc

from ttsgym.controllers.base import BetaController
from ttsgym.env.voting import majority

ERR = "ERR"
_INF = float("inf")


@lru_cache(maxsize=1 << 16)
def leader_confidence(top1: float, top2: float) -> float:
    """P(the leading answer is the true majority): ASC's ``1 - I_½(top1 + 1, top2 + 1)``."""
    return float(1.0 - betainc(top1 + 1.0, top2 + 1.0, 0.5))


class ShortRace(BetaController):
    """Revision-aware short race: lockstep branches, short finishers vote, probes confirm and revise.

    See the module docstring for why it works and what each scheduled parameter does.
    """

    name: ClassVar[str] = "short_race"
    summary: ClassVar[str] = (
        "lockstep race: short finishers vote, settled probes confirm, revisions count against, Beta stop"
    )
    defaults: ClassVar[dict[str, Any]] = {"beta": 0.5}
    SPEND: ClassVar[dict[str, int]] = {
        "width": +1, "max_votes": +1, "theta": +1, "max_branches": 0, "cap_rank": 0,
        "settle_run": 0, "support_weight": 0, "revision_weight": 0,
    }

    @classmethod
    def schedule(cls, beta: float) -> dict[str, Any]:
        """Every internal parameter from β; all move towards spending more as β grows."""
        b = min(max(float(beta), 0.0), 1.0)
        return {
            "width": 4 + round(4 * b),
            "max_votes": round(2 * 16**b),
            "theta": 0.80 + 0.19 * b,
            "max_branches": 64,
            "cap_rank": 2,
            "settle_run": 2,
            "support_weight": 1.0,
            "revision_weight": 1.0,
        }

    def solve(self, question: Any) -> str | None:
        """Run the race on one question and return the leading answer of the net tally."""
        return _Race(question, self.hp).run()


class _Race:
    """The state of one episode; kept off the controller so ``solve`` stays re-entrant."""

    def __init__(self, question: Any, hp: dict[str, Any]) -> None:
        self.q = question
        self.width = int(hp["width"])
        self.max_votes = int(hp["max_votes"])
        self.theta = float(hp["theta"])
        self.max_branches = min(int(hp["max_branches"]), question.pool_size)
        self.cap_rank = int(hp["cap_rank"])
        self.settle = int(hp["settle_run"])
        self.support_weight = float(hp["support_weight"])
        self.revision_weight = float(hp["revision_weight"])
        self.votes: dict[str, int] = {}  # finished answers (non-ERR)
        self.revised: dict[str, int] = {}  # branches that settled on the answer and then left it
        self.n_votes = 0
        self.finish_depths: list[int] = []
        self.depth: list[int] = []  # reads per branch, by opening index
        self.last: list[str | None] = []  # latest non-ERR answer
        self.run_len: list[int] = []  # length of the current run of that answer
        self.held: list[str | None] = []  # latest settled answer
        self.settled: list[set[str]] = []  # every answer the branch has settled on

    # -- evidence --------------------------------------------------------------------------

    def _hold(self, i: int, answer: str) -> None:
        """Branch ``i`` settles on ``answer``: whatever it held before counts as revised."""
        before = self.held[i]
        if before == answer:
            return
        if before is not None:
            self.revised[before] = self.revised.get(before, 0) + 1
        if answer in self.settled[i]:
            self.revised[answer] -= 1  # it came back: no longer revised by this branch
        else:
            self.settled[i].add(answer)
        self.held[i] = answer

    def _see(self, i: int, answer: str, finished: bool) -> bool:
        """Record one read of branch ``i``; True while the branch is still running."""
        self.depth[i] += 1
        if finished:
            self.finish_depths.append(self.depth[i])
            if answer != ERR:
                self.votes[answer] = self.votes.get(answer, 0) + 1
                self.n_votes += 1
                self._hold(i, answer)
            return False
        if answer != ERR:
            if answer == self.last[i]:
                self.run_len[i] += 1
            else:
                self.last[i] = answer
                self.run_len[i] = 1
            if self.run_len[i] >= self.settle:
                self._hold(i, answer)
        return True

    def _open(self) -> int | None:
        """Open the next branch (one interval); its index if it is still running."""
        answer, i, finished = self.q.open()
        while len(self.depth) <= i:  # indices are the order of opening
            self.depth.append(0)
            self.last.append(None)
            self.run_len.append(0)
            self.held.append(None)
            self.settled.append(set())
        return i if self._see(i, answer, finished) else None

    def _tally(self, running: list[int]) -> dict[str, float]:
        """Net votes per finished answer: finishes + confirming running branches − revisions."""
        tally: dict[str, float] = dict(self.votes)
        if self.revision_weight and self.revised:
            for answer in tally:
                n = self.revised.get(answer)
                if n:
                    tally[answer] -= self.revision_weight * n
        if self.support_weight:
            last, run_len, settle = self.last, self.run_len, self.settle
            for i in running:
                answer = last[i]
                if run_len[i] >= settle and answer in tally:
                    tally[answer] += self.support_weight
        return tally

    def _verdict(self, running: list[int]) -> str | None:
        """The answer to stop with, or None to keep racing."""
        tally = self._tally(running)
        best, top, second = None, -_INF, 0.0
        for answer, v in tally.items():  # ties: the first finished answer leads
            if v > top:
                if best is not None:
                    second = max(second, top)
                best, top = answer, v
            else:
                second = max(second, v)
        if self.n_votes >= self.max_votes:
            return best
        if top > 0 and leader_confidence(top, second) > self.theta:
            return best
        return None

    # -- the race --------------------------------------------------------------------------

    def run(self) -> str | None:
        """Step the race until the verdict, the vote budget or the branch budget ends it."""
        q = self.q
        running: list[int] = []
        cap = _INF
        see = self._see
        while True:
            still = []
            for i in running:
                answer, finished = q.extend(i)
                if see(i, answer, finished):
                    still.append(i)
            running = still
            while len(running) < self.width and q.n_opened < self.max_branches:
                i = self._open()
                if i is not None:
                    running.append(i)
            if self.votes:
                answer = self._verdict(running)
                if answer is not None:
                    return answer
            if not running:
                break
            if cap == _INF and len(self.finish_depths) >= self.cap_rank:
                cap = sorted(self.finish_depths)[self.cap_rank - 1]
            if cap < _INF:
                keep = []
                for i in running:
                    if self.depth[i] >= cap:
                        q.prune(i)
                    else:
                        keep.append(i)
                running = keep
        if self.votes:
            tally = self._tally([])
            return max(tally, key=tally.__getitem__)
        # Every finish was ERR (or nothing finished): fall back to the settled probe answers.
        return majority(self.held) or q.majority()


FAMILY: tuple[type[BetaController], ...] = (ShortRace,)
