"""configs/paper/ must carry the paper's hyper-parameters exactly (PAPER.md, "The system"); configs/mini/ must
follow the same schedule rule at a smaller unit."""

import re
from pathlib import Path

import pytest
from helpers import MINI_CONFIG, ROOT, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.metrics import read_metrics
from scratchdet.engine.schedule import schedule_from_config
from scratchdet.errors import ConfigError

PAPER_CONFIGS = sorted((ROOT / "configs" / "paper").glob("mask_rcnn_R*_FPN_GN_*x.yaml"))


def test_every_main_setting_has_a_config():
    names = {p.stem for p in PAPER_CONFIGS}
    for depth in (50, 101):
        for init in ("scratch", "pretrained"):
            for n in range(2, 7):
                assert f"mask_rcnn_R{depth}_FPN_GN_{init}_{n}x" in names


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_config_has_the_paper_hyper_parameters(path: Path):
    cfg = load_config(path, ["output=unused"])
    depth, init, n = re.match(r"mask_rcnn_R(\d+)_FPN_GN_(\w+)_(\d)x", path.stem).groups()
    assert cfg.model.depth == int(depth) and cfg.init == init and cfg.schedule.multiplier == int(n)
    assert (cfg.model.norm, cfg.model.gn_groups, cfg.model.freeze_at) == ("GN", 32, 0)
    assert (cfg.model.box_head_convs, cfg.model.box_head_fc, cfg.model.mask_head_convs) == (4, 1024, 4)
    assert (cfg.train.batch_size, cfg.solver.base_lr, cfg.solver.momentum) == (16, 0.02, 0.9)
    assert (cfg.solver.weight_decay, cfg.solver.weight_decay_norm) == (1e-4, 0.0)
    assert (cfg.solver.warmup_iters, cfg.solver.warmup_factor) == (500, pytest.approx(1 / 3))
    assert (cfg.data.min_size_train, cfg.data.max_size_train, cfg.data.min_size_test) == ([800], 1333, 800)
    schedule = schedule_from_config(cfg)
    assert schedule.max_iters == int(n) * 90_000
    assert schedule.milestones == (int(n) * 90_000 - 60_000, int(n) * 90_000 - 20_000)
    if init == "pretrained":
        assert cfg.weights


def test_mini_schedule_follows_the_same_rule():
    cfg = load_config(MINI_CONFIG, ["output=unused"])
    s = schedule_from_config(cfg)
    ratio = cfg.solver.reference_batch / cfg.train.batch_size
    assert cfg.schedule.unit_iters * 1000 == 90_000 and cfg.schedule.drop_tails == [60, 20]
    assert s.max_iters == round(cfg.schedule.multiplier * 90 * ratio)
    assert s.milestones == (s.max_iters - round(60 * ratio), s.max_iters - round(20 * ratio))


def test_full_size_r50_fpn_gn_trains_two_iterations_and_evaluates(shapes_dir, tmp_path):
    # The real paper model (R50-FPN, GN, 4conv1fc, 256-channel FPN) at reduced image size and batch.
    paths = {f"data.{split}.{key}": shapes_dir / (f"instances_{split}.json" if key == "json" else split)
             for split in ("train", "val") for key in ("json", "images")}
    overrides = tiny_overrides(shapes_dir, tmp_path / "r50", **paths, **{"train.max_iters": 2, "eval.max_images": 2})
    cfg = load_config(ROOT / "configs/paper/mask_rcnn_R50_FPN_GN_scratch_2x.yaml", overrides)
    assert cfg.model.depth == 50 and cfg.model.fpn_channels == 256
    trainer.train(cfg)
    assert [r["iter"] for r in read_metrics(tmp_path / "r50", "train")] == [1, 2]
    assert read_metrics(tmp_path / "r50", "eval")[0]["images"] == 2


def test_overrides_and_errors_name_the_key():
    cfg = load_config(MINI_CONFIG, ["output=x", "model.norm=none", "schedule.multiplier=3", "data.root=/d"])
    assert cfg.model.norm == "none" and cfg.schedule.multiplier == 3
    assert cfg.data.train.json == "/d/instances_train.json" and cfg.data.val.images == "/d/val"
    with pytest.raises(ConfigError, match="model.norm='LN' is not valid; choose one of GN, SyncBN"):
        load_config(MINI_CONFIG, ["output=x", "model.norm=LN"])
    with pytest.raises(ConfigError, match="model.nrom"):
        load_config(MINI_CONFIG, ["output=x", "model.nrom=GN"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(MINI_CONFIG, ["output=x", "model.norm"])
    with pytest.raises(ConfigError, match="init=pretrained needs weights"):
        load_config(MINI_CONFIG, ["output=x", "init=pretrained"])
