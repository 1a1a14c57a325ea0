"""The study's verdict, in at most five sentences: which arm wins at which schedule and data size, by how much, and
whether the difference is beyond noise; with several pre-trained arms, scratch against each of them and which
pre-trained arm is best where (arms named by their spec names).

Noise: the final evaluations' detections, which every run keeps (eval.save_detections:
eval/iter_XXXXXXX_detections.json.gz), are resampled over validation images (paired: the same images for every arm
and seed), and with seed replicates the seeds of each arm too (evaluation/bootstrap.py `two_level_gap`: a two-level
bootstrap, its scheme and its reasons there). A difference is "beyond noise" when the 95% interval excludes 0; each
sentence names the sources its interval covers, and with one seed per arm it says that training noise was not
measured (and, when some seeded study measured a seed spread, `seed_spread`, how many seeds would resolve the gap).
Against the study's margin m (plan.json verdict.margin) the interval of (pre-trained - scratch) says "scratch is
within +/-m" (inside [-m, m]), "ARM leads" (above m), "scratch leads" (below -m) or "inconclusive"
(`equivalence`; the two one-sided tests of Schuirmann 1987 at 2.5% each). Without kept detections and without
seeds the sentence says that noise was not estimated; it never guesses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from scratchdet.evaluation.bootstrap import GapInterval, image_draws, seeds_to_resolve, two_level_gap
from scratchdet.report import findings, results
from scratchdet.report.results import DEFAULT_MARGIN, MeanRun, RunData, Study, replicates
from scratchdet.run_folder import RunFolder

N_BOOT = 300  # resamples: the interval's ends move by ~0.1 AP between seeds at this count on 50-image sets
LOW_AP = 10.0  # below this, both detectors are too weak for their comparison to say much about pre-training


@dataclass
class Comparison:
    """Scratch and one pre-trained arm's final bbox AP at one schedule and data size, and the bootstrap of their
    difference."""

    size_label: str
    schedule: float
    scratch: RunData | MeanRun  # a run, or the mean over the seeds of one (arm, size, hparams, schedule)
    pretrained: RunData | MeanRun  # a run (or seed mean) of one pre-trained arm (`.arm`: its spec name)
    delta: float  # pre-trained minus scratch, AP points (means over seeds)
    margin: float = DEFAULT_MARGIN  # plan.json verdict.margin, AP points
    # Filled by estimate_noise, for the comparisons a verdict sentence states (the bootstrap costs seconds each).
    ci95: tuple[float, float] | None = None  # None: noise not estimated
    images: int | None = None  # validation images both arms were scored on (None: images not resampled)
    noise_estimated: bool = False
    interval: GapInterval | None = None  # the two-level bootstrap behind ci95

    def runs(self) -> dict[str, RunData]:
        """{arm name: run}, scratch first."""
        return {self.scratch.arm: self.scratch, self.pretrained.arm: self.pretrained}

    @property
    def arm(self) -> str:
        """The pre-trained arm's spec name."""
        return self.pretrained.arm

    @property
    def beyond_noise(self) -> bool | None:
        if self.ci95 is None:
            return None
        return self.ci95[0] > 0 or self.ci95[1] < 0


# Validation sets already read, by their data settings: the runs of a study share one (they differ in the training
# subset, the schedule and the initialization), so a report reads it once, not once per run.
_VAL_SETS: dict[str, object] = {}


def _val_ground_truth(run: RunData):
    """The run's validation set (as `scratchdet eval` builds it from the run's config.yaml); None for VOC data."""
    from scratchdet.config import config_to_dict, load_config
    from scratchdet.data.build import build_val_dataset

    cfg = load_config(RunFolder(run.path).config)
    if cfg.data.format != "coco":
        return None
    data = {k: v for k, v in config_to_dict(cfg)["data"].items() if k not in ("train", "train_subset")}
    key = json.dumps(data, sort_keys=True, default=str)
    if key not in _VAL_SETS:
        _VAL_SETS[key] = build_val_dataset(cfg)
    return _VAL_SETS[key]


