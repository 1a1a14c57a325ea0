"""`scratchdet data check` finds everything loading, training and evaluation would refuse, with counts
(scratchdet/data/check.py through the CLI)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from scratchdet.cli import main
from scratchdet.data.check import check_dataset


def _spec() -> dict:
    """Five 32x32 images, one box-with-polygon annotation each, ids from 1."""
    anns = []
    for i in range(1, 6):
        anns.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "bbox": [4, 4, 10, 10],
                "area": 100.0,
                "iscrowd": 0,
                "segmentation": [[4, 4, 14, 4, 14, 14, 4, 14]],
            }
        )
    return {
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "images": [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 32} for i in range(1, 6)],
        "annotations": anns,
    }


def _write(tmp_path, spec, name="ann.json"):
    for img in spec["images"]:
        path = tmp_path / img["file_name"]
        if not path.exists():
            Image.fromarray(np.full((img["height"], img["width"], 3), 90, np.uint8)).save(path)
    (tmp_path / name).write_text(json.dumps(spec))
    return tmp_path / name


def test_clean_file_passes(tmp_path, capsys):
    path = _write(tmp_path, _spec())
    assert main(["data", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "as a training split" in out and "no problems found" in out and "image files checked: 5" in out


def test_every_kind_is_reported_with_file_id_field_and_counts(tmp_path, capsys):
    spec = _spec()
    spec["annotations"][0]["id"] = 0  # a note: evaluation shifts the ids
    spec["annotations"][1]["area"] = 5000.0  # area_mismatch
    spec["annotations"][2]["segmentation"] = [[4, 4, 14, 14]]  # unusable_eval_segmentation
    spec["annotations"][3]["segmentation"] = []  # unusable_eval_segmentation
    path = _write(tmp_path, spec)
    spec["images"][4]["width"] = 40  # image_size: the file is 32x32
    (tmp_path / "3.png").write_bytes((tmp_path / "3.png").read_bytes()[:60])  # truncated: only a full decode sees it
    Image.fromarray(np.zeros((32, 32), np.float32), "F").save(tmp_path / "f.tif")
    spec["images"].append({"id": 6, "file_name": "f.tif", "width": 32, "height": 32})  # unsupported_pixel_mode
    spec["images"].append({"id": 7, "file_name": "gone.png", "width": 32, "height": 32})  # missing_image
    path.write_text(json.dumps(spec))
    other = dict(_spec(), categories=[{"id": 1, "name": "a"}, {"id": 2, "name": "c"}])
    other_path = tmp_path / "val.json"
    other_path.write_text(json.dumps(other))

    assert main(["data", "check", str(path), "--decode", "--against", str(other_path)]) == 2
    captured = capsys.readouterr()
    counts = {
        "area_mismatch": 1,
        "unusable_eval_segmentation": 2,
        "image_size": 1,
        "unsupported_pixel_mode": 1,
        "missing_image": 1,
        "unreadable_image": 1,
        "category_mismatch": 1,
    }
    for kind, n in counts.items():
        assert f"{kind} {n}" in captured.err, kind
    assert "annotation id(s) < 1" in captured.out  # the id-0 note
    assert "annotation id 2" in captured.out and "field 'area'" in captured.out
    assert "id 2 is 'b' in the first, 'c' in the second" in captured.out

    report = check_dataset(path, tmp_path, decode=False, progress=False)
    assert "unreadable_image" not in report.counts()  # a header read does not see the truncation
    as_json = json.loads(json.dumps(report.to_dict()))
    assert {p["ann_id"] for p in as_json["problems"] if p["kind"] == "unusable_eval_segmentation"} == {3, 4}


def test_no_usable_training_image_and_boxes_only(tmp_path, capsys):
    spec = _spec()
    for ann in spec["annotations"]:
        ann["iscrowd"] = 1
    path = _write(tmp_path, spec)
    assert main(["data", "check", str(path)]) == 2
    assert "no_usable_training_images 1" in capsys.readouterr().err
    box_only = _spec()
    for ann in box_only["annotations"]:
        del ann["segmentation"]
    path = _write(tmp_path, box_only, name="boxes.json")
    assert main(["data", "check", str(path), "--masks"]) == 2  # mask AP needs masks
    assert "unusable_eval_segmentation 5" in capsys.readouterr().err
    assert main(["data", "check", str(path)]) == 0  # no segmentation anywhere: a box-only file
    assert "checked as a box-only file" in capsys.readouterr().out
    box_only["annotations"][0]["segmentation"] = [[4, 4, 14, 4, 14, 14]]  # one has masks: the others need them
    path = _write(tmp_path, box_only, name="mixed.json")
    assert main(["data", "check", str(path)]) == 2


def test_keypoint_names_whose_sides_cannot_be_paired(tmp_path, capsys):
    spec = _spec()
    spec["categories"][0]["keypoints"] = ["nose", "lhip", "rhip"]
    path = _write(tmp_path, spec)
    assert main(["data", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert "keypoint_flip_names 1" in captured.err and "lhip" in captured.out
    assert main(["data", "check", str(path), "--keypoint-flip-map", '[["lhip", "rhip"]]']) == 0
    other = _spec()
    other["categories"][0]["keypoints"] = ["nose", "rhip", "lhip"]  # same names, another order
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    assert (
        main(["data", "check", str(path), "--keypoint-flip-map", '[["lhip", "rhip"]]', "--against", str(other_path)])
        == 2
    )
    assert "keypoint_mismatch 1" in capsys.readouterr().err


def test_corrupt_compressed_rle_is_refused_at_load_not_left_to_hang_the_metric(tmp_path, capsys):
    import pycocotools.mask as mask_util

    mask = np.zeros((32, 32), np.uint8)
    mask[4:14, 4:14] = 1
    counts = mask_util.encode(np.asfortranarray(mask))["counts"].decode()
    spec = _spec()
    for corrupt in (counts + "0", counts[:-1] + "\u00e9", "3" + counts[1:]):  # extra run, non-ASCII, longer first run
        spec["annotations"][0]["segmentation"] = {"size": [32, 32], "counts": corrupt}
        path = _write(tmp_path, spec)
        assert main(["data", "check", str(path)]) == 2
        captured = capsys.readouterr()
        assert "malformed compressed RLE" in captured.err and "annotation id 1" in captured.err
    spec["annotations"][0]["segmentation"] = {"size": [32, 32], "counts": counts}
    assert main(["data", "check", str(_write(tmp_path, spec))]) == 0


def test_json_report_of_a_structurally_broken_file(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    assert main(["data", "check", str(path), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(path) and "not valid JSON" in report["error"]
