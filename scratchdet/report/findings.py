"""What the study's numbers say, as sentences computed from them (docs/PAPER.md, "Findings"). Every sentence names
the numbers it rests on; where a comparison cannot be made it says why instead.

Runs are duck-typed `results.RunData` objects (name, arm, init, schedule, label, size_label, hparams, final(),
curve(), loss_curve(), finished, ...). Only finished runs whose last evaluation has a bbox AP enter comparisons.

A study has one scratch arm, the reference, and any number of pre-trained arms (`results.study_arms`): every
pre-trained arm is compared with scratch, and with two or more the sentences also say which pre-trained arm is best
where. Sentences name arms by their spec names; an arm named "pretrained" reads "pre-trained", so a two-arm study
reads as the paper's scratch vs pre-trained comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scratchdet.report.results import (
    SEEN_KEYS,
    Arm,
    RunData,
    arm_label,
    best_run,
    main_size,
    pretrained_arms,
    reference_arm,
    samples_of,
    seed_means,
    size_images,
    sizes,
    smallest_sizes,
    sort_runs,
    study_arms,
    unusable_reason,
)

# A gap of at most this many AP points counts as "within" / "caught up" (the paper calls 41.3 vs 41.1 comparable).
CAUGHT_UP_AP = 0.5
# Below this AP (both arms) a run has not learned enough for "within"/"caught up" to mean anything: two models at
# 0.1 and 0.3 AP are not "comparable", they are both untrained.
NOT_LEARNED_AP = 1.0
PRETRAINED = arm_label("pretrained")  # how the paper's one pre-trained arm reads: "pre-trained"


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


def cap(text: str) -> str:
    """The first letter upper-cased (an arm's name opening a sentence), the rest as written."""
    return text[:1].upper() + text[1:]


def named(label: str) -> bool:
    """Whether a pre-trained arm's label is a name of its own (not the word "pre-trained"): the sentences that
    otherwise say "pre-trained" or "pre-training" then name it."""
    return label != PRETRAINED


def gap_sentence(
    where: str, metric: str, pre: float, scr: float, pre_label: str = PRETRAINED, scr_label: str = "scratch"
) -> str:
    """E.g. "At 2x, pre-trained leads by 3.1 bbox AP (pre-trained 44.2 vs scratch 41.1)."; the labels name the two
    arms (spec names, `results.arm_label`)."""
    gap = _gap(pre, scr)
    p, s = pre_label, scr_label
    if max(_r1(pre), _r1(scr)) < NOT_LEARNED_AP:
        return (
            f"{where}, both arms are below {NOT_LEARNED_AP} {metric} ({s} {scr:.1f} vs {p} "
            f"{pre:.1f}): neither has learned enough to compare."
        )
    if gap > CAUGHT_UP_AP:
        return f"{where}, {p} leads by {gap:.1f} {metric} ({p} {pre:.1f} vs {s} {scr:.1f})."
    if gap < -CAUGHT_UP_AP:
        return f"{where}, {s} leads by {-gap:.1f} {metric} ({s} {scr:.1f} vs {p} {pre:.1f})."
    return f"{where}, {s} is within {abs(gap):.1f} {metric} of {p} ({s} {scr:.1f} vs {p} {pre:.1f})."


def best_arm_text(entries: list[tuple[Arm, float]], metric: str = "bbox AP") -> str:
    """The best of several pre-trained arms by a metric, on the rounded values the sentences show, e.g.
    "imagenet (35.0 bbox AP vs inhouse 33.0)" or "imagenet and inhouse tie (35.0 bbox AP vs other 30.0)"."""
    ranked = sorted(entries, key=lambda e: -_r1(e[1]))  # stable: plan order among equals
    top = [arm for arm, value in ranked if _r1(value) == _r1(ranked[0][1])]
    rest = ", ".join(f"{arm.label} {value:.1f}" for arm, value in ranked[len(top) :])
    head = top[0].label if len(top) == 1 else " and ".join(a.label for a in top) + " tie"
    return f"{head} ({ranked[0][1]:.1f} {metric}" + (f" vs {rest})" if rest else ")")


def _arm_runs(runs: list[RunData], size_label: str, hparams: str, arm: Arm) -> list[RunData]:
    return [r for r in runs if (r.size_label, r.hparams, r.arm) == (size_label, hparams, arm.name)]


def best_hparams(runs: list[RunData], size_label: str, arm: str) -> str | None:
    """The setting of the arm's (spec name) best usable run at that size (over schedules; seed means where the
    study has seeds), or None."""
    run = best_run(r for r in seed_means(runs) if r.size_label == size_label and r.arm == arm)
    return run.hparams if run else None


def _selection(runs: list[RunData], size_label: str) -> tuple[str, str, RunData | None]:
    """(setting, why, the run it was selected on): see `selected_hparams`."""
    runs = seed_means(runs)  # selected on each setting's mean over seeds, never on a lucky seed
    settings = sorted({r.hparams for r in runs if r.size_label == size_label})
    if len(settings) == 1:
        return settings[0], "the only setting", None
    pres = pretrained_arms(study_arms(runs))
    chosen = best_run(r for r in runs if r.size_label == size_label and r.init != "scratch")
    if chosen is not None:
        if len(pres) == 1:
            return chosen.hparams, f"best on the {pres[0].label} arm", chosen
        why = f"best over the pre-trained arms: {arm_label(chosen.arm)} {chosen.label}, {chosen.final():.1f} bbox AP"
        return chosen.hparams, why, chosen
    fallback = "default" if "default" in settings else settings[0]
    return fallback, f"no finished pre-trained run to select on, so '{fallback}'", None


def selected_hparams(runs: list[RunData], size_label: str) -> tuple[str, str]:
    """(setting used for every arm at that size, why).

    The paper (docs/PAPER.md, "35k images (Fig. 7)", the paper's Sec. 5.1; "Solver": the same hyper-parameters
    serve both initializations) searches the hyper-parameters on the pre-trained model and reuses them for scratch.
    With several pre-trained arms the setting is the one of the best usable pre-trained run over all pre-trained
    arms (highest final bbox AP; ties: the shorter schedule, then plan order), used for every arm. One setting per
    size keeps the compared runs different in their initialization only (selecting per pre-trained arm would
    compare scratch at a different setting in each comparison, and the pre-trained arms with each other at
    different settings), and it still favours pre-training as the paper's rule does, so scratch catching up is not
    an artefact of tuning. The hyper-parameter findings say where another arm's own best setting differs. Every
    section of the report (verdict, findings, figures, tables) uses this setting. With seed replicates a setting is
    judged by its runs' means over seeds (`results.seed_means`).
    """
    chosen, why, _ = _selection(runs, size_label)
    return chosen, why


@dataclass
class SizePoint:
    """One training-set size: the best usable run per arm (spec name) under the selected hyper-parameters."""

    size_label: str
    train_images: int | None
    hparams: str
    arms: dict[str, RunData | None]
    order: list[Arm] = field(default_factory=list)  # the study's arms, scratch first


def size_points(runs: list[RunData]) -> list[SizePoint]:
    """One point per size (smallest first), each arm at its best finished schedule under the selected setting (a
    seed mean, `results.MeanRun`, where the study has seeds)."""
    runs = seed_means(runs)
    points = []
    arms = study_arms(runs)
    for size in sizes(runs):
        hp = selected_hparams(runs, size)[0]
        best = {arm.name: best_run(_arm_runs(runs, size, hp, arm)) for arm in arms}
        points.append(SizePoint(size, size_images(runs, size), hp, best, arms))
    return points


# ---------------------------------------------------------------------------------------------------- findings


def problem_findings(runs: list[RunData]) -> list[str]:
    """Runs that are missing, unfinished or end without predictions: said in words, left out of comparisons. A
    started run without an init.json (nor its trunk's) is said too: what it loaded cannot be checked."""
    out = []
    for run in sort_runs(runs):
        if not run.started:
            out.append(f"Run {run.name} has no records (not started or missing): it is left out of comparisons.")
            continue
        if not run.finished:
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
        if run.init_path is None:
            out.append(
                f"Run {run.name} has no init.json (nor has its trunk): that it was initialized as arm "
                f"{run.arm!r} ({run.init}) is not checked."
            )
    return out


def _by_schedule(group: list[RunData], arm: Arm) -> dict[float, RunData]:
    return {r.schedule or 0.0: r for r in group if r.arm == arm.name}


def schedule_findings(group: list[RunData], prefix: str = "") -> list[str]:
    """Scratch vs each pre-trained arm per schedule: gaps, where scratch catches up, AP75, mask AP, early
    convergence; with several pre-trained arms, then which one is best at each schedule."""
    arms = study_arms(group)
    scratch, pres = reference_arm(arms), pretrained_arms(arms)
    if scratch is None or not pres:
        missing = [name for name, absent in (("scratch", scratch is None), (PRETRAINED, not pres)) if absent]
        return [f"{prefix}No {' or '.join(missing)} runs: no scratch vs pre-trained comparison."]
    out = []
    for arm in pres:
        out += _pair_findings(_by_schedule(group, scratch), _by_schedule(group, arm), scratch, arm, prefix)
    if len(pres) > 1:
        out += _best_per_schedule(group, pres, prefix)
    return list(dict.fromkeys(out))  # a scratch run that cannot be compared is said once, not once per arm


def _pair_findings(
    scr_runs: dict[float, RunData], pre_runs: dict[float, RunData], scratch: Arm, arm: Arm, prefix: str
) -> list[str]:
    """The schedule findings of one pre-trained arm against scratch."""
    s_name, p_name = scratch.label, arm.label
    with_arm = f" with {p_name}" if named(p_name) else ""
    out, compared = [], []
    for schedule in sorted(set(scr_runs) & set(pre_runs)):
        scr, pre = scr_runs[schedule], pre_runs[schedule]
        reasons = [r for r in (unusable_reason(scr), unusable_reason(pre)) if r]
        if reasons:
            out.append(f"{prefix}At {scr.label}, no comparison: {'; '.join(reasons)}.")
            continue
        compared.append((scr, pre))
        out.append(gap_sentence(f"{prefix}At {scr.label}", "bbox AP", pre.final(), scr.final(), p_name, s_name))
    only = sorted(set(scr_runs) ^ set(pre_runs))
    if only:
        who = f"only one of {s_name} and {p_name}" if named(p_name) else "one arm only"
        out.append(f"{prefix}Schedules run by {who} (no comparison): " + ", ".join(f"{s:g}x" for s in only) + ".")
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
            f"{prefix}{cap(s_name)} catches up{with_arm} at {s.label} (first schedule within {CAUGHT_UP_AP} bbox AP: "
            f"{s_name} {s.final():.1f} vs {p_name} {p.final():.1f})."
        )
    else:
        s, p = min(compared, key=lambda sp: _gap(sp[1].final(), sp[0].final()))
        out.append(
            f"{prefix}{cap(s_name)} does not catch up{with_arm} within {CAUGHT_UP_AP} bbox AP at any compared "
            f"schedule up to {compared[-1][0].label} (smallest gap {_gap(p.final(), s.final()):.1f} at {s.label})."
        )
    out += _ap75_findings(compared, prefix, s_name, p_name)
    s, p = compared[-1]
    if s.final("segm") is not None and p.final("segm") is not None:
        out.append(
            gap_sentence(f"{prefix}Mask AP at {s.label}", "mask AP", p.final("segm"), s.final("segm"), p_name, s_name)
        )
    out += _early_findings(compared, prefix, s_name, p_name)
    return out