# Per run (path, evaluated iteration, images): its per-image matching table and its AP on the shared image draws.
# A study's runs share one validation set, so the draws are shared by every arm, seed and schedule, and each run's
# COCOeval matching runs once per report, whatever number of comparisons uses it.
_RESAMPLED: dict[tuple[str, int, int], np.ndarray | None] = {}
_DRAWS: dict[int, np.ndarray] = {}


def _draws(n_images: int) -> np.ndarray:
    if n_images not in _DRAWS:
        _DRAWS[n_images] = image_draws(n_images, N_BOOT, seed=0)
    return _DRAWS[n_images]


def resampled_aps(run: RunData, n_images: int) -> np.ndarray | None:
    """(N_BOOT,) the run's final bbox AP on each shared draw of its first `n_images` validation images; None
    without kept detections or for non-COCO data."""
    from scratchdet.evaluation.bootstrap import results_table
    from scratchdet.evaluation.coco import read_results

    key = (str(run.path), int(run.last_eval["iter"]), n_images)
    if key not in _RESAMPLED:
        path = RunFolder(run.path).detections(run.last_eval["iter"])
        val = _val_ground_truth(run) if path.is_file() else None
        if val is None:
            _RESAMPLED[key] = None
        else:
            table = results_table(val.coco, read_results(path), "bbox", val.image_ids[:n_images])
            _RESAMPLED[key] = table.aps(_draws(n_images))
    return _RESAMPLED[key]


def gap_interval(reference, other) -> GapInterval | None:
    """The two-level bootstrap of (other - reference) final bbox AP, each a run or a seed mean (`results.MeanRun`):
    validation images resampled when every replicate kept its detections on the same images, seeds resampled where
    an arm has two or more. None when neither source can be resampled (noise not estimated)."""
    ref_runs, other_runs = replicates(reference), replicates(other)
    everyone = ref_runs + other_runs
    if any(r.last_eval is None or r.final("bbox") is None for r in everyone):
        return None
    ref_full = np.array([r.final("bbox") for r in ref_runs])
    other_full = np.array([r.final("bbox") for r in other_runs])
    counts = {r.last_eval.get("images") for r in everyone}
    n = counts.pop() if len(counts) == 1 else None
    rows = [resampled_aps(r, int(n)) for r in everyone] if n else [None]
    if all(row is not None for row in rows):
        ref_rows, other_rows = np.stack(rows[: len(ref_runs)]), np.stack(rows[len(ref_runs) :])
        return two_level_gap(ref_rows, other_rows, ref_full, other_full, images=int(n))
    if max(len(ref_runs), len(other_runs)) < 2:
        return None
    # Seeds alone: each run's AP constant over the replicates (its images not resampled).
    constant = np.ones((1, N_BOOT))
    return two_level_gap(
        ref_full[:, None] * constant, other_full[:, None] * constant, ref_full, other_full, images=None
    )


def bootstrap_pair(scratch, pretrained) -> tuple[tuple[float, float] | None, int | None]:
    """95% interval of (second - first) bbox AP, e.g. pre-trained - scratch (runs or seed means), and the count of
    validation images resampled; (None, None) when noise cannot be estimated (`gap_interval`)."""
    found = gap_interval(scratch, pretrained)
    if found is None:
        return None, None
    low, high = found.ci95
    if low != low or high != high:  # NaN: no finite resample (e.g. no ground truth in the sample)
        return None, found.images
    return (float(low), float(high)), found.images


