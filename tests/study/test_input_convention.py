"""A study's arms share the input convention and stride placement of the pre-trained arms' weights when those agree,
so the scratch arm trains the same network on the same inputs and only the initialization differs; pre-trained arms
of different conventions each run their own, and the scratch arms then take the one the spec states."""

from __future__ import annotations

import argparse
import json
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


def different_convention_arms(tmp_path) -> list[dict]:
    """Two pre-trained arms whose files need different conventions: MSRA's R-50.pkl (BGR, 0..255, stride in the 1x1)
    and a torchvision-layout .pth (RGB, 0..1, ImageNet mean/std, assumed)."""
    weights = msra_pkl(tmp_path / "R-50.pkl")
    torchvision_file = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, torchvision_file)
    return [
        {"name": "msra", "init": "pretrained", "weights": str(weights)},
        {"name": "tv", "init": "pretrained", "weights": str(torchvision_file)},
    ]


def test_pretrained_arms_of_different_conventions_each_run_their_own(tmp_path):
    spec = write_spec(tmp_path, SYNCBN_SCRATCH, different_convention_arms(tmp_path))
    plan = plan_study(load_study_spec(spec))
    models = {run.arm: run_model(SYNCBN_SCRATCH, run, tmp_path) for run in plan.runs}
    assert (models["msra"].input_format, models["msra"].pixel_scale, models["msra"].stride_in_1x1) == (
        "BGR",
        255.0,
        True,
    )
    # The base config states model.stride_in_1x1: true (the paper's MSRA-based SyncBN config); a file whose convention
    # is only assumed (torchvision layout) does not override explicit keys.
    assert (models["tv"].input_format, models["tv"].pixel_scale, models["tv"].stride_in_1x1) == ("RGB", 1.0, True)
    record = plan.input_convention
    assert record["same_for_all_arms"] is False and record["from"] == "per arm (see arms)"
    assert record["arms"]["msra"]["input_format"] == "BGR" and record["arms"]["tv"]["from"] == "the weights of arm 'tv'"


def test_a_scratch_arm_beside_arms_of_different_conventions_needs_a_stated_convention(tmp_path):
    arms = [{"name": "scratch"}, *different_convention_arms(tmp_path)]
    with pytest.raises(ConfigError) as e:
        plan_study(load_study_spec(write_spec(tmp_path, SYNCBN_SCRATCH, arms)))
    msg = str(e.value)
    assert "different input conventions ('msra': BGR x255" in msg and "'tv': RGB x1" in msg
    assert (
        "set scratch_convention in the spec to the arm whose convention they take (msra, tv) or to torchvision" in msg
    )

    plan = plan_study(load_study_spec(write_spec(tmp_path, SYNCBN_SCRATCH, arms, scratch_convention="msra")))
    models = {run.arm: run_model(SYNCBN_SCRATCH, run, tmp_path) for run in plan.runs}
    assert models["scratch"].input_format == "BGR" and models["scratch"].stride_in_1x1 is True
    assert models["scratch"].pixel_mean == pytest.approx(DETECTRON_MEAN)
    assert models["tv"].input_format == "RGB"  # each pre-trained arm keeps its own
    assert plan.input_convention["arms"]["scratch"]["from"] == "the weights of arm 'msra' (scratch_convention)"

    plan = plan_study(load_study_spec(write_spec(tmp_path, SYNCBN_SCRATCH, arms, scratch_convention="torchvision")))
    scratch = next(run_model(SYNCBN_SCRATCH, r, tmp_path) for r in plan.runs if r.arm == "scratch")
    # torchvision: the base config's keys (its stride_in_1x1: true), torchvision's values where unset
    assert (scratch.input_format, scratch.pixel_scale, scratch.stride_in_1x1) == ("RGB", 1.0, True)
    assert plan.input_convention["arms"]["scratch"]["from"] == "scratch_convention: torchvision"


