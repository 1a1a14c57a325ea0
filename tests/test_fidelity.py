"""docs/FIDELITY.md, row by row: the paper's R50-FPN GN Mask R-CNN as built, against Detectron's values.

Every test inspects the model built from configs/paper/mask_rcnn_R50_FPN_GN_scratch_2x.yaml (once per module, a few
seconds on CPU) or runs the code path that applies a setting on tiny tensors; none re-reads the config. A failing
test here means a row of docs/FIDELITY.md no longer describes the code: fix the code or the row, together.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import pycocotools.mask as mask_util
import pytest
import torch
from helpers import ROOT
from torch import nn
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.image_list import ImageList
from torchvision.models.resnet import Bottleneck
from torchvision.ops import roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from scratchdet.config import load_config
from scratchdet.data.build import build_train_dataset, build_train_loader
from scratchdet.data.transforms import RandomHorizontalFlip, ResizeShortSide
from scratchdet.engine.optim import build_optimizer
from scratchdet.engine.schedule import schedule_from_config
from scratchdet.evaluation.coco import detections_to_coco
from scratchdet.modeling.detector import build_backbone, build_detector, build_transform
from scratchdet.modeling.input_transform import model_input_convention, stride_in_1x1
from scratchdet.weights.convention import TORCHVISION, InputConvention, detect_file_convention

PAPER = ROOT / "configs" / "paper"
SCRATCH_2X = PAPER / "mask_rcnn_R50_FPN_GN_scratch_2x.yaml"
PRETRAINED_2X = PAPER / "mask_rcnn_R50_FPN_GN_pretrained_2x.yaml"
COCO_CLASSES = 81  # 80 categories + background, Detectron's MODEL.NUM_CLASSES


@pytest.fixture(scope="module")
def cfg():
    return load_config(SCRATCH_2X, ["output=unused"])


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return build_detector(cfg, num_classes=COCO_CLASSES).eval()


@contextmanager
def training(module: nn.Module):
    """Puts `module` in training mode for the block and back in eval mode after it (the fixture is shared)."""
    module.train()
    try:
        yield module
    finally:
        module.eval()


def fan_out(conv: nn.Module) -> int:
    """Caffe2's MSRAFill fan: numel / dim 1 (= torch's kaiming fan_out for Conv2d and ConvTranspose2d)."""
    return conv.weight.numel() // conv.weight.shape[1]


def assert_msra(conv: nn.Module) -> None:
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out(conv)), rel=0.05)
    assert conv.bias is None or torch.all(conv.bias == 0)


def assert_xavier(layer: nn.Module) -> None:
    """Caffe2's XavierFill: uniform in +-sqrt(3 / fan_in), so std = sqrt(1 / fan_in)."""
    fan_in = layer.weight[0].numel()
    bound = math.sqrt(3.0 / fan_in)
    assert layer.weight.abs().max().item() <= bound
    assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.05)
    assert layer.bias is None or torch.all(layer.bias == 0)


def pyramid(size: int = 512, channels: int = 256, seed: int = 1) -> OrderedDict:
    """Random P2..P6 maps of a size x size input, keyed as the FPN keys them ("0".."3", "pool")."""
    g = torch.Generator().manual_seed(seed)
    names = ["0", "1", "2", "3", "pool"]
    return OrderedDict(
        (n, torch.randn(1, channels, size >> (k + 2), size >> (k + 2), generator=g)) for k, n in enumerate(names)
    )


# --- backbone -------------------------------------------------------------------------------------------------


def test_resnet_stride_on_the_3x3_conv_and_stem(model):
    body = model.backbone.body
    assert body.conv1.kernel_size == (7, 7) and body.conv1.stride == (2, 2)
    assert body.maxpool.kernel_size == 3 and body.maxpool.stride == 2 and body.maxpool.padding == 1
    blocks = [b for layer in (body.layer1, body.layer2, body.layer3, body.layer4) for b in layer]
    assert len(blocks) == 16 and all(isinstance(b, Bottleneck) for b in blocks)
    for i, layer in enumerate((body.layer2, body.layer3, body.layer4)):
        first = layer[0]
        # Detectron's GN configs: RESNETS.STRIDE_1X1 False (fb.torch layout), so the 1x1 never strides.
        assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2), f"layer{i + 2}"
        assert first.downsample[0].stride == (2, 2)


