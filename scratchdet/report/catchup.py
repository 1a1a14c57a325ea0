"""A PREDICTION of where scratch catches up: each arm's final bbox AP as a function of the schedule length, fitted
to the schedules the study measured, and the schedule at which scratch's predicted gap to each pre-trained arm comes
within the verdict's margin. Labelled a prediction wherever it appears; it never replaces a measured comparison
(report/verdict.py states those).

The model: AP(N) = a - b / N (N the schedule multiplier, a the AP the arm saturates at, b how far below it the arm
is at 1x). Why this form:
  - it saturates (AP cannot grow without bound with training length; docs/PAPER.md, "Findings": scratch's gain from
    longer schedules shrinks, and pre-trained's stops), and 1/N is the first term of any smooth saturating curve
    expanded in 1/N;
  - it has two parameters, identifiable from the two or three schedules a study measures (the paper's 2x..6x; the
    demo's 1x, 2x); the three-parameter a - b exp(-N / c) needs four or more schedules to be fitted at all and is
    badly conditioned with few (c trades against b);
  - for the arm that is still climbing (scratch) it is the optimistic form: fitted through the same points, a - b/N
    keeps rising longer than an exponential approach, so "scratch cannot catch up" read off it is the conservative
    statement (report/decision.py rule (b)).
Fitted by least squares in x = 1/N (exact through two schedules). Its interval comes from the same resampling as the
verdict (evaluation/bootstrap.py `two_level_gap`): every replicate draws the validation images once for all runs and,
per arm, its seeds (a seed's runs at every schedule move together: they share their trunk), refits both arms and
solves for the catch-up schedule. The interval covers measurement noise of the fitted points, not the model's
error: extrapolation beyond twice the longest measured schedule is not reported ("not before Hx").
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from scratchdet.evaluation.bootstrap import T_LEVEL
from scratchdet.report import findings, results, verdict
from scratchdet.report.results import RunData, Study

EXTRAPOLATION = 2.0  # predictions are stated up to this multiple of the longest measured schedule


@dataclass(frozen=True)
class ArmCurve:
    """One arm's measured final bbox AP per schedule (means over seeds) and the resampled values behind them."""

    arm: str
    schedules: np.ndarray  # (J,) schedule multipliers, ascending
    means: np.ndarray  # (J,) mean over seeds of the final bbox AP
    replicates: np.ndarray | None  # (B, J) the means on each replicate (images and seeds resampled); None: none
    seeds: int
    images: int | None  # validation images resampled (None: not resampled)


@dataclass(frozen=True)
class CatchUp:
    """The PREDICTION for scratch against one pre-trained arm at one (size, hparams)."""

    arm: str
    scratch: str
    size_label: str
    hparams: str
    schedules: tuple[float, ...]  # the measured schedules both fits use
    margin: float
    at: float  # predicted schedule from which the gap stays within the margin (0: at every schedule; inf: never)
    at_ci95: tuple[float, float] | None  # its 95% interval over the replicates (ends may be inf)
    horizon: float  # EXTRAPOLATION x the longest measured schedule
    target: float  # the schedule the gap is also predicted at (the longest planned one)
    gap_at_target: float  # predicted pre-trained - scratch AP at `target`
    gap_ci95: tuple[float, float] | None  # its 95% interval over the replicates
    sources: str  # the noise the intervals cover