def comparisons(study: Study) -> list[Comparison]:
    """Every (data size, schedule, pre-trained arm) where scratch and that arm finished with a final bbox AP, under
    each size's selected hyper-parameters (`findings.selected_hparams`: the best over the pre-trained arms, as the
    paper selects on its pre-trained arm); sizes largest first, schedules ascending, arms in plan order. With seed
    replicates each side is the mean over its seeds (`results.seed_means`), usable when every seed is."""
    runs = results.seed_means(study.runs)
    arms = results.study_arms(runs)
    scratch = results.reference_arm(arms)
    if scratch is None:
        return []
    found = []
    for size in reversed(results.sizes(runs)):
        hp = findings.selected_hparams(runs, size)[0]
        by = {(r.arm, r.schedule): r for r in runs if (r.size_label, r.hparams) == (size, hp) and r.finished}
        for schedule in sorted({s for (_, s) in by if s is not None}):
            ref = by.get((scratch.name, schedule))
            if ref is None or ref.final("bbox") is None:
                continue
            for arm in results.pretrained_arms(arms):
                run = by.get((arm.name, schedule))
                if run is None or run.final("bbox") is None:
                    continue
                delta = run.final("bbox") - ref.final("bbox")
                found.append(Comparison(size, schedule, ref, run, delta, margin=study.margin))
    return found


def estimate_noise(c: Comparison) -> Comparison:
    """Bootstraps `c`'s difference over its validation images, once; returns `c`."""
    if not c.noise_estimated:
        c.interval = gap_interval(c.scratch, c.pretrained)
        if c.interval is not None and all(v == v for v in c.interval.ci95):
            c.ci95, c.images = c.interval.ci95, c.interval.images
        else:
            c.interval = None
        c.noise_estimated = True
    return c


def _size_words(c: Comparison) -> str:
    images = c.scratch.train_images
    return f"all {images} training images" if c.size_label == "all" and images else f"{c.size_label} training images"


def _shown_gap(c: Comparison) -> float:
    """Pre-trained minus scratch bbox AP as the difference of the two numbers the sentences show (each rounded to
    0.1, as in the findings below), so that a reader's subtraction agrees with the text."""
    return round(c.pretrained.final("bbox"), 1) - round(c.scratch.final("bbox"), 1)


def _sources(iv: GapInterval) -> str:
    """The noise sources an interval covers, in words."""
    training = [n >= 2 for n in iv.seeds]
    if all(training):
        return "training and test-set noise" if iv.images_resampled else "training noise"
    if any(training):
        return "test-set noise and one arm's training noise" if iv.images_resampled else "one arm's training noise"
    return "test-set noise"


def seeds_needed_words(iv: GapInterval, spread: results.SeedSpread) -> str:
    """How many seeds per arm would resolve the observed gap at this comparison's image noise (the formula of
    `evaluation.bootstrap.seeds_to_resolve`), with the measured seed spread it assumes."""
    n = seeds_to_resolve(iv.delta, iv.image_se, spread.sd)
    at = f"at the seed spread measured in {spread.source} (SD {spread.sd:.2f} AP)"
    formula = f"image SE {iv.image_se:.2f}; n = 2 SD^2 / ((gap / 1.96)^2 - SE^2)"
    if n is None:
        return (
            f"{at} no number of seeds would resolve a {abs(iv.delta):.1f} AP gap at this test-set noise "
            f"({formula}): more validation images would"
        )
    return f"{at} about {n} seeds per arm would resolve a {abs(iv.delta):.1f} AP gap at this test-set noise ({formula})"


def noise_words(iv: GapInterval | None, names: tuple[str, str] = ("scratch", "pre-trained"), spread=None) -> str:
    """ "beyond test-set noise (95% interval +1.2 to +2.8 over 50 validation images; training noise not measured:
    one seed per arm)", naming the sources the interval covers and those it does not."""
    if iv is None:
        return "noise not estimated (no per-image detections kept)"
    low, high = iv.ci95
    over = []
    if any(n >= 2 for n in iv.seeds):
        same = iv.seeds[0] == iv.seeds[1]
        over.append(
            f"{iv.seeds[0]} seeds per arm" if same else f"{iv.seeds[0]} {names[0]} and {iv.seeds[1]} {names[1]} seeds"
        )
    if iv.images_resampled:
        over.append(f"{iv.images} validation images")
    notes = []
    if iv.training_measured and iv.images_resampled:
        il, ih = iv.image_ci95
        notes.append(f"test-set noise alone: {il:+.1f} to {ih:+.1f}")
    if not iv.images_resampled:
        notes.append("test-set noise not estimated: no per-image detections kept")
    if not iv.training_measured:
        if max(iv.seeds) < 2:
            notes.append("training noise not measured: one seed per arm")
        else:
            notes.append(f"training noise of {names[0] if iv.seeds[0] < 2 else names[1]} not measured: one seed")
    if spread is not None and iv.images_resampled and (not iv.training_measured or not iv.beyond_noise):
        notes.append(seeds_needed_words(iv, spread))
    return (
        f"{'beyond' if iv.beyond_noise else 'within'} {_sources(iv)} (95% interval {low:+.1f} to {high:+.1f} over "
        + " and ".join(over)
        + "".join(f"; {n}" for n in notes)
        + ")"
    )


