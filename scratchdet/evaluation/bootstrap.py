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
from collections.abc import Sequence

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