def test_nothing_frozen_in_either_arm(model):
    assert all(p.requires_grad for p in model.parameters())
    pretrained = build_backbone(load_config(PRETRAINED_2X, ["output=unused"]))
    assert all(p.requires_grad for p in pretrained.parameters())


def test_group_norm_32_groups_eps_1e5_in_backbone_fpn_and_heads_not_rpn(model):
    parts = {
        "body": model.backbone.body,
        "fpn": model.backbone.fpn,
        "box_head": model.roi_heads.box_head,
        "mask_head": model.roi_heads.mask_head,
        "rpn": model.rpn.head,
    }
    counts = {k: sum(isinstance(m, nn.GroupNorm) for m in part.modules()) for k, part in parts.items()}
    # R50: stem 1 + 16 blocks x 3 + 4 shortcuts = 53; FPN: 4 lateral + 4 output; 4 per head; none in the RPN head.
    assert counts == {"body": 53, "fpn": 8, "box_head": 4, "mask_head": 4, "rpn": 0}
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 69
    assert all(m.num_groups == 32 and m.eps == 1e-5 and m.affine for m in norms)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --- FPN and RPN ----------------------------------------------------------------------------------------------


def test_fpn_p2_to_p6_strides_and_which_levels_feed_rpn_and_roi_heads(model):
    assert isinstance(model.backbone.fpn.extra_blocks, LastLevelMaxPool)  # P6 = stride-2 subsampling of P5
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 128, 128))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert [128 // f.shape[-1] for f in features.values()] == [4, 8, 16, 32, 64]
    assert all(f.shape[1] == 256 for f in features.values())
    # The RPN runs on every map the backbone returns (P2-P6), one anchor size per level; RoI heads pool P2-P5.
    assert len(model.rpn.anchor_generator.sizes) == len(features)
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    assert model.roi_heads.mask_roi_pool.featmap_names == ["0", "1", "2", "3"]


def test_rpn_anchors_one_size_per_level_three_ratios_centred_on_the_grid(model):
    gen = model.rpn.anchor_generator
    assert gen.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert all(r == (0.5, 1.0, 2.0) for r in gen.aspect_ratios)
    feats = list(pyramid(size=128, channels=1).values())
    anchors = gen(ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)]), feats)[0]
    per_level = [f.shape[-1] * f.shape[-2] * 3 for f in feats]
    assert anchors.shape == (sum(per_level), 4)  # every anchor kept, also those crossing the border
    p2 = anchors[: per_level[0]]
    centres = (p2[:, :2] + p2[:, 2:]) / 2
    assert torch.all(centres[:3] == 0)  # the first cell's anchors sit at (0, 0): offset 0, as detectron2
    assert centres[3, 0].item() == 4.0  # the next cell is one stride (4 px) further
    areas = (p2[:3, 2] - p2[:3, 0]) * (p2[:3, 3] - p2[:3, 1])
    assert torch.allclose(areas, torch.full((3,), 32.0**2), rtol=0.05)


def test_rpn_head_one_shared_3x3_conv_without_norm_gaussian_001(model):
    head = model.rpn.head
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (1, 1), (1, 1)]
    assert head.cls_logits.out_channels == 3 and head.bbox_pred.out_channels == 12  # sigmoid objectness
    for conv in convs:
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.15)
        assert torch.all(conv.bias == 0)


def test_rpn_pre_nms_top_n_is_per_level_and_image(model):
    rpn = model.rpn
    assert rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}
    g = torch.Generator().manual_seed(0)
    objectness = torch.cat([torch.rand(2, 3000, generator=g) + 1, torch.rand(2, 3000, generator=g)], dim=1)
    idx = rpn._get_top_n_idx(objectness, [3000, 3000])  # level 0 outscores level 1, yet each keeps its top-k
    assert idx.shape == (2, 2000) and torch.all((idx < 3000).sum(dim=1) == 1000)
    with training(rpn):
        idx = rpn._get_top_n_idx(objectness, [3000, 3000])
    assert idx.shape == (2, 4000) and torch.all((idx < 3000).sum(dim=1) == 2000)


