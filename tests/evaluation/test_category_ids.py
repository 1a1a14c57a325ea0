"""Category ids the metric code cannot hold (issue 24, kind 3): 64-bit hash ids are renumbered for evaluation, like
annotation ids, in both metric backends and the bootstrap; what a run writes keeps the dataset's ids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scratchdet.data.check import check_dataset
from scratchdet.data.coco import CocoDetection
from scratchdet.evaluation.bootstrap import paired_bootstrap
from scratchdet.evaluation.coco import detections_to_coco, evaluate_results

RED, GREEN = 2**31 + 7, 2**63 + 3  # beyond int32 and beyond int64


@pytest.fixture
def hashed_ids(tmp_path):
    """Two 64 x 48 images, each with one red (id RED) and one green (id GREEN) box; boxes only."""
    images, anns = [], []
    for i in (1, 2):
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / f"{i}.png")
        anns.append({"id": 2 * i, "image_id": i, "category_id": RED, "bbox": [4, 4, 20, 16], "area": 320, "iscrowd": 0})
        anns.append(
            {"id": 2 * i + 1, "image_id": i, "category_id": GREEN, "bbox": [30, 20, 20, 16], "area": 320, "iscrowd": 0}
        )
    cats = [{"id": RED, "name": "red"}, {"id": GREEN, "name": "green"}]
    (tmp_path / "a.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return CocoDetection(tmp_path / "a.json", tmp_path, train=False, load_masks=False), anns


def _perfect_on(anns, category_id):
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in anns
        if a["category_id"] == category_id
    ]


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_a_detector_perfect_on_one_of_two_hashed_categories_scores_50(hashed_ids, backend):
    dataset, anns = hashed_ids
    for category in (RED, GREEN):  # before the renumbering: red-only 100, green-only 0
        report = evaluate_results(dataset, _perfect_on(anns, category), ["bbox"], len(dataset), backend=backend)
        assert report["bbox"]["AP"] == 50.0
    both = _perfect_on(anns, RED) + _perfect_on(anns, GREEN)
    assert evaluate_results(dataset, both, ["bbox"], len(dataset), backend=backend)["bbox"]["AP"] == 100.0
    assert sorted(dataset.coco.cats) == [RED, GREEN]  # the dataset's own index keeps the file's ids


def test_bootstrap_renumbers_category_ids_too(hashed_ids):
    dataset, anns = hashed_ids
    out = paired_bootstrap(dataset.coco, _perfect_on(anns, RED), _perfect_on(anns, GREEN), "bbox", [1, 2], n_boot=20)
    assert (out["ap_a"], out["ap_b"], out["delta"]) == (50.0, 50.0, 0.0)


def test_written_results_keep_the_datasets_category_ids(hashed_ids):
    dataset, _ = hashed_ids
    output = {
        "boxes": torch.tensor([[4.0, 4, 24, 20], [30, 20, 50, 36]]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([1, 2]),
    }
    results = detections_to_coco(output, 1, dataset.label_to_cat_id)
    assert [r["category_id"] for r in results] == [RED, GREEN]
    json.dumps(results)  # a Python int of any size is valid JSON


def test_data_check_notes_the_renumbered_category_ids(hashed_ids, tmp_path):
    report = check_dataset(tmp_path / "a.json", tmp_path, progress=False)
    assert report.problems == []
    assert any(note.startswith(f"2 category id(s) outside 1..2**31-1 ({RED}, {GREEN};") for note in report.notes)