def _ap75_findings(compared: list[tuple[RunData, RunData]], prefix: str, s_name: str, p_name: str) -> list[str]:
    pairs = [(s, p) for s, p in compared if s.final("bbox", "AP75") is not None and p.final("bbox", "AP75") is not None]
    if not pairs:
        with_arm = f" with {p_name}" if named(p_name) else ""
        return [f"{prefix}AP75: not available for any compared schedule{with_arm}."]
    ahead = [(s, p) for s, p in pairs if _r1(s.final("bbox", "AP75")) > _r1(p.final("bbox", "AP75"))]
    if ahead:
        return [
            f"{prefix}AP75: {s_name} exceeds {p_name} at {s.label} by "
            f"{-_gap(p.final('bbox', 'AP75'), s.final('bbox', 'AP75')):.1f} "
            f"({s.final('bbox', 'AP75'):.1f} vs {p.final('bbox', 'AP75'):.1f})."
            for s, p in ahead
        ]
    s, p = min(pairs, key=lambda sp: _gap(sp[1].final("bbox", "AP75"), sp[0].final("bbox", "AP75")))
    return [
        f"{prefix}AP75: {p_name} is ahead or equal at every compared schedule (smallest lead "
        f"{_gap(p.final('bbox', 'AP75'), s.final('bbox', 'AP75')):.1f} at {s.label}: "
        f"{p_name} {p.final('bbox', 'AP75'):.1f} vs {s_name} {s.final('bbox', 'AP75'):.1f})."
    ]


