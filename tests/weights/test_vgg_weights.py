"""ImageNet VGG-16 weights into the VGG-16 Faster R-CNN (docs/PAPER.md, "VGG-16"): layout, audit, refusals, fine-tuning.

Files are built locally in torchvision's published vgg16 layout (vgg16-397923af.pth: features.N, classifier.0/3/6),
narrow so the tests stay small; the full-width shapes are checked on the meta device, which allocates nothing.
"""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides
from torch import nn
from torchvision.models import vgg16
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.vgg import cfgs, make_layers

from scratchdet.config import load_config
from scratchdet.engine.trainer import train
from scratchdet.errors import CheckpointError
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.vgg import VGG16Backbone
from scratchdet.weights.initialization import IMAGENET_RECIPE_SEEN, initialize
from scratchdet.weights.vgg import audit_vgg16, load_vgg16_weights, vgg16_targets

WIDTH, FC = 8, 64  # the narrow model: model.stem_width=8, model.vgg_fc_dim=64
NARROW = [
    "model.arch=faster_rcnn",
    "model.backbone=vgg16",
    "model.norm=none",
    f"model.stem_width={WIDTH}",
    f"model.vgg_fc_dim={FC}",
]


def torchvision_vgg16_state(width: int = WIDTH, fc_dim: int = FC, batch_norm: bool = False, seed: int = 1) -> dict:
    """A state_dict in torchvision's vgg16 layout, `width` / 64 as wide, with fc6/fc7 `fc_dim` wide.

    The features come from torchvision's own `make_layers` (same indices as vgg16().features); the classifier mirrors
    vgg16().classifier (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear) at a smaller width.
    """
    torch.manual_seed(seed)
    layout = [v if v == "M" else v * width // 64 for v in cfgs["D"]]
    features = make_layers(layout, batch_norm=batch_norm)
    classifier = nn.Sequential(
        nn.Linear(8 * width * 7 * 7, fc_dim),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(fc_dim, fc_dim),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(fc_dim, 1000),
    )
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
    return state


def narrow_config(tmp_path, weights, *overrides):
    return load_config(
        MINI_CONFIG, [f"output={tmp_path}/run", "init=pretrained", f"weights={weights}", *NARROW, *overrides]
    )


def snapshot(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_hand_built_file_has_torchvisions_vgg16_layout():
    with torch.device("meta"):
        reference = vgg16(weights=None).state_dict()
    assert list(torchvision_vgg16_state()) == list(reference)


def test_full_width_imagenet_file_fills_the_body_and_fc6_fc7():
    # Meta tensors: full-width shapes (fc6 is 4096 x 25088) without allocating the 528 MB.
    with torch.device("meta"):
        file_state = vgg16(weights=None).state_dict()
        target = vgg16_targets(VGG16Backbone(64).body, TwoMLPHead(512 * 7 * 7, 4096))
    audit = audit_vgg16(file_state, target)
    assert audit["matched"] == sorted(target) and audit["missing"] == audit["shape_mismatched"] == []
    assert {"classifier.0.weight", "classifier.3.weight", "features.28.weight"} <= set(audit["matched"])
    assert audit["unexpected"] == ["classifier.6.bias", "classifier.6.weight"]  # fc8; read_vgg16_file ignores it
    assert audit["coverage"] == 1.0


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "ddp"])
def test_torchvision_file_lands_in_body_and_box_head(tmp_path, wrap):
    state = torchvision_vgg16_state()
    saved = {"plain": state, "state_dict": {"state_dict": state}, "ddp": {f"module.{k}": v for k, v in state.items()}}[
        wrap
    ]
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(saved, path)
    cfg = narrow_config(tmp_path, path)
    model = build_detector(cfg, num_classes=6)
    rpn_before, predictor_before = snapshot(model.rpn), snapshot(model.roi_heads.box_predictor)
    record = initialize(model, cfg)

    body = model.backbone.body.state_dict()
    for key, value in state.items():
        if key.startswith("features."):
            assert torch.equal(body[key[len("features.") :]], value), key
    head = model.roi_heads.box_head
    assert torch.equal(head.fc6.weight, state["classifier.0.weight"])
    assert torch.equal(head.fc6.bias, state["classifier.0.bias"])
    assert torch.equal(head.fc7.weight, state["classifier.3.weight"])
    assert torch.equal(head.fc7.bias, state["classifier.3.bias"])
    # RPN and the class/box predictor keep their fresh init: they are trained for the detection classes.
    assert all(torch.equal(v, model.rpn.state_dict()[k]) for k, v in rpn_before.items())
    assert all(torch.equal(v, model.roi_heads.box_predictor.state_dict()[k]) for k, v in predictor_before.items())

    report = record["report"]
    assert record["init"] == "pretrained" and record["loaded_keys"] == 26 + 4  # 13 convs + fc6 + fc7
    assert report["coverage"] == 1.0 and report["source_format"] == "torchvision"
    assert report["missing"] == report["unexpected"] == report["shape_mismatched"] == []
    assert report["ignored"] == ["classifier.6.bias", "classifier.6.weight"]  # fc8, reported
    assert record["pretrain_seen"] == IMAGENET_RECIPE_SEEN
    json.dumps(record)  # what init.json stores


