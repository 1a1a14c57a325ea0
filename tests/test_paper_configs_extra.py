"""The paper configs beyond the 2x-6x grid: Fig. 5's train-aug schedule pairing and the large backbones (X101, X152),
checked for the paper's hyper-parameters (docs/PAPER.md, "The system") as tests/test_configs.py does for the main
grid."""

import re
from pathlib import Path

import pytest
from helpers import ROOT

from scratchdet.config import load_config
from scratchdet.engine.schedule import schedule_from_config

EXTRA = sorted((ROOT / "configs" / "paper").glob("mask_rcnn_*_FPN_GN_*_trainaug.yaml"))
TRAIN_AUG = [640, 672, 704, 736, 768, 800]  # Detectron's TRAIN.SCALES, one drawn per image
BACKBONES = {"R50": (50, 1, 64), "R101": (101, 1, 64), "X101_32x8d": (101, 32, 8), "X152_8x32d": (152, 8, 32)}


def test_every_train_aug_setting_has_a_config():
    names = {p.stem for p in EXTRA}
    for backbone in BACKBONES:
        # Fig. 5's pairing: scratch 9x, pre-trained 6x.
        assert f"mask_rcnn_{backbone}_FPN_GN_scratch_9x_trainaug" in names
        assert f"mask_rcnn_{backbone}_FPN_GN_pretrained_6x_trainaug" in names


@pytest.mark.parametrize("path", EXTRA, ids=lambda p: p.stem)
def test_extra_config_has_the_paper_hyper_parameters(path: Path):
    cfg = load_config(path, ["output=unused"])
    backbone, init, n = re.match(r"mask_rcnn_(\w+?)_FPN_GN_(scratch|pretrained)_(\d)x_trainaug", path.stem).groups()
    assert (cfg.model.depth, cfg.model.groups, cfg.model.width_per_group) == BACKBONES[backbone]
    assert cfg.init == init and cfg.schedule.multiplier == int(n) == (9 if init == "scratch" else 6)
    assert (cfg.model.arch, cfg.model.stem_width, cfg.model.fpn_channels) == ("mask_rcnn", 64, 256)
    assert (cfg.model.norm, cfg.model.gn_groups, cfg.model.freeze_at) == ("GN", 32, 0)
    assert (cfg.model.box_head_convs, cfg.model.box_head_fc, cfg.model.mask_head_convs) == (4, 1024, 4)
    assert (cfg.train.batch_size, cfg.solver.base_lr, cfg.solver.momentum) == (16, 0.02, 0.9)
    assert (cfg.solver.weight_decay, cfg.solver.weight_decay_norm) == (1e-4, 0.0)
    assert (cfg.solver.warmup_iters, cfg.solver.warmup_factor) == (500, pytest.approx(1 / 3))
    assert (cfg.data.min_size_train, cfg.data.max_size_train) == (TRAIN_AUG, 1333)
    assert (cfg.data.min_size_test, cfg.data.max_size_test, cfg.data.flip_prob) == (800, 1333, 0.5)
    schedule = schedule_from_config(cfg)
    assert schedule.max_iters == int(n) * 90_000
    assert schedule.milestones == (int(n) * 90_000 - 60_000, int(n) * 90_000 - 20_000)
    assert bool(cfg.weights) == (init == "pretrained")
    assert f"{n}x" in path.read_text().split("\n")[0]  # the header names the schedule it configures


def _differences(a, b) -> dict:
    """Keys whose values differ between two configs (flattened), as {key: (a, b)}."""
    from scratchdet.config import config_to_dict
    from scratchdet.engine.run_dir import _flat

    fa, fb = _flat(config_to_dict(a)), _flat(config_to_dict(b))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


@pytest.mark.parametrize("backbone", ["R50", "R101", "X152_8x32d"])
@pytest.mark.parametrize(("init", "n"), [("scratch", 9), ("pretrained", 6)])
def test_cascade_configs_are_the_plain_ones_plus_cascade_heads(backbone, init, n):
    """Fig. 5 / Table 3: cascade + train aug; from scratch the heads switch to cascade for the last 270k."""
    plain = load_config(
        ROOT / "configs" / "paper" / f"mask_rcnn_{backbone}_FPN_GN_{init}_{n}x_trainaug.yaml", ["output=unused"]
    )
    cascade = load_config(
        ROOT / "configs" / "paper" / f"cascade_mask_rcnn_{backbone}_FPN_GN_{init}_{n}x_trainaug.yaml", ["output=unused"]
    )
    expected = {"model.cascade": (False, True)}
    if init == "scratch":
        expected["model.cascade_switch_iters"] = (None, 270000)
    diff = _differences(plain, cascade)
    assert diff == expected


@pytest.mark.parametrize("init", ["scratch", "pretrained"])
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_syncbn_configs_differ_from_gn_only_in_the_norm(init, n):
    """Fig. 4: R50-FPN with SyncBN, everything else as the GN runs (pre-trained: from BN ImageNet weights)."""
    gn = load_config(ROOT / "configs" / "paper" / f"mask_rcnn_R50_FPN_GN_{init}_{n}x.yaml", ["output=unused"])
    sync = load_config(ROOT / "configs" / "paper" / f"mask_rcnn_R50_FPN_SyncBN_{init}_{n}x.yaml", ["output=unused"])
    expected = {"model.norm": ("GN", "SyncBN")}
    if init == "pretrained":
        expected["weights"] = ("weights/R-50-GN.pkl", "weights/R-50.pkl")
    else:
        # MSRA's BN R-50.pkl puts the stride in the 1x1 conv (resolved from the file for the pre-trained arm); the
        # scratch arm states it, so both SyncBN arms are one architecture.
        expected["model.stride_in_1x1"] = (None, True)
    assert _differences(gn, sync) == expected
