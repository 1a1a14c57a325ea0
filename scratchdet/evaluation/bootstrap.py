"""Is an AP difference bigger than the test set's noise? A paired bootstrap over images.

Two result lists on the same images (e.g. without and with test-time augmentation) are compared by
resampling the images with replacement many times and recomputing both APs on each resample: the spread of the
difference is the part of it that comes from which images happen to be in the test set. "Paired": both APs of a
replicate use the same resampled images, so what the two have in common cancels.

Cost: COCOeval's per-image matching (`evaluate`) runs once per result list; each replicate only re-runs
`accumulate` over the resampled per-image records (COCOeval's `evalImgs`, indexed by category, area range and
position in `params.imgIds`, which may then hold repeated ids). This uses pycocotools' documented data layout, the
reference implementation, not faster-coco-eval.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from scratchdet.evaluation.backends import metric_view


def _evaluated(
    coco_gt: COCO, results: list[dict], iou_type: str, image_ids: Sequence[int], cat_ids: Sequence[int] | None
) -> COCOeval:
    view = metric_view(coco_gt, iou_type)  # annotation and category ids COCOeval can represent
    results, cat_ids = view.map_results(results), view.map_cat_ids(cat_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = view.gt.loadRes(copy.deepcopy(results)) if results else COCO()
        evaluator = COCOeval(view.gt, coco_dt, iou_type)
        evaluator.params.imgIds = list(image_ids)
        if cat_ids is not None:
            evaluator.params.catIds = list(cat_ids)
        evaluator.evaluate()
    return evaluator


def _ap(evaluator: COCOeval) -> float:
    """COCO AP (stats[0]: IoU .50:.95, all areas, the largest maxDets) from `accumulate`'s precision table."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    valid = precision[precision > -1]
    return float(np.mean(valid)) * 100 if valid.size else float("nan")


def _resampled_ap(evaluator: COCOeval, positions: np.ndarray) -> float:
    """AP of the images at `positions` (repeats allowed) of params.imgIds, from the per-image records."""
    full = evaluator.evalImgs
    n_images = len(evaluator.params.imgIds)
    n_blocks = len(full) // n_images  # categories x area ranges, each a block of n_images records
    original_params = evaluator.params
    params = copy.copy(original_params)
    params.imgIds = [original_params.imgIds[p] for p in positions]
    evaluator.evalImgs = [full[b * n_images + p] for b in range(n_blocks) for p in positions]
    evaluator._paramsEval = params
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.accumulate(params)
        return _ap(evaluator)
    finally:
        evaluator.evalImgs, evaluator._paramsEval = full, original_params


def paired_bootstrap(
    coco_gt: COCO,
    results_a: list[dict],
    results_b: list[dict],
    iou_type: str,
    image_ids: Sequence[int],
    *,
    n_boot: int = 500,
    seed: int = 0,
    cat_ids: Sequence[int] | None = None,
) -> dict:
    """AP of two result lists on the same images, their difference, and its bootstrap spread.

    Args:
        coco_gt: the ground truth. results_a, results_b: COCO result dicts. iou_type: bbox | segm | keypoints.
        image_ids: the evaluated images. n_boot: resamples. seed: fixes the resamples (both lists see the same).
    Returns:
        {"ap_a", "ap_b", "delta" (= ap_b - ap_a, percent), "delta_std", "delta_ci95" [2.5%, 97.5%] of the
        resampled differences, "n_boot", "images"}.
    """
    image_ids = list(image_ids)
    eval_a = _evaluated(coco_gt, results_a, iou_type, image_ids, cat_ids)
    eval_b = _evaluated(coco_gt, results_b, iou_type, image_ids, cat_ids)
    everything = np.arange(len(image_ids))
    ap_a, ap_b = _resampled_ap(eval_a, everything), _resampled_ap(eval_b, everything)
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_boot):
        positions = rng.integers(0, len(image_ids), size=len(image_ids))
        deltas.append(_resampled_ap(eval_b, positions) - _resampled_ap(eval_a, positions))
    deltas = np.asarray([d for d in deltas if np.isfinite(d)])
    low, high = np.percentile(deltas, [2.5, 97.5]) if deltas.size else (float("nan"), float("nan"))
    return {
        "ap_a": round(ap_a, 3),
        "ap_b": round(ap_b, 3),
        "delta": round(ap_b - ap_a, 3),
        "delta_std": round(float(np.std(deltas)), 3) if deltas.size else float("nan"),
        "delta_ci95": [round(float(low), 3), round(float(high), 3)],
        "n_boot": int(deltas.size),
        "images": len(image_ids),
    }