def test_head_of_another_width_keeps_its_init_and_is_reported(tmp_path):
    path = tmp_path / "vgg16_fc32.pth"
    state = torchvision_vgg16_state(fc_dim=32)
    torch.save(state, path)
    model = build_detector(narrow_config(tmp_path, path), num_classes=6)
    head_before = snapshot(model.roi_heads.box_head)
    report = load_vgg16_weights(model.backbone.body, path, box_head=model.roi_heads.box_head)
    assert report.coverage == 1.0  # coverage counts the body: a narrower head is a legitimate choice
    assert report.shape_mismatched == [f"classifier.{i}.{f}" for i in (0, 3) for f in ("bias", "weight")]
    assert report.matched == sorted(f"features.{k}" for k in model.backbone.body.state_dict())
    assert "shape mismatched (not loaded): 4" in report.summary()
    assert all(torch.equal(v, model.roi_heads.box_head.state_dict()[k]) for k, v in head_before.items())


def test_resnet_file_is_refused_naming_the_file_and_the_missing_keys(tiny_config, tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(build_detector(tiny_config, num_classes=6).backbone.body.state_dict(), path)
    model = build_detector(narrow_config(tmp_path, path), num_classes=6)
    before = snapshot(model)
    with pytest.raises(CheckpointError) as error:
        load_vgg16_weights(model.backbone.body, path, box_head=model.roi_heads.box_head)
    message = str(error.value)
    assert str(path) in message and "covers only 0.0% of the VGG-16 backbone (min 99%)" in message
    assert "first missing keys: classifier.0.bias" in message and "features.0.bias" in message
    assert "first unexpected: bn1." in message and "looks like a ResNet file" in message
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing loaded


def test_vgg16_bn_file_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "vgg16_bn.pth"
    torch.save(torchvision_vgg16_state(batch_norm=True), path)
    body = VGG16Backbone(WIDTH).body
    with pytest.raises(CheckpointError, match="vgg16_bn"):
        load_vgg16_weights(body, path)


def test_partial_file_is_audited_against_min_coverage(tmp_path):
    state = {k: v for k, v in torchvision_vgg16_state().items() if not k.startswith("features.28.")}  # no conv5_3
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    body = VGG16Backbone(WIDTH).body
    before = snapshot(body)
    with pytest.raises(CheckpointError, match=r"covers only \d+\.\d% .* first missing keys: features\.28\.bias"):
        load_vgg16_weights(body, path)
    assert all(torch.equal(v, body.state_dict()[k]) for k, v in before.items())
    report = load_vgg16_weights(body, path, min_coverage=0.5)
    conv53 = 64 * 64 * 9 + 64
    total = sum(v.numel() for v in body.state_dict().values())
    assert report.missing == ["features.28.bias", "features.28.weight"]
    assert math.isclose(report.coverage, 1 - conv53 / total)
    # Without a box head, the classifier entries have no place: reported, not loaded.
    assert "classifier.0.weight" in report.unexpected and "classifier.6.weight" in report.ignored


def test_scratchdet_vgg_detector_checkpoint_gives_body_and_fc6_fc7(tmp_path):
    torch.manual_seed(3)
    source = build_detector(narrow_config(tmp_path, "unused"), num_classes=6)
    path = tmp_path / "model_0000002.pth"
    torch.save({"model": source.state_dict(), "iter": 2}, path)
    torch.manual_seed(4)
    model = build_detector(narrow_config(tmp_path, path), num_classes=6)
    report = load_vgg16_weights(model.backbone.body, path, box_head=model.roi_heads.box_head)
    assert report.source_format == "scratchdet" and report.coverage == 1.0 and report.missing == []
    for name in ("backbone.body.0.weight", "roi_heads.box_head.fc6.weight", "roi_heads.box_head.fc7.bias"):
        assert torch.equal(model.state_dict()[name], source.state_dict()[name])
    cls_score = "roi_heads.box_predictor.cls_score.weight"  # trained for the source's classes: not imported
    assert not torch.equal(model.state_dict()[cls_score], source.state_dict()[cls_score])
    assert any(k.startswith("rpn.") for k in report.ignored)


def test_caffe_vgg16_pickle_is_refused_with_the_torchvision_alternative(tmp_path):
    path = tmp_path / "VGG16.pkl"
    blobs = {"conv1_1_w": np.zeros((64, 3, 3, 3), np.float32), "conv1_1_b": np.zeros(64, np.float32)}
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    with pytest.raises(CheckpointError, match=r"Caffe VGG-16 .*conv1_1_b.*vgg16-397923af\.pth"):
        load_vgg16_weights(VGG16Backbone(WIDTH).body, path)


def test_fine_tunes_two_iterations_from_imagenet_weights(shapes_dir, tmp_path):
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(torchvision_vgg16_state(), path)
    run = tmp_path / "run"
    extra = {
        "train.max_iters": 2,
        "eval.max_images": 2,
        "model.rpn_post_nms_top_n_test": 50,
        "model.box_detections_per_img": 5,
        "model.anchor_sizes": "[16,32,64]",
        "init": "pretrained",
        "weights": path,
    }
    summary = train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, run, **extra) + NARROW))
    record = json.loads((run / "init.json").read_text())
    assert record["init"] == "pretrained" and record["report"]["coverage"] == 1.0
    assert {"features.0.weight", "classifier.0.weight", "classifier.3.weight"} <= set(record["report"]["matched"])
    trains = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in trains if r["type"] == "train"]
    assert [r["iter"] for r in trains] == [1, 2]
    assert all(math.isfinite(r[k]) for r in trains for k in r if k.startswith("loss"))
    assert summary.eval is not None
