"""Files whose fields parse but give a wrong number: ids COCOeval cannot represent, unrasterizable evaluation masks,
areas that contradict the geometry, splits whose categories differ, no usable training image (data/validate.py,
data/coco.py, evaluation/backends.py)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from helpers import shared_path

from scratchdet.data.build import check_categories
from scratchdet.data.coco import CocoDetection, load_coco_json
from scratchdet.data.validate import area_tolerance, geometric_areas
from scratchdet.errors import DataError
from scratchdet.evaluation.backends import BACKENDS
from scratchdet.evaluation.coco import evaluate_results


def _boxes_spec(first_ann_id: int) -> dict:
    """Three boxes on two 64x64 images, annotation ids counting up from `first_ann_id`."""
    boxes = [(1, (4, 4, 20, 12)), (1, (30, 30, 16, 20)), (2, (8, 10, 40, 30))]
    return {
        "categories": [{"id": 5, "name": "thing"}],
        "images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (1, 2)],
        "annotations": [
            {
                "id": first_ann_id + k,
                "image_id": img,
                "category_id": 5,
                "bbox": list(b),
                "area": float(b[2] * b[3]),
                "iscrowd": 0,
            }
            for k, (img, b) in enumerate(boxes)
        ],
    }


def _perfect(spec: dict) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": list(a["bbox"]),
            "score": 0.9,
            **({"segmentation": a["segmentation"]} if "segmentation" in a else {}),
        }
        for a in spec["annotations"]
    ]


# --- annotation ids ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_ann_id", [0, -5, 1, 2**63])  # 2**63: 64-bit hash ids
@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_score_100_whatever_the_annotation_ids(write_coco, first_ann_id, backend):
    spec = _boxes_spec(first_ann_id)
    json_path, image_dir = write_coco(spec)
    ds = CocoDetection(json_path, image_dir, train=False, load_masks=False)
    report = evaluate_results(ds, _perfect(spec), ["bbox"], len(ds), backend=backend)
    assert report["bbox"]["AP"] == 100.0 and report["bbox"]["AR100"] == 100.0
    assert ds.coco.anns[first_ann_id]["id"] == first_ann_id  # the dataset's own index keeps the file's ids
    assert bool(ds.summary.notes) == (first_ann_id < 1)


@pytest.mark.parametrize("image_ids", [(-7, -3), (2**63, 2**63 + 5), (0, 1)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_boxes_and_masks_score_100_whatever_the_image_ids(write_coco, image_ids, backend):
    spec = _masks_spec()
    old_to_new = dict(zip((1, 2), image_ids, strict=True))
    for img in spec["images"]:
        img["id"] = old_to_new[img["id"]]
    for ann in spec["annotations"]:
        ann["image_id"] = old_to_new[ann["image_id"]]
    ds = CocoDetection(*write_coco(spec), train=False, load_masks=False, segm_eval=True)
    report = evaluate_results(ds, _perfect(spec), ["bbox", "segm"], len(ds), backend=backend)
    assert report["bbox"]["AP"] == 100.0 and report["segm"]["AP"] == 100.0


# --- evaluation masks ----------------------------------------------------------------------------------------------


def _masks_spec() -> dict:
    spec = _boxes_spec(1)
    for ann in spec["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return spec


@pytest.mark.parametrize(
    ("segmentation", "words"),
    [
        ([], "empty list"),
        ([[]], "fewer than 3 points"),
        ([[3, 3]], "fewer than 3 points"),
        ([[3, 3, 9, 9]], "fewer than 3 points"),
        (None, "has no 'segmentation'"),
    ],
)
def test_unrasterizable_evaluation_masks_are_refused_at_load_and_by_both_backends(write_coco, segmentation, words):
    spec = _masks_spec()
    ann = spec["annotations"][1]
    if segmentation is None:  # a crowd region without its region
        del ann["segmentation"]
        ann["iscrowd"] = 1
    else:
        ann["segmentation"] = segmentation
    json_path, image_dir = write_coco(spec)
    with pytest.raises(DataError, match=words) as info:
        CocoDetection(json_path, image_dir, train=False, load_masks=False, segm_eval=True)
    assert (info.value.ann_id, info.value.image_id, info.value.field) == (2, 1, "segmentation")
    assert str(json_path) in str(info.value)
    # Loaded for boxes only, the same file evaluates boxes; asking either backend for segm gives the same error.
    ds = CocoDetection(json_path, image_dir, train=False, load_masks=False)
    results = _perfect(_masks_spec())
    assert evaluate_results(ds, copy.deepcopy(results), ["bbox"], len(ds))["bbox"]["AP"] == 100.0
    for backend in BACKENDS:
        with pytest.raises(DataError, match=words):
            evaluate_results(ds, copy.deepcopy(results), ["segm"], len(ds), backend=backend)


def test_short_polygon_parts_are_dropped_from_the_evaluation_copy_and_both_backends_agree(write_coco):
    spec = _masks_spec()
    spec["annotations"][0]["segmentation"] = [[5, 5, 6, 6], *spec["annotations"][0]["segmentation"], [1, 1]]
    json_path, image_dir = write_coco(spec)
    ds = CocoDetection(json_path, image_dir, train=False, load_masks=False, segm_eval=True)
    assert ds.summary.eval_polygon_parts_dropped == 2
    results = _perfect(_masks_spec())
    aps = {
        b: evaluate_results(ds, copy.deepcopy(results), ["segm"], len(ds), backend=b)["segm"]["AP"] for b in BACKENDS
    }
    assert aps == {b: 100.0 for b in BACKENDS}


# --- areas ---------------------------------------------------------------------------------------------------------


def test_geometric_area_is_the_polygon_area_rle_count_or_box_area():
    images = {1: {"id": 1, "width": 20, "height": 20}}
    triangle = [0, 0, 10, 0, 0, 10]  # 50 px
    square = [12, 12, 16, 12, 16, 16, 12, 16]  # 16 px
    mask = np.zeros((20, 20), np.uint8)
    mask[2:5, 3:10] = 1  # 21 px
    import pycocotools.mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask))
    anns = [
        {"image_id": 1, "bbox": [0, 0, 10, 10], "segmentation": [triangle, square]},
        {"image_id": 1, "bbox": [3, 2, 7, 3], "segmentation": {"size": [20, 20], "counts": rle["counts"].decode()}},
        {"image_id": 1, "bbox": [1, 1, 4, 5]},
        {"image_id": 1, "bbox": [1, 1, 4, 5], "segmentation": [[1, 1, 2, 2]]},
    ]  # no polygon of >= 3 points
    np.testing.assert_allclose(geometric_areas(anns, images), [66.0, 21.0, 20.0, 20.0])


def test_coco_official_areas_agree_with_their_polygons():
    coco_tiny = shared_path("data", "coco_tiny")
    for split in ("train2017", "val2017"):
        data = load_coco_json(coco_tiny / "annotations" / f"instances_{split}.json")
        images = {img["id"]: img for img in data["images"]}
        instances = [a for a in data["annotations"] if not a["iscrowd"]]
        stored = np.array([a["area"] for a in instances])
        np.testing.assert_allclose(geometric_areas(instances, images), stored, rtol=1e-6)
        ds = CocoDetection(
            coco_tiny / "annotations" / f"instances_{split}.json",
            coco_tiny / split,
            train=False,
            load_masks=False,
            segm_eval=True,
        )  # the official file passes every check
        assert ds.summary.area_mismatches == 0 and ds.summary.eval_polygon_parts_dropped == 0


def test_area_that_contradicts_the_geometry_is_refused_for_evaluation_counted_for_training(write_coco):
    spec = _masks_spec()
    spec["annotations"][2]["area"] = 0.01  # e.g. an exporter writing areas in relative units
    spec["annotations"][0]["area"] = 1e11  # beyond COCOeval's 1e10 'all' range: silently ignored there
    json_path, image_dir = write_coco(spec)
    with pytest.raises(DataError, match="stored area 1e\\+11") as info:
        CocoDetection(json_path, image_dir, train=False, load_masks=False)
    assert (info.value.ann_id, info.value.field) == (1, "area") and "1 more like it" in str(info.value)
    train = CocoDetection(json_path, image_dir, train=True, load_masks=False)
    assert train.summary.area_mismatches == 2
    kept = CocoDetection(json_path, image_dir, train=False, load_masks=False, gt_area="file")
    assert kept.coco.anns[1]["area"] == 1e11
    fixed = CocoDetection(json_path, image_dir, train=False, load_masks=False, gt_area="geometry")
    assert [fixed.coco.anns[i]["area"] for i in (1, 2, 3)] == [240.0, 320.0, 1200.0]
    report = evaluate_results(fixed, _perfect(_masks_spec()), ["bbox"], len(fixed))
    assert report["bbox"]["AP"] == 100.0 and report["bbox"]["APs"] == 100.0  # 240 px < 32^2: binned as small


def test_tolerance_accepts_rasterized_areas_and_rejects_box_areas_for_masks():
    geometric = np.array([50.0, 1000.0, 20000.0])
    tol = area_tolerance(geometric)
    assert (tol >= 0.3 * geometric).all() or tol[0] > 25  # small objects: rasterization differs a lot
    assert (1.6 * geometric[1:] - geometric[1:] > tol[1:]).all()  # box area ~1.6x the mask area: refused


def test_a_self_intersecting_polygon_gets_the_area_pycocotools_fills(write_coco):
    spec = _masks_spec()
    ann = spec["annotations"][2]  # box [8, 10, 40, 30] on a 64x64 image
    ann["segmentation"] = [[8, 10, 48, 40, 48, 10, 8, 40]]  # a bow tie: the shoelace sum cancels to 0
    del ann["area"]
    data = load_coco_json(write_coco(spec)[0])
    filled = data["annotations"][2]["area"]
    assert filled > 500  # two triangles of ~300 px each, as rasterized, not 0
    ann["area"] = filled
    fixed = CocoDetection(*write_coco(spec, name="bowtie.json"), train=False, load_masks=False, gt_area="geometry")
    assert fixed.coco.anns[3]["area"] == filled and fixed.summary.area_mismatches == 0
    ann["area"] = 0.0  # what an exporter summing signed polygon areas writes: refused
    with pytest.raises(DataError, match="stored area 0 px"):
        CocoDetection(*write_coco(spec, name="bowtie0.json"), train=False, load_masks=False)


def test_missing_area_is_the_mask_area_not_the_box_area(write_coco):
    spec = _masks_spec()
    spec["annotations"][0]["segmentation"] = [[4, 4, 24, 4, 4, 16]]  # a triangle in its 20x12 box: 120 px
    for ann in spec["annotations"]:
        del ann["area"]
    data = load_coco_json(write_coco(spec)[0])
    assert [a["area"] for a in data["annotations"]] == [120.0, 320.0, 1200.0]


# --- categories and empty training sets ----------------------------------------------------------------------------


def test_splits_whose_category_ids_name_different_things_are_refused(write_coco, tmp_path):
    spec = _boxes_spec(1)
    spec["categories"] = [{"id": 5, "name": "thing"}, {"id": 6, "name": "other"}]
    train = CocoDetection(*write_coco(spec, name="train.json"), train=True, load_masks=False)
    swapped = copy.deepcopy(spec)
    swapped["categories"] = [{"id": 5, "name": "other"}, {"id": 6, "name": "thing"}]
    val = CocoDetection(*write_coco(swapped, name="val.json"), train=False, load_masks=False)
    with pytest.raises(DataError, match="id 5 is 'thing' in the first, 'other' in the second") as info:
        check_categories(train, val)
    assert info.value.field == "categories" and "val.json" in str(info.value)
    extra = copy.deepcopy(spec)
    extra["categories"].append({"id": 9, "name": "new"})
    with pytest.raises(DataError, match="id 9 \\('new'\\) only in the second"):
        check_categories(train, CocoDetection(*write_coco(extra, name="val2.json"), train=False, load_masks=False))
    check_categories(train, CocoDetection(*write_coco(spec, name="val3.json"), train=False, load_masks=False))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda a: a.update(iscrowd=1), "3 crowd regions excluded"),
        (lambda a: a.update(bbox=[1, 1, 0.5, 0.5], area=0.25), "3 boxes under 1 px"),
    ],
)
def test_a_training_split_with_no_usable_image_is_refused_with_the_reasons(write_coco, mutate, reason):
    spec = _boxes_spec(1)
    for ann in spec["annotations"]:
        mutate(ann)
    json_path, image_dir = write_coco(spec)
    with pytest.raises(DataError, match=f"no usable training images: 2 images, 3 annotations.*{reason}"):
        CocoDetection(json_path, image_dir, train=True, load_masks=False)
    assert len(CocoDetection(json_path, image_dir, train=False, load_masks=False)) == 2  # evaluation keeps them


def test_json_dump_of_summary_has_categories(write_coco):
    ds = CocoDetection(*write_coco(_boxes_spec(1)), train=True, load_masks=False)
    assert json.loads(json.dumps(ds.summary.to_dict()))["categories"] == [[5, "thing"]]