def _early_findings(compared: list[tuple[RunData, RunData]], prefix: str, s_name: str, p_name: str) -> list[str]:
    """Finding 1 (pre-training speeds up convergence early): the first evaluation both arms of a schedule have."""
    for s, p in reversed(compared):  # the longest schedule has the longest shared view of the early phase
        pre_curve = dict(p.curve())
        last = min(s.last_eval["iter"], p.last_eval["iter"])
        common = [(i, v) for i, v in s.curve() if i in pre_curve and i < last]  # the final one is not "early"
        if common:
            i, v = common[0]
            where = f"{prefix}Early, at iter {i} ({s.label} runs' first common evaluation)"
            return [gap_sentence(where, "bbox AP", pre_curve[i], v, p_name, s_name)]
    return []


def _best_per_schedule(group: list[RunData], pres: list[Arm], prefix: str) -> list[str]:
    """Which pre-trained arm has the highest final bbox AP at each schedule that two or more of them finished."""
    parts = []
    for schedule in sorted({r.schedule or 0.0 for r in group}):
        usable = [
            (arm, run)
            for arm in pres
            if (run := _by_schedule(group, arm).get(schedule)) is not None and unusable_reason(run) is None
        ]
        if len(usable) > 1:
            parts.append(f"at {usable[0][1].label} " + best_arm_text([(arm, run.final()) for arm, run in usable]))
    if not parts:
        return [f"{prefix}No schedule has two or more pre-trained arms finished: no ranking of the pre-trained arms."]
    return [f"{prefix}Best pre-trained arm per schedule: " + "; ".join(parts) + "."]


