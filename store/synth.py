"""Synthetic replay stores: a small generative model of probed reasoning traces.

A synthetic store has the schema of an imported one (:mod:`ttsgym.store.schema`), says
``synthetic: true`` in its manifest and "synthetic" in its model and dataset names, and is
calibrated to the statistics of the shared AIME24 replay data (Qwen3 0.6B–8B, 30 questions ×
128 branches, Δ = 500). It serves demos, tests and scale runs (10,000 × 256 streams to disk
in chunks of questions and never sits in memory at once).

The model, top down (all draws vectorised NumPy from ``numpy.random.SeedSequence(seed)``: one
stream for the per-question draws, one per chunk of questions; same arguments, same store)::

    question q   p_q    chance a branch is correct: a logit-space kernel density over the real
                        model's 30 measured per-question accuracies, sampled stratified (so even
                        30 questions keep the real, bimodal profile: most questions are nearly
                        always or never solved, a few are split)
                 v_q    log-length effect shared by the question's branches, N(0, τ)
                 α_q    how wrong finals scatter: they are drawn from Pitman–Yor stick-breaking
                        weights (α_q log-normal, one discount) over 128 wrong values. A small α_q
                        makes a trap answer that most wrong branches share, the discount a tail
                        of one-off answers; real questions show both
                 guess  the question's "first guess", the answer early probes of many branches
                        share (~60 % of them in the real data): usually not the gold, often the
                        trap answer or an intermediate value; its strength is Beta-distributed
                 gold   an integer 0–999 (AIME style); wrong values are other integers; scratch
                        values (intermediate results) are integers ≥ 1000 or decimals
    branch b     correct ~ Bernoulli(p_q); final = gold, else a wrong value (or ERR, rarely)
                 T      log T = a + b·p_q + v_q + ε with (a, b) for correct and for wrong branches
                        (wrong ones run longer, above all on easy questions) and ε a two-piece
                        normal fitted to the real quantiles: long tails
                 cap    T ≥ 40,960 is truncated at the generation limit (+ a short forced answer)
                 L      the thinking ends ``tail`` tokens before T (log-normal: the answer
                        summary); probes sit every Δ up to the first at or after that end, so
                        L = ceil((T − tail)/Δ) and T < Δ·L for about a fifth of branches, as in
                        the real data (the last probe lands after the branch ended)
    probes       the last ``run`` probes equal the final answer (run log-normal, capped at L):
                 the branch has settled. Before that the answer is a sticky Markov chain: it
                 repeats the previous one with a chance rising from ~0.1 at step 2 to ~0.6
                 (early on, most repeats are fresh draws of the first guess); a fresh draw is
                 ERR, the branch's own final answer (foreshadowing), the gold
                 (wrong branches, rarely), the first guess (fading with the step), a wrong value
                 (shared with other branches' wrong finals) or a scratch value. ERR and
                 foreshadowing grow as the run approaches; the probe just before the run is
                 often ERR and never the final answer.
    signals      optional: confidence (higher when the probe equals the branch's final answer,
                 deeper, on correct branches; low for ERR) and a step score (branch quality +
                 noise). No real data carries them yet: plausible, not calibrated.

Why this shape: in the real data the last probe always equals the final answer; agreement with
the final decays smoothly with the distance from the end (a log-normal settling run fits it);
early probes of a question crowd on one shared answer and then spread out; before settling,
probes repeat the previous answer ~60 % of the time and ~40 % of them are other branches' wrong
finals; correct branches emit ERR far more often just before they settle; wrong branches almost
never pass through the gold; difficulty is bimodal. So what a controller can exploit in the
real data (converging probes, agreeing correct branches, scattering wrong ones, early consensus
that can mislead) is here too: the published baselines land within a few points and a few
percent of tokens of their real figures (see tests/test_synth.py and the presets' notes).

Each :class:`Preset` keeps its parameters and the real statistics it targets as data;
:func:`measure` computes those statistics for any store (real or synthetic) and
:func:`check` compares them within :data:`TOLERANCES`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.special import ndtri

from ttsgym.store.schema import BRANCHES, ERR, QUESTIONS, STEPS, slice_file_stem

GENERATOR = "ttsgym.store.synth"
# Branches per chunk: a chunk's probe arrays stay near a million rows whatever the store's size.
CHUNK_BRANCHES = 1 << 15


@dataclass(frozen=True)
class Lengths:
    """Branch length T in tokens and where its thinking (its probes) ends."""

    correct: tuple[float, float]  # log T of a correct branch: a + b·p_q (+ v_q + ε)
    wrong: tuple[float, float]  # the same for a wrong branch
    question_sd: float  # τ: sd of the per-question effect v_q
    branch_sd: tuple[float, float]  # ε: two-piece normal, sd below and above the median
    tail: tuple[float, float]  # log-normal (mu, sd) of the tokens after the thinking ends
    min_tokens: int  # shortest branch
    cap: int = 40960  # generation limit; T ≥ cap is truncated
    overflow: int = 540  # a truncated branch's forced answer: up to this many more tokens
    truncated_tail: tuple[int, int] = (1000, 3500)  # its last probe falls this far before T


@dataclass(frozen=True)
class Answers:
    """Which answers exist for a question and how wrong finals spread over them."""

    wrong_concentration: tuple[float, float]  # α_q: log-normal (median, log sd)
    wrong_discount: float  # Pitman–Yor discount: a heavier tail of one-off wrong answers
    final_err: float  # share of wrong finals that are ERR
    scratch_concentration: float  # GEM concentration of the scratch (intermediate) values
    non_integer: float  # share of scratch values written as decimals
    first_guess_kind: tuple[float, float]  # the first guess is the gold / the top wrong answer
    #   (else the top scratch value)
    attractors: int = 128  # truncation of the wrong-answer pool (< 1000)
    scratch: int = 256  # truncation of the scratch pool


@dataclass(frozen=True)
class Probes:
    """Probe answers: a settling run at the end, a sticky noisy chain before it.

    Pairs are (correct branch, wrong branch). "Near" values hold one probe before the run and
    fade to the "far" values over ``approach`` probes (exp(−(j − 1)/approach), j probes before
    the run), so the chain drifts towards the final answer, with ERR, as it nears settling.
    """

    settle_mu: tuple[float, float]  # the final run's length in probes: log-normal, capped at L
    settle_sd: tuple[float, float]
    stickiness: tuple[float, float]  # chance a probe repeats the previous one: at step 2, late
    err_near: tuple[float, float]  # a fresh draw is ERR
    err_far: tuple[float, float]
    foreshadow_near: tuple[float, float]  # ... is the branch's own final answer
    foreshadow_far: tuple[float, float]
    err_adjacent: tuple[float, float]  # the probe just before the run is ERR (forced)
    gold: float  # a fresh draw is the gold answer (wrong branches only)
    first_guess: tuple[float, float, float]  # otherwise the question's first guess: mean chance
    #   at step 1, decay in steps, share of it that never decays
    attractor: tuple[float, float]  # otherwise: an attractor with this chance, else scratch
    warmup: float = 5.0  # steps over which stickiness rises from its early to its late value
    approach: float = 8.0
    first_guess_spread: float = 3.0  # Beta concentration of the per-question first-guess chance


@dataclass(frozen=True)
class Signals:
    """Optional per-step signals (logit-linear; not calibrated: no real data carries them)."""

    confidence_base: float = -0.5
    confidence_agree: float = 1.8  # the probe equals the branch's final answer
    confidence_depth: float = 1.0  # times step / L
    confidence_correct: float = 0.8  # the branch is correct
    confidence_err: float = -2.5  # logit for an ERR probe
    confidence_noise: float = 0.8
    score_base: float = -0.3
    score_correct: float = 1.2  # the branch is correct
    score_depth: float = 0.5
    score_branch_sd: float = 0.6  # a branch's own quality, shared by its steps
    score_noise: float = 0.5


# How far a synthetic statistic may be from its real target. Absolute for rates, relative for
# the token and probe counts (names in RELATIVE). A calibration run averages a few seeds at the
# real sizes (30 × 128); what is left is model misfit plus the sampling noise of 30 questions:
# maj@k moves by 1/30 per flipped question (±1 question for maj@8, ±2 for maj@64, since a
# question near p = 0.5 flips with the draw); probe-level rates average over ~10^5 probes.
TOLERANCES: Mapping[str, float] = MappingProxyType({
    "branch_accuracy": 0.03,
    "maj_1": 0.03,
    "maj_8": 0.05,
    "maj_64": 0.07,
    "mean_branch_tokens": 0.07,
    "median_branch_tokens": 0.10,
    "probes_per_branch": 0.07,
    "err_rate": 0.02,
    "answer_change_rate": 0.03,
    "change_2_4": 0.06,
    "change_5_9": 0.06,
    "change_10_19": 0.06,
    "change_20_39": 0.06,
    "agree_1": 0.05,
    "agree_2": 0.06,
    "agree_4": 0.06,
    "agree_8": 0.06,
    "agree_16": 0.06,
    "late_last_probe": 0.05,
})
RELATIVE = frozenset({"mean_branch_tokens", "median_branch_tokens", "probes_per_branch"})


@dataclass(frozen=True)
class Preset:
    """A named parameter set of the model, with the real statistics it is calibrated to."""

    name: str
    model: str  # model name written to the store (says "synthetic")
    real_model: str  # the real slice it imitates
    accuracy: tuple[float, ...]  # measured per-question accuracy of the real model, sorted
    lengths: Lengths
    answers: Answers
    probes: Probes
    targets: Mapping[str, float]  # the real statistics (see measure()); checked by check()
    dataset: str = "synthetic-aime24"
    real_dataset: str = "aime24"
    questions: int = 30
    branches: int = 128
    interval: int = 500
    difficulty_jitter: float = 0.25  # kernel bandwidth on the logit of the accuracy
    tolerances: Mapping[str, float] = field(default_factory=lambda: TOLERANCES)
    signals: Signals = field(default_factory=Signals)


# ---------------------------------------------------------------------------------------------
# Presets: one per real model of the shared AIME24 data (30 questions × 128 branches, Δ = 500).
#
# How the numbers were obtained, on an import of shared/data/autotts-replay
# (`ttsgym import autotts … --out STORE`):
#   targets   measure(STORE)[(model, "aime24")], rounded; what check() compares against.
#   accuracy  the 30 per-question means of branches.correct, sorted.
#   lengths   (a, b) of correct and wrong branches: weighted least squares of the per-question
#             mean log T of each group (untruncated, ≥ 3 branches) on the question's accuracy;
#             question_sd: sd of the per-question residuals; branch_sd: 16th/84th percentiles of
#             log T around each group's median; tail: moments of T − Δ·L + Δ/2 (the answer
#             summary after the last probe); min_tokens: the shortest branch.
#   answers   wrong_concentration/discount: grid search matching the median and quartiles of
#             the top wrong answer's share and the median share of distinct wrong finals over
#             questions with ≥ 20 wrong branches; final_err: share of wrong finals that are ERR;
#             non_integer: share of non-integer probe answers before settling.
#   probes    first measured directly on the real probes (length of the final run at the end of
#             each branch; ERR and final-answer shares of the probes 0, 1–2 and ≥ 12 probes
#             before that run; repeat rate at steps 2–3 and ≥ 15; share of pre-run probes that
#             are other branches' wrong finals → attractor), then corrected by simulation: 7
#             rounds of generating 4 stores (seeds 101–104) and moving each parameter towards
#             the value that makes the same measurement on the synthetic probes match (the chain
#             is sticky, so a draw's effect shows up over several probes). The same rounds set
#             the length intercepts (mean T per group), tail (mean and T < Δ·L share), the
#             scratch concentration (distinct probe answers per question) and the first guess
#             (share of pre-run probes equal to the question's modal answer at steps 1–3, at
#             steps 1–3, 5–8 and 12–30; its spread over questions; how often it is the gold or
#             a wrong final).
# Residual misfit, for the record: synthetic wrong finals are a little less concentrated than
# real ones (median top-wrong share 0.17–0.31 vs 0.19–0.37); 3–4 % of 4B/8B branches hit the
# 40,960-token cap against 2 % in the real data; Parallel-Probe with its default settings does
# worse on synthetic 1.7B than on the real one (≈47 % vs 60 %: its early stop on a stable
# probe majority meets the gold less often on mid-difficulty questions); SC@64 on synthetic
# 1.7B varies between 64 and 74 % across seeds (real 72.5 %). On 4B and 8B every baseline is
# within ~3 points.
# ---------------------------------------------------------------------------------------------

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        name="qwen3-0.6b-aime24-like", model="synthetic-qwen3-0.6b", real_model="Qwen3-0.6B",
        accuracy=(
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0078, 0.0156, 0.0156, 0.0156, 0.0156, 0.0234,
            0.0469, 0.0547, 0.0703, 0.1562, 0.1719, 0.1797, 0.1875, 0.3203, 0.4062, 0.7188, 0.8594,
        ),
        lengths=Lengths(correct=(9.266, -0.245), wrong=(9.692, -0.8653), question_sd=0.34,
                        branch_sd=(0.421, 0.301), tail=(6.228, 0.5925), min_tokens=1249),
        answers=Answers(wrong_concentration=(6.6, 1.0), wrong_discount=0.6,
                        final_err=0.00468, scratch_concentration=117.0,
                        non_integer=0.399, first_guess_kind=(0.0194, 0.384)),
        probes=Probes(settle_mu=(1.545, 1.063), settle_sd=(1.297, 1.001),
                      stickiness=(0.09598, 0.5935), err_near=(0.2635, 0.05264), err_far=(0.1596, 0.03477),
                      foreshadow_near=(0.1346, 0.1206), foreshadow_far=(0.1002, 0.01204),
                      err_adjacent=(0.1554, 0.02455), gold=0.00319, attractor=(0.3803, 0.4847),
                      first_guess=(0.6161, 14.49, 0.3828), first_guess_spread=1.86),
        targets={
            "branch_accuracy": 0.1089, "maj_1": 0.1089, "maj_8": 0.1688, "maj_64": 0.2,
            "mean_branch_tokens": 15749.8, "median_branch_tokens": 14745.0,
            "probes_per_branch": 30.7112, "err_rate": 0.0397, "answer_change_rate": 0.3469,
            "change_2_4": 0.4707, "change_5_9": 0.3526, "change_10_19": 0.3291, "change_20_39": 0.3194,
            "agree_1": 0.782, "agree_2": 0.5828, "agree_4": 0.3988, "agree_8": 0.2451,
            "agree_16": 0.1461, "late_last_probe": 0.1625,
        },
    ),
    Preset(
        name="qwen3-1.7b-aime24-like", model="synthetic-qwen3-1.7b", real_model="Qwen3-1.7B",
        accuracy=(
            0, 0, 0, 0, 0, 0, 0.0391, 0.2109, 0.2344, 0.25, 0.2656, 0.3125, 0.3125, 0.3359, 0.3516,
            0.4609, 0.4609, 0.4922, 0.5703, 0.6094, 0.6875, 0.7266, 0.8281, 0.8594, 0.875, 0.9297,
            0.9766, 0.9922, 1, 1,
        ),
        lengths=Lengths(correct=(10.04, -1.266), wrong=(9.891, -0.0778), question_sd=0.335,
                        branch_sd=(0.272, 0.258), tail=(6.376, 0.7018), min_tokens=1225),
        answers=Answers(wrong_concentration=(1.41, 0.5), wrong_discount=0.7,
                        final_err=0.0053, scratch_concentration=39.7,
                        non_integer=0.0661, first_guess_kind=(0.000324, 0.708)),
        probes=Probes(settle_mu=(1.744, 1.549), settle_sd=(0.799, 1.035),
                      stickiness=(0.08457, 0.5903), err_near=(0.1511, 0.04467), err_far=(0.08399, 0.05528),
                      foreshadow_near=(0.08179, 0.06948), foreshadow_far=(0.03172, 0.002601),
                      err_adjacent=(0.1744, 0.03795), gold=0.0333, attractor=(0.4178, 0.5272),
                      first_guess=(0.7888, 3.805, 0.2619), first_guess_spread=0.622),
        targets={
            "branch_accuracy": 0.4594, "maj_1": 0.4594, "maj_8": 0.6104, "maj_64": 0.7167,
            "mean_branch_tokens": 16033.2, "median_branch_tokens": 15217.0,
            "probes_per_branch": 30.9682, "err_rate": 0.0506, "answer_change_rate": 0.3471,
            "change_2_4": 0.4987, "change_5_9": 0.4041, "change_10_19": 0.3313, "change_20_39": 0.306,
            "agree_1": 0.9156, "agree_2": 0.7893, "agree_4": 0.599, "agree_8": 0.3459,
            "agree_16": 0.1903, "late_last_probe": 0.1477,
        },
    ),
    Preset(
        name="qwen3-4b-aime24-like", model="synthetic-qwen3-4b", real_model="Qwen3-4B",
        accuracy=(
            0, 0, 0, 0.0156, 0.0469, 0.1016, 0.5234, 0.6484, 0.6797, 0.7031, 0.8203, 0.8281, 0.8438,
            0.8594, 0.8828, 0.8906, 0.8984, 0.9219, 0.9531, 0.9609, 0.9922, 0.9922, 0.9922, 1, 1, 1, 1,
            1, 1, 1,
        ),
        lengths=Lengths(correct=(11.13, -2.259), wrong=(9.957, 0.06117), question_sd=0.359,
                        branch_sd=(0.222, 0.242), tail=(6.126, 0.6548), min_tokens=2076),
        answers=Answers(wrong_concentration=(2.19, 2.0), wrong_discount=0.5,
                        final_err=0.013, scratch_concentration=6.29,
                        non_integer=0.0263, first_guess_kind=(0.000854, 0.572)),
        probes=Probes(settle_mu=(1.618, 1.802), settle_sd=(0.7542, 1.059),
                      stickiness=(0.09372, 0.617), err_near=(0.302, 0.1106), err_far=(0.09821, 0.03928),
                      foreshadow_near=(0.2275, 0.2371), foreshadow_far=(0.001231, 0.008614),
                      err_adjacent=(0.5406, 0.2307), gold=0.0048, attractor=(0.4013, 0.4608),
                      first_guess=(0.7831, 5.5, 0.03781), first_guess_spread=0.739),
        targets={
            "branch_accuracy": 0.7185, "maj_1": 0.7185, "maj_8": 0.7937, "maj_64": 0.8,
            "mean_branch_tokens": 13851.3, "median_branch_tokens": 10794.5,
            "probes_per_branch": 26.9734, "err_rate": 0.1025, "answer_change_rate": 0.3414,
            "change_2_4": 0.5082, "change_5_9": 0.3845, "change_10_19": 0.3327, "change_20_39": 0.2813,
            "agree_1": 0.9388, "agree_2": 0.851, "agree_4": 0.6361, "agree_8": 0.37, "agree_16": 0.1717,
            "late_last_probe": 0.2034,
        },
    ),
    Preset(
        name="qwen3-8b-aime24-like", model="synthetic-qwen3-8b", real_model="Qwen3-8B",
        accuracy=(
            0, 0, 0.0234, 0.0391, 0.1172, 0.125, 0.7969, 0.8047, 0.8203, 0.8359, 0.8359, 0.8516, 0.8516,
            0.8906, 0.9297, 0.9375, 0.9531, 0.9531, 0.9688, 0.9922, 0.9922, 0.9922, 1, 1, 1, 1, 1, 1, 1,
            1,
        ),
        lengths=Lengths(correct=(11.34, -2.331), wrong=(10.01, 0.0444), question_sd=0.383,
                        branch_sd=(0.214, 0.248), tail=(6.124, 0.7209), min_tokens=1977),
        answers=Answers(wrong_concentration=(0.582, 1.5), wrong_discount=0.6,
                        final_err=0.0525, scratch_concentration=9.18,
                        non_integer=0.0164, first_guess_kind=(2.33e-05, 0.686)),
        probes=Probes(settle_mu=(1.764, 1.749), settle_sd=(0.7699, 1.152),
                      stickiness=(0.112, 0.5684), err_near=(0.1705, 0.03695), err_far=(0.02087, 0.01111),
                      foreshadow_near=(0.2024, 0.1275), foreshadow_far=(0.009049, 0.002163),
                      err_adjacent=(0.4142, 0.1619), gold=0.00616, attractor=(0.3183, 0.5648),
                      first_guess=(0.7076, 4.516, 0.3716), first_guess_spread=0.435),
        targets={
            "branch_accuracy": 0.757, "maj_1": 0.757, "maj_8": 0.8125, "maj_64": 0.8,
            "mean_branch_tokens": 14228.8, "median_branch_tokens": 11269.5,
            "probes_per_branch": 27.6831, "err_rate": 0.0481, "answer_change_rate": 0.3314,
            "change_2_4": 0.4902, "change_5_9": 0.3706, "change_10_19": 0.3118, "change_20_39": 0.2822,
            "agree_1": 0.9385, "agree_2": 0.8628, "agree_4": 0.6632, "agree_8": 0.4235,
            "agree_16": 0.2022, "late_last_probe": 0.2096,
        },
    ),
)}

DEFAULT_PRESET = "qwen3-4b-aime24-like"


def get_preset(name: str) -> Preset:
    """The preset called ``name``; the error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown synthetic preset {name!r}; presets: {', '.join(PRESETS)}") from None


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Questions:
    """Per-question draws for the whole store (a few numbers per question)."""

    p: np.ndarray  # chance a branch is correct
    length: np.ndarray  # log-length effect v_q
    alpha: np.ndarray  # wrong-answer concentration α_q
    gold: np.ndarray  # int gold answer
    guess: np.ndarray  # chance scale of the first guess
    guess_kind: np.ndarray  # 0 gold, 1 top wrong answer, 2 top scratch value

    def rows(self, lo: int, hi: int) -> _Questions:
        return _Questions(*(getattr(self, f.name)[lo:hi] for f in fields(self)))


