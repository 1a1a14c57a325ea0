"""model.step=fast (modeling/fast_step.py): the same proposals and matches as torchvision's code on the same inputs,
the same sampling distribution, a pinned count of the ops that would make a CUDA host wait, and a run that learns."""

from __future__ import annotations

import math
import sys
from itertools import combinations

import pytest
import torch
import torchvision
from helpers import MINI_CONFIG, ROOT, tiny_overrides
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.rpn import RegionProposalNetwork

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.metrics import read_metrics
from scratchdet.errors import ConfigError
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.fast_step import (
    AutocastGroupNorm,
    FastRegionProposalNetwork,
    match_batched,
    pad_per_image,
    sample_batched,
)
from scratchdet.modeling.roi_align import FixedShapeMultiScaleRoIAlign, level_mosaic


def _fast_model(tmp_path, *extra):
    cfg = load_config(MINI_CONFIG, [f"output={tmp_path}", "model.step=fast", *extra])
    return build_detector(cfg, num_classes=6)


def _random_proposals(generator, num_images, anchors_per_level, size):
    total = sum(anchors_per_level)
    xy = torch.rand(num_images, total, 2, generator=generator) * size * 1.1 - 0.05 * size  # some leave the image
    wh = torch.rand(num_images, total, 2, generator=generator) * size * 0.4
    proposals = torch.cat([xy, xy + wh], dim=2)
    objectness = torch.randn(num_images * total, 1, generator=generator)
    return proposals, objectness


@pytest.mark.parametrize(
    "anchors_per_level, pre_n, post_n",
    [
        ([900, 240, 60, 15, 4], 200, 120),  # the usual case: more candidates than either top-n
        ([6, 3, 2], 600, 200),  # fewer anchors than pre-NMS top-n and fewer candidates than post-NMS top-n
    ],
)
def test_proposals_equal_torchvision(tmp_path, anchors_per_level, pre_n, post_n):
    rpn = _fast_model(tmp_path).rpn.train()
    assert isinstance(rpn, FastRegionProposalNetwork)
    rpn._pre_nms_top_n["training"], rpn._post_nms_top_n["training"] = pre_n, post_n
    generator = torch.Generator().manual_seed(0)
    proposals, objectness = _random_proposals(generator, 3, anchors_per_level, 64)
    # Image 1: every box narrower than min_size, so it has no proposal at all (remove_small_boxes).
    proposals[1, :, 2] = proposals[1, :, 0]
    sizes = [(64, 60), (64, 64), (50, 64)]
    boxes, scores, valid = rpn.filter_proposals_fixed(proposals, objectness, sizes, anchors_per_level)
    expected_boxes, expected_scores = RegionProposalNetwork.filter_proposals(
        rpn, proposals, objectness, sizes, anchors_per_level
    )
    assert boxes.shape[1] == min(post_n, sum(min(pre_n, n) for n in anchors_per_level))
    assert expected_boxes[1].shape[0] == 0
    assert expected_boxes[0].shape[0] > 0
    for i in range(3):
        torch.testing.assert_close(boxes[i][valid[i]], expected_boxes[i], rtol=0, atol=0)
        torch.testing.assert_close(scores[i][valid[i]], expected_scores[i], rtol=0, atol=0)
        assert not valid[i][expected_boxes[i].shape[0] :].any()  # valid entries come first


@pytest.mark.parametrize("allow_low_quality", [True, False])
def test_batched_matching_equals_matcher(allow_low_quality):
    generator = torch.Generator().manual_seed(1)
    matcher = det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=allow_low_quality)
    counts = [3, 1, 5]  # padded to 5 ground-truth rows
    ious = [torch.rand(g, 40, generator=generator) for g in counts]
    ious[1][0, 7] = 0.95  # a best match above the threshold, and ties of a ground truth's best
    ious[2][3, :4] = ious[2][3].max()
    padded, valid = pad_per_image(ious, fill=0.0)
    matches = match_batched(padded, valid, 0.7, 0.3, allow_low_quality)
    for i, iou in enumerate(ious):
        torch.testing.assert_close(matches[i], matcher(iou))
    empty = match_batched(torch.zeros(2, 0, 40), torch.zeros(2, 0, dtype=torch.bool), 0.7, 0.3, True)
    assert (empty == det_utils.Matcher.BELOW_LOW_THRESHOLD).all()


