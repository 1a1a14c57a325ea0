"""Annotation files as exporters write them (issue 24): one image file under two ids, one category name under two
ids, segmentations that contradict their own box, keypoint counts, transparent pixels and very large images. Each
ends in a DataError naming file, id and field, or in the correct number; `scratchdet data check` lists each with
its count."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from scratchdet.data.check import check_dataset
from scratchdet.data.coco import CocoDetection
from scratchdet.data.images import ImageTooLargeError, probe_image, read_image
from scratchdet.data.keypoints import KeypointCocoDetection, resolve_keypoint_category
from scratchdet.data.voc import VocDetection, write_voc_layout
from scratchdet.errors import ConfigError, DataError
from scratchdet.evaluation.coco import evaluate_results


def _box_poly(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _write(tmp_path, data, sizes=None, name="ann.json"):
    """Writes `data` as COCO JSON and a 64x48 noise PNG (or the given (w, h)) per distinct file name."""
    rng = np.random.default_rng(0)
    for img in data["images"]:
        path = tmp_path / img["file_name"]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            w, h = (sizes or {}).get(img["id"], (img["width"], img["height"]))
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path), str(tmp_path)


def _two_images(cats=None):
    cats = cats or [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in (1, 2)]
    anns = []
    for i in (1, 2):
        for k, (x, y) in enumerate(((4, 6), (30, 20))):
            box = [x, y, 20, 16]
            anns.append(
                {
                    "id": 10 * i + k,
                    "image_id": i,
                    "category_id": cats[k % len(cats)]["id"],
                    "bbox": box,
                    "area": 320,
                    "iscrowd": 0,
                    "segmentation": _box_poly(*box),
                }
            )
    return {"images": images, "annotations": anns, "categories": cats}


# --- kind 1: one image file under two image ids ----------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["1.png", "./1.png"])
def test_one_image_file_under_two_ids_is_refused_in_every_split(tmp_path, spelling):
    data = _two_images()
    data["images"][1]["file_name"] = spelling  # image 2 names image 1's file
    json_path, image_dir = _write(tmp_path, data)
    for train in (True, False):
        with pytest.raises(DataError, match="image ids 1 and 2 both name the file") as info:
            CocoDetection(json_path, image_dir, train=train)
        assert (info.value.path, info.value.image_id, info.value.field) == (json_path, 2, "file_name")
    report = check_dataset(json_path, image_dir, progress=False)
    assert report.counts() == {"duplicate_image_file": 1}
    assert (report.problems[0].image_id, report.problems[0].field) == (2, "file_name")


def test_voc_image_listed_twice_is_refused(tmp_path):
    coco = tmp_path / "coco"
    json_path, _ = _write(coco / "train", _two_images(), name="../instances_train.json")
    _write(coco / "val", _two_images(), name="../instances_val.json")
    write_voc_layout(coco, tmp_path / "voc", year=2007)
    with pytest.raises(DataError, match="is listed twice") as info:
        VocDetection(tmp_path / "voc", ["2007_trainval", "2007_trainval"], train=False)
    assert info.value.field == "ImageSets"


# --- kind 2: two category ids with the same name ---------------------------------------------------------------------


def test_two_category_ids_with_one_name_are_refused_naming_the_ids(tmp_path):
    cats = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}, {"id": 3, "name": "red"}]
    data = _two_images(cats[:2])
    data["categories"] = cats
    data["annotations"][2]["category_id"] = 3  # the red rectangle of image 2 under the second "red" id
    json_path, image_dir = _write(tmp_path, data)
    for train in (True, False):
        with pytest.raises(DataError, match="category ids 1 and 3 are both named 'red'") as info:
            CocoDetection(json_path, image_dir, train=train, load_masks=False)
        assert (info.value.category_id, info.value.field) == (3, "name")
    report = check_dataset(json_path, image_dir, progress=False)
    assert report.counts() == {"duplicate_category_name": 1}
    assert report.problems[0].category_id == 3


def test_keypoint_category_name_matching_several_ids_is_refused_listing_them():
    two = {13: {"name": "walker", "keypoints": ["head"]}, 14: {"name": "walker", "keypoints": ["head"]}}
    with pytest.raises(ConfigError, match=r"matches 2 categories .*\{13: 'walker', 14: 'walker'\}"):
        resolve_keypoint_category(two, "walker", "f.json")
    root_first = {0: {"name": "walker", "supercategory": "none"}, **two}  # a Roboflow-style root category
    with pytest.raises(ConfigError, match=r"matches 3 categories .*\{0: 'walker', 13: 'walker', 14: 'walker'\}"):
        resolve_keypoint_category(root_first, "walker", "f.json")
    assert resolve_keypoint_category(two, "14", "f.json") == 14


# --- kind 6: segmentations that contradict their own box --------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    ["mask_outside_box", "polygon_in_unit_coordinates", "zero_box_beside_polygon", "rle_outside_box"],
)
def test_segmentation_that_contradicts_its_box_is_refused_in_every_split(tmp_path, variant):
    data = _two_images()
    ann = data["annotations"][1]  # box [30, 20, 20, 16] in image 1 (64 x 48)
    if variant == "mask_outside_box":
        ann["segmentation"] = _box_poly(2, 2, 20, 16)
    elif variant == "polygon_in_unit_coordinates":
        ann["segmentation"] = [[30 / 64, 20 / 48, 50 / 64, 20 / 48, 50 / 64, 36 / 48, 30 / 64, 36 / 48]]
        ann["area"] = 0.08
    elif variant == "zero_box_beside_polygon":
        ann["bbox"], ann["area"] = [0, 0, 0, 0], 320
    else:
        mask = np.zeros((48, 64), np.uint8)
        mask[2:18, 2:22] = 1
        import pycocotools.mask as mask_util

        rle = mask_util.encode(np.asfortranarray(mask))
        ann["segmentation"] = {"size": [48, 64], "counts": rle["counts"].decode("ascii")}
    json_path, image_dir = _write(tmp_path, data)
    for train in (True, False):
        with pytest.raises(DataError, match="describe different regions") as info:
            CocoDetection(json_path, image_dir, train=train, gt_area="file")
        assert (info.value.image_id, info.value.ann_id, info.value.field) == (1, ann["id"], "bbox")
    report = check_dataset(json_path, image_dir, gt_area="file", progress=False)
    assert report.counts() == {"box_segmentation_mismatch": 1}


def test_box_and_polygon_that_agree_inside_the_image_pass(tmp_path):
    data = _two_images()
    # The box reaches past the left edge; the exporter clipped the polygon to the image: the same region.
    data["annotations"][0].update(bbox=[-3, 6, 23, 16], segmentation=_box_poly(0, 6, 20, 16), area=320)
    # A 1-px object whose polygon was rounded outwards by half a pixel; an amodal box around a partly visible mask.
    data["annotations"][1].update(bbox=[30, 20, 1, 1], segmentation=_box_poly(29.5, 19.5, 2, 2), area=1)
    data["annotations"][2].update(bbox=[4, 6, 20, 16], segmentation=_box_poly(4, 6, 6, 16), area=96)
    json_path, image_dir = _write(tmp_path, data)
    CocoDetection(json_path, image_dir, train=False, gt_area="file")
    assert "box_segmentation_mismatch" not in check_dataset(json_path, image_dir, progress=False).counts()


# --- kind 5: num_keypoints missing or contradicting the visibilities --------------------------------------------------

KP_NAMES = ["head", "tail", "tip"]


def _keypoint_file(n=5):
    """n persons (one per image), every keypoint visible; category 7 declares 3 keypoints."""
    images, anns = [], []
    for i in range(1, n + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
        box = [10 + i, 8, 30, 24]
        kps = [15 + i, 12, 2, 25 + i, 20, 2, 35 + i, 28, 2]
        anns.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 7,
                "bbox": box,
                "area": 720,
                "iscrowd": 0,
                "keypoints": kps,
                "num_keypoints": 3,
            }
        )
    cats = [{"id": 7, "name": "walker", "keypoints": KP_NAMES, "skeleton": []}]
    return {"images": images, "annotations": anns, "categories": cats}


def _keypoint_ap(json_path, image_dir, found, backend):
    ds = KeypointCocoDetection(json_path, image_dir, train=False, kpt_oks_sigmas=[0.1] * 3)
    return evaluate_results(ds, [dict(r) for r in found], ["keypoints"], len(ds), backend=backend)["keypoints"]["AP"]


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_num_keypoints_is_computed_from_the_visibilities(tmp_path, backend):
    true = _keypoint_file()
    # A detector that finds persons 1-3 exactly and misses 4 and 5.
    found = [
        {"image_id": a["image_id"], "category_id": 7, "bbox": a["bbox"], "score": 0.9, "keypoints": a["keypoints"]}
        for a in true["annotations"][:3]
    ]
    expected = _keypoint_ap(*_write(tmp_path, true, name="true.json"), found, backend)
    assert expected < 100.0  # the two missed persons count
    zero = json.loads(json.dumps(true))
    for ann in zero["annotations"][3:]:
        ann["num_keypoints"] = 0  # labelled, but the file says none: COCOeval would ignore them (AP 100)
    missing = json.loads(json.dumps(true))
    for ann in missing["annotations"]:
        del ann["num_keypoints"]  # a KeyError in pycocotools, all-null AP in faster-coco-eval
    with pytest.warns(UserWarning, match="2 annotation.* num_keypoints that contradicts"):
        assert _keypoint_ap(*_write(tmp_path, zero, name="zero.json"), found, backend) == expected
    assert _keypoint_ap(*_write(tmp_path, missing, name="missing.json"), found, backend) == expected
    ds = KeypointCocoDetection(tmp_path / "missing.json", tmp_path, train=False, kpt_oks_sigmas=[0.1] * 3)
    assert (ds.summary.num_keypoints_filled, ds.summary.num_keypoints_replaced) == (5, 0)


def test_data_check_runs_the_keypoint_loaders_checks(tmp_path):
    data = _keypoint_file()
    data["annotations"][0]["num_keypoints"] = 0
    data["annotations"][1]["keypoints"][2] = 3  # a visibility loading refuses
    del data["annotations"][2]["num_keypoints"]
    json_path, image_dir = _write(tmp_path, data)
    report = check_dataset(json_path, image_dir, progress=False)
    assert report.counts() == {"num_keypoints_mismatch": 1, "malformed_keypoints": 1}
    by_kind = {p.kind: p for p in report.problems}
    assert (by_kind["num_keypoints_mismatch"].ann_id, by_kind["num_keypoints_mismatch"].field) == (1, "num_keypoints")
    assert (by_kind["malformed_keypoints"].ann_id, by_kind["malformed_keypoints"].field) == (2, "keypoints")
    assert any("1 keypoint annotation(s) have no num_keypoints" in note for note in report.notes)
    with pytest.raises(DataError, match="visibilities must be 0, 1 or 2") as info:
        KeypointCocoDetection(json_path, image_dir, train=False, kpt_oks_sigmas=[0.1] * 3)
    assert (info.value.ann_id, info.value.field) == (2, "keypoints")


# --- kind 4: transparent pixels ---------------------------------------------------------------------------------------


def _alpha_drawn(path, mode="RGBA"):
    """Colour channels 0 everywhere; the object (rows 4-9, columns 6-13) exists only in alpha (opaque there)."""
    rgba = np.zeros((16, 20, 4), np.uint8)
    rgba[4:10, 6:14, 3] = 255
    pil = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        pil = pil.convert("LA")
    pil.save(path)
    return path


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_are_composited_over_white(tmp_path, mode):
    image = read_image(_alpha_drawn(tmp_path / f"{mode}.png", mode))
    assert image.shape == (3, 16, 20)
    assert image[:, 4:10, 6:14].max().item() == 0.0  # the object, black as displayed
    outside = image.clone()
    outside[:, 4:10, 6:14] = 1.0
    assert outside.min().item() == 1.0  # transparent background -> white (was black: the object vanished)
    half = np.zeros((2, 2, 4), np.uint8)
    half[..., 3] = 128  # half-transparent black over white
    Image.fromarray(half, "RGBA").save(tmp_path / "half.png")
    assert read_image(tmp_path / "half.png", dtype=__import__("torch").uint8).unique().tolist() == [127]


def test_palette_transparency_and_opaque_alpha(tmp_path):
    gray = np.full((6, 8), 77, np.uint8)
    gray[1:3, 2:5] = 233
    pil = Image.fromarray(gray, "L").convert("P")
    pil.info["transparency"] = int(np.asarray(pil)[0, 0])  # the background's palette entry is transparent
    pil.save(tmp_path / "p.png", transparency=pil.info["transparency"])
    image = read_image(tmp_path / "p.png")
    assert image[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and image[0, 1, 2].item() == pytest.approx(233 / 255)
    # Fully opaque alpha: exactly the colour channels, as before.
    opaque = Image.fromarray(gray, "L").convert("RGBA")
    opaque.save(tmp_path / "opaque.png")
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    assert read_image(tmp_path / "opaque.png").equal(read_image(tmp_path / "l.png"))


def test_data_check_counts_images_with_transparency(tmp_path):
    data = {
        "images": [{"id": 4, "file_name": "a.png", "width": 20, "height": 16}],
        "annotations": [{"id": 1, "image_id": 4, "category_id": 1, "bbox": [6, 4, 8, 6], "area": 48, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    _alpha_drawn(tmp_path / "a.png")
    (tmp_path / "a.json").write_text(json.dumps(data))
    decoded = check_dataset(tmp_path / "a.json", tmp_path, decode=True, progress=False)
    assert decoded.problems == []
    assert any(n.startswith("1 image(s) have transparent pixels") and "(image ids 4)" in n for n in decoded.notes)
    headers = check_dataset(tmp_path / "a.json", tmp_path, progress=False)
    assert any("1 image(s) have an alpha channel" in n and "(image ids 4)" in n for n in headers.notes)


# --- kind 10: images above the decompression-bomb limit ---------------------------------------------------------------


def _png_header_only(path, width, height):
    """A PNG whose IHDR says width x height and whose pixel data is missing: Pillow reads the size from the header
    (and refuses it above its limit) without allocating the image."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_image_above_pillows_limit_says_what_it_is_and_how_to_raise_the_limit(tmp_path):
    path = _png_header_only(tmp_path / "big.png", 20000, 9100)  # 182 MP, above Pillow's 178,956,970
    for call in (probe_image, read_image):
        with pytest.raises(ImageTooLargeError, match=r"20000x9100 = 182,000,000 pixels") as info:
            call(path, where={"path": "a.json", "image_id": 3})
        message = str(info.value)
        assert "data.max_image_pixels=182000000" in message and "corrupt" not in message
        assert (info.value.image_id, info.value.field) == (3, "width")
    assert probe_image(path, max_pixels=200_000_000).width == 20000  # raised limit: the header reads
    with pytest.raises(DataError, match="corrupt or truncated"):  # and this file truly has no pixels
        read_image(path, max_pixels=200_000_000)


