"""docs/RELIABILITY.md, promise 8: image failures are loud; the opt-in skip policy is bounded, logged and training-only.

(A missing or corrupt image raising DataError with its path: tests/data/test_coco.py.)
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides
from PIL import Image

from scratchdet.config import load_config
from scratchdet.data.build import SkipUnreadableImages, build_train_dataset, build_val_dataset
from scratchdet.data.coco import CocoDetection
from scratchdet.data.samplers import TrainingSampler
from scratchdet.data.transforms import build_train_transform
from scratchdet.engine import trainer
from scratchdet.engine.metrics import read_metrics
from scratchdet.errors import ConfigError, DataError


@pytest.fixture
def ten_images(tmp_path):
    """A COCO file of 10 annotated 8x8 images (ids 1..10, files img1.png..img10.png) -> (json, image folder)."""
    images, annotations = [], []
    for i in range(1, 11):
        images.append({"id": i, "width": 8, "height": 8, "file_name": f"img{i}.png"})
        annotations.append({"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0})
        Image.fromarray(np.full((8, 8, 3), i * 20, dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    spec = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}
    (tmp_path / "instances.json").write_text(json.dumps(spec))
    return tmp_path / "instances.json", tmp_path


def _dataset(ten_images):
    # check_files=False: with the skip policy the wrapper looks for missing files (as build_train_dataset does).
    return CocoDetection(
        *ten_images, train=True, load_masks=False, check_files=False, transform=build_train_transform([16, 24], 32, 0.5)
    )


def _corrupt(image_dir, i):
    (image_dir / f"img{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def test_unreadable_image_is_replaced_by_the_next_one_deterministically(ten_images):
    _corrupt(ten_images[1], 3)
    skipping = SkipUnreadableImages(_dataset(ten_images), max_fraction=0.1)
    with pytest.warns(UserWarning, match=r"skipped unreadable training image .*img3\.png"):
        image, target = skipping[(2, 1234)]  # index 2 = image id 3
    assert target["image_id"] == 4
    (skip,) = target["skipped"]
    assert skip["image_id"] == 3 and "img3.png" in skip["error"]
    # The replacement is the next index transformed with the sampler's seed for this position: reproducible.
    expected_image, _ = _dataset(ten_images)[(3, 1234)]
    torch.testing.assert_close(image, expected_image, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again, _ = skipping[(2, 1234)]
    torch.testing.assert_close(again, image, rtol=0, atol=0)
    assert skipping.unreadable.keys() == {3}
    assert skipping[(4, 7)][1]["skipped"] == []  # readable images are untouched


def test_too_many_unreadable_images_is_an_error(ten_images):
    image_dir = ten_images[1]
    (image_dir / "img5.png").unlink()  # found when the dataset is opened
    _corrupt(image_dir, 8)  # found when read
    with pytest.warns(UserWarning, match=r"1 of 10 training image files are missing"):
        skipping = SkipUnreadableImages(_dataset(ten_images), max_fraction=0.1)  # 1 of 10 allowed
    with pytest.raises(
        DataError,
        match=r"2 of 10 training images are unreadable, more than "
        r"data.max_skip_fraction=0.1 allows; first: image file not found: .*img5",
    ):
        skipping[(7, 0)]


def test_missing_files_beyond_the_fraction_fail_when_the_dataset_is_opened(ten_images):
    for i in (1, 2):
        (ten_images[1] / f"img{i}.png").unlink()
    with pytest.raises(DataError, match="2 of 10 training images are unreadable"):
        SkipUnreadableImages(_dataset(ten_images), max_fraction=0.1)


def test_skips_are_counted_across_loader_worker_copies(ten_images):
    _corrupt(ten_images[1], 2)
    _corrupt(ten_images[1], 6)
    main = SkipUnreadableImages(_dataset(ten_images), max_fraction=0.1)
    worker_a, worker_b = copy.deepcopy(main), copy.deepcopy(main)  # what each loader worker holds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = [worker_a[(1, 0)][1], worker_b[(5, 0)][1]]  # each worker alone stays within its budget
    with pytest.raises(DataError, match="2 of 10 training images are unreadable"):
        main.record_skips(batch)


def test_size_mismatch_is_never_skipped(ten_images):
    Image.fromarray(np.zeros((9, 8, 3), dtype=np.uint8)).save(ten_images[1] / "img1.png")
    skipping = SkipUnreadableImages(_dataset(ten_images), max_fraction=1.0)
    with pytest.raises(DataError, match="is 8x9 .* but the annotation says 8x8"):
        skipping[(0, 0)]


def test_evaluation_never_skips(shapes_dir, tmp_path):
    data = tmp_path / "shapes"
    shutil.copytree(shapes_dir, data)
    cfg = load_config(MINI_CONFIG, tiny_overrides(data, tmp_path / "run", **{"data.skip_bad_images": "true"}))
    val = build_val_dataset(cfg)
    assert not isinstance(val, SkipUnreadableImages)
    (data / "val" / val.coco.imgs[val.image_ids[0]]["file_name"]).write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot decode image file"):
        val[0]
    with pytest.raises(ConfigError, match="training only"):
        SkipUnreadableImages(val, max_fraction=0.5)
    with pytest.raises(ConfigError, match="max_skip_fraction"):
        SkipUnreadableImages(build_train_dataset(cfg), max_fraction=1.5)


def test_training_logs_each_skip_and_trains_on_the_replacement(shapes_dir, tmp_path):
    data = tmp_path / "shapes"
    shutil.copytree(shapes_dir, data)
    overrides = tiny_overrides(
        data,
        tmp_path / "run",
        **{
            "train.max_iters": 1,
            "data.skip_bad_images": "true",
            "data.max_skip_fraction": 0.1,
            "train.record_image_ids": "true",
            "eval.max_images": 1,
        },
    )
    cfg = load_config(MINI_CONFIG, overrides)
    dataset = build_train_dataset(cfg)
    first = int(TrainingSampler(len(dataset), cfg.seed).permutation(0)[0])  # the first sample of the run
    bad_id, next_id = dataset.image_ids[first], dataset.image_ids[(first + 1) % len(dataset)]
    (data / "train" / dataset.coco.imgs[bad_id]["file_name"]).write_bytes(b"not an image")

    with pytest.warns(UserWarning, match="skipped unreadable training image"):
        trainer.train(cfg)
    (skip,) = read_metrics(cfg.output, "skip")
    assert skip["iter"] == 0 and skip["image_id"] == bad_id and skip["replaced_by"] == next_id
    assert skip["unreadable_images"] == 1 and "cannot decode image file" in skip["error"]
    (batch,) = read_metrics(cfg.output, "batch")
    assert batch["image_ids"][0] == next_id and bad_id not in batch["image_ids"]
