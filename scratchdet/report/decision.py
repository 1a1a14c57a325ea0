"""Is the study's question settled after one schedule? The decision a sequential study (spec `stopping:`) makes after
every run of a schedule has its final evaluation, before it trains longer schedules.

The question (docs/PAPER.md, "The claim"): from which schedule is scratch no worse than each pre-trained arm, within
the margin m (plan.json verdict.margin). `settled(study, schedule)` answers from the study folder alone:

  (a) "caught_up": at this schedule, for every pre-trained arm, at every data size and under every hyper-parameter
      setting, the upper end of the 95% interval of (arm - scratch) is at most m (scratch within the margin of, or
      ahead of, the arm: `verdict.gap_interval`, seeds and validation images resampled). "Scratch catches up by Nx"
      then holds with 95% confidence per comparison, and longer schedules cannot change that answer to the question
      asked (the paper's Fig. 1: once caught up, scratch stays caught up; a longer schedule that fell behind again
      would be overfitting, which the study does not set out to measure).
  (b) "cannot_catch_up": for every comparison, the catch-up PREDICTION (report/catchup.py, AP(N) = a - b/N fitted to
      every finished schedule up to this one, at least two) at the longest planned schedule L has the end of its 95%
      interval most favourable to scratch (the lowest predicted gap) still above m. Conservative on three counts:
      the favourable end, not the estimate; the a - b/N form, which for the still-climbing arm rises longer than an
      exponential approach through the same points; and no stop before two schedules are measured.

Every run at that schedule (all arms, all seeds, all sizes, all hyper-parameter settings, so that the selection of the
setting cannot change the answer) must be finished with a final bbox AP, else the answer is "not settled" with the
runs that are missing. A mix (some arms caught up, others out of reach) is not settled: the study's one answer is not
known yet, and the launcher trains on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scratchdet.report import catchup, results, verdict
from scratchdet.report.results import Study


@dataclass(frozen=True)
class Decision:
    """settled: stop training longer schedules; reason: why, with the numbers; kind: which rule settled it."""

    settled: bool
    reason: str
    kind: Literal["caught_up", "cannot_catch_up"] | None = None


def _unfinished(study: Study, schedule: float) -> list[str]:
    """Runs at `schedule` that cannot enter the decision, each with its reason."""
    return [reason for r in study.runs if r.schedule == schedule and (reason := results.unusable_reason(r)) is not None]


def settled(study: Study, schedule: float) -> Decision:
    """Whether the study's question is answered at `schedule` (rules (a) and (b) of the module docstring).

    Args:
        study: `results.load_study(folder)`. schedule: a planned schedule multiplier, e.g. 2.0.
    Returns:
        A `Decision`; never raises for an incomplete study (it is then not settled, naming what is missing).
    """
    planned = sorted({r.schedule for r in study.runs if r.schedule is not None})
    if schedule not in planned:
        return Decision(False, f"{schedule:g}x is not a planned schedule ({', '.join(f'{s:g}x' for s in planned)})")
    missing = _unfinished(study, schedule)
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        return Decision(False, f"not every run at {schedule:g}x has its final evaluation: {shown}")
    arms = results.study_arms(study.runs)
    scratch, pres = results.reference_arm(arms), results.pretrained_arms(arms)
    if scratch is None or not pres:
        return Decision(False, "the study has no scratch arm or no pre-trained arm: there is no question to settle")
    m, longest = study.margin, planned[-1]
    means = results.seed_means([r for r in study.runs if r.schedule == schedule])
    cells = sorted({(r.size_label, r.hparams) for r in means})
    caught, out_of_reach, open_ = [], [], []
    for size, hp in cells:
        at = {r.arm: r for r in means if (r.size_label, r.hparams) == (size, hp)}
        done = [r for r in study.runs if (r.size_label, r.hparams) == (size, hp)]
        for arm in pres:
            where = f"{arm.label} at {schedule:g}x on {size} (hparams {hp})"
            if scratch.name not in at or arm.name not in at:
                open_.append(f"{where}: an arm has no run there")
                continue
            iv = verdict.gap_interval(at[scratch.name], at[arm.name])
            if iv is not None and iv.ci95[1] <= m:
                caught.append(f"{where}: upper end {iv.ci95[1]:+.2f} <= {m:g} (gap {iv.delta:+.2f})")
                continue
            ref = catchup.arm_curve(done, scratch.name, up_to=schedule)
            other = catchup.arm_curve(done, arm.name, up_to=schedule)
            found = None if ref is None or other is None else catchup.compare(ref, other, m, longest, size, hp)
            if found is not None and found.gap_ci95 is not None and found.gap_ci95[0] > m:
                out_of_reach.append(
                    f"{where}: predicted gap at {longest:g}x {found.gap_at_target:+.2f}, its lowest end "
                    f"{found.gap_ci95[0]:+.2f} > {m:g}"
                )
                continue
            why = "noise not estimated" if iv is None else f"interval {iv.ci95[0]:+.2f} to {iv.ci95[1]:+.2f}"
            if found is None:
                why += "; no catch-up prediction (fewer than two finished schedules)"
            elif found.gap_ci95 is None:
                why += "; the prediction has no interval (one seed, no per-image detections)"
            else:
                why += f"; predicted gap at {longest:g}x could be as low as {found.gap_ci95[0]:+.2f}"
            open_.append(f"{where}: {why}")
    if open_ or (caught and out_of_reach):
        reasons = open_ or [f"caught up: {'; '.join(caught)}; out of reach: {'; '.join(out_of_reach)}"]
        return Decision(False, f"not settled at {schedule:g}x (margin {m:g} AP): " + "; ".join(reasons))
    if caught:
        head = f"scratch is within {m:g} AP of (or ahead of) every pre-trained arm at {schedule:g}x: "
        return Decision(True, head + "; ".join(caught), "caught_up")
    return Decision(
        True,
        f"scratch cannot come within {m:g} AP of every pre-trained arm by {longest:g}x (PREDICTION, a - b/N): "
        + "; ".join(out_of_reach),
        "cannot_catch_up",
    )