def test_dataset_refuses_images_above_the_limit_when_it_opens(tmp_path):
    data = _two_images()
    data["images"][1].update(width=20000, height=9100, file_name="big.png")
    for ann in data["annotations"][2:]:
        ann["segmentation"] = _box_poly(*ann["bbox"])
    _png_header_only(tmp_path / "big.png", 20000, 9100)
    json_path, image_dir = _write(tmp_path, data)
    for train in (True, False):
        with pytest.raises(ImageTooLargeError, match="182,000,000 pixels") as info:
            CocoDetection(json_path, image_dir, train=train)
        assert (info.value.image_id, info.value.field) == (2, "width")
    ds = CocoDetection(json_path, image_dir, train=False, max_image_pixels=182_000_000)
    assert len(ds) == 2
    report = check_dataset(json_path, image_dir, progress=False)
    assert report.counts() == {"image_too_large": 1}
    assert check_dataset(json_path, image_dir, progress=False, max_image_pixels=182_000_000).counts() == {}


# --- kind 7: a side the test-time resize would round to 0 px ----------------------------------------------------------


def test_data_check_notes_images_the_test_resize_would_shrink_to_nothing(tmp_path):
    data = _two_images()
    data["images"].append({"id": 3, "file_name": "3.png", "width": 400, "height": 2})
    data["annotations"].append(
        {
            "id": 30,
            "image_id": 3,
            "category_id": 1,
            "bbox": [100, 0, 100, 2],
            "area": 200,
            "iscrowd": 0,
            "segmentation": _box_poly(100, 0, 100, 2),
        }
    )
    json_path, image_dir = _write(tmp_path, data)
    report = check_dataset(json_path, image_dir, min_size_test=96, max_size_test=128, progress=False)
    assert report.problems == []
    assert any(n.startswith("1 image(s) are so elongated") and "(image ids 3)" in n for n in report.notes)
    at_paper_size = check_dataset(json_path, image_dir, progress=False)  # 800/1333: 2 px become 6
    assert not any("elongated" in n for n in at_paper_size.notes)
