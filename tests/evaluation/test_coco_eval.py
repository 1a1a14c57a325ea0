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
    output = {"boxes": torch.tensor([[2.0, 1.0, 7.0, 4.0]]), "scores": torch.tensor([0.75]),
              "labels": torch.tensor([2]), "masks": mask}
    (r,) = detections_to_coco(output, image_id=42, label_to_cat_id={1: 3, 2: 7})
    assert r["image_id"] == 42 and r["category_id"] == 7 and r["score"] == 0.75
    assert r["bbox"] == [2.0, 1.0, 5.0, 3.0]  # XYXY -> XYWH
    rle = {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
    assert mask_util.area(rle) == 15
    assert np.array_equal(mask_util.decode(rle), (mask[0, 0] > 0.5).numpy().astype(np.uint8))