def _times(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio < 100 else f"{ratio:,.0f}x"


def sample_findings(runs: list[RunData]) -> list[str]:
    """Fig. 2: pre-training + fine-tuning vs scratch in images, instances and pixels, for each pre-trained arm at
    the longest schedule it and scratch finished on the largest training set."""
    size = main_size(runs)
    hp = selected_hparams(runs, size)[0]
    group = [r for r in runs if (r.size_label, r.hparams) == (size, hp) and r.finished]
    arms = study_arms(runs)
    scratch, pres = reference_arm(arms), pretrained_arms(arms)
    if scratch is None or not pres:
        return ["Samples seen: no schedule where both arms finished, so no sample comparison."]
    return [_sample_sentence(group, scratch, arm, size) for arm in pres]


def _sample_sentence(group: list[RunData], scratch: Arm, arm: Arm, size: str) -> str:
    s_name, p_name = scratch.label, arm.label
    of = f" ({s_name} vs {p_name})" if named(p_name) else ""
    scr, pre = _by_schedule(group, scratch), _by_schedule(group, arm)
    common = sorted(set(scr) & set(pre))
    if not common:
        return f"Samples seen{of}: no schedule where both arms finished, so no sample comparison."
    s, p = scr[common[-1]], pre[common[-1]]
    (s_own, _), (p_own, p_pre) = samples_of(s), samples_of(p)
    keys = SEEN_KEYS
    if any(s_own[k] is None or p_own[k] is None for k in keys):
        return f"Samples seen at {s.label}{of}: a run logged no sample counts, so no sample comparison."
    if any(p_pre[k] is None for k in keys):
        return (
            f"Samples seen at {s.label}: {p.name} recorded no pre-training counts (init.json pretrain_seen); "
            f"fine-tuning alone saw {_times(p_own['images'] / s_own['images'])} the images of {s_name}."
        )
    total = {k: p_own[k] + p_pre[k] for k in keys}
    ratios = {k: total[k] / s_own[k] if s_own[k] else float("inf") for k in keys}
    estimate = (p.pretrain_seen or {}).get("estimate")
    note = f" Pre-training counts are an estimate: {estimate}." if estimate else ""
    whose = f" of {p_name}" if named(p_name) else ""
    return (
        f"At {s.label} (train size {size}), pre-training + fine-tuning{whose} saw {_times(ratios['images'])} the "
        f"images of {s_name}, {_times(ratios['instances'])} the instances and {_times(ratios['pixels'])} the pixels "
        f"({total['images']:,} vs {s_own['images']:,} images; {total['pixels']:,} vs {s_own['pixels']:,} "
        f"pixels).{note}"
    )


def _size_name(point: SizePoint) -> str:
    if not point.train_images:
        return f"training set '{point.size_label}'"
    named_size = "" if point.size_label == str(point.train_images) else f", '{point.size_label}'"
    return f"{point.train_images:,} training images{named_size}"


def size_findings(points: list[SizePoint]) -> list[str]:
    """Figs. 7-8: the gap of each pre-trained arm per training-set size and where pre-training starts to win; with
    several pre-trained arms, which one is best at each size."""
    if not points:
        return []
    arms = points[0].order or study_arms(r for p in points for r in p.arms.values() if r is not None)
    scratch, pres = reference_arm(arms), pretrained_arms(arms)
    out: list[str] = []
    compared: dict[str, list[tuple[SizePoint, float]]] = {arm.name: [] for arm in pres}
    for point in points:
        scr = point.arms.get(scratch.name) if scratch else None
        present = [arm for arm in pres if point.arms.get(arm.name) is not None]
        if scr is None or not present:
            lacking = [a.label for a in ([scratch] if scratch else []) + pres if point.arms.get(a.name) is None]
            lacking = lacking or ["scratch"]
            out.append(
                f"With {_size_name(point)}: no comparison (no finished {' or '.join(lacking)} run with a final AP)."
            )
            continue
        for arm in pres:
            pre = point.arms.get(arm.name)
            if pre is None:
                out.append(
                    f"With {_size_name(point)}: no comparison with {arm.label} (no finished {arm.label} run with a "
                    "final AP)."
                )
                continue
            compared[arm.name].append((point, _gap(pre.final(), scr.final())))
            where = f"With {_size_name(point)} (best finished: {scratch.label} {scr.label}, {arm.label} {pre.label})"
            out.append(gap_sentence(where, "bbox AP", pre.final(), scr.final(), arm.label, scratch.label))
        if len(present) > 1:
            ranked = best_arm_text([(arm, point.arms[arm.name].final()) for arm in present])
            out.append(f"With {_size_name(point)}, the best pre-trained arm: {ranked}.")
    for arm in pres:
        out += _crossover(compared[arm.name], arm)
    return out


def _crossover(compared: list[tuple[SizePoint, float]], arm: Arm) -> list[str]:
    """Where pre-training with `arm` stops winning by more than the threshold, from small to large data."""
    if len(compared) < 2:
        return []
    subject = f"Pre-training ({arm.label})" if named(arm.label) else "Pre-training"
    wins = [p.size_label for p, gap in compared if gap > CAUGHT_UP_AP]
    # The crossover: the smallest size from which every larger compared size has pre-training ahead by <= threshold.
    tail_start = None
    for point, gap in reversed(compared):
        if gap > CAUGHT_UP_AP:
            break
        tail_start = point
    if not wins:
        return [
            f"{subject} does not win by more than {CAUGHT_UP_AP} bbox AP at any compared size "
            f"(down to {compared[0][0].size_label}: gap {compared[0][1]:.1f})."
        ]
    if tail_start is None:
        return [f"{subject} wins by more than {CAUGHT_UP_AP} bbox AP at every compared size ({', '.join(wins)})."]
    return [
        f"{subject} wins by more than {CAUGHT_UP_AP} bbox AP with {', '.join(wins)}; from "
        f"{tail_start.size_label} on the gap is at most {CAUGHT_UP_AP} (or scratch leads)."
    ]


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
            f"Train size {size_label}, {arm_label(run.arm)} {run.label} ({run.name}): from "
            f"iter {mid[0]} to {end} training loss {trend} ({mid_loss:.3f} -> {end_loss:.3f}) while bbox AP "
            f"went {mid[1]:.1f} -> {ap[-1][1]:.1f}."
        )
    return out