def fit(schedules: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (a, b) of AP(N) = a - b / N; values (J,) or (B, J) for B fits at once. Needs 2+ schedules."""
    x = 1.0 / np.asarray(schedules, dtype=float)
    y = np.atleast_2d(values)
    xc = x - x.mean()
    slope = (y - y.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)  # d AP / d(1/N) = -b
    a = y.mean(axis=1) - slope * x.mean()
    return a, -slope


def catch_up_schedule(a_gap: np.ndarray, b_gap: np.ndarray, margin: float) -> np.ndarray:
    """The schedule from which the predicted gap A - B/N (A = a_pre - a_scratch, B = b_pre - b_scratch) stays at
    or below the margin: |B| / (m - A) when the gap shrinks (B < 0) toward A < m; 0 when it is within at every N;
    inf when it never comes (or does not stay) within."""
    a_gap, b_gap = np.asarray(a_gap, dtype=float), np.asarray(b_gap, dtype=float)
    out = np.full(a_gap.shape, math.inf)
    shrinking = b_gap < 0
    reaches = shrinking & (a_gap < margin)
    out[reaches] = -b_gap[reaches] / (margin - a_gap[reaches])
    out[~shrinking & (a_gap <= margin)] = 0.0
    return out


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """2.5% and 97.5% ends without interpolating (values may be inf)."""
    low = np.percentile(values, 100 * (1 - T_LEVEL), method="lower")
    high = np.percentile(values, 100 * T_LEVEL, method="higher")
    return float(low), float(high)


def arm_curve(runs: list, arm: str, up_to: float | None = None, seed: int = 0) -> ArmCurve | None:
    """The arm's curve from its finished runs (seed means) with a final bbox AP, schedules up to `up_to`; None with
    fewer than two schedules. Replicates: the report's shared image draws (`verdict.resampled_aps`) when every run
    kept its detections on the same images, and the arm's seeds resampled jointly over schedules with the rescaling
    of `evaluation.bootstrap._seed_level` (deviations of the full-set APs); None when neither can be resampled."""
    cells = [
        m
        for m in results.seed_means([r for r in runs if r.arm == arm])
        if m.schedule is not None
        and (up_to is None or m.schedule <= up_to)
        and results.unusable_reason(m) is None
        and m.final("bbox") is not None
    ]
    cells.sort(key=lambda m: m.schedule)
    if len({m.schedule for m in cells}) < 2:
        return None
    seeds = sorted(set.intersection(*({r.seed for r in results.replicates(m)} for m in cells)), key=lambda s: s or 0)
    by_seed = [[next(r for r in results.replicates(m) if r.seed == s) for m in cells] for s in seeds]
    full = np.array([[r.final("bbox") for r in row] for row in by_seed])  # (S, J)
    schedules = np.array([m.schedule for m in cells])
    counts = {r.last_eval.get("images") for row in by_seed for r in row}
    n = counts.pop() if len(counts) == 1 else None
    rows = [[verdict.resampled_aps(r, int(n)) for r in row] for row in by_seed] if n else [[None]]
    images = None
    if all(x is not None for row in rows for x in row):
        data = np.array(rows)  # (S, J, B)
        images = int(n)
    elif len(seeds) >= 2:
        data = np.repeat(full[:, :, None], verdict.N_BOOT, axis=2)
    else:
        return ArmCurve(arm, schedules, full.mean(axis=0), None, len(seeds), None)
    mean = data.mean(axis=0)  # (J, B)
    if len(seeds) >= 2:
        rng = np.random.default_rng([seed, zlib.crc32(arm.encode())])  # each arm its own stream: independent seeds
        picks = rng.integers(0, len(seeds), size=(data.shape[2], len(seeds)))  # (B, S): one seed draw per replicate
        drawn = full[picks].mean(axis=1)  # (B, J): the drawn seeds' full-set APs, as `_seed_level` takes them
        replicates = mean.T + math.sqrt(len(seeds) / (len(seeds) - 1)) * (drawn - full.mean(axis=0))
    else:
        replicates = mean.T
    keep = np.isfinite(replicates).all(axis=1)
    return ArmCurve(arm, schedules, full.mean(axis=0), replicates[keep], len(seeds), images)


def predict(runs: list[RunData], margin: float, target: float, up_to: float | None = None) -> list[CatchUp]:
    """One `CatchUp` per (size, pre-trained arm) under each size's selected hyper-parameters, for the schedules
    both arms finished (up to `up_to`); sizes largest first. `target`: the schedule the gap is also predicted at
    (the longest planned one)."""
    out = []
    arms = results.study_arms(runs)
    scratch = results.reference_arm(arms)
    if scratch is None:
        return []
    for size in reversed(results.sizes(runs)):
        hp = findings.selected_hparams(runs, size)[0]
        group = [r for r in runs if (r.size_label, r.hparams) == (size, hp)]
        ref = arm_curve(group, scratch.name, up_to)
        for arm in results.pretrained_arms(arms):
            other = arm_curve(group, arm.name, up_to)
            if ref is None or other is None:
                continue
            found = compare(ref, other, margin, target, size, hp)
            if found is not None:
                out.append(found)
    return out


def compare(ref: ArmCurve, other: ArmCurve, margin: float, target: float, size: str, hp: str) -> CatchUp | None:
    """The catch-up prediction of `ref` (scratch) against `other` on the schedules both measured."""
    common = np.intersect1d(ref.schedules, other.schedules)
    if common.size < 2:
        return None
    ri, oi = np.isin(ref.schedules, common), np.isin(other.schedules, common)
    (a_s,), (b_s,) = fit(common, ref.means[ri])
    (a_p,), (b_p,) = fit(common, other.means[oi])
    at = float(catch_up_schedule(np.array([a_p - a_s]), np.array([b_p - b_s]), margin)[0])
    gap = (a_p - a_s) - (b_p - b_s) / target
    at_ci = gap_ci = None
    sources = "no noise estimated (one seed, no per-image detections kept)"
    if ref.replicates is not None and other.replicates is not None:
        b = min(len(ref.replicates), len(other.replicates))
        ra, rb = fit(common, ref.replicates[:b][:, ri])
        pa, pb = fit(common, other.replicates[:b][:, oi])
        at_ci = _percentiles(catch_up_schedule(pa - ra, pb - rb, margin))
        gap_ci = _percentiles((pa - ra) - (pb - rb) / target)
        parts = (["seeds"] if min(ref.seeds, other.seeds) >= 2 else []) + (
            ["validation images"] if ref.images and other.images else []
        )
        sources = " and ".join(parts) + " resampled"
    horizon = EXTRAPOLATION * float(common.max())
    return CatchUp(
        other.arm, ref.arm, size, hp, tuple(float(s) for s in common), margin, at, at_ci, horizon, target, gap,
        gap_ci, sources,
    )  # fmt: skip


def _when(value: float, horizon: float) -> str:
    if value == 0:
        return "already at every schedule"
    return f"not before {horizon:g}x" if value > horizon else f"{value:.1f}x"


def sentence(c: CatchUp) -> str:
    """The prediction in words, labelled as such, e.g. "PREDICTION (not measured; ...): scratch comes within
    +/-0.5 bbox AP of imagenet at about 8.3x (95% interval 5.1x to not before 12x); ..."."""
    s, p = results.arm_label(c.scratch), results.arm_label(c.arm)
    fitted = ", ".join(f"{x:g}x" for x in c.schedules)
    head = (
        f"PREDICTION (not a measurement; AP(N) = a - b/N fitted to {fitted} of each arm on {c.size_label} training "
        f"images, hparams {c.hparams}, means over seeds; {c.sources})"
    )
    if c.at == 0:
        when = f"{s} is predicted within ±{c.margin:g} bbox AP of {p} at every schedule"
    elif c.at > c.horizon:
        when = f"{s} is predicted to come within ±{c.margin:g} bbox AP of {p} not before {c.horizon:g}x"
    else:
        when = f"{s} comes within ±{c.margin:g} bbox AP of {p} at about {c.at:.1f}x"
    if c.at_ci95 is not None:
        when += f" (95% interval {_when(c.at_ci95[0], c.horizon)} to {_when(c.at_ci95[1], c.horizon)})"
    beyond = f"; further than {c.horizon:g}x, twice the longest measured one" if c.target > c.horizon else ""
    gap = (
        f"the predicted {p} - {s} gap at {c.target:g}x (the longest planned schedule{beyond}) is {c.gap_at_target:+.1f}"
    )
    if c.gap_ci95 is not None:
        gap += f" (95% interval {c.gap_ci95[0]:+.1f} to {c.gap_ci95[1]:+.1f})"
    return f"{head}: {when}; {gap}."


def sentences(study: Study) -> list[str]:
    """The report's prediction sentences: every pre-trained arm against scratch, at the longest planned schedule."""
    target = max((r.schedule for r in study.runs if r.schedule is not None), default=None)
    if target is None:
        return []
    return [sentence(c) for c in predict(study.runs, study.margin, target)]
