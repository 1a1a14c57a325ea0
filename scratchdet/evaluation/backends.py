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
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from scratchdet.data.validate import clean_eval_segmentations, fix_num_keypoints, raise_first
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
    view = metric_view(coco_gt, iou_type)
    results, cat_ids = view.map_results(results), view.map_cat_ids(cat_ids)
    if backend == "pycocotools":
        return _pycocotools_stats(view.gt, results, iou_type, image_ids, cat_ids, kpt_oks_sigmas)
    return _faster_stats(view.gt, results, iou_type, image_ids, cat_ids, kpt_oks_sigmas)


_MAX_ID = 2**31 - 1  # every metric implementation stores ids this large exactly


@dataclass(frozen=True)
class MetricView:
    """The ground truth a metric library can score, and how results and category lists map onto it.

    Attributes:
        gt: the dataset's COCO index itself, or a copy with renumbered annotation and/or category ids.
        cat_map: dataset category id -> the id in `gt`; None when category ids are unchanged.
    """

    gt: COCO
    cat_map: dict[int, int] | None = None

    def map_results(self, results: list[dict]) -> list[dict]:
        """Results with their category ids in `gt`'s numbering (new dicts; the caller's are untouched). A category
        the ground truth does not have becomes 0, which no renumbered category has: COCOeval ignores it, as it
        ignores an unknown id."""
        if self.cat_map is None:
            return results
        return [{**r, "category_id": self.cat_map.get(r["category_id"], 0)} for r in results]

    def map_cat_ids(self, cat_ids: Sequence[int] | None) -> list[int] | None:
        """A category list (COCOeval params.catIds) in `gt`'s numbering."""
        if cat_ids is None or self.cat_map is None:
            return None if cat_ids is None else list(cat_ids)
        return [self.cat_map[c] for c in cat_ids]


def metric_ground_truth(coco_gt: COCO, iou_type: str = "bbox") -> COCO:
    """The ground truth COCOeval can score (`metric_view(coco_gt, iou_type).gt`)."""
    return metric_view(coco_gt, iou_type).gt


def metric_view(coco_gt: COCO, iou_type: str = "bbox") -> MetricView:
    """The ground truth COCOeval can score: `coco_gt` itself, or a copy whose annotation and/or category ids are
    renumbered; results and category lists go through the view's maps (`map_results`, `map_cat_ids`).

    For "segm", every annotation must also have a region pycocotools can rasterize: polygons of fewer than 3
    points are dropped from `coco_gt` in place (they enclose nothing; data/validate.py), and an annotation left
    without a region raises DataError, naming it, instead of a pycocotools traceback (or, in faster-coco-eval, a
    different score for the same file). Datasets loaded for mask evaluation were checked this way already.

    For "keypoints", `num_keypoints` (which COCOeval reads to decide whom it scores, and which a missing field
    turns into a KeyError) is set in place to the number of labelled keypoints of every annotation of a category
    with keypoint names (data/validate.py `fix_num_keypoints`; keypoint datasets did so when they loaded).

    Annotation ids: COCOeval records each match as the matched ground truth's annotation id in a zero-initialised
    array and treats a 0 there as "unmatched" (pycocotools `evaluateImg`/`accumulate`; faster-coco-eval follows
    it), so a detection matched to an annotation with id 0 counts as a false positive: three perfect boxes with ids
    0, 1, 2 score 44 AP instead of 100 (cocoapi#507). faster-coco-eval also keeps ids in 64-bit integers, and
    64-bit hash ids (>= 2**63) score 0 AP there. Category ids beyond 2**31 - 1 (64-bit hash ids some exporters
    write) make a category vanish from COCO AP in both backends (ids 2**31+7 and 2**63+3: a detector perfect on
    one of two categories scores 100 or 0 instead of 50). So whenever an annotation (category) id lies outside
    1..2**31-1, the annotation (category) ids are renumbered 1..N in their order, which changes no number; results
    never refer to annotation ids, and their category ids are mapped with `cat_map` (results written to a run
    folder keep the dataset's ids). The copy (shallow: dicts copied, geometry shared) is built once per index and
    cached on it.
    """
    anns = coco_gt.dataset.get("annotations", [])
    if iou_type == "segm":
        problems, _ = clean_eval_segmentations(anns)
        raise_first(problems, getattr(coco_gt, "source_path", "the ground truth"))
    if iou_type == "keypoints":
        counts = {c: len(cat["keypoints"]) for c, cat in coco_gt.cats.items() if cat.get("keypoints")}
        fix_num_keypoints(anns, counts)
    ann_ids = [ann["id"] for ann in anns]
    cat_ids = sorted(coco_gt.cats)
    renumber_anns = not all(1 <= i <= _MAX_ID for i in ann_ids)
    renumber_cats = not all(1 <= c <= _MAX_ID for c in cat_ids)
    if not (renumber_anns or renumber_cats):
        return MetricView(coco_gt)
    key = (id(anns), len(anns))
    cached = getattr(coco_gt, "_scratchdet_metric_view", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    new_ann = {old: new for new, old in enumerate(sorted(ann_ids), start=1)} if renumber_anns else None  # order kept
    cat_map = {old: new for new, old in enumerate(cat_ids, start=1)} if renumber_cats else None
    copied = []
    for ann in anns:
        ann = dict(ann)
        if new_ann is not None:
            ann["id"] = new_ann[ann["id"]]
        if cat_map is not None:
            ann["category_id"] = cat_map[ann["category_id"]]
        copied.append(ann)
    dataset = dict(coco_gt.dataset)
    dataset["annotations"] = copied
    if cat_map is not None:
        dataset["categories"] = [{**cat, "id": cat_map[cat["id"]]} for cat in coco_gt.dataset.get("categories", [])]
    renumbered = COCO()
    renumbered.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        renumbered.createIndex()
    view = MetricView(renumbered, cat_map)
    coco_gt._scratchdet_metric_view = (key, view)
    return view


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