def test_scratch_convention_must_name_a_pretrained_arm(tmp_path):
    arms = [{"name": "scratch"}, *different_convention_arms(tmp_path)]
    with pytest.raises(ConfigError, match=r"scratch_convention='scratch' names no pre-trained arm; choose one of msra"):
        load_study_spec(write_spec(tmp_path, SYNCBN_SCRATCH, arms, scratch_convention="scratch"))


def test_base_config_conflicting_with_the_file_is_refused_at_planning(tmp_path):
    """Run overrides may not set convention keys (spec.ARM_KEYS); a base config that sets one against a known file
    is refused when planning, before anything trains."""
    weights = msra_pkl(tmp_path / "R-50.pkl")
    base = yaml.safe_load(SYNCBN_SCRATCH.read_text())
    base["model"]["stride_in_1x1"] = False
    base_path = tmp_path / "base.yaml"
    base_path.write_text(yaml.safe_dump(base))
    spec = write_spec(
        tmp_path, base_path, [{"name": "scratch"}, {"name": "pre", "init": "pretrained", "weights": str(weights)}]
    )
    with pytest.raises(ConfigError, match=r"model.stride_in_1x1=False, but R-50.pkl needs"):
        plan_study(load_study_spec(spec))


def test_imported_arms_of_two_formats_and_a_scratch_arm(tmp_path):
    """scratch, a MoCo v2 .pth.tar (torchvision's input) and a timm folder with CLIP statistics: each pre-trained arm
    runs its own convention, the scratch arm MoCo's as scratch_convention states."""
    from safetensors.torch import save_file

    moco = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    encoder = {"module.encoder_q.conv1.weight": torch.zeros(8, 3, 7, 7), "module.encoder_q.bn1.weight": torch.ones(8)}
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": encoder}, moco, _use_new_zipfile_serialization=False)
    timm_dir = tmp_path / "timm"
    timm_dir.mkdir()
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7), "bn1.weight": torch.ones(8)}, timm_dir / "model.safetensors")
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    config = {"architecture": "resnet50", "pretrained_cfg": {"mean": clip_mean, "std": clip_std}}
    (timm_dir / "config.json").write_text(json.dumps(config))
    dino = tmp_path / "dino_checkpoint.pth"
    network = {
        "module.backbone.conv1.weight": torch.zeros(8, 3, 7, 7),
        "module.head.last_layer.weight_g": torch.ones(2),
    }
    torch.save({"student": network, "teacher": network, "args": argparse.Namespace(arch="resnet50")}, dino)
    arms = [
        {"name": "scratch"},
        {"name": "moco_v2", "init": "pretrained", "weights": str(moco)},
        {"name": "timm_clip", "init": "pretrained", "weights": str(timm_dir / "model.safetensors")},
        {"name": "dino", "init": "pretrained", "weights": str(dino), "checkpoint_key": "teacher"},
    ]
    plan = plan_study(load_study_spec(write_spec(tmp_path, MINI_CONFIG, arms, scratch_convention="moco_v2")))
    models = {run.arm: run_model(MINI_CONFIG, run, tmp_path) for run in plan.runs}
    assert models["timm_clip"].pixel_mean == pytest.approx(clip_mean)
    assert models["moco_v2"].pixel_mean == pytest.approx([0.485, 0.456, 0.406])
    assert models["scratch"].pixel_std == pytest.approx([0.229, 0.224, 0.225])
    assert plan.input_convention["same_for_all_arms"] is False
    assert plan.input_convention["arms"]["scratch"]["from"] == "the weights of arm 'moco_v2' (scratch_convention)"
    # The network a file holding several is read from is the arm's: only the DINO arm's runs name one.
    keys = {run.arm: [o for o in run.overrides if o.startswith("pretrained.checkpoint_key=")] for run in plan.runs}
    assert keys == {"scratch": [], "moco_v2": [], "timm_clip": [], "dino": ["pretrained.checkpoint_key=teacher"]}
    assert models["dino"].pixel_mean == pytest.approx([0.485, 0.456, 0.406])


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