def test_sampler_draws_torchvision_distribution():
    """Fixed counts per image and uniformly random subsets, as BalancedPositiveNegativeSampler's randperm draws."""
    torch.manual_seed(0)
    draws = 6000
    row = torch.tensor([1] * 4 + [0] * 10 + [-1] * 6 + [2] * 0)  # 4 positives, 10 negatives, 6 ignored
    labels = row.expand(draws, -1).clone()
    pos, neg = sample_batched(labels, batch_size_per_image=8, positive_fraction=0.25)  # quotas: 2 + 6
    assert (pos.sum(1) == 2).all() and (neg.sum(1) == 6).all()
    assert not (pos | neg)[:, 14:].any()
    # Each positive pair (6 of them) and each negative (6 of 10 taken) equally likely: chi-square at p = 0.001.
    pair_counts = torch.zeros(6)
    for k, (a, b) in enumerate(combinations(range(4), 2)):
        pair_counts[k] = (pos[:, a] & pos[:, b]).sum()
    chi2_pairs = ((pair_counts - draws / 6) ** 2 / (draws / 6)).sum()
    assert chi2_pairs < 20.5  # chi-square, 5 degrees of freedom, p = 0.001
    neg_freq = neg[:, 4:14].float().mean(0)
    assert ((neg_freq - 0.6).abs() < 4 * math.sqrt(0.6 * 0.4 / draws)).all()
    # Fewer positives than the quota: negatives fill the rest of the batch, as torchvision's sampler does.
    few = torch.tensor([1] + [0] * 20).expand(500, -1)
    pos, neg = sample_batched(few, 8, 0.25)
    assert (pos.sum(1) == 1).all() and (neg.sum(1) == 7).all()
    reference = det_utils.BalancedPositiveNegativeSampler(8, 0.25)
    ref_pos, ref_neg = reference([few[0]])
    assert (ref_pos[0].sum(), ref_neg[0].sum()) == (1, 7)


