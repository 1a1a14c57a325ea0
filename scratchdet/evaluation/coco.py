"""COCO evaluation with pycocotools: bbox and segm AP, AP50, AP75, APs/m/l and AR (PAPER.md, "metrics").

Numbers are reported in percent (0-100), as in the paper's tables. A metric COCOeval cannot compute (e.g. APs on
a set without small objects, which pycocotools marks -1) is None, and a model that predicts nothing at all is
reported as `{"status": "no predictions"}` instead of a misleading 0.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

# The order of COCOeval.stats for bbox/segm.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def detections_to_coco(
    output: dict[str, torch.Tensor], image_id: int, label_to_cat_id: dict[int, int], mask_threshold: float = 0.5
) -> list[dict]:
    """Converts one image's torchvision detections to COCO result dicts.

    Args:
        output: "boxes" [N, 4] XYXY absolute pixels of the original image, "scores" [N], "labels" [N] contiguous,
            optionally "masks" [N, 1, H, W] probabilities at the original image size.
        label_to_cat_id: contiguous label -> the dataset's category id.
    Returns:
        Dicts with "bbox" in XYWH absolute pixels and, with masks, "segmentation" as compressed RLE (str counts).
    """
    boxes = output["boxes"].detach().cpu().numpy().astype(np.float64)
    scores = output["scores"].detach().cpu().numpy().tolist()
    labels = output["labels"].detach().cpu().numpy().tolist()
    rles = None
    if "masks" in output:
        binary = (output["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
        rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
    results = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        result = {
            "image_id": int(image_id),
            "category_id": int(label_to_cat_id[int(labels[i])]),
            "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)],
            "score": round(float(scores[i]), 5),
        }
        if rles is not None:
            rle = rles[i]
            result["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        results.append(result)
    return results


def coco_metrics(coco_gt: COCO, results: list[dict], iou_type: str, image_ids: Sequence[int]) -> dict:
    """Runs COCOeval for one IoU type over `image_ids`; returns {name: percent or None} (see STAT_NAMES)."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress; we print our own table
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = zip(STAT_NAMES, evaluator.stats, strict=True)
    return {name: (None if v < 0 else round(float(v) * 100, 3)) for name, v in stats}


@torch.no_grad()
def run_inference(model: nn.Module, dataset, device: torch.device, max_images: int | None = None) -> list[dict]:
    """Runs `model` in eval mode over `dataset` (a CocoDetection with train=False) and returns COCO results.

    Images go one at a time at their original size; the model's transform resizes them to the test size and maps
    detections back, so results are in original image coordinates.
    """
    was_training = model.training
    model.eval()
    results: list[dict] = []
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    try:
        for i in range(n):
            image, target = dataset[i]
            output = model([image.to(device)])[0]
            results += detections_to_coco(output, target["image_id"], dataset.label_to_cat_id)
    finally:
        model.train(was_training)
    return results


def evaluate_results(dataset, results: list[dict], iou_types: Sequence[str], n_images: int) -> dict:
    """COCO metrics for results on the first `n_images` images of `dataset`; 'no predictions' when empty."""
    image_ids = dataset.image_ids[:n_images]
    report: dict = {"images": len(image_ids), "detections": len(results)}
    if not results:
        report["status"] = "no predictions"
        return report
    report["status"] = "ok"
    for iou_type in iou_types:
        report[iou_type] = coco_metrics(dataset.coco, results, iou_type, image_ids)
    return report


def evaluate(model: nn.Module, dataset, device: torch.device, *, max_images: int | None = None) -> dict:
    """Inference + COCO metrics; bbox always, segm when the model predicts masks. Adds timing to the report."""
    start = time.perf_counter()
    results = run_inference(model, dataset, device, max_images)
    inference_s = time.perf_counter() - start
    iou_types = ["bbox"] + (["segm"] if getattr(model.roi_heads, "has_mask", lambda: False)() else [])
    n_images = len(dataset) if max_images is None else min(max_images, len(dataset))
    report = evaluate_results(dataset, results, iou_types, n_images)
    report["inference_s"] = round(inference_s, 3)
    report["eval_s"] = round(time.perf_counter() - start - inference_s, 3)
    return report


def format_report(report: dict) -> str:
    """A small text table of a report from `evaluate`, for the terminal."""
    if report.get("status") != "ok":
        return f"{report.get('status', 'no result')} ({report.get('images', 0)} images evaluated)"
    lines = [f"{'type':<6}" + "".join(f"{name:>8}" for name in STAT_NAMES[:6])]
    for iou_type in ("bbox", "segm", "keypoints"):
        if iou_type in report:
            row = report[iou_type]
            cells = "".join(f"{'-' if row[n] is None else format(row[n], '.1f'):>8}" for n in STAT_NAMES[:6])
            lines.append(f"{iou_type:<6}{cells}")
    lines.append(f"({report['images']} images, {report['detections']} detections; AP in percent)")
    return "\n".join(lines)
