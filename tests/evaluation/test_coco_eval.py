import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from scratchdet.data.coco import CocoDetection
from scratchdet.evaluation.coco import STAT_NAMES, detections_to_coco, evaluate_results, format_report


@pytest.fixture(scope="module")
def val_set(shapes_dir):
    return CocoDetection(shapes_dir / "instances_val.json", shapes_dir / "val", train=False, load_masks=True)


def ground_truth_as_detections(dataset) -> list[dict]:
    """Every non-crowd annotation of the val set as a perfect, confident detection (boxes and masks)."""
    results = []
    for i in range(len(dataset)):
        _, target = dataset[i]
        h, w = target["orig_size"]
        output = {
            "boxes": target["boxes"],
            "scores": torch.ones(len(target["boxes"])),
            "labels": target["labels"],
            "masks": target["masks"][:, None].float(),
        }
        assert target["masks"].shape[-2:] == (h, w)
        results += detections_to_coco(output, target["image_id"], dataset.label_to_cat_id)
    return results


def test_perfect_detections_score_100(val_set):
    results = ground_truth_as_detections(val_set)
    report = evaluate_results(val_set, results, ["bbox", "segm"], len(val_set))
    assert report["status"] == "ok"
    for iou_type in ("bbox", "segm"):
        assert report[iou_type]["AP"] == pytest.approx(100.0)
        assert report[iou_type]["AP75"] == pytest.approx(100.0)
        assert set(report[iou_type]) == set(STAT_NAMES)
    assert "bbox" in format_report(report) and "100.0" in format_report(report)


def test_no_predictions_is_reported_as_such_not_as_zero(val_set):
    report = evaluate_results(val_set, [], ["bbox"], len(val_set))
    assert report["status"] == "no predictions"
    assert "bbox" not in report
    assert format_report(report).startswith("no predictions")


def test_shifted_boxes_lose_high_iou_ap(val_set):
    results = ground_truth_as_detections(val_set)
    for r in results:
        r["bbox"][0] += 0.3 * r["bbox"][2]  # IoU ~0.54: counts at IoU 0.5, not at 0.75
        r.pop("segmentation")
    bbox = evaluate_results(val_set, results, ["bbox"], len(val_set))["bbox"]
    assert bbox["AP50"] == pytest.approx(100.0)
    assert bbox["AP75"] == pytest.approx(0.0)


def test_detections_to_coco_converts_boxes_labels_and_masks():
    mask = torch.zeros(1, 1, 6, 8)
    mask[0, 0, 1:4, 2:7] = 0.9
    output = {
        "boxes": torch.tensor([[2.0, 1.0, 7.0, 4.0]]),
        "scores": torch.tensor([0.75]),
        "labels": torch.tensor([2]),
        "masks": mask,
    }
    (r,) = detections_to_coco(output, image_id=42, label_to_cat_id={1: 3, 2: 7})
    assert r["image_id"] == 42 and r["category_id"] == 7 and r["score"] == 0.75
    assert r["bbox"] == [2.0, 1.0, 5.0, 3.0]  # XYXY -> XYWH
    rle = {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
    assert mask_util.area(rle) == 15
    assert np.array_equal(mask_util.decode(rle), (mask[0, 0] > 0.5).numpy().astype(np.uint8))


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_coco_ap_scores_only_the_best_100_detections_per_image_by_score(backend):
    # Why model.box_detections_per_img > 100 warns (config.py): COCOeval keeps the 100 best-scored detections per
    # image whatever their order in the results, so a 101st never counts, even a perfect one.
    pytest.importorskip(backend)
    from scratchdet.data.coco import _build_coco
    from scratchdet.evaluation.coco import coco_metrics

    gt = {
        "images": [{"id": 1, "width": 200, "height": 200, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 50.0], "area": 2500.0, "iscrowd": 0}
        ],
    }
    coco = _build_coco(gt)
    decoy = {"image_id": 1, "category_id": 1, "bbox": [120.0, 120.0, 50.0, 50.0]}  # IoU 0 with the object
    perfect = {"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 50.0], "score": 0.5}
    decoys = [{**decoy, "score": 0.9 - 0.001 * k} for k in range(100)]
    at_100 = coco_metrics(coco, [perfect, *decoys[:99]], "bbox", [1], backend=backend)  # perfect listed first
    at_101 = coco_metrics(coco, [perfect, *decoys], "bbox", [1], backend=backend)
    assert at_100["AP"] == pytest.approx(1.0, abs=1e-3)  # recall 1 at rank 100: precision 1/100 at every recall
    assert at_100["AR100"] == pytest.approx(100.0)
    assert at_101["AP"] == 0.0 and at_101["AR100"] == 0.0
