"""The study's verdict, in at most five sentences: which arm wins at which schedule and data size, by how much, and
whether the difference is beyond test-set noise.

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
    """The two arms' final bbox AP at one schedule and data size, and the bootstrap of their difference."""

    size_label: str
    schedule: float
    scratch: RunData
    pretrained: RunData
    delta: float  # pre-trained minus scratch, AP points
    # Filled by estimate_noise, for the comparisons a verdict sentence states (the bootstrap costs seconds each).
    ci95: tuple[float, float] | None = None  # None: noise not estimated
    images: int | None = None  # validation images both arms were scored on
    noise_estimated: bool = False

    def runs(self) -> dict[str, RunData]:
        return {"scratch": self.scratch, "pretrained": self.pretrained}

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
    """95% interval of (pre-trained - scratch) bbox AP over the validation images both were scored on, or None."""
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
    """Every (data size, schedule) where both arms finished with a final bbox AP, under each size's selected
    hyper-parameters (the pre-trained arm's best, as in the paper); sizes largest first, schedules ascending."""
    runs = study.runs
    found = []
    for size in reversed(results.sizes(runs)):
        hp = findings.selected_hparams(runs, size)[0]
        by = {(r.init, r.schedule): r for r in runs if (r.size_label, r.hparams) == (size, hp) and r.finished}
        for schedule in sorted({s for (_, s) in by if s is not None}):
            scratch, pretrained = by.get(("scratch", schedule)), by.get(("pretrained", schedule))
            if scratch is None or pretrained is None:
                continue
            ap_s, ap_p = scratch.final("bbox"), pretrained.final("bbox")
            if ap_s is None or ap_p is None:
                continue
            found.append(Comparison(size, schedule, scratch, pretrained, ap_p - ap_s))
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


def _sentence(c: Comparison) -> str:
    estimate_noise(c)
    winner, loser = ("pre-trained", "scratch") if c.delta > 0 else ("scratch", "pre-trained")
    ap_p, ap_s = c.pretrained.final("bbox"), c.scratch.final("bbox")
    shown = abs(_shown_gap(c))
    lead = (
        f"the two arms tie ({ap_p:.1f} vs {ap_s:.1f} bbox AP)"
        if round(shown, 1) == 0
        else f"{winner} leads {loser} by {shown:.1f} bbox AP ({ap_p:.1f} pre-trained vs {ap_s:.1f} scratch)"
    )
    if c.beyond_noise is None:
        noise = "noise not estimated (no per-image detections kept)"
    else:
        low, high = c.ci95
        noise = (
            f"{'beyond' if c.beyond_noise else 'within'} test-set noise (95% interval {low:+.1f} to {high:+.1f} over "
            f"{c.images} validation images)"
        )
    return f"At {c.schedule:g}x on {_size_words(c)}, {lead}, {noise}."


def verdict(found: list[Comparison]) -> list[str]:
    """At most five sentences from `comparisons(study)`; nothing hand-written about the outcome."""
    if not found:
        return ["No schedule has a finished run of both arms with a final bbox AP yet: no verdict."]
    main = [c for c in found if c.size_label == found[0].size_label]
    longest, shortest = main[-1], main[0]
    sentences = [_sentence(longest)]
    if shortest is not longest:
        sentences.append(_sentence(shortest))
        change = "shrinks" if abs(longest.delta) < abs(shortest.delta) else "grows"
        if (longest.delta > 0) != (shortest.delta > 0):
            change = "changes sign"
        sentences.append(
            f"From {shortest.schedule:g}x to {longest.schedule:g}x the pre-trained minus scratch gap {change} "
            f"({_shown_gap(shortest):+.1f} to {_shown_gap(longest):+.1f} AP)."
        )
    others = [c for c in found if c.size_label != longest.size_label]
    if others:  # the next size's longest schedule; further sizes would repeat the pattern (the tables have them)
        sentences.append(_sentence([c for c in others if c.size_label == others[0].size_label][-1]))
    best = max(max(c.pretrained.final("bbox"), c.scratch.final("bbox")) for c in found)
    if best < LOW_AP:
        sentences.append(
            f"Both arms stay below {LOW_AP:.0f} bbox AP (best {best:.1f}): too weak for this comparison to say much "
            "about pre-training."
        )
    return sentences[:5]


def example_rows(c: Comparison, n_images: int = 3, min_score: float = 0.5, max_shown: int = 15) -> list[dict]:
    """The first `n_images` evaluated validation images with their ground truth and each arm's final detections
    (score >= min_score, at most max_shown per image, masks decoded), for `figures.examples_figure`. Empty when the
    detections were not kept or the data is not COCO."""
    import numpy as np
    import pycocotools.mask as mask_util

    from scratchdet.data.images import read_image
    from scratchdet.evaluation.coco import read_results

    paths = {arm: RunFolder(run.path).detections(run.last_eval["iter"]) for arm, run in c.runs().items()}
    val = _val_ground_truth(c.scratch) if all(p.is_file() for p in paths.values()) else None
    if val is None:
        return []
    detections = {arm: read_results(path) for arm, path in paths.items()}
    names = {cat["id"]: cat["name"] for cat in val.coco.dataset.get("categories", [])}
    rows = []
    for image_id in val.image_ids[: min(n_images, c.scratch.last_eval.get("images") or n_images)]:
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
            panels[f"{results.ARM_NAMES[arm]} {c.schedule:g}x"] = [
                {**r, "mask": mask_util.decode(r["segmentation"]) if "segmentation" in r else None} for r in kept
            ]
        rows.append({"image": image, "id": image_id, "names": names, "panels": panels})
    return rows
