"""PASCAL VOC detection mAP: per-class AP at IoU 0.5 and their mean (docs/PAPER.md, "Metrics", "PASCAL VOC").

The algorithm is the devkit's (VOCevaldet.m; its Python port `voc_eval.py` in py-faster-rcnn / Detectron):
- per class, all detections over all images sorted by descending score (stable sort: ties keep image order);
- a detection's IoU with each ground truth of its class in its image uses the devkit's inclusive pixel areas
  (1-based coordinates, width = x2 - x1 + 1);
- the best-overlapping ground truth is a match when IoU >= 0.5 (the MATLAB devkit's `>=`; the Python port writes
  `>`, which differs only at exactly 0.5): if that ground truth is difficult the detection is ignored (neither TP
  nor FP); otherwise the first such detection is a TP and later ones (duplicates) are FPs;
- unmatched detections are FPs; recall = TP / (number of non-difficult ground truths).
AP is the 11-point interpolated AP of VOC2007 (mean over recall thresholds 0, 0.1, ..., 1 of the best precision at
recall >= t) or the area under the monotone precision envelope of VOC2010+.

A class with no ground truth at all in the evaluated images has AP None and is left out of the mean (the devkit
would divide by zero); on real VOC val sets every class occurs. Numbers are reported in percent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from scratchdet.distributed import SINGLE, DistContext, broadcast_from_main  # rank 0's report to every rank
from scratchdet.evaluation.sharding import gather_in_order, shard

METRIC_NAMES = {True: "VOC07 11-point", False: "VOC10+ area"}


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP (0-1) from cumulative recall/precision arrays, ordered by descending detection score."""
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    if use_07_metric:
        ap = 0.0
        for k in range(11):
            # Thresholds k / 10, the nearest doubles to 0, 0.1, ..., 1: np.arange(0, 1.1, 0.1) of the Python port
            # gives 3 * 0.1 > 0.3, so a recall of exactly 3/10 would miss that threshold there.
            t = k / 10
            ap += (precision[recall >= t].max() if np.any(recall >= t) else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope: best precision at any higher recall
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def _inclusive_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    iw = np.maximum(np.minimum(gts[:, 2], box[2]) - np.maximum(gts[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gts[:, 3], box[3]) - np.maximum(gts[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    area_d = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    area_g = (gts[:, 2] - gts[:, 0] + 1.0) * (gts[:, 3] - gts[:, 1] + 1.0)
    return inter / (area_d + area_g - inter)


def voc_eval_class(
    detections: Sequence[tuple[object, float, Sequence[float]]],
    ground_truth: dict[object, tuple[np.ndarray, np.ndarray]],
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict:
    """Recall, precision and AP of one class.

    Args:
        detections: (image key, score, box) with box (x1, y1, x2, y2) in the devkit's 1-based inclusive pixels.
        ground_truth: image key -> (boxes [G, 4] in the same convention, difficult bool [G]); images without
            ground truth of this class may be absent.

    Returns:
        {"ap": 0-1 or None (no ground truth at all), "recall": [D], "precision": [D], "tp": [D], "fp": [D],
        "npos": non-difficult ground truths}, arrays in descending score order.
    """
    gt = {k: (np.asarray(b, float).reshape(-1, 4), np.asarray(d, bool)) for k, (b, d) in ground_truth.items()}
    npos = int(sum((~d).sum() for _, d in gt.values()))
    n_gt = sum(len(d) for _, d in gt.values())
    matched = {k: np.zeros(len(d), bool) for k, (_, d) in gt.items()}
    order = sorted(range(len(detections)), key=lambda i: -float(detections[i][1]))  # stable: ties keep input order
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, i in enumerate(order):
        key, _, box = detections[i]
        if key not in gt or len(gt[key][1]) == 0:
            fp[rank] = 1
            continue
        boxes, difficult = gt[key]
        overlaps = _inclusive_iou(np.asarray(box, float), boxes)
        j = int(np.argmax(overlaps))
        if overlaps[j] >= iou_threshold:
            if difficult[j]:
                continue  # neither TP nor FP
            if not matched[key][j]:
                tp[rank], matched[key][j] = 1, True
            else:
                fp[rank] = 1  # duplicate detection of an already matched object
        else:
            fp[rank] = 1
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    recall = ctp / npos if npos else np.zeros_like(ctp)
    # Ignored (difficult) detections leave tp + fp unchanged; eps as the devkit port, for a leading ignored run.
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    ap = None if n_gt == 0 else (voc_ap(recall, precision, use_07_metric) if npos else 0.0)
    return {"ap": ap, "recall": recall, "precision": precision, "tp": tp, "fp": fp, "npos": npos}


def voc_metrics(
    detections: dict[int, list[tuple[object, float, Sequence[float]]]],
    ground_truth: dict[int, dict[object, tuple[np.ndarray, np.ndarray]]],
    class_names: Sequence[str],
    *,
    use_07_metric: bool = True,
) -> dict:
    """Per-class AP and mAP in percent over labels 1..K (class_names[0] is background).

    Args:
        detections: label -> detections as in `voc_eval_class`.
        ground_truth: label -> ground truth as in `voc_eval_class`.

    Returns:
        {"mAP": percent or None, "AP": {class name: percent or None}, "metric": "VOC07 11-point" | "VOC10+ area"}.
    """
    per_class: dict[str, float | None] = {}
    for label, name in enumerate(class_names):
        if label == 0:
            continue
        ap = voc_eval_class(detections.get(label, []), ground_truth.get(label, {}), use_07_metric=use_07_metric)["ap"]
        per_class[name] = None if ap is None else round(ap * 100, 3)
    valid = [v for v in per_class.values() if v is not None]
    mean = round(float(np.mean(valid)), 3) if valid else None
    return {"mAP": mean, "AP": per_class, "metric": METRIC_NAMES[use_07_metric]}


def voc_use_07_metric(data_cfg) -> bool:
    """data.voc_metric as a flag: "07" -> True, "10" -> False, "auto" -> True iff every val set is from 2007.

    Detectron's rule: VOC2007 test is scored with the 11-point AP, VOC2010+ sets (the paper's val12) by area.
    """
    if data_cfg.voc_metric != "auto":
        return data_cfg.voc_metric == "07"
    return all(str(name).startswith("2007") for name in data_cfg.voc_val_sets)


def _to_devkit(boxes: np.ndarray) -> np.ndarray:
    # Our 0-based XYXY (x2/y2 exclusive) -> the devkit's 1-based inclusive; inverse of data/voc.py's conversion.
    out = np.asarray(boxes, float).reshape(-1, 4).copy()
    out[:, :2] += 1.0
    return out


@torch.no_grad()
def evaluate_voc(
    model: nn.Module,
    dataset,
    device: torch.device,
    *,
    max_images: int | None = None,
    use_07_metric: bool = True,
    predict: Callable[[torch.Tensor], dict] | None = None,
    ctx: DistContext = SINGLE,
) -> dict:
    """Inference over `dataset` (a VocDetection with train=False, difficult objects kept) and VOC mAP.

    `predict` (image -> one image's output, e.g. test-time augmentation) replaces `model([image])[0]`. Under
    distributed training (`ctx`) inference is sharded, rank 0 scores and every rank returns its report.

    Returns:
        {"status": "ok" | "no predictions", "images", "detections", "voc": voc_metrics(...) (when ok),
        "inference_s", "eval_s"}.
    """
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    per_image: dict[int, tuple] = {}  # index -> (image id, boxes, scores, labels)
    try:
        for i in shard(n, ctx):
            image, target = dataset[i]
            output = predict(image.to(device)) if predict is not None else model([image.to(device)])[0]
            per_image[i] = (
                target["image_id"],
                _to_devkit(output["boxes"].detach().cpu().numpy()),
                output["scores"].detach().cpu().numpy().tolist(),
                output["labels"].cpu().tolist(),
            )
    finally:
        model.train(was_training)
    inference_s = time.perf_counter() - start
    ordered = gather_in_order(ctx, per_image)
    if ordered is None:  # not rank 0
        return broadcast_from_main(ctx, None)
    detections: dict[int, list] = {}
    ground_truth: dict[int, dict] = {}
    n_det = 0
    for image_id, boxes, scores, labels in ordered:
        for box, score, label in zip(boxes, scores, labels, strict=True):
            detections.setdefault(int(label), []).append((image_id, float(score), box))
        n_det += len(scores)
        gt = dataset.ground_truth(image_id)
        for label in np.unique(gt["labels"]):
            sel = gt["labels"] == label
            ground_truth.setdefault(int(label), {})[image_id] = (_to_devkit(gt["boxes"][sel]), gt["difficult"][sel])
    report: dict = {"images": n, "detections": n_det}
    if n_det == 0:
        report["status"] = "no predictions"
    else:
        report["status"] = "ok"
        report["voc"] = voc_metrics(detections, ground_truth, dataset.class_names, use_07_metric=use_07_metric)
    report["inference_s"] = round(inference_s, 3)
    report["eval_s"] = round(time.perf_counter() - start - inference_s, 3)
    return broadcast_from_main(ctx, report)


def format_voc_report(report: dict) -> str:
    """A small text table of a report from `evaluate_voc`, for the terminal."""
    if report.get("status") != "ok":
        return f"{report.get('status', 'no result')} ({report.get('images', 0)} images evaluated)"
    voc = report["voc"]
    cells = [f"{name}={'-' if ap is None else format(ap, '.1f')}" for name, ap in voc["AP"].items()]
    lines = [f"VOC mAP ({voc['metric']}, IoU 0.5): {'-' if voc['mAP'] is None else format(voc['mAP'], '.1f')}"]
    lines += ["  " + " ".join(cells[i : i + 5]) for i in range(0, len(cells), 5)]
    lines.append(f"({report['images']} images, {report['detections']} detections; AP in percent)")
    return "\n".join(lines)
