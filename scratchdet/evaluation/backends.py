"""COCO metric backends: pycocotools (the reference) or faster-coco-eval (a C++ reimplementation, same numbers).

Both run the same protocol — COCOeval's evaluate, accumulate and summarize — and return COCOeval's `stats` array
(fractions in [0, 1], -1 where a metric is undefined, e.g. APs on a set without small objects). faster-coco-eval
moves the per-image matching and the accumulation into C++ and computes mask IoUs on a thread pool, which is where
pycocotools spends its time on large validation sets; benchmarks/eval_backends.py measures speed and agreement.

faster-coco-eval is driven through its own COCO class, built from a copy of the ground truth, so that neither
library sees annotation dicts the other has modified (both write helper fields such as "ignore" or decoded RLEs
into the annotations they evaluate).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from scratchdet.data.validate import clean_eval_segmentations, raise_first
from scratchdet.errors import ConfigError

BACKENDS = ("pycocotools", "faster_coco_eval")
IOU_TYPES = ("bbox", "segm", "keypoints")


def cocoeval_stats(
    backend: str,
    coco_gt: COCO,
    results: list[dict],
    iou_type: str,
    image_ids: Sequence[int],
    *,
    cat_ids: Sequence[int] | None = None,
    kpt_oks_sigmas: Sequence[float] | None = None,
) -> np.ndarray:
    """Runs COCOeval with `backend` over `image_ids` and returns its `stats` (12 values, 10 for keypoints).

    Args:
        backend: "pycocotools" or "faster_coco_eval" (config key eval.coco_backend).
        coco_gt: the ground truth as a pycocotools COCO object (the dataset's `coco`).
        results: COCO result dicts (image_id, category_id, score, bbox and/or segmentation and/or keypoints).
            Like pycocotools' loadRes, the pycocotools backend adds fields (id, area, ...) to these dicts in place.
        iou_type: "bbox", "segm" or "keypoints".
        image_ids: the images to evaluate; images without any result count as all misses.
        cat_ids: restricts evaluation to these categories (default: all categories of `coco_gt`).
        kpt_oks_sigmas: per-keypoint OKS sigmas (default: COCO's 17 person keypoints).
    Returns:
        COCOeval.stats as float64 fractions; -1 marks an undefined metric.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"eval.coco_backend={backend!r} is not a COCO metric backend; choose one of {BACKENDS}")
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type {iou_type!r} is not one of {IOU_TYPES}")
    coco_gt = metric_ground_truth(coco_gt, iou_type)
    if backend == "pycocotools":
        return _pycocotools_stats(coco_gt, results, iou_type, image_ids, cat_ids, kpt_oks_sigmas)
    return _faster_stats(coco_gt, results, iou_type, image_ids, cat_ids, kpt_oks_sigmas)


_MAX_ANN_ID = 2**31 - 1  # every metric implementation stores ids this large exactly


def metric_ground_truth(coco_gt: COCO, iou_type: str = "bbox") -> COCO:
    """The ground truth COCOeval can score: `coco_gt` itself, or a copy whose annotation ids start at 1.

    For "segm", every annotation must also have a region pycocotools can rasterize: polygons of fewer than 3
    points are dropped from `coco_gt` in place (they enclose nothing; data/validate.py), and an annotation left
    without a region raises DataError, naming it, instead of a pycocotools traceback (or, in faster-coco-eval, a
    different score for the same file). Datasets loaded for mask evaluation were checked this way already.

    COCOeval records each match as the matched ground truth's annotation id in a zero-initialised array and treats
    a 0 there as "unmatched" (pycocotools `evaluateImg`/`accumulate`; faster-coco-eval follows it), so a detection
    matched to an annotation with id 0 counts as a false positive: three perfect boxes with ids 0, 1, 2 score 44 AP
    instead of 100 (cocoapi#507). faster-coco-eval also keeps ids in 64-bit integers, and 64-bit hash ids
    (>= 2**63) score 0 AP there. So whenever an id lies outside 1..2**31-1 the ids are renumbered 1..N in their
    order; results never refer to annotation ids, so nothing else changes. The copy (shallow: annotation dicts
    copied, their geometry shared) is built once per index and cached on it.
    """
    anns = coco_gt.dataset.get("annotations", [])
    if iou_type == "segm":
        problems, _ = clean_eval_segmentations(anns)
        raise_first(problems, getattr(coco_gt, "source_path", "the ground truth"))
    ids = [ann["id"] for ann in anns]
    if all(1 <= i <= _MAX_ANN_ID for i in ids):
        return coco_gt
    cached = getattr(coco_gt, "_scratchdet_shifted_ids", None)
    if cached is not None and cached[0] == (id(anns), len(anns)):
        return cached[1]
    new_id = {old: rank for rank, old in enumerate(sorted(ids), start=1)}  # order kept, 1..N
    dataset = dict(coco_gt.dataset)
    dataset["annotations"] = [{**ann, "id": new_id[ann["id"]]} for ann in anns]
    shifted = COCO()
    shifted.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        shifted.createIndex()
    coco_gt._scratchdet_shifted_ids = ((id(anns), len(anns)), shifted)
    return shifted


def _pycocotools_stats(coco_gt, results, iou_type, image_ids, cat_ids, kpt_oks_sigmas) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress; callers print their own table
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        _configure(evaluator.params, image_ids, cat_ids, kpt_oks_sigmas)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=np.float64)


