"""Shared fixtures: one small synthetic dataset per test session, and a tiny CPU config over it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import Config, load_config
from scratchdet.data.coco import CocoDetection
from scratchdet.data.synthetic import write_synthetic_coco

# Two intra-op threads: the CI machine has 2 cores, and more threads only thrash.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """24 training and 8 validation images of the synthetic shapes set (seed 0), small sides for speed."""
    out = tmp_path_factory.mktemp("shapes")
    write_synthetic_coco(out, train_images=24, val_images=8, seed=0, min_side=64, max_side=96)
    return out


@pytest.fixture(scope="session")
def val_set(shapes_dir):
    """The validation images of `shapes_dir` as a CocoDetection (boxes only); `root_dir` is the data folder a
    config built around it reads."""
    dataset = CocoDetection(shapes_dir / "instances_val.json", shapes_dir / "val", train=False, load_masks=False)
    dataset.root_dir = shapes_dir
    return dataset


@pytest.fixture
def tiny_config(shapes_dir, tmp_path) -> Config:
    return load_config(MINI_CONFIG, tiny_overrides(shapes_dir, tmp_path / "run", **{"train.max_iters": 2}))
