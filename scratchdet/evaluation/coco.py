"""COCO evaluation: bbox, segm and keypoint AP, AP50, AP75, APs/m/l and AR (docs/PAPER.md, "Metrics"), computed by
pycocotools or faster-coco-eval (`eval.coco_backend`, evaluation/backends.py).

Numbers are reported in percent (0-100), as in the paper's tables. A metric COCOeval cannot compute (e.g. APs on
a set without small objects, which pycocotools marks -1) is None, and a model that predicts nothing at all is
reported as `{"status": "no predictions"}` instead of a misleading 0.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from torch import nn

from scratchdet.distributed import SINGLE, DistContext, broadcast_from_main  # rank 0's report to every rank
from scratchdet.evaluation.backends import cocoeval_stats
from scratchdet.evaluation.sharding import gather_in_order, shard
from scratchdet.files import atomic_write

# The order of COCOeval.stats for bbox/segm.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# The order of COCOeval.stats for keypoints (summarizeKps): 10 values, no small-object range, AR at 20 dets.
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

# One image [3, H, W] -> its detections in the model's output format (original image coordinates).
Predictor = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def detections_to_coco(
    output: dict[str, torch.Tensor], image_id: int, label_to_cat_id: dict[int, int], mask_threshold: float = 0.5
) -> list[dict]:
    """Converts one image's torchvision detections to COCO result dicts.

    Args:
        output: "boxes" [N, 4] XYXY absolute pixels of the original image, "scores" [N], "labels" [N] contiguous,
            optionally "masks" [N, 1, H, W] probabilities at the original image size and "keypoints" [N, K, 3]
            (x, y absolute pixels, visibility).
        label_to_cat_id: contiguous label -> the dataset's category id.
    Returns:
        Dicts with "bbox" in XYWH absolute pixels and, with masks, "segmentation" as compressed RLE (str counts);
        with keypoints, "keypoints" as a flat [x1, y1, v1, ...] list.
    """
    boxes = output["boxes"].detach().cpu().numpy().astype(np.float64)
    scores = output["scores"].detach().cpu().numpy().tolist()
    labels = output["labels"].detach().cpu().numpy().tolist()
    rles = None
    if "masks" in output:
        binary = (output["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
        rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
    keypoints = output["keypoints"].detach().cpu().numpy() if "keypoints" in output else None
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
        if keypoints is not None:
            result["keypoints"] = [round(float(v), 2) for v in keypoints[i].reshape(-1)]
        results.append(result)
    return results


def coco_metrics(
    coco_gt: COCO,
    results: list[dict],
    iou_type: str,
    image_ids: Sequence[int],
    *,
    cat_ids: Sequence[int] | None = None,
    kpt_oks_sigmas: Sequence[float] | None = None,
    backend: str = "pycocotools",
) -> dict:
    """Runs COCOeval for one IoU type over `image_ids`; returns {name: percent or None} (see STAT_NAMES).

    Keypoints ("keypoints") are named by KEYPOINT_STAT_NAMES and need `kpt_oks_sigmas` (one per keypoint) unless
    they are COCO's 17; `cat_ids` restricts evaluation to these categories (Keypoint R-CNN's one category).
    `backend` (eval.coco_backend) picks the implementation: "pycocotools" or "faster_coco_eval" (evaluation/
    backends.py; same numbers, faster).
    """
    values = cocoeval_stats(
        backend, coco_gt, results, iou_type, image_ids, cat_ids=cat_ids, kpt_oks_sigmas=kpt_oks_sigmas
    )
    stats = zip(KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES, values, strict=True)
    return {name: (None if v < 0 else round(float(v) * 100, 3)) for name, v in stats}


@torch.no_grad()
def run_inference(
    model: nn.Module,
    dataset,
    device: torch.device,
    max_images: int | None = None,
    predict: Predictor | None = None,
    ctx: DistContext = SINGLE,
) -> list[dict] | None:
    """Runs `model` in eval mode over `dataset` (a CocoDetection with train=False) and returns COCO results.

    Images go one at a time at their original size; the model's transform resizes them to the test size and maps
    detections back, so results are in original image coordinates. `predict` (image -> one image's output) replaces
    the plain `model([image])[0]`, e.g. test-time augmentation (evaluation/tta.py). Under distributed training
    (`ctx`), each rank runs its shard and rank 0 gets every image's results in image order, the others None
    (evaluation/sharding.py).
    """
    was_training = model.training
    model.eval()
    per_image: dict[int, list[dict]] = {}
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    try:
        for i in shard(n, ctx):
            image, target = dataset[i]
            output = predict(image.to(device)) if predict is not None else model([image.to(device)])[0]
            per_image[i] = detections_to_coco(output, target["image_id"], dataset.label_to_cat_id)
    finally:
        model.train(was_training)
    ordered = gather_in_order(ctx, per_image)
    return None if ordered is None else [r for results in ordered for r in results]


def evaluate_results(
    dataset, results: list[dict], iou_types: Sequence[str], n_images: int, *, backend: str = "pycocotools"
) -> dict:
    """COCO metrics for results on the first `n_images` images of `dataset` with the `backend` metric
    implementation (see coco_metrics); 'no predictions' when empty."""
    image_ids = dataset.image_ids[:n_images]
    report: dict = {"images": len(image_ids), "detections": len(results)}
    if not results:
        report["status"] = "no predictions"
        return report
    report["status"] = "ok"
    # A keypoint dataset (data/keypoints.py) is evaluated on its one category, with its OKS sigmas.
    kp_cat = getattr(dataset, "keypoint_cat_id", None)
    extra = {} if kp_cat is None else {"cat_ids": [kp_cat], "kpt_oks_sigmas": dataset.kpt_oks_sigmas}
    for iou_type in iou_types:
        report[iou_type] = coco_metrics(dataset.coco, results, iou_type, image_ids, backend=backend, **extra)
    return report


def evaluate(
    model: nn.Module,
    dataset,
    device: torch.device,
    *,
    max_images: int | None = None,
    predict: Predictor | None = None,
    ctx: DistContext = SINGLE,
    backend: str = "pycocotools",
    results_path: Path | None = None,
) -> dict:
    """Inference + COCO metrics; bbox always, segm when the model predicts masks. Adds timing to the report.

    results_path: rank 0 also writes the COCO results there (gzipped JSON, written atomically).

    Under distributed training every rank calls this; inference is sharded, rank 0 scores, all ranks return its
    report.
    """
    start = time.perf_counter()
    results = run_inference(model, dataset, device, max_images, predict, ctx)
    inference_s = time.perf_counter() - start
    report = None
    if results is not None:  # rank 0
        iou_types = ["bbox"] + (["segm"] if getattr(model.roi_heads, "has_mask", lambda: False)() else [])
        iou_types += ["keypoints"] if getattr(model.roi_heads, "has_keypoint", lambda: False)() else []
        n_images = len(dataset) if max_images is None else min(max_images, len(dataset))
        report = evaluate_results(dataset, results, iou_types, n_images, backend=backend)
        if results_path is not None:
            write_results(results_path, results)
        report["inference_s"] = round(inference_s, 3)
        report["eval_s"] = round(time.perf_counter() - start - inference_s, 3)
        if ctx.enabled:
            report["eval_processes"] = ctx.world_size
    return broadcast_from_main(ctx, report)


def write_results(path: Path, results: list[dict]) -> None:
    """COCO results as gzipped JSON, written atomically (a kill never leaves half a file under the name)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f) -> None:
        with gzip.open(f, "wt") as text:
            json.dump(results, text)

    atomic_write(path, write)


def read_results(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def format_report(report: dict) -> str:
    """A small text table of a report from `evaluate`, for the terminal."""
    if report.get("status") != "ok":
        return f"{report.get('status', 'no result')} ({report.get('images', 0)} images evaluated)"
    lines = [f"{'type':<6}" + "".join(f"{name:>8}" for name in STAT_NAMES[:6])]
    for iou_type in ("bbox", "segm", "keypoints"):
        if iou_type in report:
            row = report[iou_type]
            cells = "".join(f"{'-' if row.get(n) is None else format(row[n], '.1f'):>8}" for n in STAT_NAMES[:6])
            lines.append(f"{iou_type:<6}{cells}")
    lines.append(f"({report['images']} images, {report['detections']} detections; AP in percent)")
    return "\n".join(lines)