def test_rpn_post_nms_top_n_is_per_image_after_per_level_nms(model):
    rpn = model.rpn
    assert rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    assert rpn.nms_thresh == 0.7
    ys, xs = torch.meshgrid(torch.arange(30.0), torch.arange(50.0), indexing="ij")
    x1, y1 = xs.flatten() * 12, ys.flatten() * 12
    disjoint = torch.stack([x1, y1, x1 + 8, y1 + 8], dim=1)  # 1500 boxes, no two overlap
    n = len(disjoint)
    # The same 1500 boxes on two levels: NMS per level keeps both copies, a global NMS would drop one of each pair.
    proposals = torch.cat([disjoint, disjoint]).expand(2, -1, -1)
    objectness = torch.randn(2, 2 * n, generator=torch.Generator().manual_seed(0))
    with training(rpn):
        boxes, scores = rpn.filter_proposals(proposals, objectness, [(360, 600)] * 2, [n, n])
    assert [len(b) for b in boxes] == [1000, 1000]  # per image: a per-batch limit would leave ~500 each
    for i in range(2):
        torch.testing.assert_close(scores[i], torch.sigmoid(objectness[i]).topk(1000).values)


def test_rpn_sampling_and_matching(model):
    rpn = model.rpn
    assert rpn.fg_bg_sampler.batch_size_per_image == 256 and rpn.fg_bg_sampler.positive_fraction == 0.5
    matcher = rpn.proposal_matcher
    assert (matcher.high_threshold, matcher.low_threshold, matcher.allow_low_quality_matches) == (0.7, 0.3, True)
    # An anchor crossing the image border (x1 = y1 = -8) that is its GT box's best match (IoU 0.56) is a positive:
    # no straddle filter (Detectron: TRAIN.RPN_STRADDLE_THRESH 0 would ignore it; detectron2: BOUNDARY_THRESH -1).
    anchors = torch.tensor([[-8.0, -8.0, 24.0, 24.0], [200.0, 200.0, 232.0, 232.0]])
    labels, _ = rpn.assign_targets_to_anchors([anchors], [{"boxes": torch.tensor([[0.0, 0.0, 24.0, 24.0]])}])
    assert labels[0].tolist() == [1.0, 0.0]


def test_rpn_box_loss_smooth_l1_beta_one_ninth_over_sampled_anchors(model):
    rpn = model.rpn
    assert rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert rpn.box_coder.bbox_xform_clip == pytest.approx(math.log(1000.0 / 16))
    labels = [torch.tensor([1.0, 0.0, -1.0, -1.0])]  # one positive, one negative, two ignored
    deltas = torch.zeros(4, 4)
    deltas[0, 0] = 0.05
    _, box_loss = rpn.compute_loss(torch.zeros(4, 1), deltas, labels, [torch.zeros(4, 4)])
    beta = 1.0 / 9.0
    assert box_loss.item() == pytest.approx(0.5 * 0.05**2 / beta / 2)  # / 2 sampled anchors


# --- RoI heads ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pool_name", "resolution"), [("box_roi_pool", 7), ("mask_roi_pool", 14)])
def test_roi_align_unaligned_sampling_2_fpn_level_mapping(model, pool_name, resolution):
    pool = getattr(model.roi_heads, pool_name)
    feats = pyramid(size=512)
    # sqrt(area) 60 -> P2, 120 -> P3, 240 -> P4, 460 -> P5: floor(4 + log2(s / 224)), clamped to [2, 5].
    boxes = torch.tensor(
        [
            [10.0, 10.0, 70.0, 70.0],
            [20.0, 20.0, 140.0, 140.0],
            [16.0, 16.0, 256.0, 256.0],
            [20.0, 30.0, 480.0, 490.0],
            [5.0, 5.0, 9.0, 9.0],
        ]
    )
    levels = [2, 3, 4, 5, 2]
    with torch.no_grad():
        pooled = pool(feats, [boxes], [(512, 512)])
    assert pooled.shape == (5, 256, resolution, resolution)
    mapper = pool.map_levels
    assert (mapper.k_min, mapper.k_max, mapper.s0, mapper.lvl0) == (2, 5, 224, 4)
    for i, k in enumerate(levels):
        rois = torch.cat([torch.zeros(1, 1), boxes[i : i + 1]], dim=1)
        args = dict(output_size=resolution, spatial_scale=2.0**-k, sampling_ratio=2)
        expected = roi_align(feats[str(k - 2)], rois, aligned=False, **args)
        torch.testing.assert_close(pooled[i : i + 1], expected)
        assert not torch.allclose(pooled[i : i + 1], roi_align(feats[str(k - 2)], rois, aligned=True, **args))


