"""A study's arms share the input convention and stride placement of the pre-trained arm's weights, so the
scratch arm trains the same network on the same inputs and only the initialization differs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import yaml
from helpers import MINI_CONFIG, ROOT

from scratchdet.config import load_config
from scratchdet.errors import ConfigError
from scratchdet.study.plan import plan_study
from scratchdet.study.spec import load_study_spec

SYNCBN_SCRATCH = ROOT / "configs" / "paper" / "mask_rcnn_R50_FPN_SyncBN_scratch_2x.yaml"
DETECTRON_MEAN = [102.9801, 115.9465, 122.7717]


def msra_pkl(path):
    """A Detectron-style file of MSRA's layout: Caffe2 names, BN folded to scale/shift, plain (ungrouped) 3x3s."""
    blobs = {
        "conv1_w": np.zeros((8, 3, 7, 7), np.float32),
        "res_conv1_bn_s": np.ones(8, np.float32),
        "res_conv1_bn_b": np.zeros(8, np.float32),
        "res2_0_branch2b_w": np.zeros((8, 8, 3, 3), np.float32),
        "res2_0_branch2b_bn_s": np.ones(8, np.float32),
        "res2_0_branch2b_bn_b": np.zeros(8, np.float32),
    }
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    return path


def write_spec(tmp_path, base, arms, **fields):
    spec = {
        "name": "t",
        "base_config": str(base),
        "output": str(tmp_path / "study"),
        "arms": arms,
        "schedules": [2],
        **fields,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_model(base, run, tmp_path):
    return load_config(base, [*run.overrides, f"output={tmp_path / run.name}"]).model


def test_scratch_arm_follows_the_pretrained_arms_file(tmp_path):
    weights = msra_pkl(tmp_path / "R-50.pkl")
    spec = write_spec(
        tmp_path, SYNCBN_SCRATCH, [{"name": "scratch"}, {"name": "pre", "init": "pretrained", "weights": str(weights)}]
    )
    plan = plan_study(load_study_spec(spec))
    models = {run.arm: run_model(SYNCBN_SCRATCH, run, tmp_path) for run in plan.runs}
    for model in models.values():  # MSRA's R-50.pkl: Detectron's input, stride in the 1x1
        assert (model.input_format, model.pixel_scale, model.pixel_std, model.stride_in_1x1) == (
            "BGR",
            255.0,
            [1.0, 1.0, 1.0],
            True,
        )
        assert model.pixel_mean == pytest.approx(DETECTRON_MEAN)
    assert plan.input_convention["from"] == "the weights of arm 'pre'"
    assert plan.input_convention["input_format"] == "BGR"


def test_study_pretraining_sets_the_convention_of_both_arms(tmp_path):
    bgr = [
        "model.input_format=BGR",
        "model.pixel_scale=255.0",
        "model.pixel_mean=[103.0,116.0,123.0]",
        "model.pixel_std=[57.0,57.0,58.0]",
    ]
    pretrain = str(ROOT / "configs" / "pretrain" / "mini_R18_GN_synth.yaml")
    spec = write_spec(
        tmp_path,
        MINI_CONFIG,
        [
            {"name": "scratch"},
            {"name": "pre", "init": "pretrained", "pretrain_config": pretrain, "pretrain_overrides": bgr},
        ],
    )
    plan = plan_study(load_study_spec(spec))
    for run in plan.runs:
        model = run_model(MINI_CONFIG, run, tmp_path)
        assert (model.input_format, model.pixel_scale, model.pixel_std) == ("BGR", 255.0, [57.0, 57.0, 58.0])
    # Without a pre-trained arm: torchvision's convention, written out for every run.
    alone = plan_study(load_study_spec(write_spec(tmp_path, MINI_CONFIG, [{"name": "scratch"}])))
    assert run_model(MINI_CONFIG, alone.runs[0], tmp_path).input_format == "RGB"


def test_arms_needing_different_conventions_are_refused(tmp_path):
    weights = msra_pkl(tmp_path / "R-50.pkl")
    torchvision_file = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, torchvision_file)
    arms = [
        {"name": "msra", "init": "pretrained", "weights": str(weights)},
        {"name": "tv", "init": "pretrained", "weights": str(torchvision_file)},
    ]
    spec = write_spec(tmp_path, SYNCBN_SCRATCH, arms)
    with pytest.raises(ConfigError, match="study arms 'msra' and 'tv' load weights trained with different input"):
        plan_study(load_study_spec(spec))


def test_spec_override_of_a_convention_key_is_refused_at_load(tmp_path):
    """The convention belongs to the arm's weight file: a run override of one of its keys is refused by name."""
    weights = msra_pkl(tmp_path / "R-50.pkl")
    spec = write_spec(
        tmp_path,
        SYNCBN_SCRATCH,
        [{"name": "scratch"}, {"name": "pre", "init": "pretrained", "weights": str(weights)}],
        overrides=["model.stride_in_1x1=false"],
    )
    with pytest.raises(ConfigError, match=r"overrides has 'model.stride_in_1x1=false', which sets model.stride_in"):
        load_study_spec(spec)


def test_base_config_conflicting_with_the_file_is_refused_at_planning(tmp_path):
    weights = msra_pkl(tmp_path / "R-50.pkl")
    base = yaml.safe_load(SYNCBN_SCRATCH.read_text())
    base.setdefault("model", {})["stride_in_1x1"] = False
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = write_spec(
        tmp_path,
        tmp_path / "base.yaml",
        [{"name": "scratch"}, {"name": "pre", "init": "pretrained", "weights": str(weights)}],
    )
    with pytest.raises(ConfigError, match=r"model.stride_in_1x1=False, but R-50.pkl needs"):
        plan_study(load_study_spec(spec))
