"""Tests of the synthetic COCO generator: determinism, genuine COCO format, and the properties it promises."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from scratchdet.data.synthetic import (
    KEYPOINT_NAMES,
    KEYPOINT_OKS_SIGMAS,
    WALKER_CATEGORY_ID,
    keypoint_flip_map,
    write_synthetic_coco,
)
from scratchdet.errors import ConfigError

COCO_PERSON_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
]  # fmt: skip
SMALL = {"train_images": 24, "val_images": 8, "min_side": 48, "max_side": 96}


def _quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    summary = write_synthetic_coco(out, seed=3, **SMALL)
    return out, summary


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    write_synthetic_coco(tmp_path / "a", seed=7, **SMALL)
    write_synthetic_coco(tmp_path / "b", seed=7, **SMALL)
    write_synthetic_coco(tmp_path / "c", seed=8, **SMALL)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert len(a) == 2 + SMALL["train_images"] + SMALL["val_images"]
    assert a == b
    assert a["instances_train.json"] != c["instances_train.json"]
    assert a["train/000000.png"] != c["train/000000.png"]


def test_val_is_not_a_copy_of_train(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    train = np.asarray(Image.open(out / "train" / "000000.png"))
    val = np.asarray(Image.open(out / "val" / "000000.png"))
    assert train.shape != val.shape or not np.array_equal(train, val)
    train_anns = json.loads((out / "instances_train.json").read_text())["annotations"]
    val_anns = json.loads((out / "instances_val.json").read_text())["annotations"]
    assert [a["bbox"] for a in train_anns[: len(val_anns)]] != [a["bbox"] for a in val_anns]


def test_pycocotools_reads_both_splits_and_layout_is_coco(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    for split in ("train", "val"):
        coco = _quiet_coco(out / f"instances_{split}.json")
        data = coco.dataset
        assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
        assert len(coco.imgs) == summary[split]["images"] == SMALL[f"{split}_images"]
        assert len(coco.anns) == summary[split]["annotations"] > 0
        image_ids = [img["id"] for img in data["images"]]
        ann_ids = [ann["id"] for ann in data["annotations"]]
        assert len(set(image_ids)) == len(image_ids) and min(image_ids) >= 1
        assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) >= 1
        for img in data["images"]:
            assert "/" not in img["file_name"]
            with Image.open(out / split / img["file_name"]) as im:
                assert im.mode == "RGB"
                assert im.size == (img["width"], img["height"])


def test_masks_areas_and_boxes_are_self_consistent(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    for split in ("train", "val"):
        coco = _quiet_coco(out / f"instances_{split}.json")
        for ann in coco.dataset["annotations"]:
            img = coco.imgs[ann["image_id"]]
            mask = coco.annToMask(ann)
            assert mask.shape == (img["height"], img["width"])
            # Areas are computed from the pycocotools-decoded mask, so they agree exactly.
            assert mask.sum() == ann["area"] > 0, ann["id"]
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"], ann["id"]
            ys, xs = np.nonzero(mask)
            # Polygon boxes are the polygon's extent; the pixels it covers may reach 1 px beyond a fractional edge.
            tol = 1.0 if isinstance(ann["segmentation"], list) else 0.0
            assert xs.min() >= x - tol and xs.max() + 1 <= x + w + tol, ann["id"]
            assert ys.min() >= y - tol and ys.max() + 1 <= y + h + tol, ann["id"]
            if not isinstance(ann["segmentation"], list):
                assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == [x, y, w, h]


def test_polygons_rasterised_by_pil_agree_with_pycocotools(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    coco = _quiet_coco(out / "instances_train.json")
    polygon_anns = [a for a in coco.dataset["annotations"] if isinstance(a["segmentation"], list)]
    assert polygon_anns
    for ann in polygon_anns:
        img = coco.imgs[ann["image_id"]]
        canvas = Image.new("L", (img["width"], img["height"]))
        draw = ImageDraw.Draw(canvas)
        for poly in ann["segmentation"]:
            draw.polygon(list(zip(poly[0::2], poly[1::2], strict=True)), fill=1)
        pil = np.asarray(canvas).astype(bool)
        ours = coco.annToMask(ann).astype(bool)
        # PIL includes the boundary, pycocotools samples pixel areas: they differ only along the outline.
        x, y, w, h = ann["bbox"]
        assert np.count_nonzero(pil ^ ours) <= 2 * (w + h) + 8, ann["id"]


def test_segmented_objects_are_visible_in_the_pixels(dataset: tuple[Path, dict]) -> None:
    """The top-most object's pixels differ from the background around it (objects are drawn, not just annotated)."""
    out, _ = dataset
    coco = _quiet_coco(out / "instances_train.json")
    contrasts = []
    for img in coco.dataset["images"]:
        anns = [a for a in coco.imgToAnns[img["id"]] if not a["iscrowd"]]
        if not anns:
            continue
        top = max(anns, key=lambda a: a["id"])  # ids follow drawing order
        mask = coco.annToMask(top).astype(bool)
        pixels = np.asarray(Image.open(out / "train" / img["file_name"]), dtype=np.float32)
        contrasts.append(np.linalg.norm(pixels[mask].mean(0) - pixels[~mask].mean(0)))
    assert np.median(contrasts) > 30