# ---------------------------------------------------------------------------------------------------- two levels
#
# The verdict's gap is a difference of MEANS over seeds (each seed a run trained from its own initialization and data
# order) scored on one validation set. Its noise has two sources: which images the validation set happened to draw
# (shared by every run: the same images score every arm and seed) and which seeds were drawn (independent per arm).
# The functions below resample both, on per-image tables: a run's AP on any multiset of its validation images.

T_LEVEL = 0.975  # two-sided 95% intervals


def image_draws(n_images: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_images) positions drawn with replacement; the same draws as `paired_bootstrap`'s for one seed
    (numpy's Generator fills an array row by row from one stream)."""
    return np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))


@dataclass(frozen=True)
class ScoreTable:
    """A per-image score table: a run's AP on a multiset of images is the mean of their scores (AP points).

    The abstraction the statistical tests simulate with (a known generating process, no COCOeval). COCO AP is not a
    mean over images; `MatchTable` is the exact table of a real result list, with the same interface.
    """

    scores: np.ndarray  # (n_images,) AP points

    @property
    def n_images(self) -> int:
        return int(self.scores.shape[0])

    def ap(self, positions: np.ndarray) -> float:
        return float(self.scores[positions].mean())

    def aps(self, draws: np.ndarray) -> np.ndarray:
        """(n_boot,) AP of each row of `draws` (n_boot, n_images)."""
        return self.scores[draws].mean(axis=1)


@dataclass(frozen=True)
class _Category:
    image: np.ndarray  # (D,) position in params.imgIds of each detection
    scores: np.ndarray  # (D,)
    tp: np.ndarray  # (T, D) matched and not ignored, per IoU threshold
    fp: np.ndarray  # (T, D) unmatched and not ignored
    gt: np.ndarray  # (n_images,) ground truths not ignored, per image


@dataclass(frozen=True)
class MatchTable:
    """COCOeval's per-image matching of one result list, as a table: AP of any multiset of the images computed as
    `COCOeval.accumulate` computes stats[0] (IoU .50:.95, area "all", maxDets[-1]; 101 recall points, precision
    made monotone, categories without ground truth in the sample left out), but for that one area and maxDets
    only, in numpy. Built once per run from `evaluate`'s records (`match_table`); a replicate costs one sort per
    category. Detections of different images with exactly equal scores may be ordered differently from COCOeval's
    concatenation order (an order COCO does not define either)."""

    n_images: int
    categories: tuple[_Category, ...]
    iou_thresholds: int

    def ap(self, positions: np.ndarray) -> float:
        counts = np.bincount(np.asarray(positions), minlength=self.n_images)
        recall_points = np.linspace(0.0, 1.0, 101)
        per_category = []
        for c in self.categories:
            n_gt = int(counts @ c.gt)
            if n_gt == 0:
                continue  # COCOeval's -1: no ground truth of this category in the sample
            q = np.zeros((self.iou_thresholds, recall_points.size))
            repeat = counts[c.image]
            if repeat.sum():
                order = np.argsort(-np.repeat(c.scores, repeat), kind="mergesort")
                tp = np.cumsum(np.repeat(c.tp, repeat, axis=1)[:, order], axis=1, dtype=float)
                fp = np.cumsum(np.repeat(c.fp, repeat, axis=1)[:, order], axis=1, dtype=float)
                recall = tp / n_gt
                precision = tp / (fp + tp + np.spacing(1))
                precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
                for t in range(self.iou_thresholds):
                    at = np.searchsorted(recall[t], recall_points, side="left")
                    inside = at < recall.shape[1]
                    q[t, inside] = precision[t, at[inside]]
            per_category.append(q.mean())
        return float(np.mean(per_category)) * 100 if per_category else float("nan")

    def aps(self, draws: np.ndarray) -> np.ndarray:
        return np.array([self.ap(row) for row in draws])


