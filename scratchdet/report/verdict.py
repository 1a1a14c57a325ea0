"""The study's verdict, in at most five sentences: which arm wins at which schedule and data size, by how much, and
whether the difference is beyond test-set noise; with several pre-trained arms, scratch against each of them and
which pre-trained arm is best where (arms named by their spec names).

Noise: the paired bootstrap over validation images (evaluation/bootstrap.py) of the final evaluations' detections,
which every run keeps (eval.save_detections: eval/iter_XXXXXXX_detections.json.gz). A difference is "beyond noise"
when the 95% interval of the resampled differences excludes 0. Without kept detections (VOC data, older runs) the
sentence says that noise was not estimated; it never guesses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from scratchdet.report import findings, results
from scratchdet.report.results import RunData, Study
from scratchdet.run_folder import RunFolder

N_BOOT = 300  # resamples: the interval's ends move by ~0.1 AP between seeds at this count on 50-image sets
LOW_AP = 10.0  # below this, both detectors are too weak for their comparison to say much about pre-training


@dataclass
class Comparison:
    """Scratch and one pre-trained arm's final bbox AP at one schedule and data size, and the bootstrap of their
    difference."""

    size_label: str
    schedule: float
    scratch: RunData
    pretrained: RunData  # a run of one pre-trained arm (`.arm`: its spec name)
    delta: float  # pre-trained minus scratch, AP points
    # Filled by estimate_noise, for the comparisons a verdict sentence states (the bootstrap costs seconds each).
    ci95: tuple[float, float] | None = None  # None: noise not estimated
    images: int | None = None  # validation images both arms were scored on
    noise_estimated: bool = False

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


def bootstrap_pair(scratch: RunData, pretrained: RunData) -> tuple[tuple[float, float] | None, int | None]:
    """95% interval of (second - first) bbox AP, e.g. pre-trained - scratch, over the validation images both were
    scored on, and their count; (None, None) without kept detections or with different image sets."""
    from scratchdet.evaluation.bootstrap import paired_bootstrap
    from scratchdet.evaluation.coco import read_results

    a, b = scratch.last_eval, pretrained.last_eval
    if a is None or b is None or a.get("images") != b.get("images") or not a.get("images"):
        return None, None
    paths = [RunFolder(run.path).detections(run.last_eval["iter"]) for run in (scratch, pretrained)]
    if not all(p.is_file() for p in paths):
        return None, None
    val = _val_ground_truth(scratch)
    if val is None:
        return None, None
    n = int(a["images"])
    result = paired_bootstrap(
        val.coco, read_results(paths[0]), read_results(paths[1]), "bbox", val.image_ids[:n], n_boot=N_BOOT
    )
    low, high = result["delta_ci95"]
    if low != low or high != high:  # NaN: no finite resample (e.g. no ground truth in the sample)
        return None, n
    return (float(low), float(high)), n


def comparisons(study: Study) -> list[Comparison]:
    """Every (data size, schedule, pre-trained arm) where scratch and that arm finished with a final bbox AP, under
    each size's selected hyper-parameters (`findings.selected_hparams`: the best over the pre-trained arms, as the
    paper selects on its pre-trained arm); sizes largest first, schedules ascending, arms in plan order."""
    runs = study.runs
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
                found.append(Comparison(size, schedule, ref, run, run.final("bbox") - ref.final("bbox")))
    return found


def estimate_noise(c: Comparison) -> Comparison:
    """Bootstraps `c`'s difference over its validation images, once; returns `c`."""
    if not c.noise_estimated:
        c.ci95, c.images = bootstrap_pair(c.scratch, c.pretrained)
        c.noise_estimated = True
    return c


def _size_words(c: Comparison) -> str:
    images = c.scratch.train_images
    return f"all {images} training images" if c.size_label == "all" and images else f"{c.size_label} training images"


def _shown_gap(c: Comparison) -> float:
    """Pre-trained minus scratch bbox AP as the difference of the two numbers the sentences show (each rounded to
    0.1, as in the findings below), so that a reader's subtraction agrees with the text."""
    return round(c.pretrained.final("bbox"), 1) - round(c.scratch.final("bbox"), 1)