def test_both_mask_encodings_crowd_and_noncontiguous_categories(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    data = json.loads((out / "instances_train.json").read_text())
    plain = [a for a in data["annotations"] if a["iscrowd"] == 0]
    crowd = [a for a in data["annotations"] if a["iscrowd"] == 1]
    polygons = [a for a in plain if isinstance(a["segmentation"], list)]
    rles = [a for a in plain if isinstance(a["segmentation"], dict)]
    assert polygons and rles and crowd
    assert all(isinstance(a["segmentation"]["counts"], str) for a in rles)
    assert all(isinstance(a["segmentation"]["counts"], list) for a in crowd)  # uncompressed, as COCO's crowds
    assert all(a["iscrowd"] in (0, 1) for a in data["annotations"])
    assert summary["train"]["polygon_masks"] == len(polygons)
    assert summary["train"]["rle_masks"] == len(rles)
    assert summary["train"]["crowd"] == len(crowd)
    # Circles and ellipses are stored as 32-gons, squares as 4 vertices.
    names = {c["id"]: c["name"] for c in data["categories"]}
    vertex_counts = {names[a["category_id"]]: len(a["segmentation"][0]) // 2 for a in polygons}
    assert vertex_counts.get("circle", 32) == 32 and vertex_counts.get("square", 4) == 4
    ids = sorted(names)
    assert ids != list(range(1, len(ids) + 1)) and ids != list(range(len(ids)))
    assert "walker" in names.values() and len(set(names.values())) == len(names)
    used = {a["category_id"] for a in data["annotations"]}
    assert used <= set(ids) and len(used) >= 4


def test_walker_keypoints_are_valid_and_on_the_figure(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    coco = _quiet_coco(out / "instances_train.json")
    (walker,) = [c for c in coco.dataset["categories"] if "keypoints" in c]
    assert walker["id"] == WALKER_CATEGORY_ID and walker["keypoints"] == list(KEYPOINT_NAMES)
    assert len(KEYPOINT_OKS_SIGMAS) == len(KEYPOINT_NAMES)
    k = len(KEYPOINT_NAMES)
    assert all(1 <= i <= k and 1 <= j <= k for i, j in walker["skeleton"])
    walkers = [a for a in coco.dataset["annotations"] if a["category_id"] == walker["id"]]
    assert walkers and summary["train"]["keypoint_instances"] == sum(a["num_keypoints"] > 0 for a in walkers)
    flags = []
    for ann in walkers:
        img = coco.imgs[ann["image_id"]]
        kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(k, 3)
        assert set(kps[:, 2]) <= {0, 1, 2}
        assert ann["num_keypoints"] == int(np.count_nonzero(kps[:, 2]))
        assert np.all(kps[kps[:, 2] == 0, :2] == 0)
        labelled = kps[kps[:, 2] > 0]
        assert np.all((labelled[:, 0] >= 0) & (labelled[:, 0] < img["width"]))
        assert np.all((labelled[:, 1] >= 0) & (labelled[:, 1] < img["height"]))
        # Visible joints lie on the figure's visible mask (within a pixel, joints sit on thin limbs).
        mask = np.pad(coco.annToMask(ann), 1)
        for x, y, _ in kps[kps[:, 2] == 2]:
            col, row = int(x) + 1, int(y) + 1
            assert mask[row - 1 : row + 2, col - 1 : col + 2].any(), (ann["id"], x, y)
        # The figure's own left limbs are on the image's right (it faces the viewer).
        left_hand, right_hand = KEYPOINT_NAMES.index("left_hand"), KEYPOINT_NAMES.index("right_hand")
        if kps[left_hand, 2] and kps[right_hand, 2]:
            assert kps[left_hand, 0] > kps[right_hand, 0]
        flags.extend(kps[:, 2].tolist())
    assert 2 in flags


def test_keypoint_flip_map_is_an_involution_swapping_sides() -> None:
    for names in (list(KEYPOINT_NAMES), COCO_PERSON_KEYPOINTS):
        flip = keypoint_flip_map(names)
        assert sorted(flip) == list(range(len(names)))
        assert [flip[f] for f in flip] == list(range(len(names)))
        for i, name in enumerate(names):
            if name.startswith("left_"):
                assert names[flip[i]] == "right_" + name[5:]
            elif name.startswith("right_"):
                assert names[flip[i]] == "left_" + name[6:]
            else:
                assert flip[i] == i
    coco_flip = keypoint_flip_map(COCO_PERSON_KEYPOINTS)
    assert coco_flip[:5] == [0, 2, 1, 4, 3]
    with pytest.raises(ValueError, match="left_hand"):
        keypoint_flip_map(["head", "left_hand"])


def test_image_sizes_vary_in_both_orientations(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    images = json.loads((out / "instances_train.json").read_text())["images"]
    sizes = {(img["width"], img["height"]) for img in images}
    assert len(sizes) > 1
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)
    assert all(SMALL["min_side"] <= min(s) and max(s) <= SMALL["max_side"] for s in sizes)
    assert all(max(s) / min(s) <= 1.75 for s in sizes)


def test_ground_truth_scores_perfectly_under_cocoeval(dataset: tuple[Path, dict]) -> None:
    """Feeding the ground truth back as detections gives AP 1 for boxes, masks and keypoints: it is genuine COCO."""
    out, _ = dataset
    gt = _quiet_coco(out / "instances_val.json")
    results = []
    for ann in gt.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        rle = gt.annToRLE(ann)
        det = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0, "bbox": ann["bbox"]}
        counts = rle["counts"]  # bytes when pycocotools encoded it here, str when read from the JSON as is
        det["segmentation"] = {"size": rle["size"], "counts": counts if isinstance(counts, str) else counts.decode()}
        if "keypoints" in ann:
            det["keypoints"] = ann["keypoints"]
        results.append(det)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        stats = {}
        for iou_type in ("bbox", "segm", "keypoints"):
            evaluator = COCOeval(gt, dt, iou_type)
            if iou_type == "keypoints":
                evaluator.params.catIds = [WALKER_CATEGORY_ID]
                evaluator.params.kpt_oks_sigmas = np.asarray(KEYPOINT_OKS_SIGMAS)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats[iou_type] = evaluator.stats[0]
    assert stats["bbox"] == pytest.approx(1.0)
    assert stats["segm"] == pytest.approx(1.0)
    # -1 would mean no walker with labelled keypoints in val; 1.0 means OKS matched every one.
    assert stats["keypoints"] == pytest.approx(1.0)


def test_crowd_mask_decodes_to_the_same_pixels_as_compressed(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    coco = _quiet_coco(out / "instances_train.json")
    for ann in (a for a in coco.dataset["annotations"] if a["iscrowd"]):
        counts = ann["segmentation"]["counts"]
        h, w = ann["segmentation"]["size"]
        assert sum(counts) == h * w
        mask = coco.annToMask(ann)
        assert np.array_equal(mask_utils.decode(mask_utils.encode(np.asfortranarray(mask))), mask)
        assert mask.sum() == ann["area"]


def test_invalid_arguments_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min_side"):
        write_synthetic_coco(tmp_path, min_side=8)
    with pytest.raises(ConfigError, match="max_side"):
        write_synthetic_coco(tmp_path, min_side=64, max_side=48)
    with pytest.raises(ConfigError, match="train_images"):
        write_synthetic_coco(tmp_path, train_images=-1)
