"""What the study's numbers say, as sentences computed from them (docs/PAPER.md, "Findings"). Every sentence names
the numbers it rests on; where a comparison cannot be made it says why instead.

Runs are duck-typed `results.RunData` objects (name, init, schedule, label, size_label, hparams, final(), curve(),
loss_curve(), finished, ...). Only finished runs whose last evaluation has a bbox AP enter comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchdet.report.results import (
    ARM_NAMES,
    ARMS,
    SEEN_KEYS,
    RunData,
    best_run,
    main_size,
    samples_of,
    size_images,
    sizes,
    smallest_sizes,
    sort_runs,
    unusable_reason,
)

# A gap of at most this many AP points counts as "within" / "caught up" (the paper calls 41.3 vs 41.1 comparable).
CAUGHT_UP_AP = 0.5
# Below this AP (both arms) a run has not learned enough for "within"/"caught up" to mean anything: two models at
# 0.1 and 0.3 AP are not "comparable", they are both untrained.
NOT_LEARNED_AP = 1.0


def thresholds_text() -> str:
    """The thresholds behind the findings' wording, stated in the report."""
    return (
        f"Thresholds: a gap of at most CAUGHT_UP_AP = {CAUGHT_UP_AP} AP points counts as 'within' / 'caught up'; "
        f"when both arms are below NOT_LEARNED_AP = {NOT_LEARNED_AP} AP neither has learned enough to call it. "
        "AP values are rounded to 0.1 before they are compared. Only finished runs whose last evaluation has "
        "predictions enter comparisons."
    )


def _r1(value: float) -> float:
    return round(value, 1)


def _gap(pre: float, scr: float) -> float:
    """pre-trained - scratch, on the rounded values the sentences show (so the stated numbers add up)."""
    return round(_r1(pre) - _r1(scr), 1)


def gap_sentence(where: str, metric: str, pre: float, scr: float) -> str:
    """E.g. "At 2x, pre-trained leads by 3.1 bbox AP (pre-trained 44.2 vs scratch 41.1)."."""
    gap = _gap(pre, scr)
    if max(_r1(pre), _r1(scr)) < NOT_LEARNED_AP:
        return (
            f"{where}, both arms are below {NOT_LEARNED_AP} {metric} (scratch {scr:.1f} vs pre-trained "
            f"{pre:.1f}): neither has learned enough to compare."
        )
    if gap > CAUGHT_UP_AP:
        return f"{where}, pre-trained leads by {gap:.1f} {metric} (pre-trained {pre:.1f} vs scratch {scr:.1f})."
    if gap < -CAUGHT_UP_AP:
        return f"{where}, scratch leads by {-gap:.1f} {metric} (scratch {scr:.1f} vs pre-trained {pre:.1f})."
    return (
        f"{where}, scratch is within {abs(gap):.1f} {metric} of pre-trained "
        f"(scratch {scr:.1f} vs pre-trained {pre:.1f})."
    )


def best_hparams(runs: list[RunData], size_label: str, arm: str) -> str | None:
    """The setting of the arm's best usable run at that size (over schedules), or None."""
    run = best_run(r for r in runs if r.size_label == size_label and r.init == arm)
    return run.hparams if run else None


def selected_hparams(runs: list[RunData], size_label: str) -> tuple[str, str]:
    """(setting used for both arms, why): the pre-trained arm's best, as in the paper (Sec. 5.1)."""
    settings = sorted({r.hparams for r in runs if r.size_label == size_label})
    if len(settings) == 1:
        return settings[0], "the only setting"
    chosen = best_hparams(runs, size_label, "pretrained")
    if chosen is not None:
        return chosen, "best on the pre-trained arm"
    fallback = "default" if "default" in settings else settings[0]
    return fallback, f"no finished pre-trained run to select on, so '{fallback}'"


@dataclass
class SizePoint:
    """One training-set size: the best usable run per arm under the selected hyper-parameters."""

    size_label: str
    train_images: int | None
    hparams: str
    arms: dict[str, RunData | None]


def size_points(runs: list[RunData]) -> list[SizePoint]:
    """One point per size (smallest first), each arm at its best finished schedule under the selected setting."""
    points = []
    for size in sizes(runs):
        hp = selected_hparams(runs, size)[0]
        arms = {arm: best_run(r for r in runs if (r.size_label, r.hparams, r.init) == (size, hp, arm)) for arm in ARMS}
        points.append(SizePoint(size, size_images(runs, size), hp, arms))
    return points


# ---------------------------------------------------------------------------------------------------- findings


