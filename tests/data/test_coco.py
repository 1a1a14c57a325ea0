"""COCO parsing, validation, cleaning, subsets and samples (scratchdet/data/coco.py)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from scratchdet.data.coco import CocoDetection, DatasetSummary, load_coco_json
from scratchdet.data.transforms import build_train_transform
from scratchdet.errors import ConfigError, DataError


def _ann(spec: dict, ann_id: int) -> dict:
    return next(a for a in spec["annotations"] if a["id"] == ann_id)


# ---------------------------------------------------------------------------------------------------------------
# Valid data: samples, categories, masks
# ---------------------------------------------------------------------------------------------------------------


def test_sample_has_documented_shapes_dtypes_and_values(coco_spec, write_coco, helpers):
    json_path, image_dir = write_coco(coco_spec)
    ds = CocoDetection(json_path, image_dir, train=True)
    assert ds.image_ids == [1, 2]
    assert len(ds) == 2

    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 24, 32)
    expected = torch.from_numpy(helpers.image_pixels(1, 24, 32)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, expected)
    assert target["image_id"] == 1
    assert target["orig_size"] == (24, 32)
    assert target["file"] == str(image_dir / "a.png")
    # XYWH [2, 4, 10, 6] -> XYXY [2, 4, 12, 10]; labels by sorted category id: 3 -> 1, 7 -> 2, 20 -> 3.
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[2.0, 4.0, 12.0, 10.0], [20.0, 2.0, 28.0, 10.0]]
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2, 1]
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (2, 24, 32)
    # Polygon (ann 10) and compressed RLE (ann 11), in the same order as the boxes.
    assert np.array_equal(masks[0].numpy(), helpers.rect_mask(24, 32, 2, 4, 12, 10))
    assert np.array_equal(masks[1].numpy(), helpers.rect_mask(24, 32, 20, 2, 28, 10))

    image, target = ds[1]
    assert image.shape == (3, 16, 20)
    assert target["file"] == str(image_dir / "sub" / "b.png")
    assert target["boxes"].tolist() == [[1.0, 1.0, 6.0, 6.0]]  # the crowd annotation 13 is excluded
    assert target["labels"].tolist() == [3]
    # Uncompressed RLE (list counts).
    assert np.array_equal(target["masks"][0].numpy(), helpers.rect_mask(16, 20, 1, 1, 6, 6))


def test_non_contiguous_category_ids_map_to_contiguous_labels(coco_spec, write_coco):
    ds = CocoDetection(*write_coco(coco_spec), train=True)
    assert ds.cat_id_to_label == {3: 1, 7: 2, 20: 3}
    assert ds.label_to_cat_id == {1: 3, 2: 7, 3: 20}
    assert ds.class_names == ["__background__", "cat", "dog", "bird"]
    assert ds.num_classes == 4


def test_load_masks_false_has_no_masks_and_accepts_box_only_annotations(coco_spec, write_coco):
    for ann in coco_spec["annotations"]:
        del ann["segmentation"]
    ds = CocoDetection(*write_coco(coco_spec), train=True, load_masks=False)
    _, target = ds[0]
    assert "masks" not in target
    assert target["boxes"].shape == (2, 4)


def test_missing_segmentation_with_masks_requested_is_a_data_error(coco_spec, write_coco):
    del _ann(coco_spec, 11)["segmentation"]
    with pytest.raises(DataError, match="load_masks=False") as info:
        CocoDetection(*write_coco(coco_spec), train=True)
    assert info.value.ann_id == 11 and info.value.field == "segmentation"


def test_load_coco_json_fills_fields_cocoeval_needs(coco_spec, write_coco):
    ann = _ann(coco_spec, 12)
    del ann["area"], ann["iscrowd"]
    json_path, _ = write_coco(coco_spec)
    data = load_coco_json(json_path)
    ann = next(a for a in data["annotations"] if a["id"] == 12)
    assert ann["iscrowd"] == 0 and ann["area"] == 25.0


# ---------------------------------------------------------------------------------------------------------------
# Cleaning: crowd, clipping, dropping, images without annotations
# ---------------------------------------------------------------------------------------------------------------


def test_crowd_excluded_from_targets_but_kept_in_coco(coco_spec, write_coco):
    ds = CocoDetection(*write_coco(coco_spec), train=True)
    assert 13 in ds.coco.anns and ds.coco.anns[13]["iscrowd"] == 1
    assert sorted(ds.coco.getAnnIds(imgIds=[2])) == [12, 13]
    assert ds.summary.crowd_excluded == 1
    _, target = ds[ds.image_ids.index(2)]
    assert target["labels"].tolist() == [3]


def test_clipping_and_dropping_are_counted(coco_spec, write_coco):
    img1 = coco_spec["images"][0]  # 32 x 24
    extra = [
        # partly outside on the left and bottom: clipped to [0, 20, 5, 24]
        {"id": 20, "bbox": [-3, 20, 8, 10], "segmentation": [[0, 20, 5, 20, 5, 24, 0, 24]]},
        # wholly outside on the right
        {"id": 21, "bbox": [40, 2, 5, 5], "segmentation": [[40, 2, 45, 2, 45, 7, 40, 7]]},
        # zero width inside the image
        {"id": 22, "bbox": [5, 5, 0, 4], "segmentation": [[5, 5, 6, 5, 6, 9, 5, 9]]},
        # 0.5 pixel wide after clipping at the right edge
        {"id": 23, "bbox": [31.5, 3, 4, 4], "segmentation": [[31, 3, 32, 3, 32, 7, 31, 7]]},
        # only a 2-point polygon: the annotation has no valid polygon left
        {"id": 24, "bbox": [4, 14, 6, 6], "segmentation": [[4, 14, 10, 20]]},
        # one valid polygon and one 2-point polygon: the short one is dropped, the annotation kept
        {"id": 25, "bbox": [14, 14, 4, 4], "segmentation": [[14, 14, 18, 14, 18, 18, 14, 18], [1, 1, 2, 2]]},
    ]
    for ann in extra:
        ann.update(image_id=img1["id"], category_id=3, iscrowd=0)
    coco_spec["annotations"] += extra
    ds = CocoDetection(*write_coco(coco_spec), train=True)
    s = ds.summary
    assert (s.boxes_clipped, s.boxes_outside_dropped, s.degenerate_boxes_dropped) == (1, 1, 2)
    assert (s.invalid_polygons_dropped, s.polygon_parts_dropped, s.crowd_excluded) == (1, 1, 1)
    assert s.annotations_total == 10
    assert s.annotations_used == 5  # anns 10, 11, 20, 25 in image 1 and ann 12 in image 2
    _, target = ds[0]
    assert target["boxes"].tolist() == [
        [2.0, 4.0, 12.0, 10.0],
        [20.0, 2.0, 28.0, 10.0],
        [0.0, 20.0, 5.0, 24.0],
        [14.0, 14.0, 18.0, 18.0],
    ]
    assert target["masks"].shape == (4, 24, 32)
    # Every cleaned instance stays a usable target for torchvision: positive width and height.
    boxes = target["boxes"]
    assert bool(((boxes[:, 2] - boxes[:, 0]) >= 1).all() and ((boxes[:, 3] - boxes[:, 1]) >= 1).all())
    # The summary is plain JSON for the run folder.
    restored = json.loads(json.dumps(s.to_dict()))
    assert restored["boxes_clipped"] == 1 and restored["path"] == str(ds.json_path)
    assert DatasetSummary(**restored) == s


def test_train_skips_images_without_annotations_eval_keeps_them(coco_spec, write_coco):
    json_path, image_dir = write_coco(coco_spec)
    train = CocoDetection(json_path, image_dir, train=True)
    assert train.image_ids == [1, 2]
    assert train.summary.images_without_annotations == 1 and train.summary.images_used == 2

    evaluation = CocoDetection(json_path, image_dir, train=False)
    assert evaluation.image_ids == [1, 2, 5]
    assert evaluation.summary.images_used == 3
    image, target = evaluation[2]
    assert target["image_id"] == 5 and image.shape == (3, 16, 16)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 16, 16)


def test_image_with_only_crowd_annotations_is_skipped_for_training(coco_spec, write_coco):
    coco_spec["annotations"] = [a for a in coco_spec["annotations"] if a["id"] != 12]
    ds = CocoDetection(*write_coco(coco_spec), train=True)
    assert ds.image_ids == [1]
    assert ds.summary.images_without_annotations == 2


# ---------------------------------------------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------------------------------------------


def test_subsets_are_nested_deterministic_and_sorted(many_images_spec, write_coco):
    json_path, image_dir = write_coco(many_images_spec)
    sets = {n: CocoDetection(json_path, image_dir, train=True, subset=n, subset_seed=3).image_ids for n in (5, 12, 30)}
    assert all(ids == sorted(ids) for ids in sets.values())
    assert [len(ids) for ids in sets.values()] == [5, 12, 30]
    assert set(sets[5]) < set(sets[12]) < set(sets[30])
    assert 999 not in sets[30]  # the image without annotations is not usable for training
    again = CocoDetection(json_path, image_dir, train=True, subset=5, subset_seed=3).image_ids
    assert again == sets[5]
    other_seed = CocoDetection(json_path, image_dir, train=True, subset=12, subset_seed=4).image_ids
    assert other_seed != sets[12]
    ds = CocoDetection(json_path, image_dir, train=True, subset=5, subset_seed=3)
    assert ds.summary.subset == 5 and ds.summary.images_used == 5
    assert [ds[i][1]["image_id"] for i in range(len(ds))] == sets[5]


def test_subset_larger_than_available_says_how_many(many_images_spec, write_coco):
    json_path, image_dir = write_coco(many_images_spec)
    with pytest.raises(DataError, match="only 30 usable") as info:
        CocoDetection(json_path, image_dir, train=True, subset=31)
    assert str(json_path) in str(info.value) and info.value.field == "subset"
    with pytest.raises(ConfigError, match="subset"):
        CocoDetection(json_path, image_dir, train=True, subset=0)


def test_missing_file_of_an_image_not_yielded_is_not_checked(coco_spec, write_coco):
    json_path, image_dir = write_coco(coco_spec)
    (image_dir / "c.png").unlink()  # image 5 has no annotations: training never reads it
    assert CocoDetection(json_path, image_dir, train=True).image_ids == [1, 2]


# ---------------------------------------------------------------------------------------------------------------
# Per-sample rng and transforms
# ---------------------------------------------------------------------------------------------------------------


def test_transform_gets_rng_seeded_by_sample_seed(coco_spec, write_coco):
    seen = []

    def record(image, target, rng):
        seen.append(rng.random())
        return image, target

    ds = CocoDetection(*write_coco(coco_spec), train=True, transform=record)
    ds[1]
    ds[(1, 12345)]
    ds[np.int64(0)]
    assert seen == [random.Random(1).random(), random.Random(12345).random(), random.Random(0).random()]


def test_augmented_samples_are_reproducible_from_the_key(coco_spec, write_coco):
    transform = build_train_transform([16, 20, 24], max_size=40, flip_prob=0.5)
    ds = CocoDetection(*write_coco(coco_spec), train=True, transform=transform)
    outputs = [ds[(0, seed)] for seed in range(8)]
    for seed, (image, target) in enumerate(outputs):
        image2, target2 = ds[(0, seed)]
        assert torch.equal(image, image2)
        assert torch.equal(target["boxes"], target2["boxes"]) and torch.equal(target["masks"], target2["masks"])
    # The seeds are not all the same augmentation.
    assert len({(tuple(t["size"]), tuple(t["boxes"][0].tolist())) for _, t in outputs}) > 1


def test_index_out_of_range_is_index_error(coco_spec, write_coco):
    ds = CocoDetection(*write_coco(coco_spec), train=True)
    with pytest.raises(IndexError):
        ds[2]


# ---------------------------------------------------------------------------------------------------------------
# Hard errors: one test per error, each naming the file, id and field
# ---------------------------------------------------------------------------------------------------------------


def test_missing_json_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(DataError, match="not found") as info:
        CocoDetection(path, tmp_path, train=True)
    assert str(path) in str(info.value)


def test_truncated_json_names_line_and_column(coco_spec, write_coco):
    json_path, image_dir = write_coco(coco_spec)
    text = json.dumps(coco_spec, indent=1)
    json_path.write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"not valid JSON: .* at line \d+, column \d+") as info:
        CocoDetection(json_path, image_dir, train=True)
    assert str(json_path) in str(info.value)


def test_missing_top_level_key(coco_spec, write_coco):
    del coco_spec["categories"]
    with pytest.raises(DataError, match="missing top-level 'categories'") as info:
        load_coco_json(write_coco(coco_spec)[0])
    assert info.value.field == "categories"


def test_duplicate_image_ids(coco_spec, write_coco):
    coco_spec["images"][2]["id"] = 2
    json_path, image_dir = write_coco(coco_spec, write_images=False)
    with pytest.raises(DataError, match="duplicate image id 2") as info:
        CocoDetection(json_path, image_dir, train=True)
    assert info.value.image_id == 2 and info.value.field == "id" and str(json_path) in str(info.value)


def test_duplicate_annotation_ids(coco_spec, write_coco):
    _ann(coco_spec, 12)["id"] = 10
    json_path, image_dir = write_coco(coco_spec)
    with pytest.raises(DataError, match="duplicate annotation id 10") as info:
        CocoDetection(json_path, image_dir, train=True)
    assert info.value.ann_id == 10 and info.value.field == "id"
    assert "annotation id 10" in str(info.value) and str(json_path) in str(info.value)


def test_duplicate_category_ids(coco_spec, write_coco):
    coco_spec["categories"][1]["id"] = 20
    with pytest.raises(DataError, match="duplicate category id 20"):
        load_coco_json(write_coco(coco_spec)[0])


def test_annotation_with_unknown_image(coco_spec, write_coco):
    _ann(coco_spec, 12)["image_id"] = 77
    with pytest.raises(DataError, match="unknown image id 77") as info:
        load_coco_json(write_coco(coco_spec)[0])
    assert info.value.ann_id == 12 and info.value.field == "image_id"


def test_unknown_category(coco_spec, write_coco):
    _ann(coco_spec, 11)["category_id"] = 4
    json_path, image_dir = write_coco(coco_spec)
    with pytest.raises(DataError, match="unknown category id 4") as info:
        CocoDetection(json_path, image_dir, train=True)
    err = info.value
    assert (err.image_id, err.ann_id, err.field) == (1, 11, "category_id")
    assert "image id 1" in str(err) and "annotation id 11" in str(err) and str(json_path) in str(err)


def test_negative_box_size(coco_spec, write_coco):
    _ann(coco_spec, 10)["bbox"] = [2, 4, -10, 6]
    json_path, image_dir = write_coco(coco_spec)
    with pytest.raises(DataError, match="negative box size") as info:
        CocoDetection(json_path, image_dir, train=True)
    err = info.value
    assert (err.image_id, err.ann_id, err.field) == (1, 10, "bbox") and str(json_path) in str(err)


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, "3", 4], None, [1, 2, float("nan"), 4]])
def test_bbox_not_four_finite_numbers(coco_spec, write_coco, bbox):
    _ann(coco_spec, 10)["bbox"] = bbox
    with pytest.raises(DataError, match="4 finite numbers") as info:
        load_coco_json(write_coco(coco_spec)[0])
    assert info.value.field == "bbox" and info.value.ann_id == 10


@pytest.mark.parametrize("value", [0, -5, 12.5, None])
def test_image_without_positive_int_size(coco_spec, write_coco, value):
    coco_spec["images"][1]["height"] = value
    with pytest.raises(DataError, match="positive integer 'height'") as info:
        load_coco_json(write_coco(coco_spec, write_images=False)[0])
    assert info.value.image_id == 2 and info.value.field == "height"


def test_missing_image_file(coco_spec, write_coco):
    json_path, image_dir = write_coco(coco_spec)
    (image_dir / "sub" / "b.png").unlink()
    with pytest.raises(DataError, match="image file not found") as info:
        CocoDetection(json_path, image_dir, train=True)
    err = info.value
    assert str(image_dir / "sub" / "b.png") in str(err) and err.image_id == 2 and err.field == "file_name"
    # check_files=False defers the error to read time, still as a DataError naming the image.
    ds = CocoDetection(json_path, image_dir, train=True, check_files=False)
    with pytest.raises(DataError, match="image file not found") as info:
        ds[1]
    assert info.value.image_id == 2


def test_rle_size_mismatch(coco_spec, write_coco, helpers):
    _ann(coco_spec, 12)["segmentation"] = helpers.uncompressed_rle(helpers.rect_mask(20, 16, 1, 1, 6, 6))
    json_path, image_dir = write_coco(coco_spec)
    with pytest.raises(DataError, match=r"RLE size \[20, 16\] does not match .* \[16, 20\]") as info:
        CocoDetection(json_path, image_dir, train=True)
    err = info.value
    assert (err.image_id, err.ann_id, err.field) == (2, 12, "segmentation") and str(json_path) in str(err)


@pytest.mark.parametrize(
    "segmentation",
    [[[1, 2, 3, 4, 5]], [["a", 1, 2, 3, 4, 5]], {"size": [16, 20]}, {"size": [16, 20], "counts": [1, 2]}, "x"],
)
def test_malformed_segmentation(coco_spec, write_coco, segmentation):
    _ann(coco_spec, 12)["segmentation"] = segmentation
    with pytest.raises(DataError, match="malformed") as info:
        load_coco_json(write_coco(coco_spec)[0])
    assert info.value.ann_id == 12 and info.value.field == "segmentation"


def test_garbage_compressed_rle_fails_when_the_file_is_loaded(coco_spec, write_coco):
    # Checked at load, not at read time: in an evaluation split pycocotools' IoU can loop forever on such a string.
    _ann(coco_spec, 11)["segmentation"] = {"size": [24, 32], "counts": "1"}
    for train in (True, False):
        with pytest.raises(DataError, match="malformed compressed RLE") as info:
            CocoDetection(*write_coco(coco_spec), train=train)
        assert info.value.ann_id == 11 and info.value.image_id == 1 and info.value.field == "segmentation"


def test_corrupt_image_file_at_read_time(coco_spec, write_coco):
    json_path, image_dir = write_coco(coco_spec)
    path = image_dir / "a.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated PNG: the header opens, the pixel data does not decode
    ds = CocoDetection(json_path, image_dir, train=True)  # the file exists, so construction succeeds
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        ds[0]
    err = info.value
    assert str(path) in str(err) and err.image_id == 1 and str(json_path) in str(err)
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="corrupt or truncated"):
        ds[0]


def test_image_size_differs_from_json(coco_spec, write_coco):
    json_path, image_dir = write_coco(coco_spec)
    coco_spec["images"][0]["width"] = 30
    _ann(coco_spec, 11)["bbox"] = [20, 2, 8, 8]
    _ann(coco_spec, 11)["segmentation"] = [[20, 2, 28, 2, 28, 10, 20, 10]]
    json_path.write_text(json.dumps(coco_spec))
    ds = CocoDetection(json_path, image_dir, train=True)
    with pytest.raises(DataError, match="is 32x24 .* says 30x24") as info:
        ds[0]
    assert info.value.field == "width" and info.value.image_id == 1