def generate(out: str | Path, *, preset: str | Preset = DEFAULT_PRESET, questions: int | None = None,
             branches: int | None = None, seed: int = 0, signals: bool = False,
             overwrite: bool = False, progress: bool = False) -> Path:
    """Write a synthetic store to ``out`` (atomically) and return its path.

    Sizes default to the preset's (the real data's); the same arguments give the same store.
    """
    from tqdm import tqdm

    from ttsgym.store.writer import StoreWriter

    p = preset if isinstance(preset, Preset) else get_preset(preset)
    n_q = p.questions if questions is None else int(questions)
    n_b = p.branches if branches is None else int(branches)
    if n_q < 1 or n_b < 1:
        raise ValueError(f"need at least one question and one branch, got {n_q} × {n_b}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    source = {"kind": "synthetic", "preset": p.name, "seed": int(seed), "generator": GENERATOR,
              "calibrated_to": f"{p.real_model}/{p.real_dataset}", "questions": n_q,
              "branches": n_b, "signals": bool(signals)}
    collection = {"synthetic": True, "model": p.model, "interval_tokens": p.interval,
                  "answer_checker": "exact", "max_tokens": p.lengths.cap,
                  "note": "synthetic: generated by a model of reasoning traces, not sampled from an LLM"}
    root = np.random.SeedSequence(seed)
    q_seq, chunk_seq = root.spawn(2)
    qs = _draw_questions(p, n_q, np.random.default_rng(q_seq))
    stem = slice_file_stem(p.model, p.dataset)
    with StoreWriter(out, overwrite=overwrite, source=source, answer_checker="exact",
                     synthetic=True, collection=collection) as writer:
        d = writer.directory
        with pq.ParquetWriter(d / "branches" / f"{stem}.parquet", BRANCHES) as bw, \
                pq.ParquetWriter(d / "steps" / f"{stem}.parquet", STEPS) as sw, \
                tqdm(total=n_q, desc="synth", unit="q", disable=not progress) as bar:
            for b_table, s_table in _chunks(p, qs, n_b, chunk_seq, signals):
                bw.write_table(b_table)
                sw.write_table(s_table, row_group_size=1 << 20)
                bar.update(b_table.num_rows // n_b)
        writer.add_questions(p.dataset, _questions_table(p, qs, seed))
        writer.add_slice(p.model, p.dataset, None, None, interval_tokens=p.interval,
                         meta={"synthetic": True, "preset": p.name, "seed": int(seed)})
    return Path(out)


def _logit(x: np.ndarray) -> np.ndarray:
    return np.log(x) - np.log1p(-x)


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_questions(p: Preset, n: int, rng: np.random.Generator) -> _Questions:
    """Difficulty from the accuracy kernel density, lengths and α_q from their log-normals.

    All three are sampled stratified (one draw per n-quantile, then shuffled), so a store of
    30 questions already has the real spread instead of a noisy sample of it."""
    atoms = np.sort(_logit(np.clip(np.asarray(p.accuracy, dtype=float), 1e-3, 1 - 1e-3)))
    which = np.minimum((_strata(n, rng) * len(atoms)).astype(np.int64), len(atoms) - 1)
    prob = rng.permutation(_expit(atoms[which] + p.difficulty_jitter * rng.standard_normal(n)))
    length = p.lengths.question_sd * rng.permutation(ndtri(_strata(n, rng)))
    median, log_sd = p.answers.wrong_concentration
    alpha = median * np.exp(log_sd * rng.permutation(ndtri(_strata(n, rng))))
    gold = rng.integers(0, 1000, n)
    mean, spread = float(np.clip(p.probes.first_guess[0], 1e-6, 1 - 1e-6)), p.probes.first_guess_spread
    guess = rng.beta(mean * spread, (1 - mean) * spread, n)
    g_gold, g_wrong = p.answers.first_guess_kind
    guess_kind = np.searchsorted([g_gold, g_gold + g_wrong], rng.random(n), side="right")
    return _Questions(prob, length, alpha, gold, guess, guess_kind)


def _strata(n: int, rng: np.random.Generator) -> np.ndarray:
    """One uniform draw inside each of n equal strata of (0, 1), in order."""
    return (np.arange(n) + rng.uniform(0.01, 0.99, n)) / n


def _questions_table(p: Preset, qs: _Questions, seed: int) -> pa.Table:
    n = len(qs.p)
    gold = pa.array(qs.gold).cast(pa.string())
    text = pc.binary_join_element_wise(
        "[synthetic] question ", pa.array(np.arange(n)).cast(pa.string()),
        f" of preset {p.name}, seed {seed}: no text, generated by {GENERATOR}", "")
    return pa.table({
        "dataset": pa.repeat(pa.scalar(p.dataset), n),
        "question_id": pa.array(np.arange(n, dtype=np.int32)),
        "question": text, "gold_answer": gold, "gold_canonical": gold,
    }, schema=QUESTIONS)


def _chunks(p: Preset, qs: _Questions, n_b: int, seq: np.random.SeedSequence,
            signals: bool) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(branches, steps) tables for consecutive blocks of questions, one seeded stream each."""
    n_q = len(qs.p)
    per = max(1, CHUNK_BRANCHES // n_b)
    starts = range(0, n_q, per)
    for lo, child in zip(starts, seq.spawn(len(starts)), strict=True):
        hi = min(n_q, lo + per)
        yield _chunk(p, qs.rows(lo, hi), lo, n_b, np.random.default_rng(child), signals)


def _gem(rng: np.random.Generator, alpha: np.ndarray, k: int, discount: float = 0.0) -> np.ndarray:
    """Cumulative Pitman–Yor stick-breaking weights per row, truncated at k (last column 1)."""
    v = rng.beta(1.0 - discount, alpha[:, None] + discount * np.arange(1, k + 1), size=(len(alpha), k))
    left = np.cumprod(1.0 - v, axis=1)
    w = v * np.concatenate([np.ones((len(alpha), 1)), left[:, :-1]], axis=1)
    cum = np.cumsum(w, axis=1) / w.sum(axis=1, keepdims=True)
    cum[:, -1] = 1.0
    return cum


def _pick(rng: np.random.Generator, cum: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One categorical draw per entry of ``rows`` from that row of cumulative weights ``cum``."""
    n, k = cum.shape
    flat = (cum + np.arange(n)[:, None]).ravel()  # rows laid end to end, strictly increasing
    j = np.searchsorted(flat, rows + rng.random(len(rows)), side="right") - rows * k
    return np.minimum(j, k - 1)


@dataclass(frozen=True)
class _Vocab:
    """A chunk's answer strings: question i's class c is ``strings[i * size + c]``."""

    strings: pa.Array
    size: int
    attractor0: int  # first attractor class (class 0 is the gold)
    scratch0: int
    err: int


def _vocab(p: Preset, qs: _Questions, rng: np.random.Generator) -> _Vocab:
    """Gold, distinct wrong integers (0–999), scratch integers ≥ 1000 or decimals, ERR."""
    a = p.answers
    n = len(qs.gold)
    offsets = rng.permuted(np.tile(np.arange(1, 1000), (n, 1)), axis=1)[:, : a.attractors]
    wrong = (qs.gold[:, None] + offsets) % 1000
    scratch = 1000 + 100 * np.arange(a.scratch) + rng.integers(0, 100, (n, a.scratch))
    scratch = rng.permuted(scratch, axis=1)
    decimal = rng.random((n, a.scratch)) < a.non_integer
    values = np.concatenate([qs.gold[:, None], wrong, scratch, np.zeros((n, 1), np.int64)], axis=1)
    kind = np.concatenate([np.zeros((n, 1 + a.attractors), np.int8), decimal.astype(np.int8),
                           np.full((n, 1), 2, np.int8)], axis=1).ravel()
    flat = values.ravel()
    as_int = pa.array(flat).cast(pa.string())
    as_dec = pc.binary_join_element_wise(pa.array(flat // 10).cast(pa.string()),
                                         pa.array(flat % 10).cast(pa.string()), ".")
    strings = pc.if_else(pa.array(kind == 1), as_dec, as_int)
    strings = pc.if_else(pa.array(kind == 2), pa.scalar(ERR), strings)
    size = values.shape[1]
    return _Vocab(strings, size, 1, 1 + a.attractors, size - 1)


def _lengths(p: Preset, qs: _Questions, correct: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, L, truncated) per branch."""
    ln = p.lengths
    q_p = qs.p[:, None]
    mean = np.where(correct, ln.correct[0] + ln.correct[1] * q_p, ln.wrong[0] + ln.wrong[1] * q_p)
    z = rng.standard_normal(correct.shape)
    eps = np.where(z < 0, ln.branch_sd[0] * z, ln.branch_sd[1] * z)
    tokens = np.maximum(np.rint(np.exp(mean + qs.length[:, None] + eps)), ln.min_tokens).astype(np.int64)
    truncated = tokens >= ln.cap
    overflow = rng.integers(0, ln.overflow + 1, correct.shape)
    tokens = np.where(truncated, ln.cap + overflow, tokens)
    tail = np.exp(ln.tail[0] + ln.tail[1] * rng.standard_normal(correct.shape))
    tail = np.where(truncated, rng.uniform(*ln.truncated_tail, correct.shape), tail)
    n_probes = np.maximum(1, np.ceil((tokens - tail) / p.interval)).astype(np.int64)
    return tokens, n_probes, truncated


def _finals(p: Preset, correct: np.ndarray, attr_cum: np.ndarray, voc: _Vocab,
            rng: np.random.Generator) -> np.ndarray:
    """Final class per branch: gold (0) when correct, else an attractor or, rarely, ERR."""
    final = np.zeros(correct.shape, np.int64)
    rows = np.nonzero(~correct)[0]
    wrong = voc.attractor0 + _pick(rng, attr_cum, rows)
    wrong[rng.random(len(rows)) < p.answers.final_err] = voc.err
    final[~correct] = wrong
    return final


def _first_guess(kind: np.ndarray, attr_cum: np.ndarray, scr_cum: np.ndarray, voc: _Vocab) -> np.ndarray:
    """The class of each question's first guess: gold, its likeliest wrong answer or scratch value."""
    top_attr = voc.attractor0 + np.argmax(np.diff(attr_cum, axis=1, prepend=0.0), axis=1)
    top_scr = voc.scratch0 + np.argmax(np.diff(scr_cum, axis=1, prepend=0.0), axis=1)
    return np.select([kind == 0, kind == 1], [np.zeros_like(top_attr), top_attr], top_scr)


def _pre_settle(p: Preset, pre: np.ndarray, final: np.ndarray, correct: np.ndarray, n_b: int,
                guess: tuple[np.ndarray, np.ndarray], attr_cum: np.ndarray, scr_cum: np.ndarray,
                voc: _Vocab, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sticky chain before each branch settles: (branch, position, class) per probe."""
    pr = p.probes
    start = np.cumsum(pre) - pre
    branch = np.repeat(np.arange(len(pre)), pre)
    pos = np.arange(len(branch)) - start[branch]  # step − 1
    early, late = pr.stickiness
    stick = late - (late - early) * np.exp(-np.maximum(pos - 1, 0) / pr.warmup)
    fresh = (rng.random(len(branch)) >= stick) | (pos == 0)
    idx = np.flatnonzero(fresh)
    fb = branch[idx]
    ok = correct[fb]
    near = np.exp(-np.maximum(pre[fb] - 2 - pos[idx], 0) / pr.approach)  # 1 next to the run

    def chance(near_pair: tuple[float, float], far_pair: tuple[float, float]) -> np.ndarray:
        far = np.where(ok, far_pair[0], far_pair[1])
        return far + (np.where(ok, near_pair[0], near_pair[1]) - far) * near

    u = rng.random(len(idx))
    c_err = chance(pr.err_near, pr.err_far)
    c_fin = c_err + chance(pr.foreshadow_near, pr.foreshadow_far)
    c_gold = c_fin + np.where(ok, 0.0, pr.gold)
    rest = u >= c_gold
    g_scale, g_cls = guess
    _, decay, floor = pr.first_guess
    fq = fb // n_b
    g_chance = g_scale[fq] * (floor + (1 - floor) * np.exp(-pos[idx] / decay))
    is_guess = rest & (rng.random(len(idx)) < g_chance)
    rest &= ~is_guess
    attr = rest & (rng.random(len(idx)) < np.where(ok, pr.attractor[0], pr.attractor[1]))
    scr = rest & ~attr
    drawn = np.zeros(len(idx), np.int64)  # gold where nothing else applies
    drawn[u < c_err] = voc.err
    is_fin = (u >= c_err) & (u < c_fin)
    drawn[is_fin] = final[fb[is_fin]]
    drawn[is_guess] = g_cls[fq[is_guess]]
    drawn[attr] = voc.attractor0 + _pick(rng, attr_cum, fq[attr])
    drawn[scr] = voc.scratch0 + _pick(rng, scr_cum, fq[scr])
    cls = np.zeros(len(branch), np.int64)
    cls[idx] = drawn
    cls = cls[np.maximum.accumulate(np.where(fresh, np.arange(len(branch)), 0))]  # forward fill
    # The probe just before the run: often ERR, never the final answer (else the run is longer).
    last = (start + pre - 1)[pre > 0]
    last_ok = correct[branch[last]]
    to_err = rng.random(len(last)) < np.where(last_ok, pr.err_adjacent[0], pr.err_adjacent[1])
    cls[last[to_err]] = voc.err
    clash = last[cls[last] == final[branch[last]]]
    cls[clash] = voc.scratch0 + _pick(rng, scr_cum, branch[clash] // n_b)
    return branch, pos, cls


def _chunk(p: Preset, qs: _Questions, q0: int, n_b: int, rng: np.random.Generator,
           signals: bool) -> tuple[pa.Table, pa.Table]:
    """Branches and steps of questions ``q0 …`` (all draws of one chunk, vectorised)."""
    nq = len(qs.p)
    correct = rng.random((nq, n_b)) < qs.p[:, None]
    tokens, n_probes, truncated = _lengths(p, qs, correct, rng)
    voc = _vocab(p, qs, rng)
    attr_cum = _gem(rng, qs.alpha, p.answers.attractors, p.answers.wrong_discount)
    scr_cum = _gem(rng, np.full(nq, p.answers.scratch_concentration), p.answers.scratch)
    final = _finals(p, correct, attr_cum, voc, rng).ravel()
    correct, tokens, n_probes = correct.ravel(), tokens.ravel(), n_probes.ravel()
    pr = p.probes
    s_mu = np.where(correct, pr.settle_mu[0], pr.settle_mu[1])
    s_sd = np.where(correct, pr.settle_sd[0], pr.settle_sd[1])
    run = np.clip(np.rint(np.exp(s_mu + s_sd * rng.standard_normal(len(final)))), 1, n_probes)
    pre = (n_probes - run.astype(np.int64))
    guess = (qs.guess, _first_guess(qs.guess_kind, attr_cum, scr_cum, voc))
    pb, ppos, pcls = _pre_settle(p, pre, final, correct, n_b, guess, attr_cum, scr_cum, voc, rng)

    probe_start = np.cumsum(n_probes) - n_probes
    owner = np.repeat(np.arange(len(final)), n_probes)
    probe_cls = final[owner]
    probe_cls[probe_start[pb] + ppos] = pcls
    step = np.arange(len(owner)) - probe_start[owner] + 1
    q_local = owner // n_b

    def text(classes: np.ndarray, q: np.ndarray) -> pa.Array:
        return pc.take(voc.strings, pa.array(q * voc.size + classes))

    b_q = np.arange(len(final)) // n_b
    final_text = text(final, b_q)
    n_br = len(final)
    branches = pa.table({
        "model": pa.repeat(pa.scalar(p.model), n_br), "dataset": pa.repeat(pa.scalar(p.dataset), n_br),
        "question_id": pa.array((q0 + b_q).astype(np.int32)),
        "branch_id": pa.array((np.arange(n_br) % n_b).astype(np.int32)),
        "interval_tokens": pa.array(np.full(n_br, p.interval, np.int32)),
        "n_tokens": pa.array(tokens), "n_probes": pa.array(n_probes.astype(np.int32)),
        "final_answer": final_text, "final_canonical": final_text, "correct": pa.array(correct),
        "finish_reason": pc.if_else(pa.array(truncated.ravel()), "length", "stop"),
    }, schema=BRANCHES)
    n_st = len(owner)
    answer = text(probe_cls, q_local)
    score, confidence = (_signals(p.signals, probe_cls, final[owner], correct[owner],
                                  step / n_probes[owner], voc.err, n_br, owner, rng)
                         if signals else (pa.nulls(n_st, pa.float32()), pa.nulls(n_st, pa.float32())))
    steps = pa.table({
        "model": pa.repeat(pa.scalar(p.model), n_st), "dataset": pa.repeat(pa.scalar(p.dataset), n_st),
        "question_id": pa.array((q0 + q_local).astype(np.int32)),
        "branch_id": pa.array((owner % n_b).astype(np.int32)),
        "step": pa.array(step.astype(np.int32)), "tokens": pa.array(step * p.interval),
        "answer": answer, "canonical": answer, "correct": pa.array(probe_cls == 0),
        "score": score, "confidence": confidence,
    }, schema=STEPS)
    return branches, steps


def _signals(s: Signals, cls: np.ndarray, final: np.ndarray, correct: np.ndarray, depth: np.ndarray,
             err: int, n_branches: int, owner: np.ndarray,
             rng: np.random.Generator) -> tuple[pa.Array, pa.Array]:
    """(score, confidence) per step, correlated with agreement, depth and branch correctness."""
    z = rng.standard_normal(len(cls))
    conf = (s.confidence_base + s.confidence_agree * (cls == final) + s.confidence_depth * depth
            + s.confidence_correct * correct + s.confidence_noise * z)
    conf = np.where(cls == err, s.confidence_err + s.confidence_noise * z, conf)
    quality = s.score_branch_sd * rng.standard_normal(n_branches)
    score = (s.score_base + s.score_correct * correct + s.score_depth * depth + quality[owner]
             + s.score_noise * rng.standard_normal(len(cls)))
    return pa.array(_expit(score).astype(np.float32)), pa.array(_expit(conf).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Calibration statistics
# ---------------------------------------------------------------------------------------------

CHANGE_BINS = ((2, 4), (5, 9), (10, 19), (20, 39))
AGREE_DEPTHS = (1, 2, 4, 8, 16)

_DEPTH_SQL = """
WITH s AS (
    SELECT s.model, s.dataset, s.step, b.n_probes - s.step AS before_end,
           (s.canonical = b.final_canonical)::DOUBLE AS agrees,
           (s.canonical <> lag(s.canonical) OVER (PARTITION BY s.model, s.dataset, s.question_id,
                                                   s.branch_id ORDER BY s.step))::DOUBLE AS changed
    FROM steps s JOIN branches b USING (model, dataset, question_id, branch_id)
),
depth AS (SELECT model, dataset, {columns} FROM s GROUP BY model, dataset),
br AS (
    SELECT model, dataset, median(n_tokens)::DOUBLE AS median_branch_tokens,
           avg((n_tokens < interval_tokens * n_probes)::DOUBLE) AS late_last_probe
    FROM branches GROUP BY model, dataset
)
SELECT * FROM depth JOIN br USING (model, dataset)
"""


def measure(store: Any) -> dict[tuple[str, str], dict[str, float]]:
    """The calibration statistics of every (model, dataset) slice of a store.

    :func:`ttsgym.store.analysis.slice_stats` (accuracy, maj@1/8/64, mean tokens, probes per
    branch, ERR and answer-change rates) plus how probes converge with depth: ``change_a_b``,
    the answer-change rate at steps a..b; ``agree_d``, the share of probes d steps before a
    branch's last probe that equal its final answer; ``late_last_probe``, the share of branches
    with T < Δ·L; and the median branch length.
    """
    from ttsgym.store.analysis import slice_stats
    from ttsgym.store.store import Store

    store = store if isinstance(store, Store) else Store(store)
    columns = [f"avg(changed) FILTER (WHERE step BETWEEN {a} AND {b}) AS change_{a}_{b}"
               for a, b in CHANGE_BINS]
    columns += [f"avg(agrees) FILTER (WHERE before_end = {d}) AS agree_{d}" for d in AGREE_DEPTHS]
    depth = store.connect().sql(_DEPTH_SQL.format(columns=", ".join(columns))).fetchall()
    names = ["model", "dataset", *(c.rsplit(" AS ", 1)[1] for c in columns),
             "median_branch_tokens", "late_last_probe"]
    out: dict[tuple[str, str], dict[str, float]] = {}
    for row in slice_stats(store).to_pylist():
        out[(row["model"], row["dataset"])] = {k: v for k, v in row.items() if k not in ("model", "dataset")}
    for row in depth:
        rec = dict(zip(names, row, strict=True))
        out[(rec.pop("model"), rec.pop("dataset"))].update(rec)
    return out


def check(stats: Mapping[str, float], preset: Preset) -> list[str]:
    """Statistics outside the preset's tolerances of its targets, one message each (empty: ok)."""
    failures = []
    for name, tol in preset.tolerances.items():
        want, got = preset.targets.get(name), stats.get(name)
        if want is None:
            continue
        if got is None:
            failures.append(f"{name}: missing")
            continue
        err = abs(got - want) / abs(want) if name in RELATIVE else abs(got - want)
        if err > tol:
            kind = "relative" if name in RELATIVE else "absolute"
            failures.append(f"{name}: {got:.4g} vs real {want:.4g} ({kind} error {err:.3g} > {tol})")
    return failures