def _noise_words(ci95: tuple[float, float] | None, images: int | None) -> str:
    if ci95 is None:
        return "noise not estimated (no per-image detections kept)"
    low, high = ci95
    beyond = low > 0 or high < 0
    return (
        f"{'beyond' if beyond else 'within'} test-set noise (95% interval {low:+.1f} to {high:+.1f} over "
        f"{images} validation images)"
    )


def _clause(c: Comparison, two_arms: bool) -> str:
    """ "pre-trained leads scratch by 0.3 bbox AP (35.0 pre-trained vs 34.7 scratch), within test-set noise (...)"."""
    estimate_noise(c)
    p, s = results.arm_label(c.pretrained.arm), results.arm_label(c.scratch.arm)
    winner, loser = (p, s) if c.delta > 0 else (s, p)
    ap_p, ap_s = c.pretrained.final("bbox"), c.scratch.final("bbox")
    shown = abs(_shown_gap(c))
    if round(shown, 1) == 0:
        who = "the two arms" if two_arms else f"{p} and {s}"
        lead = f"{who} tie ({ap_p:.1f} vs {ap_s:.1f} bbox AP)"
    else:
        lead = f"{winner} leads {loser} by {shown:.1f} bbox AP ({ap_p:.1f} {p} vs {ap_s:.1f} {s})"
    return f"{lead}, {_noise_words(c.ci95, c.images)}"


def _point_sentence(point: list[Comparison], two_arms: bool) -> str:
    """One sentence for one (size, schedule): scratch against each pre-trained arm compared there."""
    c = point[0]
    return f"At {c.schedule:g}x on {_size_words(c)}, " + "; ".join(_clause(x, two_arms) for x in point) + "."


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
            ci95, images = bootstrap_pair(second.pretrained, best.pretrained)
            sentence += (
                f"; at {best.schedule:g}x on {_size_words(best)} {results.arm_label(best.arm)} leads "
                f"{results.arm_label(second.arm)} by {gap:.1f} bbox AP, {_noise_words(ci95, images)}"
            )
    return sentence + "."


def verdict(found: list[Comparison], arms: list[results.Arm] | None = None) -> list[str]:
    """At most five sentences from `comparisons(study)`; nothing hand-written about the outcome.

    With one pre-trained arm: the longest and the shortest schedule on the largest training set, how the gap
    changes between them, the next size's longest schedule, and a caveat when every arm is weak. With several, each
    of those sentences compares scratch with every pre-trained arm there, and one sentence says which pre-trained
    arm is best where; over five, the gap's change is left out first, then the next size (the caveat stays).

    Args:
        arms: the study's arms (`results.study_arms`), for the sentence without a comparison; else read off `found`.
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
        optional.append((2, _point_sentence(shortest, two_arms)))
        if (trend := _trend(shortest, longest)) is not None:
            optional.append((3 if two_arms else 5, trend))
    others = [key for key in points if key[0] != found[0].size_label]
    if others:  # the next size's longest schedule; further sizes would repeat the pattern (the tables have them)
        optional.append((4, _point_sentence(points[[k for k in others if k[0] == others[0][0]][-1]], two_arms)))
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
    return [_point_sentence(longest, two_arms), *(sentence for _, sentence in kept), *caveat]


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
    runs = {first.scratch.arm: first.scratch, **{x.pretrained.arm: x.pretrained for x in point}}
    paths = {arm: RunFolder(run.path).detections(run.last_eval["iter"]) for arm, run in runs.items()}
    val = _val_ground_truth(first.scratch) if all(p.is_file() for p in paths.values()) else None
    if val is None:
        return []
    detections = {arm: read_results(path) for arm, path in paths.items()}
    names = {cat["id"]: cat["name"] for cat in val.coco.dataset.get("categories", [])}
    rows = []
    for image_id in val.image_ids[: min(n_images, first.scratch.last_eval.get("images") or n_images)]:
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
