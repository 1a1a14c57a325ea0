"""The one evaluation entry point: a model on a run's validation split, with the metric its data format defines.

Called by the training loop (periodic and final evaluations) and by `scratchdet eval RUN` (engine/run_eval.py), so
both score the same way: COCO AP for data.format=coco (evaluation/coco.py, with eval.coco_backend), VOC mAP for
data.format=voc (evaluation/voc.py, with data.voc_metric).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from scratchdet.config import Config
from scratchdet.distributed import SINGLE, DistContext
from scratchdet.evaluation.coco import Predictor, evaluate, format_report
from scratchdet.evaluation.voc import evaluate_voc, format_voc_report, voc_use_07_metric


def evaluate_split(
    model: nn.Module,
    val_set,
    cfg: Config,
    device: torch.device,
    *,
    predict: Predictor | None = None,
    ctx: DistContext = SINGLE,
    results_path: Path | None = None,
) -> tuple[dict, str]:
    """Scores `model` on `val_set` (the first eval.max_images images).

    Args:
        predict: replaces the plain forward per image (test-time augmentation, evaluation/tta.py).
        ctx: under torchrun, inference is sharded over the processes and rank 0 scores (evaluation/sharding.py).
        results_path: COCO data: rank 0 also writes the detections there (COCO results, gzipped JSON).

    Returns:
        (report, its table as text). The report is the same on every rank: COCO metrics in percent per IoU type
        ("bbox", "segm", "keypoints"), or VOC AP per class and mAP under "voc"; plus image/detection counts and
        timings.
    """
    if cfg.data.format == "voc":
        report = evaluate_voc(
            model,
            val_set,
            device,
            max_images=cfg.eval.max_images,
            use_07_metric=voc_use_07_metric(cfg.data),
            predict=predict,
            ctx=ctx,
        )
        return report, format_voc_report(report)
    report = evaluate(
        model,
        val_set,
        device,
        max_images=cfg.eval.max_images,
        predict=predict,
        backend=cfg.eval.coco_backend,
        ctx=ctx,
        results_path=results_path,
    )
    return report, format_report(report)
