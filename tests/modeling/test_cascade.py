"""Cascade R-CNN heads: stage thresholds and weights, score averaging, late switch and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides
from torch import nn

from scratchdet.config import load_config
from scratchdet.engine.trainer import train
from scratchdet.errors import ConfigError
from scratchdet.modeling.cascade import CascadeRoIHeads, CascadeStage, carry_momentum, cascade_from_plain
from scratchdet.modeling.detector import build_detector


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_stage_iou_thresholds_and_weights_are_applied(tiny_config):
    tiny_config.model.cascade = True
    heads = build_detector(tiny_config, 4).roi_heads
    assert isinstance(heads, CascadeRoIHeads) and len(heads.stages) == 3
    for stage in heads.stages:  # each stage: the detector's 4conv1fc head design with GroupNorm
        assert sum(isinstance(m, nn.GroupNorm) for m in stage.box_head.modules()) == 4
    assert len({id(stage.box_head) for stage in heads.stages}) == 3
    assert [m.high_threshold for m in heads.stage_matchers] == [0.5, 0.6, 0.7]
    assert [m.low_threshold for m in heads.stage_matchers] == [0.5, 0.6, 0.7]
    assert [c.weights for c in heads.stage_box_coders] == [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    # A proposal at IoU 0.65 with its GT box: foreground for stages 1-2, background for stage 3.
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    proposal = torch.tensor([[0.0, 0.0, 100.0, 65.0]])
    labels = []
    for k in range(3):
        heads.use_stage(k)
        labels.append(int(heads.assign_targets_to_proposals([proposal], [gt], [torch.tensor([2])])[1][0][0]))
    assert labels == [2, 2, 0]
    # Stage k's regression targets use stage k's weights: the same offset is encoded 1x, 2x, 3x.
    targets = []
    for k in range(3):
        heads.use_stage(k)
        targets.append(heads.box_coder.encode([gt + 5.0], [gt])[0][0, 0].item())
    assert targets == pytest.approx([0.5, 1.0, 1.5])


class _FixedPredictor(nn.Module):
    """Stub predictor: the same class logits for every RoI, zero box deltas (boxes stay the proposals)."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1), torch.zeros(x.shape[0], 4)


class _ZeroPool(nn.Module):
    def forward(self, features, proposals, image_shapes):
        return torch.zeros(sum(len(p) for p in proposals), 1)


def test_inference_averages_the_stages_scores():
    stage_logits = [[0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, -1.0]]
    stages = [CascadeStage(nn.Identity(), _FixedPredictor(lg)) for lg in stage_logits]
    heads = CascadeRoIHeads(
        _ZeroPool(),
        stages,
        (0.5, 0.6, 0.7),
        ((10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)),
        batch_size_per_image=8,
        positive_fraction=0.25,
        score_thresh=0.0,
        nms_thresh=0.5,
        detections_per_img=10,
    ).eval()
    box = torch.tensor([[10.0, 10.0, 30.0, 40.0]])
    result, losses = heads({}, [box], [(50, 50)])
    assert losses == {}
    expected = torch.stack([torch.softmax(torch.tensor(lg), 0) for lg in stage_logits]).mean(0)
    got = {int(lab): float(s) for lab, s in zip(result[0]["labels"], result[0]["scores"], strict=True)}
    assert got == pytest.approx({1: float(expected[1]), 2: float(expected[2])}, rel=1e-5)
    assert torch.allclose(result[0]["boxes"], box.expand(2, 4))  # zero deltas of the last stage: the proposal


def test_cascade_from_plain_reuses_stage1_and_carries_momentum(tiny_config):
    model = build_detector(tiny_config, 4)
    plain = model.roi_heads
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        opt.state[p]["momentum_buffer"] = torch.ones_like(p)
    heads = cascade_from_plain(plain)
    stage1 = heads.stages[0]
    assert stage1.box_head is plain.box_head and stage1.box_predictor.cls_score is plain.box_predictor.cls_score
    rows = plain.box_predictor.bbox_pred.weight.reshape(4, 4, -1)[1:].mean(0)
    assert torch.allclose(stage1.box_predictor.bbox_pred.weight, rows)
    assert heads.stages[1].box_head is not plain.box_head
    assert heads.mask_head is plain.mask_head
    model.roi_heads = heads
    new = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    carried = carry_momentum(opt, new)
    fresh = [p for p in model.parameters() if p not in new.state]
    assert carried > 0 and fresh
    assert all(p in opt.state for p in stage1.box_head.parameters())
    assert not any(p in new.state for p in heads.stages[2].parameters())


def test_switch_iters_needs_cascade(shapes_dir, tmp_path):
    with pytest.raises(ConfigError, match="cascade_switch_iters"):
        load_config(MINI_CONFIG, tiny_overrides(shapes_dir, tmp_path / "r", **{"model.cascade_switch_iters": 5}))


def test_late_switch_trains_records_and_resumes_with_cascade(shapes_dir, tmp_path):
    """Mini schedule at batch 2: 2 x 90 x 16 / 2 = 1440 iterations; K = 1439 switches at iteration index 1."""
    run = tmp_path / "run"
    # Few test proposals and detections: evaluation of an untrained model is most of this test's time.
    extra = {
        "model.cascade": "true",
        "model.cascade_switch_iters": 1439,
        "eval.max_images": 1,
        "model.rpn_post_nms_top_n_test": 50,
        "model.box_detections_per_img": 5,
    }
    train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, run, **extra, **{"train.max_iters": 2})))
    records = _records(run)
    switch = [r for r in records if r["type"] == "switch"]
    assert len(switch) == 1 and switch[0]["iter"] == 1 and switch[0]["momentum_fresh"] > 0
    assert json.loads((run / "cascade_switch.json").read_text())["iter"] == 1
    trains = [r for r in records if r["type"] == "train"]
    assert "loss_classifier" in trains[0] and "loss_classifier_stage1" not in trains[0]
    stage_keys = [f"loss_{kind}_stage{k}" for kind in ("classifier", "box_reg") for k in (1, 2, 3)]
    assert all(math.isfinite(trains[1][k]) for k in stage_keys)

    # Resumed after the switch point: the cascade model is rebuilt before the checkpoint loads, no second switch.
    train(
        load_config(MINI_CONFIG, tiny_overrides(shapes_dir, run, **extra, **{"train.max_iters": 3, "resume": "true"}))
    )
    records = _records(run)
    assert len([r for r in records if r["type"] == "switch"]) == 1
    last = [r for r in records if r["type"] == "train"][-1]
    assert last["iter"] == 3 and all(math.isfinite(last[k]) for k in stage_keys)