def problem_findings(runs: list[RunData]) -> list[str]:
    """Runs that are missing, unfinished or end without predictions: said in words, left out of comparisons."""
    out = []
    for run in sort_runs(runs):
        if not run.started:
            out.append(f"Run {run.name} has no records (not started or missing): it is left out of comparisons.")
        elif not run.finished:
            of = f" of {run.max_iters}" if run.max_iters else ""
            out.append(
                f"Run {run.name} did not finish (last record at iter {run.last_iter}{of}): "
                "its numbers are shown but left out of comparisons."
            )
        elif run.last_eval is not None and run.last_eval.get("status", "ok") != "ok":
            out.append(
                f"Run {run.name}: last evaluation (iter {run.last_eval.get('iter')}) had "
                f"{run.last_eval.get('status')}, so it has no final AP."
            )
    return out


def _by_schedule(group: list[RunData], arm: str) -> dict[float, RunData]:
    return {r.schedule or 0.0: r for r in group if r.init == arm}


def schedule_findings(group: list[RunData], prefix: str = "") -> list[str]:
    """Scratch vs pre-trained per schedule: gaps, where scratch catches up, AP75, mask AP, early convergence."""
    arms = {arm: _by_schedule(group, arm) for arm in ARMS}
    missing = [ARM_NAMES[a] for a in ARMS if not arms[a]]
    if missing:
        return [f"{prefix}No {' or '.join(missing)} runs: no scratch vs pre-trained comparison."]
    out, compared = [], []
    for schedule in sorted(set(arms["scratch"]) & set(arms["pretrained"])):
        scr, pre = arms["scratch"][schedule], arms["pretrained"][schedule]
        reasons = [r for r in (unusable_reason(scr), unusable_reason(pre)) if r]
        if reasons:
            out.append(f"{prefix}At {scr.label}, no comparison: {'; '.join(reasons)}.")
            continue
        compared.append((scr, pre))
        out.append(gap_sentence(f"{prefix}At {scr.label}", "bbox AP", pre.final(), scr.final()))
    only = sorted(set(arms["scratch"]) ^ set(arms["pretrained"]))
    if only:
        out.append(
            f"{prefix}Schedules run by one arm only (no comparison): " + ", ".join(f"{s:g}x" for s in only) + "."
        )
    if not compared:
        return out
    caught = next(
        (
            (s, p)
            for s, p in compared
            if _gap(p.final(), s.final()) <= CAUGHT_UP_AP and _r1(p.final()) >= NOT_LEARNED_AP
        ),
        None,
    )
    if caught:
        s, p = caught
        out.append(
            f"{prefix}Scratch catches up at {s.label} (first schedule within {CAUGHT_UP_AP} bbox AP: "
            f"scratch {s.final():.1f} vs pre-trained {p.final():.1f})."
        )
    else:
        s, p = min(compared, key=lambda sp: _gap(sp[1].final(), sp[0].final()))
        out.append(
            f"{prefix}Scratch does not catch up within {CAUGHT_UP_AP} bbox AP at any compared schedule up to "
            f"{compared[-1][0].label} (smallest gap {_gap(p.final(), s.final()):.1f} at {s.label})."
        )
    out += _ap75_findings(compared, prefix)
    s, p = compared[-1]
    if s.final("segm") is not None and p.final("segm") is not None:
        out.append(gap_sentence(f"{prefix}Mask AP at {s.label}", "mask AP", p.final("segm"), s.final("segm")))
    out += _early_findings(compared, prefix)
    return out


def _ap75_findings(compared: list[tuple[RunData, RunData]], prefix: str) -> list[str]:
    pairs = [(s, p) for s, p in compared if s.final("bbox", "AP75") is not None and p.final("bbox", "AP75") is not None]
    if not pairs:
        return [f"{prefix}AP75: not available for any compared schedule."]
    ahead = [(s, p) for s, p in pairs if _r1(s.final("bbox", "AP75")) > _r1(p.final("bbox", "AP75"))]
    if ahead:
        return [
            f"{prefix}AP75: scratch exceeds pre-trained at {s.label} by "
            f"{-_gap(p.final('bbox', 'AP75'), s.final('bbox', 'AP75')):.1f} "
            f"({s.final('bbox', 'AP75'):.1f} vs {p.final('bbox', 'AP75'):.1f})."
            for s, p in ahead
        ]
    s, p = min(pairs, key=lambda sp: _gap(sp[1].final("bbox", "AP75"), sp[0].final("bbox", "AP75")))
    return [
        f"{prefix}AP75: pre-trained is ahead or equal at every compared schedule (smallest lead "
        f"{_gap(p.final('bbox', 'AP75'), s.final('bbox', 'AP75')):.1f} at {s.label}: "
        f"pre-trained {p.final('bbox', 'AP75'):.1f} vs scratch {s.final('bbox', 'AP75'):.1f})."
    ]