def match_table(evaluator: COCOeval) -> MatchTable:
    """The `MatchTable` of an evaluated COCOeval (after `evaluate`; evalImgs are ordered category, area range,
    image)."""
    p = evaluator.params
    n_images, n_areas, max_det = len(p.imgIds), len(p.areaRng), p.maxDets[-1]
    n_t = len(p.iouThrs)
    categories = []
    for k in range(len(p.catIds)):
        block = evaluator.evalImgs[k * n_areas * n_images : k * n_areas * n_images + n_images]  # area "all"
        image, scores, tp, fp = [], [], [], []
        gt = np.zeros(n_images, dtype=np.int64)
        for i, e in enumerate(block):
            if e is None:
                continue
            d = np.asarray(e["dtScores"][:max_det], dtype=float)
            matched = np.asarray(e["dtMatches"])[:, :max_det].astype(bool).reshape(n_t, d.size)
            ignored = np.asarray(e["dtIgnore"])[:, :max_det].astype(bool).reshape(n_t, d.size)
            image.append(np.full(d.size, i))
            scores.append(d)
            tp.append(matched & ~ignored)
            fp.append(~matched & ~ignored)
            gt[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        if not image:
            continue
        categories.append(_Category(np.concatenate(image), np.concatenate(scores), np.hstack(tp), np.hstack(fp), gt))
    return MatchTable(n_images, tuple(categories), n_t)


def results_table(
    coco_gt: COCO, results: list[dict], iou_type: str, image_ids: Sequence[int], cat_ids: Sequence[int] | None = None
) -> MatchTable:
    """COCOeval's per-image matching of `results` on `image_ids` (one `evaluate`), as a `MatchTable`."""
    return match_table(_evaluated(coco_gt, results, iou_type, list(image_ids), cat_ids))


def t_quantile(df: float, p: float = T_LEVEL) -> float:
    """Student's t quantile for p in (0.5, 1): exact for df 1 and 2 (closed forms), else the Cornish-Fisher
    expansion in 1/df (Abramowitz & Stegun 26.7.5; within 0.005 of the tables from df 3). A df that is not an
    integer is rounded down (a wider interval); df = inf gives the normal quantile."""
    z = NormalDist().inv_cdf(p)
    if not math.isfinite(df):
        return z
    n = max(1, math.floor(df))
    if n == 1:
        return math.tan(math.pi * (p - 0.5))
    if n == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / n + g2 / n**2 + g3 / n**3 + g4 / n**4


@dataclass(frozen=True)
class GapInterval:
    """The gap (other arm minus reference arm, means over their seeds, AP points) and its 95% intervals.

    `ci95` covers every source that was measured: test-set images always (when resampled), training seeds when both
    arms have two or more. `image_ci95` is the image-only interval (the percentile interval of the paired image
    bootstrap, what the report stated before seeds): what `ci95` would claim if training noise did not exist.
    """

    delta: float
    ci95: tuple[float, float]
    image_ci95: tuple[float, float] | None  # None: images not resampled (no per-image detections)
    se: float  # standard error of the gap from the two-level replicates
    image_se: float  # its part from the images alone (0 when images are not resampled)
    seeds: tuple[int, int]  # seeds of the reference and the other arm
    seed_sd: tuple[float | None, float | None]  # SD of each arm's full-set AP over its seeds (None: one seed)
    df: float  # Welch-Satterthwaite degrees of freedom of `se` (inf: images only)
    images: int | None
    n_boot: int

    @property
    def training_measured(self) -> bool:
        return min(self.seeds) >= 2

    @property
    def images_resampled(self) -> bool:
        return self.image_ci95 is not None

    @property
    def beyond_noise(self) -> bool:
        low, high = self.ci95
        return low > 0 or high < 0

    def image_only_beyond_noise(self) -> bool | None:
        if self.image_ci95 is None:
            return None
        low, high = self.image_ci95
        return low > 0 or high < 0


def _seed_level(rows: np.ndarray, full: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One arm's mean over its seeds, per replicate, with its seeds resampled: rows (S, B), full (S,) -> (B,).

    Each replicate keeps the image level's all-seed mean at its image draw and adds the deviation of a resample of
    the arm's seeds (S drawn with replacement, independently per replicate and per arm) from the mean of their
    full-set APs, scaled by sqrt(S / (S - 1)) so that its variance is the unbiased s^2 / S rather than the plug-in
    (S - 1) / S * s^2 / S: the modified residuals r / sqrt(1 - h) of Davison & Hinkley 1997 (Sec. 6.2), with
    leverage h = 1 / S for a mean; with 3 seeds the plug-in variance is a third too small. The deviations are taken
    on the full validation set, not re-drawn with each image draw: re-drawn, each seed's own image noise would be
    counted a second time (measured on the mini study: a gap variance 2.7x the sum of its parts, instead of 1x)."""
    n_seeds, n_boot = rows.shape
    mean = rows.mean(axis=0)
    if n_seeds < 2:
        return mean
    full = np.asarray(full, dtype=float)
    picks = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    return mean + math.sqrt(n_seeds / (n_seeds - 1)) * (full[picks].mean(axis=1) - full.mean())


def two_level_gap(
    reference: np.ndarray,
    other: np.ndarray,
    reference_full: np.ndarray,
    other_full: np.ndarray,
    *,
    images: int | None,
    seed: int = 0,
) -> GapInterval:
    """The gap other - reference (each the mean over its seeds) with an interval over seeds and images together.

    Args:
        reference, other: (S_arm, B) each run's AP (points) on B image draws, the SAME draws for every arm and seed
            (rows of `image_draws` through each run's table); a column of constant rows when images are not
            resampled (then images=None). reference_full, other_full: (S_arm,) each run's AP on the full set.
        images: validation images behind the draws, or None when they were not resampled.
    Returns:
        A `GapInterval`. Replicates where any run's AP is not finite (no ground truth in the draw) are left out.

    The scheme (a two-level, crossed bootstrap): every replicate takes one image draw, shared by all runs (paired
    across arms and seeds, so the images' common difficulty cancels in the gap), and, per arm independently, a
    resample of its seeds (`_seed_level`). Seeds and images are crossed here, not nested (every seed is scored on
    the same images), so neither level can be resampled inside the other as in a two-stage design (Davison &
    Hinkley 1997, Sec. 3.8, where resampling both stages overstates the variance and the top stage alone nearly
    gets it right); the two levels are resampled side by side and their variances add: SE^2 ~ the images' part
    (the replicates' spread of the all-seed gap) + s_a^2 / S_a + s_b^2 / S_b. That counts the seed x image
    interaction (each seed's own noise on these images) in both parts, so it errs wide, as the independent
    resampling of crossed factors does (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat. 1(2)); wide is
    the safe side for a claim "beyond noise". With few seeds a percentile interval of the replicates would be too
    narrow (three seeds give ten distinct resamples, and the spread of a mean of three is a t, not a normal,
    matter), so the interval is gap +/- t(df) x SE, SE the replicates' standard deviation and df the
    Welch-Satterthwaite degrees of freedom of its parts (each arm's seed variance s^2/S with S - 1 df, the images'
    with n - 1; Satterthwaite 1946). With one seed on an arm its training noise is not measured and adds nothing;
    with one seed on both arms `ci95` is the image-only percentile interval, exactly `paired_bootstrap`'s for the
    same draws.
    """
    reference, other = np.atleast_2d(reference), np.atleast_2d(other)
    keep = np.isfinite(reference).all(axis=0) & np.isfinite(other).all(axis=0)
    reference, other = reference[:, keep], other[:, keep]
    n_boot = int(keep.sum())
    delta = float(np.mean(other_full) - np.mean(reference_full))
    image_gaps = other.mean(axis=0) - reference.mean(axis=0)
    image_se = float(np.std(image_gaps, ddof=1)) if n_boot > 1 and images is not None else 0.0
    image_ci = None
    if images is not None and n_boot:
        low, high = np.percentile(image_gaps, [2.5, 97.5])
        image_ci = (float(low), float(high))
    rng = np.random.default_rng(seed + 1)  # a stream apart from the image draws'
    gaps = _seed_level(other, other_full, rng) - _seed_level(reference, reference_full, rng)
    se = float(np.std(gaps, ddof=1)) if n_boot > 1 else float("nan")
    sds = tuple(float(np.std(full, ddof=1)) if len(full) > 1 else None for full in (reference_full, other_full))
    counts = (len(reference_full), len(other_full))
    seed_parts = [(sd**2 / n, n - 1) for sd, n in zip(sds, counts, strict=True) if sd is not None]
    if not seed_parts:  # training noise not measured: today's image-only interval
        ci = image_ci if image_ci is not None else (delta, delta)
        return GapInterval(delta, ci, image_ci, image_se, image_se, counts, sds, math.inf, images, n_boot)
    image_var = max(se**2 - sum(v for v, _ in seed_parts), 0.0) if images is not None else 0.0
    parts = [*seed_parts, *([(image_var, images - 1)] if images is not None and images > 1 else [])]
    denominator = sum(v**2 / dof for v, dof in parts)
    df = se**4 / denominator if denominator > 0 else math.inf
    half = t_quantile(df) * se
    return GapInterval(delta, (delta - half, delta + half), image_ci, se, image_se, counts, sds, df, images, n_boot)


def seeds_to_resolve(gap: float, image_se: float, seed_sd: float, z: float = 1.96) -> int | None:
    """Seeds per arm at which a gap of `gap` AP points would lie outside a 95% interval, or None when no number of
    seeds does (the images' noise alone covers it: more validation images would).

    The gap of two means over n seeds each has variance image_se^2 + 2 seed_sd^2 / n (the images' part shared by
    the seeds, the seeds' part independent per arm); |gap| = z x SE solved for n:
    n = ceil(2 seed_sd^2 / ((|gap| / z)^2 - image_se^2)), at least 2 (one seed measures no spread). A normal
    approximation: with few seeds the t quantile is larger, so n is a lower bound.
    """
    room = (abs(gap) / z) ** 2 - image_se**2
    if room <= 0:
        return None
    return max(2, math.ceil(2 * seed_sd**2 / room))
