"""A benchmark candidate about as expensive per episode as AutoTTS's discovered CMC (≈5× short_race):
a lockstep race that re-derives its whole vote state from the Question after every step.
It passes the static checks, so it runs through the sandbox like any candidate."""

import math

from ttsgym.controllers.base import BetaController
from ttsgym.env.voting import vote_counts


class CostlyRace(BetaController):
    name = "costly_race"

    @classmethod
    def schedule(cls, beta):
        return {"width": 3 + round(5 * beta), "max_branches": 8 + round(56 * beta),
                "theta": 0.6 + 0.35 * beta, "rounds": 1}

    def solve(self, question):
        hp = self.hp
        running = []
        cap = min(hp["max_branches"], question.pool_size)
        while True:
            while len(running) < hp["width"] and question.n_opened < cap:
                _, i, finished = question.open()
                if not finished:
                    running.append(i)
            still = []
            for i in running:
                _, finished = question.extend(i)
                if not finished:
                    still.append(i)
            running = still
            verdict = self.verdict(question, hp)
            if verdict is not None or not running:
                return verdict if verdict is not None else question.majority()

    def verdict(self, question, hp):
        best, share = None, 0.0
        for _ in range(hp["rounds"]):  # deliberately recomputed: the cost profile of a rich controller
            weights = {}
            for i in range(question.n_opened):
                seen = question.answers(i)[-3:]  # the last few answers, recency-weighted
                for k, a in enumerate(seen):
                    if a != "ERR":
                        weights[a] = weights.get(a, 0.0) + math.exp(-0.5 * (len(seen) - 1 - k))
            finals = vote_counts(question.latest(i) for i in range(question.n_opened)
                                 if question.is_finished(i))
            total = sum(weights.values()) or 1.0
            for a, w in weights.items():
                s = w / total + 0.05 * finals.get(a, 0)
                if s > share:
                    best, share = a, s
        done = sum(1 for i in range(question.n_opened) if question.is_finished(i))
        return best if done >= 2 and share > hp["theta"] else None
