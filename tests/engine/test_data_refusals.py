"""Data that cannot be trained or scored correctly is refused before a run folder exists, and `scratchdet eval`
refuses evaluation data whose categories differ from the run's training data."""

from __future__ import annotations

import json

import pytest
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine.run_eval import evaluate_run
from scratchdet.engine.trainer import train
from scratchdet.errors import DataError


def _swapped_val(shapes_dir, tmp_path):
    """The validation file with the names of its first two categories swapped (same ids, other meaning)."""
    data = json.loads((shapes_dir / "instances_val.json").read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cats[0]["name"], cats[1]["name"] = cats[1]["name"], cats[0]["name"]
    path = tmp_path / "val_swapped.json"
    path.write_text(json.dumps(data))
    return path, cats


def test_train_refuses_splits_with_different_categories_before_writing_anything(shapes_dir, tmp_path):
    path, cats = _swapped_val(shapes_dir, tmp_path)
    run = tmp_path / "run"
    cfg = load_config(
        MINI_CONFIG, tiny_overrides(shapes_dir, run, **{"train.max_iters": 1, "data.val.json": str(path)})
    )
    with pytest.raises(DataError, match=f"id {cats[0]['id']} is '{cats[1]['name']}' in the first"):
        train(cfg)
    assert not run.exists()


def test_train_refuses_a_training_file_with_no_usable_image_before_writing_anything(shapes_dir, tmp_path):
    data = json.loads((shapes_dir / "instances_train.json").read_text())
    for ann in data["annotations"]:
        ann["iscrowd"] = 1
    path = tmp_path / "train_crowd.json"
    path.write_text(json.dumps(data))
    run = tmp_path / "run"
    cfg = load_config(
        MINI_CONFIG, tiny_overrides(shapes_dir, run, **{"train.max_iters": 1, "data.train.json": str(path)})
    )
    with pytest.raises(DataError, match="no usable training images"):
        train(cfg)
    assert not run.exists()


def test_eval_refuses_data_whose_categories_differ_from_the_run(shapes_dir, tmp_path):
    run = tmp_path / "run"
    train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, run, **{"train.max_iters": 1})))
    assert json.loads((run / "dataset_train.json").read_text())["categories"]
    path, _ = _swapped_val(shapes_dir, tmp_path)
    with pytest.raises(DataError, match="the training data of .* and .*val_swapped.json .* differ"):
        evaluate_run(run, [f"data.val.json={path}", "eval.max_images=1"])
    assert evaluate_run(run, ["eval.max_images=1"])["status"] in ("ok", "no predictions")


def test_resume_on_a_reexport_with_swapped_category_ids_is_refused_without_rewriting_the_run(shapes_dir, tmp_path):
    """Label Studio / CVAT / Darwin re-exports reassign category ids: both splits re-exported, consistent with each
    other, but label 1 now means another class. Resume refuses as `scratchdet eval` does, and the run's records
    (dataset_train.json, config.yaml, metrics) are left as they were."""
    run = tmp_path / "run"
    train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, run, **{"train.max_iters": 1})))
    export = tmp_path / "reexport"
    export.mkdir()
    for split in ("train", "val"):
        data = json.loads((shapes_dir / f"instances_{split}.json").read_text())
        cats = sorted(data["categories"], key=lambda c: c["id"])
        cats[0]["name"], cats[1]["name"] = cats[1]["name"], cats[0]["name"]
        (export / f"instances_{split}.json").write_text(json.dumps(data))
        (export / split).symlink_to(shapes_dir / split)
    before = {name: (run / name).read_bytes() for name in ("dataset_train.json", "config.yaml", "metrics.jsonl")}
    resumed = tiny_overrides(shapes_dir, run, **{"train.max_iters": 2, "resume": "true", "data.root": str(export)})
    with pytest.raises(DataError, match=r"the training data of .*dataset_train.json.* and .*reexport/instances_train"):
        train(load_config(MINI_CONFIG, resumed))
    assert {name: (run / name).read_bytes() for name in before} == before


def test_resume_and_eval_refuse_keypoints_in_another_order(tmp_path):
    from types import SimpleNamespace

    from scratchdet.engine.run_dir import check_run_categories

    (tmp_path / "dataset_train.json").write_text(
        json.dumps({"categories": [[1, "walker"]], "keypoint_names": ["a", "b"]})
    )
    same = SimpleNamespace(keypoint_names=("a", "b"), json_path=tmp_path / "k.json", coco=None)
    check_run_categories(tmp_path, same)
    swapped = SimpleNamespace(keypoint_names=("b", "a"), json_path=tmp_path / "k.json", coco=None)
    with pytest.raises(
        DataError, match=r"keypoints of the training data .*\['a', 'b'\].* and of .*k.json \(\['b', 'a'\]\)"
    ):
        check_run_categories(tmp_path, swapped)


def _contradicting_train_file(shapes_dir, tmp_path, kind):
    """The training file with one of the contradictions loading refuses in every split (issue 24)."""
    data = json.loads((shapes_dir / "instances_train.json").read_text())
    if kind == "one_file_two_ids":
        data["images"][1]["file_name"] = data["images"][0]["file_name"]
    elif kind == "one_name_two_ids":
        data["categories"].append({"id": 999, "name": data["categories"][0]["name"]})
    elif kind == "segmentation_outside_box":
        ann = next(a for a in data["annotations"] if isinstance(a.get("segmentation"), list) and not a["iscrowd"])
        ann["segmentation"] = [[v / 1000 for v in poly] for poly in ann["segmentation"]]  # 0..1-ish units
    else:  # an image above the pixel limit, by its annotated size (one without RLE masks, which carry a size)
        rle = {a["image_id"] for a in data["annotations"] if isinstance(a.get("segmentation"), dict)}
        next(img for img in data["images"] if img["id"] not in rle).update(width=20000, height=9100)
    path = tmp_path / f"train_{kind}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("one_file_two_ids", "both name the file"),
        ("one_name_two_ids", "are both named"),
        ("segmentation_outside_box", "describe different regions"),
        ("too_many_pixels", "more than the limit of 178,956,970"),
    ],
)
def test_train_refuses_a_file_that_contradicts_itself_before_writing_anything(shapes_dir, tmp_path, kind, message):
    path = _contradicting_train_file(shapes_dir, tmp_path, kind)
    run = tmp_path / "run"
    overrides = {"train.max_iters": 1, "data.train.json": str(path), "data.gt_area": "file"}
    with pytest.raises(DataError, match=message):
        train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, run, **overrides)))
    assert not run.exists()