def equivalence(ci95: tuple[float, float], margin: float) -> str:
    """The interval of (pre-trained - scratch) against the margin m: "within" (inside [-m, m]: scratch is no worse
    than m and no better than m), "pretrained" (above m: the arm leads by more than m), "scratch" (below -m) or
    "inconclusive". A 95% interval inside [-m, m] is the two one-sided tests at 2.5% each (Schuirmann 1987, J.
    Pharmacokinet. Biopharm. 15(6)); outside it on one side excludes 0 and that side's margin."""
    low, high = ci95
    if -margin <= low and high <= margin:
        return "within"
    if low > margin:
        return "pretrained"
    if high < -margin:
        return "scratch"
    return "inconclusive"


def margin_words(c: Comparison) -> str:
    """ "against the +/-0.5 AP margin: scratch is within +/-0.5 of imagenet" (or leads, or inconclusive)."""
    p, s, m = results.arm_label(c.pretrained.arm), results.arm_label(c.scratch.arm), c.margin
    kind = equivalence(c.ci95, m)
    text = {
        "within": f"{s} is within ±{m:g} of {p}",
        "pretrained": f"{p} leads by more than {m:g}",
        "scratch": f"{s} leads by more than {m:g}",
        "inconclusive": "inconclusive (the interval holds gaps both within and beyond it)",
    }[kind]
    return f"against the ±{m:g} AP margin: {text}"


def _clause(c: Comparison, two_arms: bool, spread=None) -> str:
    """ "pre-trained leads scratch by 0.3 bbox AP (35.0 pre-trained vs 34.7 scratch), within test-set noise (...)"."""
    estimate_noise(c)
    p, s = results.arm_label(c.pretrained.arm), results.arm_label(c.scratch.arm)
    winner, loser = (p, s) if c.delta > 0 else (s, p)
    ap_p, ap_s = c.pretrained.final("bbox"), c.scratch.final("bbox")
    shown = abs(_shown_gap(c))
    means = ", means over seeds" if isinstance(c.scratch, MeanRun) or isinstance(c.pretrained, MeanRun) else ""
    if round(shown, 1) == 0:
        who = "the two arms" if two_arms else f"{p} and {s}"
        lead = f"{who} tie ({ap_p:.1f} vs {ap_s:.1f} bbox AP{means})"
    else:
        lead = f"{winner} leads {loser} by {shown:.1f} bbox AP ({ap_p:.1f} {p} vs {ap_s:.1f} {s}{means})"
    text = f"{lead}, {noise_words(c.interval, (s, p), spread)}"
    return text if c.ci95 is None else f"{text}; {margin_words(c)}"


def _point_sentence(point: list[Comparison], two_arms: bool, spread=None) -> str:
    """One sentence for one (size, schedule): scratch against each pre-trained arm compared there."""
    c = point[0]
    clauses = "; ".join(_clause(x, two_arms, spread) for x in point)
    return f"At {c.schedule:g}x on {_size_words(c)}, {clauses}."


