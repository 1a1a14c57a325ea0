"""PASCAL VOC reader (scratchdet/data/voc.py): XML parsing, box convention, difficult objects, errors, VOC synth."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import MINI_CONFIG
from PIL import Image

from scratchdet.config import load_config
from scratchdet.data.voc import SYNTH_DIFFICULT_MAX_AREA, VOC_CLASSES, VocDetection, parse_voc_xml, write_voc_layout
from scratchdet.errors import ConfigError, DataError


def _obj(name: str, box: tuple, difficult: int = 0) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
        f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def _write_layout(root: Path, year: int, split: str, images: dict[str, str], size=(20, 10)) -> None:
    """images: name -> XML body of the <object> elements; every image is a black `size` (W, H) JPEG."""
    base = root / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, objects in images.items():
        w, h = size
        xml = f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"
        (base / "Annotations" / f"{name}.xml").write_text(xml)
        Image.new("RGB", size).save(base / "JPEGImages" / f"{name}.jpg")
    (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in images))


def test_parse_converts_boxes_and_keeps_difficult_for_eval_only(tmp_path):
    _write_layout(
        tmp_path,
        2007,
        "trainval",
        {
            "000001": _obj("dog", (1, 1, 10, 5)) + _obj("cat", (2, 2, 4, 4), difficult=1),
            "000002": _obj("person", (3, 3, 6, 6), difficult=1),  # nothing left for training
        },
    )
    _write_layout(tmp_path, 2012, "train", {"2012_000001": _obj("tvmonitor", (5, 2, 20, 10))})
    sets = ["2007_trainval", [2012, "train"]]
    train = VocDetection(tmp_path, sets, train=True)
    assert train.num_classes == 21 and train.class_names[1:] == list(VOC_CLASSES)
    assert len(train) == 2  # 000002 has only a difficult object: skipped for training
    image, target = train[0]
    assert image.shape == (3, 10, 20) and image.dtype == torch.float32 and float(image.max()) <= 1.0
    # 1-based inclusive (1, 1, 10, 5) -> 0-based XYXY (0, 0, 10, 5): same 10 x 5 pixels
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0.0, 10.0, 5.0]]))
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1] and "difficult" not in target
    _, target2 = train[(1, 7)]
    torch.testing.assert_close(target2["boxes"], torch.tensor([[4.0, 1.0, 20.0, 10.0]]))
    assert train.image_names[target2["image_id"]] == "2012/2012_000001"
    s = train.summary.to_dict()
    assert (s["images_total"], s["images_used"], s["annotations_total"], s["difficult_excluded"]) == (3, 2, 4, 2)

    val = VocDetection(tmp_path, ["2007_trainval"], train=False)
    assert len(val) == 2
    _, t = val[0]
    assert t["labels"].tolist() == [12, 8] and t["difficult"].tolist() == [False, True]
    gt = val.ground_truth(t["image_id"])
    np.testing.assert_array_equal(gt["boxes"][1], [1, 1, 4, 4])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            "<object><name>dog</name><bndbox><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object>",
            "object[0]/bndbox/xmin",
        ),
        (_obj("dog", (1, 1, "ten", 5)), "object[0]/bndbox/xmax"),
        (_obj("dog", (5, 1, 2, 5)), "object[0]/bndbox"),
        (_obj("dog", (1, 1, 2, 2), difficult=2), "object[0]/difficult"),
        (_obj("unicorn", (1, 1, 2, 2)), "object[0]/name"),
    ],
)
def test_malformed_annotation_names_file_and_field(tmp_path, body, field):
    _write_layout(tmp_path, 2007, "val", {"000009": body})
    with pytest.raises(DataError) as e:
        VocDetection(tmp_path, ["2007_val"], train=False)
    assert "000009.xml" in str(e.value) and f"field '{field}'" in str(e.value)


def test_unreadable_xml_and_missing_lists(tmp_path):
    _write_layout(tmp_path, 2007, "val", {"000001": _obj("dog", (1, 1, 2, 2))})
    xml = tmp_path / "VOC2007" / "Annotations" / "000001.xml"
    xml.write_text("<annotation><size>")
    with pytest.raises(DataError, match="not well-formed XML.*000001.xml"):
        parse_voc_xml(xml)
    with pytest.raises(DataError, match="split list not found.*test.txt"):
        VocDetection(tmp_path, ["2007_test"], train=False)
    with pytest.raises(ConfigError, match="YEAR_SPLIT"):
        VocDetection(tmp_path, ["trainval"], train=False)


def test_config_keys_and_arch_check(tmp_path):
    base = ["output=x", "data.format=voc"]
    with pytest.raises(ConfigError, match="model.arch=faster_rcnn"):
        load_config(MINI_CONFIG, base)  # the mini config is Mask R-CNN
    with pytest.raises(ConfigError, match="data.voc_metric"):
        load_config(MINI_CONFIG, [*base, "model.arch=faster_rcnn", "data.voc_metric=12"])
    with pytest.raises(ConfigError, match="data.format"):
        load_config(MINI_CONFIG, ["output=x", "data.format=yolo"])
    with pytest.raises(ConfigError, match="data.voc_val_sets"):
        load_config(MINI_CONFIG, [*base, "model.arch=faster_rcnn", "data.voc_val_sets=[val12]"])
    cfg = load_config(MINI_CONFIG, [*base, "model.arch=faster_rcnn", "data.voc_train_sets=[2007_trainval,2012_train]"])
    assert cfg.data.voc_train_sets == ["2007_trainval", "2012_train"] and cfg.data.voc_metric == "auto"


def test_synthetic_round_trip(shapes_dir, tmp_path):
    summary = write_voc_layout(shapes_dir, tmp_path)
    coco = json.loads((shapes_dir / "instances_val.json").read_text())
    assert summary["trainval"]["images"] == 24 and summary["val"]["images"] == len(coco["images"]) == 8
    assert summary["val"]["difficult"] > 0  # some small shapes are difficult, so that path is exercised

    val = VocDetection(tmp_path, ["2007_val"], train=False)
    train = VocDetection(tmp_path, ["2007_trainval"], train=True)
    assert val.summary.images_used == 8 and val.summary.difficult_total == summary["val"]["difficult"]
    assert train.summary.difficult_excluded == summary["trainval"]["difficult"]
    # The first val image: every non-crowd COCO box, rounded outward to whole pixels, comes back as 0-based XYXY.
    first = min(coco["images"], key=lambda i: i["id"])
    cat_ids = sorted(c["id"] for c in coco["categories"])
    expected = []
    for ann in coco["annotations"]:
        if ann["image_id"] == first["id"] and not ann["iscrowd"]:
            x, y, w, h = ann["bbox"]
            box = [
                math.floor(x),
                math.floor(y),
                min(math.ceil(x + w), first["width"]),
                min(math.ceil(y + h), first["height"]),
            ]
            area = (box[2] - box[0]) * (box[3] - box[1])
            expected.append((box, cat_ids.index(ann["category_id"]) + 1, area < SYNTH_DIFFICULT_MAX_AREA))
    image, target = val[0]
    assert image.shape[1:] == (first["height"], first["width"])
    got = list(zip(target["boxes"].tolist(), target["labels"].tolist(), target["difficult"].tolist(), strict=True))
    assert sorted(got) == sorted(expected)


@pytest.mark.parametrize(
    ("arm", "iters", "drops"), [("scratch", 144000, (96000, 128000)), ("pretrained", 18000, (12000, 16000))]
)
def test_paper_voc_configs(arm, iters, drops):
    from scratchdet.engine.schedule import schedule_from_config

    cfg = load_config(MINI_CONFIG.parents[1] / "paper" / f"faster_rcnn_R101_FPN_GN_voc_{arm}.yaml", ["output=x"])
    assert (cfg.data.format, cfg.model.arch, cfg.model.depth, cfg.model.norm, cfg.init) == (
        "voc",
        "faster_rcnn",
        101,
        "GN",
        arm,
    )
    assert cfg.data.voc_train_sets == ["2007_trainval", "2012_train"] and cfg.data.voc_val_sets == ["2012_val"]
    schedule = schedule_from_config(cfg)
    assert (schedule.max_iters, schedule.milestones) == (iters, drops)


def test_a_training_split_with_only_difficult_objects_is_refused_with_the_reasons(tmp_path):
    _write_layout(
        tmp_path,
        2007,
        "trainval",
        {"000001": _obj("dog", (1, 1, 10, 5), difficult=1), "000002": _obj("cat", (2, 2, 9, 8), difficult=1)},
    )
    with pytest.raises(DataError, match="no usable training images: 2 images, 2 objects.*2 difficult objects"):
        VocDetection(tmp_path, ["2007_trainval"], train=True)
    assert len(VocDetection(tmp_path, ["2007_trainval"], train=False)) == 2