def test_roi_sampling_512_per_image_quarter_foreground_gt_added(model):
    heads = model.roi_heads
    assert heads.fg_bg_sampler.batch_size_per_image == 512 and heads.fg_bg_sampler.positive_fraction == 0.25
    matcher = heads.proposal_matcher
    # fg: IoU >= 0.5; bg: IoU in [0, 0.5); no low-quality matches (Detectron's FG_THRESH, BG_THRESH_HI/LO).
    assert (matcher.high_threshold, matcher.low_threshold, matcher.allow_low_quality_matches) == (0.5, 0.5, False)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = heads.add_gt_proposals([torch.tensor([[50.0, 50.0, 60.0, 60.0]])], [gt])
    assert torch.equal(proposals[0][-1:], gt)


def test_box_head_4conv1fc_class_specific_regression_weights(model):
    heads = model.roi_heads
    convs = [m for m in heads.box_head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(256, 256, (3, 3))] * 4
    assert all(c.bias is None for c in convs)
    with torch.no_grad():
        x = heads.box_head(torch.randn(2, 256, 7, 7))
        scores, deltas = heads.box_predictor(x)
    assert x.shape == (2, 1024) and scores.shape == (2, 81) and deltas.shape == (2, 81 * 4)
    assert heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert heads.box_coder.bbox_xform_clip == pytest.approx(math.log(1000.0 / 16))


def test_box_loss_is_torchvisions_smooth_l1_beta_one_ninth(model):
    # The plain heads run torchvision's RoIHeads.forward, so its module-level fastrcnn_loss computes the loss.
    assert type(model.roi_heads).forward is tv_roi_heads.RoIHeads.forward
    logits = torch.zeros(2, 81)
    deltas = torch.zeros(2, 81 * 4)
    deltas[0, 4 * 3] = 0.05  # RoI 0 is class 3: its class-3 regressor is off by 0.05 in dx
    _, box_loss = tv_roi_heads.fastrcnn_loss(logits, deltas, [torch.tensor([3, 0])], [torch.zeros(2, 4)])
    assert box_loss.item() == pytest.approx(0.5 * 0.05**2 * 9 / 2)  # beta 1/9, summed, / 2 sampled RoIs


def test_mask_head_4conv_deconv_28_and_per_class_sigmoid_loss(model):
    heads = model.roi_heads
    convs = [m for m in heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.dilation) for c in convs] == [
        (256, 256, (3, 3), (1, 1))
    ] * 4
    deconv = heads.mask_predictor.conv5_mask
    assert isinstance(deconv, nn.ConvTranspose2d) and deconv.kernel_size == (2, 2) and deconv.stride == (2, 2)
    with torch.no_grad():
        logits = heads.mask_predictor(heads.mask_head(torch.randn(2, 256, 14, 14)))
    assert logits.shape == (2, 81, 28, 28)  # one 28x28 mask per class (MRCNN.CLS_SPECIFIC_MASK)
    # Loss: sigmoid cross-entropy on the GT class's channel only, averaged over its 28x28 pixels.
    logits = torch.full((1, 81, 28, 28), 100.0)
    logits[0, 3] = 0.0
    gt_masks = [torch.ones(1, 28, 28)]
    loss = tv_roi_heads.maskrcnn_loss(
        logits, [torch.tensor([[0.0, 0.0, 28.0, 28.0]])], gt_masks, [torch.tensor([3])], [torch.tensor([0])]
    )
    assert loss.item() == pytest.approx(math.log(2.0))
    # Targets are the GT mask RoIAligned into the box, unthresholded: soft at the object's edge.
    half = torch.zeros(1, 8, 8)
    half[0, :, :4] = 1.0
    targets = tv_roi_heads.project_masks_on_boxes(half, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.tensor([0]), 28)
    assert ((targets > 0) & (targets < 1)).any()