def test_fixed_shape_pooler_equals_torchvision():
    """Every RoI pooled on its own FPN level (Eq. 1 of the FPN paper), as torchvision's MultiScaleRoIAlign does, with
    the same gradients to every level; boxes touching the image's edges (where RoIAlign clamps its samples to the
    map's last row) included."""
    generator = torch.Generator().manual_seed(2)
    features = {
        str(i): torch.randn(2, 4, 128 >> i, 192 >> i, generator=generator, dtype=torch.float64, requires_grad=True)
        for i in range(4)
    }
    size = torch.tensor([768.0, 512.0])
    xy = torch.rand(2, 60, 2, generator=generator) * size * 0.8
    # Square-ish boxes with sides 16-1024 px, log-uniform: every level P2-P5 (canonical 224 px on P4); clipped to the
    # 512 x 768 image as training's proposals are, so many end on its edges.
    wh = (16 * 64 ** torch.rand(2, 60, 1, generator=generator)) * (
        0.8 + 0.4 * torch.rand(2, 60, 2, generator=generator)
    )
    limit = torch.cat([size, size])
    boxes = [torch.minimum(b, limit).double() for b in torch.cat([xy, xy + wh], dim=2).unbind(0)]
    assert sum(int((b[:, 2:] == limit[2:]).any(1).sum()) for b in boxes) >= 10  # on the right or bottom edge
    fixed = FixedShapeMultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2).train()
    stock = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    pooled = fixed(features, boxes, [(512, 768)] * 2)
    assert len(fixed.map_levels(boxes).unique()) == 4  # the boxes use every level
    expected = stock(features, boxes, [(512, 768)] * 2)
    torch.testing.assert_close(pooled, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(pooled.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad((pooled * weights).sum(), list(features.values()))
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(features.values()))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_level_mosaic_places_each_level_with_a_copy_of_its_edges():
    features = [torch.arange(2 * 3 * h * w, dtype=torch.float32).view(2, 3, h, w) for h, w in ((8, 12), (4, 6), (2, 3))]
    canvas, origins = level_mosaic(features)
    assert canvas.shape == (2, 3, 10, 14 + 8) and origins == [(1, 1), (1, 15), (7, 15)]
    for f, (y, x) in zip(features, origins, strict=True):
        h, w = f.shape[2:]
        assert torch.equal(canvas[:, :, y : y + h, x : x + w], f)
        assert torch.equal(canvas[:, :, y + h, x : x + w], f[:, :, -1])  # the frame below copies the last row
        assert torch.equal(canvas[:, :, y - 1, x : x + w], f[:, :, 0])


def test_groupnorm_keeps_autocast_dtype():
    """Under bf16 autocast the fast GroupNorm returns bf16 (fp32 statistics inside the kernel) and matches fp32
    GroupNorm of the same input to bf16 precision; without autocast it is nn.GroupNorm."""
    torch.manual_seed(0)
    norm = AutocastGroupNorm(8, 32)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 32, 6, 6).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16
    reference = torch.nn.functional.group_norm(x.float(), 8, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(y.float(), reference, rtol=0.02, atol=0.05)
    torch.testing.assert_close(norm(x.float()), reference)


def test_fast_step_would_sync_ops_are_pinned():
    """The fast step's ops that would block a CUDA host, at two batch sizes: no per-image growth. A change that
    brings a sync back fails here."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import step_ops

    counts = {b: step_ops.count_step(MINI_CONFIG, b, 64, step="fast", num_classes=6) for b in (1, 3)}
    for b, result in counts.items():
        # One NMS per FPN level (P2-P6) over the whole batch: torchvision's kernel returns a data-dependent count.
        assert result["sync_ops"] == {"nms": 5}, (b, result["sync_ops"])
    reference = step_ops.count_step(MINI_CONFIG, 3, 64, step="torchvision", num_classes=6)
    assert reference["syncs"] > 3 * counts[3]["syncs"]


def test_fast_step_trains_and_lowers_the_loss(shapes_dir, tmp_path):
    overrides = tiny_overrides(
        shapes_dir,
        tmp_path / "run",
        **{"model.step": "fast", "train.max_iters": 20, "solver.base_lr": 0.08, "solver.warmup_iters": 5},
    )
    cfg = load_config(MINI_CONFIG, [*overrides, "eval.period=0"])
    trainer.train(cfg)
    losses = [r["loss"] for r in read_metrics(cfg.output, "train")]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    # Measured once (2026-12-07): 16.1 over the first five iterations, 9.4 over the last five.
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    # The final evaluation ran torchvision's test path on the fast model (an untrained model may detect nothing).
    assert read_metrics(cfg.output, "eval")[-1]["images"] == 4


@pytest.mark.parametrize("boxes_per_image", [(3, 0), (0, 0)])
def test_fast_step_images_without_objects(tmp_path, boxes_per_image):
    """An image without ground truth (all its RoIs background, no mask RoIs) and a batch without any: finite losses
    and gradients, as torchvision's step gives. Seed 0 of the model's init once gave a NaN mask loss (slots past an
    image's masks pooled from outside the stack, and 0 x NaN in the masked mean): every init is pinned here."""
    for seed in range(6):
        torch.manual_seed(seed)
        _check_finite_step(_fast_model(tmp_path).train(), boxes_per_image)


def _check_finite_step(model, boxes_per_image):
    generator = torch.Generator().manual_seed(3)
    images, targets = [], []
    for n in boxes_per_image:
        images.append(torch.rand(3, 64, 80, generator=generator))
        xy = torch.rand(n, 2, generator=generator) * 30
        boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=generator) * 30], dim=1)
        masks = torch.zeros(n, 64, 80, dtype=torch.uint8)
        masks[:, 20:40, 20:50] = 1
        targets.append({"boxes": boxes, "labels": torch.ones(n, dtype=torch.int64), "masks": masks})
    losses = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if sum(boxes_per_image) == 0:
        assert losses["loss_mask"] == 0 and losses["loss_box_reg"] == 0 and losses["loss_rpn_box_reg"] == 0


def test_fast_step_refuses_keypoint_and_cascade_models(tmp_path):
    with pytest.raises(ConfigError):
        _fast_model(tmp_path, "model.cascade=true")
    with pytest.raises(ConfigError):
        load_config(MINI_CONFIG, [f"output={tmp_path}", "model.step=quick"])