def hparam_findings(runs: list[RunData]) -> list[str]:
    """Per size with several settings: the one used for every arm (`selected_hparams`) and whether scratch (and,
    with several pre-trained arms, each one the setting was not selected on) would pick another."""
    out = []
    arms = study_arms(runs)
    scratch, pres = reference_arm(arms), pretrained_arms(arms)
    for size in sizes(runs):
        settings = {r.hparams for r in runs if r.size_label == size}
        if len(settings) < 2:
            continue
        chosen, why, selected_on = _selection(runs, size)
        every = {1: "the one arm", 2: "both arms"}.get(len(arms), f"all {len(arms)} arms")
        others = ([scratch] if scratch else []) + (
            [a for a in pres if selected_on is None or a.name != selected_on.arm] if len(pres) > 1 else []
        )
        clauses = [_own_best_clause(runs, size, chosen, arm) for arm in others]
        out.append(f"Train size {size}: hparams '{chosen}' are used for {every} ({why})" + "".join(clauses) + ".")
    return out


def _own_best_clause(runs: list[RunData], size: str, chosen: str, arm: Arm) -> str:
    """'; it is also scratch's best (x bbox AP)' or "; scratch's own best is 'lr01' (...)"."""
    own = best_hparams(runs, size, arm.name)
    name = arm.label
    if own is None:
        return f"; {name} has no finished run to compare settings"
    best = best_run(_arm_runs(runs, size, own, arm))
    if own == chosen:
        return f"; it is also {name}'s best ({best.final():.1f} bbox AP)"
    used = best_run(_arm_runs(runs, size, chosen, arm))
    with_chosen = f"{used.final():.1f} with '{chosen}'" if used else f"no finished run with '{chosen}'"
    return f"; {name}'s own best is '{own}' ({best.final():.1f} bbox AP vs {with_chosen})"