def test_test_time_score_threshold_nms_and_detections_per_image(model):
    heads = model.roi_heads
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.05, 0.5, 100)
    # Per-class NMS at 0.5: two class-1 boxes with IoU 0.6 become one; the same box as class 2 survives.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 6.0]])
    logits = torch.tensor([[0.0, 6.0, 5.0], [0.0, 5.0, -9.0]])
    logits = torch.cat([logits, torch.full((2, 78), -9.0)], dim=1)
    out_boxes, out_scores, out_labels = heads.postprocess_detections(
        logits, torch.zeros(2, 81 * 4), [boxes], [(10, 10)]
    )
    assert sorted(out_labels[0].tolist()) == [1, 2]


def test_mask_threshold_is_strictly_above_one_half():
    masks = torch.tensor([0.4, 0.5, 0.51, 0.9]).view(1, 1, 2, 2)
    output = {
        "boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
        "masks": masks,
    }
    (result,) = detections_to_coco(output, image_id=1, label_to_cat_id={1: 1})
    rle = dict(result["segmentation"], counts=result["segmentation"]["counts"].encode())
    assert mask_util.area(rle) == 2  # 0.51 and 0.9; 0.5 itself is background (Detectron: mask > 0.5)


# --- initialization -------------------------------------------------------------------------------------------


def test_init_backbone_msra_fpn_xavier_norms_one_zero(model):
    body = model.backbone.body
    for conv in (
        body.conv1,
        body.layer1[0].conv1,
        body.layer3[0].conv2,
        body.layer4[0].conv3,
        body.layer2[0].downsample[0],
    ):
        assert_msra(conv)
    fpn = model.backbone.fpn
    for block in (*fpn.inner_blocks, *fpn.layer_blocks):
        assert_xavier(block[0])
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)  # no zero-gamma in residual branches


def test_init_box_head_msra_convs_xavier_fc_small_gaussian_outputs(model):
    heads = model.roi_heads
    for conv in (m for m in heads.box_head.modules() if isinstance(m, nn.Conv2d)):
        assert_msra(conv)
    assert_xavier(heads.box_head[5])  # fc6
    predictor = heads.box_predictor
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.all(predictor.cls_score.bias == 0) and torch.all(predictor.bbox_pred.bias == 0)


def test_init_mask_head_convs_deconv_and_predictor_msra(model):
    heads = model.roi_heads
    for conv in (m for m in heads.mask_head.modules() if isinstance(m, nn.Conv2d)):
        assert_msra(conv)
    assert_msra(heads.mask_predictor.conv5_mask)  # fan = 256 in x 2 x 2, as Caffe2 counts a ConvTranspose
    assert_msra(heads.mask_predictor.mask_fcn_logits)  # fan = 81 x 1 x 1: std 0.157


# --- solver ---------------------------------------------------------------------------------------------------


def test_solver_lr_warmup_and_steps(cfg):
    schedule = schedule_from_config(cfg)
    assert (schedule.batch_size, schedule.base_lr) == (16, 0.02)
    assert schedule.max_iters == 180_000 and schedule.milestones == (120_000, 160_000) and schedule.gamma == 0.1
    # Detectron's linear warm-up: factor 1/3 at iteration 0 rising linearly to 1 at iteration 500.
    assert schedule.lr_factor(0) == pytest.approx(1 / 3)
    assert schedule.lr_factor(250) == pytest.approx(2 / 3)
    assert schedule.lr_factor(500) == 1.0 and schedule.lr_factor(119_999) == 1.0
    assert schedule.lr_factor(120_000) == pytest.approx(0.1) and schedule.lr_factor(160_000) == pytest.approx(0.01)


def test_sgd_momentum_and_weight_decay_on_weights_biases_and_norms(model, cfg):
    optimizer = build_optimizer(model, cfg.solver, lr=0.02)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert all(g["momentum"] == 0.9 and not g["nesterov"] and g["lr"] == 0.02 for g in groups.values())
    assert groups["default"]["weight_decay"] == 1e-4 and groups["norm"]["weight_decay"] == 0.0
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.GroupNorm) for p in m.parameters()}
    assert {id(p) for p in groups["norm"]["params"]} == norm_ids
    # Conv/fc biases decay like weights, at the same LR (detectron2; Detectron: no decay and 2x LR on biases).
    default_ids = {id(p) for p in groups["default"]["params"]}
    heads = model.roi_heads
    for bias in (
        model.rpn.head.cls_logits.bias,
        heads.box_head[5].bias,
        heads.box_predictor.cls_score.bias,
        heads.mask_predictor.conv5_mask.bias,
        heads.mask_predictor.mask_fcn_logits.bias,
    ):
        assert id(bias) in default_ids