def _points(found: list[Comparison]) -> dict[tuple[str, float], list[Comparison]]:
    out: dict[tuple[str, float], list[Comparison]] = {}
    for c in found:
        out.setdefault((c.size_label, c.schedule), []).append(c)
    return out


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _trend(short: list[Comparison], long: list[Comparison]) -> str | None:
    """How each arm's gap to scratch changes from the shortest to the longest schedule."""
    before = {c.arm: c for c in short}
    parts = []
    for c in long:
        if c.arm not in before:
            continue
        first, last = before[c.arm], c
        change = "shrinks" if abs(last.delta) < abs(first.delta) else "grows"
        if (last.delta > 0) != (first.delta > 0):
            change = "changes sign"
        parts.append(
            f"the {results.arm_label(c.arm)} minus {results.arm_label(c.scratch.arm)} gap {change} "
            f"({_shown_gap(first):+.1f} to {_shown_gap(last):+.1f} AP)"
        )
    if not parts:
        return None
    return f"From {short[0].schedule:g}x to {long[0].schedule:g}x {_and(parts)}."


def _best_pretrained(found: list[Comparison], headline: list[Comparison]) -> str | None:
    """Which pre-trained arm is best where (each (size, schedule) that two or more finished), and at the headline
    point how far the best leads the next one, with the bootstrap of that difference."""
    by_winner: dict[str, dict[str, list[str]]] = {}
    for point in _points(found).values():
        if len(point) < 2:
            continue
        top = max(round(c.pretrained.final("bbox"), 1) for c in point)
        winners = [results.arm_label(c.arm) for c in point if round(c.pretrained.final("bbox"), 1) == top]
        text = f"{winners[0]} is best" if len(winners) == 1 else f"{_and(winners)} tie"
        by_winner.setdefault(text, {}).setdefault(_size_words(point[0]), []).append(f"{point[0].schedule:g}x")
    if not by_winner:
        return None
    parts = [
        f"{text} " + _and([f"at {_and(schedules)} on {where}" for where, schedules in places.items()])
        for text, places in by_winner.items()
    ]
    sentence = "Among the pre-trained arms, " + "; ".join(parts)
    if len(headline) > 1:
        best, second = sorted(headline, key=lambda c: -round(c.pretrained.final("bbox"), 1))[:2]
        gap = round(best.pretrained.final("bbox"), 1) - round(second.pretrained.final("bbox"), 1)
        if round(gap, 1) > 0:
            iv = gap_interval(second.pretrained, best.pretrained)
            names = (results.arm_label(second.arm), results.arm_label(best.arm))
            sentence += (
                f"; at {best.schedule:g}x on {_size_words(best)} {names[1]} leads "
                f"{names[0]} by {gap:.1f} bbox AP, {noise_words(iv, names)}"
            )
    return sentence + "."