def _early_findings(compared: list[tuple[RunData, RunData]], prefix: str) -> list[str]:
    """Finding 1 (pre-training speeds up convergence early): the first evaluation both arms of a schedule have."""
    for s, p in reversed(compared):  # the longest schedule has the longest shared view of the early phase
        pre_curve = dict(p.curve())
        last = min(s.last_eval["iter"], p.last_eval["iter"])
        common = [(i, v) for i, v in s.curve() if i in pre_curve and i < last]  # the final one is not "early"
        if common:
            i, v = common[0]
            return [
                gap_sentence(
                    f"{prefix}Early, at iter {i} ({s.label} runs' first common evaluation)", "bbox AP", pre_curve[i], v
                )
            ]
    return []


def _times(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio < 100 else f"{ratio:,.0f}x"


def sample_findings(runs: list[RunData]) -> list[str]:
    """Fig. 2: pre-training + fine-tuning vs scratch in images, instances and pixels, at the longest schedule both
    arms finished on the largest training set."""
    size = main_size(runs)
    hp = selected_hparams(runs, size)[0]
    group = [r for r in runs if (r.size_label, r.hparams) == (size, hp) and r.finished]
    scr, pre = _by_schedule(group, "scratch"), _by_schedule(group, "pretrained")
    common = sorted(set(scr) & set(pre))
    if not common:
        return ["Samples seen: no schedule where both arms finished, so no sample comparison."]
    s, p = scr[common[-1]], pre[common[-1]]
    (s_own, _), (p_own, p_pre) = samples_of(s), samples_of(p)
    keys = SEEN_KEYS
    if any(s_own[k] is None or p_own[k] is None for k in keys):
        return [f"Samples seen at {s.label}: a run logged no sample counts, so no sample comparison."]
    if any(p_pre[k] is None for k in keys):
        return [
            f"Samples seen at {s.label}: {p.name} recorded no pre-training counts (init.json pretrain_seen); "
            f"fine-tuning alone saw {_times(p_own['images'] / s_own['images'])} the images of scratch."
        ]
    total = {k: p_own[k] + p_pre[k] for k in keys}
    ratios = {k: total[k] / s_own[k] if s_own[k] else float("inf") for k in keys}
    estimate = (p.pretrain_seen or {}).get("estimate")
    note = f" Pre-training counts are an estimate: {estimate}." if estimate else ""
    return [
        f"At {s.label} (train size {size}), pre-training + fine-tuning saw {_times(ratios['images'])} the images "
        f"of scratch, {_times(ratios['instances'])} the instances and {_times(ratios['pixels'])} the pixels "
        f"({total['images']:,} vs {s_own['images']:,} images; {total['pixels']:,} vs {s_own['pixels']:,} "
        f"pixels).{note}"
    ]


def _size_name(point: SizePoint) -> str:
    if not point.train_images:
        return f"training set '{point.size_label}'"
    named = "" if point.size_label == str(point.train_images) else f", '{point.size_label}'"
    return f"{point.train_images:,} training images{named}"


def size_findings(points: list[SizePoint]) -> list[str]:
    """Figs. 7-8: the gap per training-set size and where pre-training starts to win."""
    out, compared = [], []
    for point in points:
        scr, pre = point.arms.get("scratch"), point.arms.get("pretrained")
        if scr is None or pre is None:
            lacking = [ARM_NAMES[a] for a in ARMS if point.arms.get(a) is None]
            out.append(
                f"With {_size_name(point)}: no comparison (no finished {' or '.join(lacking)} run with a final AP)."
            )
            continue
        compared.append((point, _gap(pre.final(), scr.final())))
        where = f"With {_size_name(point)} (best finished: scratch {scr.label}, pre-trained {pre.label})"
        out.append(gap_sentence(where, "bbox AP", pre.final(), scr.final()))
    if len(compared) < 2:
        return out
    wins = [p.size_label for p, gap in compared if gap > CAUGHT_UP_AP]
    # The crossover: the smallest size from which every larger compared size has pre-training ahead by <= threshold.
    tail_start = None
    for point, gap in reversed(compared):
        if gap > CAUGHT_UP_AP:
            break
        tail_start = point
    if not wins:
        out.append(
            f"Pre-training does not win by more than {CAUGHT_UP_AP} bbox AP at any compared size "
            f"(down to {compared[0][0].size_label}: gap {compared[0][1]:.1f})."
        )
    elif tail_start is None:
        out.append(f"Pre-training wins by more than {CAUGHT_UP_AP} bbox AP at every compared size ({', '.join(wins)}).")
    else:
        out.append(
            f"Pre-training wins by more than {CAUGHT_UP_AP} bbox AP with {', '.join(wins)}; from "
            f"{tail_start.size_label} on the gap is at most {CAUGHT_UP_AP} (or scratch leads)."
        )
    return out


def _nearest(curve: list[tuple[int, float]], iteration: int) -> tuple[int, float]:
    return min(curve, key=lambda iv: (abs(iv[0] - iteration), iv[0]))


def loss_findings(runs: list[RunData], size_label: str) -> list[str]:
    """Fig. 8: in the second half of training, training loss still falls while AP does not (or does)."""
    out = []
    for run in sort_runs([r for r in runs if r.size_label == size_label]):
        ap, loss = run.curve(), run.loss_curve()
        if unusable_reason(run) is not None or len(ap) < 2 or len(loss) < 2:
            continue
        end = ap[-1][0]
        mid = _nearest(ap, end // 2)
        # Loss is logged more often than AP: take the loss records nearest to the two evaluations compared.
        mid_loss, end_loss = _nearest(loss, mid[0])[1], _nearest(loss, end)[1]
        trend = "fell" if end_loss < mid_loss else "did not fall"
        out.append(
            f"Train size {size_label}, {ARM_NAMES.get(run.init, run.init)} {run.label} ({run.name}): from "
            f"iter {mid[0]} to {end} training loss {trend} ({mid_loss:.3f} -> {end_loss:.3f}) while bbox AP "
            f"went {mid[1]:.1f} -> {ap[-1][1]:.1f}."
        )
    return out


def hparam_findings(runs: list[RunData]) -> list[str]:
    """Per size with several settings: the one used (pre-trained arm's best) and whether scratch would pick another."""
    out = []
    for size in sizes(runs):
        settings = {r.hparams for r in runs if r.size_label == size}
        if len(settings) < 2:
            continue
        chosen, why = selected_hparams(runs, size)
        own = best_hparams(runs, size, "scratch")
        sentence = f"Train size {size}: hparams '{chosen}' are used for both arms ({why})"
        used = best_run(r for r in runs if (r.size_label, r.hparams, r.init) == (size, chosen, "scratch"))
        best = best_run(r for r in runs if (r.size_label, r.hparams, r.init) == (size, own, "scratch")) if own else None
        if own is None:
            sentence += "; scratch has no finished run to compare settings."
        elif own == chosen:
            sentence += f"; it is also scratch's best ({best.final():.1f} bbox AP)."
        else:
            with_chosen = f"{used.final():.1f} with '{chosen}'" if used else f"no finished run with '{chosen}'"
            sentence += f"; scratch's own best is '{own}' ({best.final():.1f} bbox AP vs {with_chosen})."
        out.append(sentence)
    return out


def grouped_findings(runs: list[RunData]) -> dict[str, list[str]]:
    """All findings by topic, in the order of the paper: schedules (per data size), samples seen, data size,
    hyper-parameters, then what is missing or unusable. Empty topics are left out."""
    if not runs:
        return {"Plan": ["The plan lists no runs."]}
    out: dict[str, list[str]] = {}
    several = len(sizes(runs)) > 1 or len({r.hparams for r in runs}) > 1
    for size in reversed(sizes(runs)):  # the full training set first, as in the paper
        hp = selected_hparams(runs, size)[0]
        prefix = f"[train size {size}, hparams {hp}] " if several else ""
        found = schedule_findings([r for r in runs if (r.size_label, r.hparams) == (size, hp)], prefix)
        out.setdefault("Schedules (Figs. 1, 3, 4)", []).extend(found)
    out["Samples seen (Fig. 2)"] = sample_findings(runs)
    if len(sizes(runs)) > 1:
        data = size_findings(size_points(runs))
        for size in smallest_sizes(runs):
            hp = selected_hparams(runs, size)[0]
            data += loss_findings([r for r in runs if r.hparams == hp], size)
        out["Training-set size (Figs. 7, 8)"] = data
    out["Hyper-parameters"] = hparam_findings(runs)
    out["Missing or unusable runs"] = problem_findings(runs)
    return {topic: lines for topic, lines in out.items() if lines}


def compute_findings(runs: list[RunData]) -> list[str]:
    """All findings as one list (grouped_findings, flattened)."""
    return [line for lines in grouped_findings(runs).values() for line in lines]
