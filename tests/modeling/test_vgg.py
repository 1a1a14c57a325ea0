"""VGG-16 Faster R-CNN without normalization (docs/PAPER.md, "VGG-16"): structure, init, refusals, training,
paper configs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import MINI_CONFIG, ROOT, tiny_overrides
from torch import nn
from torchvision.models import vgg16
from torchvision.models.detection import FasterRCNN
from torchvision.ops import MultiScaleRoIAlign

from scratchdet.config import load_config
from scratchdet.engine.trainer import train
from scratchdet.errors import ConfigError
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.norm import is_norm
from scratchdet.modeling.vgg import VGG16Backbone

VGG = ["model.arch=faster_rcnn", "model.backbone=vgg16", "model.norm=none"]
NARROW = [*VGG, "model.stem_width=8", "model.vgg_fc_dim=64"]
PAPER = ROOT / "configs" / "paper"


def mini(*overrides):
    return load_config(MINI_CONFIG, ["output=unused", *overrides])


def test_full_width_body_matches_torchvision_vgg16_up_to_conv5_3():
    body = VGG16Backbone(64).body
    reference = vgg16(weights=None).features[:30]  # conv5_3 + ReLU; the last max-pool dropped
    assert [tuple(p.shape) for p in body.parameters()] == [tuple(p.shape) for p in reference.parameters()]
    assert list(body.state_dict()) == list(reference.state_dict())  # same "N.weight" keys: weights/vgg.py relies on it
    features = VGG16Backbone(64)(torch.zeros(1, 3, 64, 96))
    assert features.shape == (1, 512, 4, 6)  # stride 16, 512 channels


def test_detector_is_plain_faster_rcnn_without_norms_and_with_biases():
    torch.manual_seed(0)
    model = build_detector(mini(*VGG, "model.stem_width=64", "model.vgg_fc_dim=256"), num_classes=6)
    assert isinstance(model, FasterRCNN) and model.backbone.out_channels == 512
    assert not any(is_norm(m) for m in model.modules())
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(c.bias is not None for c in convs)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15]
    assert isinstance(model.roi_heads.box_roi_pool, MultiScaleRoIAlign)
    assert model.roi_heads.box_roi_pool.featmap_names == ["0"]
    assert model.roi_heads.box_head.fc6.in_features == 512 * 7 * 7
    assert model.roi_heads.box_head.fc7.out_features == 256
    assert model.transform._skip_resize and model.transform.min_size == (128,)
    # MSRA (fan_out) on the body, Detectron's small Gaussians on the classifier.
    conv = convs[-1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / (512 * 9)), rel=0.05)
    assert model.roi_heads.box_predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.arch=faster_rcnn", "model.backbone=vgg16", "model.norm=GN"], "model.norm=none"),
        (["model.backbone=vgg16", "model.norm=none"], "model.arch=faster_rcnn"),
        (["model.backbone=vgg19"], "resnet, vgg16"),
        ([*VGG, "model.cascade=true"], "cascade"),
        ([*VGG, "model.vgg_fc_dim=0"], "vgg_fc_dim"),
    ],
)
def test_config_refusals(overrides, match):
    with pytest.raises(ConfigError, match=match):
        mini(*overrides)


def test_pretrained_config_builds_and_leaves_loading_to_initialization():
    # The weights are imported after building, by weights/initialization.py (tests/weights/test_vgg_weights.py).
    cfg = mini(*NARROW, "init=pretrained", "weights=weights/vgg16.pth")
    assert isinstance(build_detector(cfg, num_classes=6), FasterRCNN)


def test_trains_two_iterations_on_cpu_and_evaluates(shapes_dir, tmp_path):
    run = tmp_path / "run"
    extra = {
        "train.max_iters": 2,
        "eval.max_images": 2,
        "model.rpn_post_nms_top_n_test": 50,
        "model.box_detections_per_img": 5,
        "model.anchor_sizes": "[16,32,64]",
    }
    overrides = tiny_overrides(shapes_dir, run, **extra) + NARROW
    summary = train(load_config(MINI_CONFIG, overrides))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["type"] == "train"]
    assert [r["iter"] for r in trains] == [1, 2]
    loss_keys = [k for k in trains[0] if k.startswith("loss")]
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(loss_keys)
    assert all(math.isfinite(r[k]) for r in trains for k in loss_keys)
    assert summary.eval is not None and any(r["type"] == "eval" for r in records)


@pytest.mark.parametrize(
    ("name", "init", "multiplier"),
    [
        ("faster_rcnn_VGG16_scratch_11x_trainaug", "scratch", 11),
        ("faster_rcnn_VGG16_pretrained_9x_trainaug", "pretrained", 9),
    ],
)
def test_paper_configs_load_with_the_papers_values(name, init, multiplier):
    cfg = load_config(PAPER / f"{name}.yaml", ["output=unused"])
    m = cfg.model
    assert (m.arch, m.backbone, m.norm, m.stem_width, m.vgg_fc_dim) == ("faster_rcnn", "vgg16", "none", 64, 4096)
    assert cfg.init == init and cfg.schedule.multiplier == multiplier and cfg.schedule.unit_iters == 90000
    assert cfg.train.batch_size == 16 and cfg.solver.base_lr == 0.02 and cfg.solver.reference_batch == 16
    assert cfg.data.min_size_train == [640, 672, 704, 736, 768, 800] and cfg.data.min_size_test == 800
    assert (cfg.weights is not None) == (init == "pretrained")
