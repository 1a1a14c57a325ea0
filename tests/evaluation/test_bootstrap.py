"""The paired bootstrap over images (evaluation/bootstrap.py): the full-sample AP is COCOeval's, identical lists
differ by exactly 0 in every resample, and a clearly worse list gets a confidence interval below 0."""

from __future__ import annotations

import copy

import pytest
from helpers import moved_detections

from scratchdet.evaluation.bootstrap import paired_bootstrap
from scratchdet.evaluation.coco import coco_metrics


def test_full_sample_ap_is_cocoevals_and_identical_lists_differ_by_zero(val_set):
    results = moved_detections(val_set, 0.1, seed=0, skip_crowd=True)
    out = paired_bootstrap(val_set.coco, results, copy.deepcopy(results), "bbox", val_set.image_ids, n_boot=50)
    reference = coco_metrics(val_set.coco, results, "bbox", val_set.image_ids)["AP"]
    assert out["ap_a"] == out["ap_b"] == pytest.approx(reference, abs=1e-3)
    assert out["delta"] == 0 and out["delta_std"] == 0 and out["delta_ci95"] == [0, 0] and out["n_boot"] == 50


def test_a_worse_list_has_a_negative_delta_with_a_spread(val_set):
    good, bad = (
        moved_detections(val_set, 0.05, seed=1, skip_crowd=True),
        moved_detections(val_set, 0.25, seed=2, skip_crowd=True),
    )
    out = paired_bootstrap(val_set.coco, good, bad, "bbox", val_set.image_ids, n_boot=100, seed=3)
    assert out["delta"] < 0 and out["delta_std"] > 0
    low, high = out["delta_ci95"]
    assert low <= out["delta"] <= high < 0  # boxes moved 5x further: worse beyond the test set's noise
    assert out == paired_bootstrap(val_set.coco, good, bad, "bbox", val_set.image_ids, n_boot=100, seed=3)