def grouped_findings(runs: list[RunData]) -> dict[str, list[str]]:
    """All findings by topic, in the order of the paper: schedules (per data size), samples seen, data size,
    hyper-parameters, then what is missing or unusable. Empty topics are left out.

    With seed replicates every comparison is between MEANS over seeds (`results.seed_means`; seeds are independent
    replicates, so pairing seed k of one arm with seed k of another means nothing); a mean is usable when every one
    of its replicates is. What is missing or unusable is said per replicate run.
    """
    if not runs:
        return {"Plan": ["The plan lists no runs."]}
    problems = problem_findings(runs)
    seeds = sorted({r.seed for r in runs if getattr(r, "seed", None) is not None})
    runs = seed_means(runs)
    out: dict[str, list[str]] = {}
    if seeds:
        out["Schedules (Figs. 1, 3, 4)"] = [
            f"Every value compared below is a mean over seeds {', '.join(map(str, seeds))} (each seed's run is in the "
            "final AP table)."
        ]
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
    out["Missing or unusable runs"] = problems
    return {topic: lines for topic, lines in out.items() if lines}


def compute_findings(runs: list[RunData]) -> list[str]:
    """All findings as one list (grouped_findings, flattened)."""
    return [line for lines in grouped_findings(runs).values() for line in lines]
