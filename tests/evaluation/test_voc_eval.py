"""VOC mAP (scratchdet/evaluation/voc.py) against hand-computed cases, and a short VOC training run that evaluates."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import ROOT, tiny_overrides

from scratchdet.config import load_config
from scratchdet.data.voc import write_voc_layout
from scratchdet.evaluation.voc import format_voc_report, voc_ap, voc_eval_class, voc_metrics, voc_use_07_metric

VOC_MINI_CONFIG = ROOT / "configs" / "mini" / "faster_rcnn_R18_FPN_GN_voc_scratch.yaml"

# Devkit coordinates (1-based, inclusive): (1, 1, 10, 10) covers 10 x 10 = 100 pixels.
SQUARE = (1, 1, 10, 10)


def _case():
    """One class, three images, npos = 3 (the difficult GT does not count).

    Ground truth: image a: G1 = SQUARE, G2 = (21, 21, 30, 30) difficult; image b: G3 = SQUARE; image c: G4 = SQUARE
    (never detected: a missed GT).
    Detections, by descending score:
      d1 0.9 a SQUARE                 IoU 1 with G1            -> TP
      d2 0.8 a SQUARE                 G1 already matched       -> FP (duplicate)
      d3 0.7 a (21, 21, 30, 30)       matches difficult G2     -> ignored (neither TP nor FP)
      d4 0.6 b (1, 1, 10, 20)         inter 100 / union 200 = IoU 0.5 exactly, >= 0.5 -> TP
      d5 0.5 b (50, 50, 60, 60)       no overlap               -> FP
    Listed out of order to check the sort.
    """
    gt = {
        "a": (np.array([SQUARE, (21, 21, 30, 30)]), np.array([False, True])),
        "b": (np.array([SQUARE]), np.array([False])),
        "c": (np.array([SQUARE]), np.array([False])),
    }
    dets = [
        ("b", 0.5, (50, 50, 60, 60)),
        ("a", 0.9, SQUARE),
        ("b", 0.6, (1, 1, 10, 20)),
        ("a", 0.7, (21, 21, 30, 30)),
        ("a", 0.8, SQUARE),
    ]
    return dets, gt


def test_hand_computed_precision_recall():
    dets, gt = _case()
    r = voc_eval_class(dets, gt, use_07_metric=True)
    assert r["npos"] == 3
    # tp = [1, 0, 0, 1, 0], fp = [0, 1, 0, 0, 1] (d3 is neither)
    np.testing.assert_array_equal(r["tp"], [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(r["fp"], [0, 1, 0, 0, 1])
    # cumulative tp = [1, 1, 1, 2, 2], fp = [0, 1, 1, 1, 2]
    # recall = tp / 3, precision = tp / (tp + fp)
    np.testing.assert_allclose(r["recall"], [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r["precision"], [1, 1 / 2, 1 / 2, 2 / 3, 1 / 2])


def test_hand_computed_ap_07_11_point():
    dets, gt = _case()
    # Thresholds 0, .1, .2, .3 (<= 1/3): best precision at recall >= t is 1             -> 4 x 1
    # Thresholds .4, .5, .6 (<= 2/3): best precision among recall 2/3 entries is 2/3     -> 3 x 2/3
    # Thresholds .7 .. 1.0: recall never reaches them                                    -> 4 x 0
    # AP = (4 + 2) / 11 = 6/11
    assert voc_eval_class(dets, gt, use_07_metric=True)["ap"] == pytest.approx(6 / 11)


def test_hand_computed_ap_10_area():
    dets, gt = _case()
    # Envelope of precision: recall 1/3 -> 1, recall 2/3 -> 2/3, beyond -> 0.
    # Area = (1/3 - 0) x 1 + (2/3 - 1/3) x 2/3 + (1 - 2/3) x 0 = 1/3 + 2/9 = 5/9
    assert voc_eval_class(dets, gt, use_07_metric=False)["ap"] == pytest.approx(5 / 9)


def test_voc_ap_perfect_and_iou_just_below_half():
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), True) == pytest.approx(1.0)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), False) == pytest.approx(1.0)
    # (1, 1, 10, 21): inter 100 / union 210 < 0.5 -> FP, so AP 0
    gt = {"a": (np.array([SQUARE]), np.array([False]))}
    assert voc_eval_class([("a", 0.9, (1, 1, 10, 21))], gt)["ap"] == 0.0


def test_voc_metrics_mean_over_classes_with_ground_truth():
    dets, gt = _case()
    names = ["__background__", "cat", "dog", "cow"]
    # cat: the case above; dog: no ground truth at all -> None, left out of the mean; cow: one GT, never detected -> 0
    cow_gt = {"c": (np.array([SQUARE]), np.array([False]))}
    m07 = voc_metrics({1: dets, 2: [("a", 0.3, SQUARE)]}, {1: gt, 3: cow_gt}, names, use_07_metric=True)
    assert m07["AP"]["dog"] is None
    assert m07["AP"]["cow"] == 0.0
    assert m07["AP"]["cat"] == pytest.approx(600 / 11, abs=1e-3)
    assert m07["mAP"] == pytest.approx((600 / 11 + 0) / 2, abs=1e-3)
    assert m07["metric"] == "VOC07 11-point"
    m10 = voc_metrics({1: dets}, {1: gt, 3: cow_gt}, names, use_07_metric=False)
    assert m10["mAP"] == pytest.approx(500 / 9 / 2, abs=1e-3)
    assert m10["metric"] == "VOC10+ area"
    text = format_voc_report({"status": "ok", "images": 3, "detections": 6, "voc": m10})
    assert "VOC mAP (VOC10+ area, IoU 0.5): 27.8" in text


def test_metric_choice():
    def data(metric, sets):
        return SimpleNamespace(voc_metric=metric, voc_val_sets=sets)

    assert voc_use_07_metric(data("auto", ["2007_test"]))
    assert not voc_use_07_metric(data("auto", ["2012_val"]))
    assert not voc_use_07_metric(data("10", ["2007_test"]))
    assert voc_use_07_metric(data("07", ["2012_val"]))


def test_short_voc_training_run_evaluates_with_voc_map(shapes_dir, tmp_path):
    from scratchdet.engine.trainer import train

    voc_root = tmp_path / "voc"
    write_voc_layout(shapes_dir, voc_root)
    overrides = tiny_overrides(
        shapes_dir,
        tmp_path / "run",
        **{
            "data.voc_root": str(voc_root),
            "train.max_iters": 2,
            "model.box_score_thresh": 0.0,
            "eval.max_images": 2,
            "model.box_detections_per_img": 10,
        },
    )
    cfg = load_config(VOC_MINI_CONFIG, overrides)
    train(cfg)
    reports = sorted((tmp_path / "run" / "eval").glob("iter_*.json"))
    assert reports, "no eval/iter_*.json written"
    report = json.loads(reports[-1].read_text())
    assert report["iter"] == 2 and report["images"] == 2
    assert report["status"] == "ok"
    voc = report["voc"]
    assert voc["metric"] == "VOC07 11-point"  # auto on a 2007 val set
    assert voc["mAP"] is not None and 0.0 <= voc["mAP"] <= 100.0
    assert len(voc["AP"]) == 20