# --- data -----------------------------------------------------------------------------------------------------


def test_train_and_test_sizes_flip_and_batching(model, shapes_dir):
    transform = model.transform  # test time: the model resizes; training: the data pipeline (below)
    assert transform.min_size == (800,) and transform.max_size == 1333 and transform.size_divisible == 32
    train_cfg = load_config(
        SCRATCH_2X,
        [
            "output=unused",
            f"data.train.json={shapes_dir / 'instances_train.json'}",
            f"data.train.images={shapes_dir / 'train'}",
            "data.num_workers=0",
        ],
    )
    dataset = build_train_dataset(train_cfg)
    resize, flip = dataset.transform.transforms
    assert isinstance(resize, ResizeShortSide) and isinstance(flip, RandomHorizontalFlip)
    assert resize.short_sizes == (800,) and resize.max_size == 1333 and flip.prob == 0.5
    # Aspect-ratio grouping of the images in a batch, as Detectron/detectron2 (docs/FIDELITY.md).
    loader = build_train_loader(dataset, train_cfg)
    assert loader.batch_sampler.group_ids is not None and loader.batch_sampler.batch_size == 16
    sizes = dataset.image_sizes()
    batch = next(iter(loader.batch_sampler))
    landscape = {sizes[index][0] >= sizes[index][1] for index, _ in batch}
    assert len(landscape) == 1  # one orientation per batch


def test_proposals_carry_no_gradient_into_the_rpn(model):
    # Approximate joint training, as Detectron: the RoI heads get proposals as constants, not as a function of the
    # RPN's box deltas.
    feats = OrderedDict((k, v.requires_grad_()) for k, v in pyramid(size=128, seed=2).items())
    images = ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)])
    with training(model.rpn):
        proposals, losses = model.rpn(images, feats, [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 60.0]])}])
    assert losses["loss_rpn_box_reg"].requires_grad  # the graph reaches the features...
    assert not proposals[0].requires_grad  # ...but not through the proposals


# --- input convention (model.input_format / pixel_scale / pixel_mean / pixel_std / stride_in_1x1) ---------------


def test_input_convention_scratch_torchvision_pretrained_gn_file_detectrons(model):
    rgb = torch.tensor([0.2, 0.5, 0.8])
    # Scratch arm: no weight file to match, so torchvision's convention (RGB 0..1, ImageNet mean/std, 3x3 stride).
    assert model_input_convention(model) == TORCHVISION
    mean, std = torch.tensor(TORCHVISION.pixel_mean), torch.tensor(TORCHVISION.pixel_std)
    torch.testing.assert_close(model.transform.normalize(rgb.view(3, 1, 1)).flatten(), (rgb - mean) / std)
    # Pre-trained arm: FAIR's R-50-GN.pkl (a Caffe2 pickle with GN layers) gets Detectron's input exactly...
    file = detect_file_convention(Path("R-50-GN.pkl"), layout="caffe2", source_norm="GN", grouped=False)
    detectron = (102.9801, 115.9465, 122.7717)  # Detectron core/config.py PIXEL_MEANS, BGR
    assert file.known and file.convention == InputConvention("BGR", 255.0, detectron, (1.0, 1.0, 1.0), False)
    # ...which the detector's transform applies: RGB 0..1 in, BGR 0..255 minus PIXEL_MEANS out, no std.
    pretrained = load_config(PRETRAINED_2X, ["output=unused", *file.convention.overrides()])
    out = build_transform(pretrained).normalize(rgb.view(3, 1, 1)).flatten()
    torch.testing.assert_close(out, rgb.flip(0) * 255 - torch.tensor(detectron))
    assert not stride_in_1x1(build_backbone(pretrained).body)  # GN configs: RESNETS.STRIDE_1X1 False


def test_training_step_default_is_torchvision(cfg, model):
    # model.step=fast (modeling/fast_step.py) stays opt-in until the learning tests show it learns as well.
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.rpn import RegionProposalNetwork

    assert cfg.model.step == "torchvision"
    assert type(model.rpn) is RegionProposalNetwork and type(model.roi_heads) is RoIHeads
    assert all(type(m) is nn.GroupNorm for m in model.modules() if isinstance(m, nn.GroupNorm))