def verdict(
    found: list[Comparison], arms: list[results.Arm] | None = None, spread: results.SeedSpread | None = None
) -> list[str]:
    """At most five sentences from `comparisons(study)`; nothing hand-written about the outcome.

    With one pre-trained arm: the longest and the shortest schedule on the largest training set, how the gap
    changes between them, the next size's longest schedule, and a caveat when every arm is weak. With several, each
    of those sentences compares scratch with every pre-trained arm there, and one sentence says which pre-trained
    arm is best where; over five, the gap's change is left out first, then the next size (the caveat stays).

    Args:
        arms: the study's arms (`results.study_arms`), for the sentence without a comparison; else read off `found`.
        spread: a measured seed-to-seed spread (`results.seed_spread`): where training noise was not measured (or a
            gap is not resolved), the sentence says how many seeds per arm would resolve the gap.
    """
    pretrained = list(dict.fromkeys(c.arm for c in found))
    if arms is not None:
        pretrained = [a.name for a in results.pretrained_arms(arms)] or pretrained
    two_arms = len(pretrained) <= 1
    if not found:
        if two_arms:
            return ["No schedule has a finished run of both arms with a final bbox AP yet: no verdict."]
        return [
            "No schedule has a finished run of scratch and of a pre-trained arm with a final bbox AP yet: no verdict."
        ]
    points = _points(found)
    main = [key for key in points if key[0] == found[0].size_label]
    longest, shortest = points[main[-1]], points[main[0]]
    # (priority, sentence) in reading order; the first sentence and the caveat are always kept.
    optional: list[tuple[int, str]] = []
    if not two_arms and (best := _best_pretrained(found, longest)):
        optional.append((1, best))
    if shortest is not longest:
        optional.append((2, _point_sentence(shortest, two_arms, spread)))
        if (trend := _trend(shortest, longest)) is not None:
            optional.append((3 if two_arms else 5, trend))
    others = [key for key in points if key[0] != found[0].size_label]
    if others:  # the next size's longest schedule; further sizes would repeat the pattern (the tables have them)
        optional.append((4, _point_sentence(points[[k for k in others if k[0] == others[0][0]][-1]], two_arms, spread)))
    best_ap = max(max(c.pretrained.final("bbox"), c.scratch.final("bbox")) for c in found)
    caveat = []
    if best_ap < LOW_AP:
        who = "Both arms stay" if two_arms else "Every arm stays"
        caveat.append(
            f"{who} below {LOW_AP:.0f} bbox AP (best {best_ap:.1f}): too weak for this comparison to say much "
            "about pre-training."
        )
    room = 5 - 1 - len(caveat)
    kept = sorted(sorted(optional, key=lambda ps: ps[0])[:room], key=optional.index)
    return [_point_sentence(longest, two_arms, spread), *(sentence for _, sentence in kept), *caveat]


def example_rows(
    c: Comparison | list[Comparison], n_images: int = 3, min_score: float = 0.5, max_shown: int = 15
) -> list[dict]:
    """The first `n_images` evaluated validation images with their ground truth and each arm's final detections
    (score >= min_score, at most max_shown per image, masks decoded), for `figures.examples_figure`: scratch and the
    pre-trained arm of `c`, or of every comparison in a list of one (size, schedule). Panels are named
    "ARM SCHEDULE" by the arms' spec names (`results.arm_label`). Empty when the detections were not kept or the data
    is not COCO."""
    import numpy as np
    import pycocotools.mask as mask_util

    from scratchdet.data.images import read_image
    from scratchdet.evaluation.coco import read_results

    point = c if isinstance(c, list) else [c]
    if not point:
        return []
    first = point[0]
    # With seeds, each arm's first seed shows its detections (a mean over seeds has no detections of its own).
    runs = {
        first.scratch.arm: replicates(first.scratch)[0],
        **{x.pretrained.arm: replicates(x.pretrained)[0] for x in point},
    }
    paths = {arm: RunFolder(run.path).detections(run.last_eval["iter"]) for arm, run in runs.items()}
    val = _val_ground_truth(runs[first.scratch.arm]) if all(p.is_file() for p in paths.values()) else None
    if val is None:
        return []
    detections = {arm: read_results(path) for arm, path in paths.items()}
    names = {cat["id"]: cat["name"] for cat in val.coco.dataset.get("categories", [])}
    rows = []
    for image_id in val.image_ids[: min(n_images, runs[first.scratch.arm].last_eval.get("images") or n_images)]:
        pixels = read_image(val.image_file(image_id), max_pixels=val.max_image_pixels)  # the run's pixel limit
        image = (pixels.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        gt = [
            {"bbox": a["bbox"], "category_id": a["category_id"], "mask": val.coco.annToMask(a)}
            for a in val.coco.imgToAnns.get(image_id, [])
            if not a.get("iscrowd")
        ]
        panels = {"ground truth": gt}
        for arm, found in detections.items():
            kept = sorted((r for r in found if r["image_id"] == image_id and r["score"] >= min_score),
                          key=lambda r: -r["score"])[:max_shown]  # fmt: skip
            panels[f"{results.arm_label(arm)} {first.schedule:g}x"] = [
                {**r, "mask": mask_util.decode(r["segmentation"]) if "segmentation" in r else None} for r in kept
            ]
        rows.append({"image": image, "id": image_id, "names": names, "panels": panels})
    return rows