def _faster_stats(coco_gt, results, iou_type, image_ids, cat_ids, kpt_oks_sigmas) -> np.ndarray:
    try:  # imported here so that the reference backend works on machines without faster-coco-eval
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster
    except ImportError as exc:
        raise ConfigError(
            "eval.coco_backend=faster_coco_eval needs the faster-coco-eval package "
            "(pip install 'faster-coco-eval>=1.6'), or set eval.coco_backend=pycocotools"
        ) from exc
    # Shallow copies of every annotation and result dict: faster-coco-eval stores decoded RLEs and ignore flags in
    # them, which must not leak into the dataset's pycocotools index or the caller's results. Image ids are
    # renumbered 1..N in the copies: its C++ core fails on ids >= 2**63 and, for masks, on negative ones, while
    # pycocotools takes any integer; a consistent renumbering of ground truth, results and imgIds changes no number.
    image_index = {old: new for new, old in enumerate(sorted(coco_gt.imgs), start=1)}
    dataset = dict(coco_gt.dataset)
    dataset["images"] = [{**img, "id": image_index[img["id"]]} for img in coco_gt.dataset.get("images", [])]
    dataset["annotations"] = [
        {**ann, "image_id": image_index[ann["image_id"]]} for ann in coco_gt.dataset.get("annotations", [])
    ]
    gt = FasterCOCO(dataset, print_function=_silent)
    dt = gt.loadRes([{**r, "image_id": image_index.get(r["image_id"], r["image_id"])} for r in results])
    evaluator = COCOeval_faster(gt, dt, iou_type, print_function=_silent)
    # pycocotools evaluates all categories by default, faster-coco-eval (for keypoints) only annotated ones; an
    # explicit list makes both evaluate the same categories.
    _configure(
        evaluator.params,
        [image_index[i] for i in image_ids],
        sorted(coco_gt.getCatIds()) if cat_ids is None else cat_ids,
        kpt_oks_sigmas,
    )
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=np.float64)


def _configure(params, image_ids, cat_ids, kpt_oks_sigmas) -> None:
    """Sets the evaluated images, categories and OKS sigmas on either library's (field-compatible) Params."""
    params.imgIds = list(image_ids)
    if cat_ids is not None:
        params.catIds = list(cat_ids)
    if kpt_oks_sigmas is not None:
        params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)


def _silent(*args, **kwargs) -> None:
    """faster-coco-eval's print_function: it logs every step, callers print their own summary."""
