"""Builds Mask R-CNN / Faster R-CNN from torchvision parts with one normalization everywhere (docs/PAPER.md,
"The system", "Normalization").

Backbone ResNet/ResNeXt (backbones.py) -> torchvision FPN (P2-P6) -> torchvision RPN -> RoI heads with the paper's
"4conv1fc" box head and 4-conv mask head, each conv followed by the chosen norm (and then without bias).
model.backbone=vgg16 builds the original Faster R-CNN instead (vgg.py): conv5_3, no FPN, no normalization.

Resizing: at training time the data pipeline resizes (scratchdet.data.transforms), so augmentation is reproducible
from the sampler and the pixels seen are known; the model's transform skips resizing then. At test time the model's
transform resizes to data.min_size_test / max_size_test and maps boxes and masks back to the original image size.

Input convention: the model's transform takes the dataset's RGB 0..1 images and converts them to the backbone's
convention (model.input_format, pixel_scale, pixel_mean, pixel_std) before normalizing, and the ResNet puts each
stage's stride where model.stride_in_1x1 says (input_transform.py); unset keys mean torchvision's convention.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from scratchdet.config import Config
from scratchdet.errors import ConfigError
from scratchdet.modeling.backbones import ResNet
from scratchdet.modeling.cascade import switch_to_cascade_
from scratchdet.modeling.fast_step import make_fast_
from scratchdet.modeling.init import init_detector_
from scratchdet.modeling.input_transform import InputConventionTransform
from scratchdet.modeling.keypoint_head import KeypointRCNNConvNormHead
from scratchdet.modeling.norm import build_norm
from scratchdet.modeling.predictors import KeypointPredictor, MaskPredictor
from scratchdet.modeling.roi_align import MultiScaleRoIAlign
from scratchdet.modeling.vgg import build_vgg16_faster_rcnn
from scratchdet.weights.convention import CONVENTION_KEYS, TORCHVISION_MEAN, TORCHVISION_STD, InputConvention

# torchvision's normalization of [0, 1] RGB input: the convention when model.pixel_mean/pixel_std are unset.
IMAGE_MEAN = list(TORCHVISION_MEAN)
IMAGE_STD = list(TORCHVISION_STD)


def configured_input_convention(cfg: Config) -> InputConvention:
    """The convention the model.* keys describe; unset (None) keys take torchvision's values."""
    return InputConvention.from_values({k: getattr(cfg.model, k) for k in CONVENTION_KEYS})


def build_transform(cfg: Config) -> InputConventionTransform:
    """torchvision's GeneralizedRCNNTransform (test-time resize, batching) with the configured pixel conversion."""
    conv = configured_input_convention(cfg)
    return InputConventionTransform(
        cfg.data.min_size_test,
        cfg.data.max_size_test,
        list(conv.pixel_mean),
        list(conv.pixel_std),
        input_format=conv.input_format,
        pixel_scale=conv.pixel_scale,
        _skip_resize=True,  # training images arrive resized by the data pipeline (see module docstring)
    )


def build_backbone(cfg: Config) -> BackboneWithFPN:
    """ResNet/ResNeXt body + FPN with P2..P5 from layer1..layer4 and P6 by max-pooling P5 (feature names 0-3, pool)."""
    m = cfg.model
    body = ResNet(
        m.depth,
        norm_layer=build_norm(m.norm, m.gn_groups, for_backbone_block=True),
        stem_width=m.stem_width,
        groups=m.groups,
        width_per_group=m.width_per_group,
        stride_in_1x1=bool(m.stride_in_1x1),
    )
    body.freeze(m.freeze_at)  # before wrapping: IntermediateLayerGetter keeps the children, not the class
    fpn = BackboneWithFPN(
        body,
        return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
        in_channels_list=body.stage_channels,
        out_channels=m.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=build_norm(m.norm, m.gn_groups),
    )
    return fpn


def transform_and_sampling_kwargs(cfg: Config) -> dict:
    """FasterRCNN kwargs every backbone shares: test-time resize, pixel normalization, RPN/RoI sampling and limits."""
    m = cfg.model
    conv = configured_input_convention(cfg)  # build_detector then swaps in build_transform's channel order / scale
    return dict(
        min_size=cfg.data.min_size_test,
        max_size=cfg.data.max_size_test,
        image_mean=list(conv.pixel_mean),
        image_std=list(conv.pixel_std),
        rpn_pre_nms_top_n_train=m.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=m.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=m.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=m.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=m.rpn_batch_size_per_image,
        box_batch_size_per_image=m.box_batch_size_per_image,
        box_detections_per_img=m.box_detections_per_img,
        box_score_thresh=m.box_score_thresh,
        _skip_resize=True,  # training images arrive resized by the data pipeline (see module docstring)
    )


def build_detector(cfg: Config, num_classes: int, num_keypoints: int | None = None) -> nn.Module:
    """Returns a randomly initialized (MSRA) torchvision Mask R-CNN or Faster R-CNN.

    Args:
        cfg: the run config (model, data sizes).
        num_classes: object classes + 1 for background (2 for keypoint_rcnn: one keypoint category).
        num_keypoints: keypoints per instance, from the dataset; needed by model.arch=keypoint_rcnn only.
    """
    m = cfg.model
    if m.backbone == "vgg16":
        # The original Faster R-CNN on conv5_3, no FPN and no normalization (vgg.py); same MSRA init below.
        model = build_vgg16_faster_rcnn(cfg, num_classes, transform_and_sampling_kwargs(cfg))
        model.transform = build_transform(cfg)
        init_detector_(model)
        return model
    backbone = build_backbone(cfg)
    channels = m.fpn_channels
    head_norm = build_norm(m.norm, m.gn_groups)
    n_levels = 5  # P2..P6
    anchor_sizes = tuple((s,) for s in m.anchor_sizes)
    if len(anchor_sizes) != n_levels:
        raise ValueError(f"model.anchor_sizes needs one size per FPN level (5), got {list(m.anchor_sizes)}")
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * n_levels)
    # 4conv1fc: four 3x3 convs (each followed by the norm) then one fc; 0 convs gives the classic 2fc head.
    fc_layers = [m.box_head_fc] if m.box_head_convs > 0 else [m.box_head_fc, m.box_head_fc]
    box_head = FastRCNNConvFCHead((channels, 7, 7), [channels] * m.box_head_convs, fc_layers, norm_layer=head_norm)
    # torchvision's default poolers (P2-P5, sampling ratio 2: Detectron's ROI_XFORM_SAMPLING_RATIO), with the faster
    # CPU backward of roi_align.py.
    levels = ["0", "1", "2", "3"]
    common = dict(
        **transform_and_sampling_kwargs(cfg),
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        rpn_anchor_generator=anchors,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(fc_layers[-1], num_classes),
    )
    if m.arch == "mask_rcnn":
        model = MaskRCNN(
            backbone,
            mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(channels, [channels] * m.mask_head_convs, 1, norm_layer=head_norm),
            mask_predictor=MaskPredictor(channels, channels, num_classes),
            **common,
        )
    elif m.arch == "faster_rcnn":
        model = FasterRCNN(backbone, **common)
    elif m.arch == "keypoint_rcnn":
        if not num_keypoints:
            raise ValueError("model.arch=keypoint_rcnn needs num_keypoints (the dataset's keypoint count)")
        # torchvision's KeypointRCNNHeads has no norm option; this head puts model.norm after each conv ("gn-all").
        kp_layers = [m.keypoint_head_channels] * m.keypoint_head_convs
        model = KeypointRCNN(
            backbone,
            keypoint_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
            keypoint_head=KeypointRCNNConvNormHead(channels, kp_layers, norm_layer=head_norm),
            keypoint_predictor=KeypointPredictor(kp_layers[-1] if kp_layers else channels, num_keypoints),
            **common,
        )
    else:
        raise ValueError(f"model.arch={m.arch!r} is not valid; choose mask_rcnn, faster_rcnn or keypoint_rcnn")
    model.transform = build_transform(cfg)  # torchvision's, plus the channel order and scale of the convention
    init_detector_(model)  # requires_grad flags set by freeze() are untouched by init
    if m.cascade and m.cascade_switch_iters is None:
        # Cascade heads from iteration 0; with cascade_switch_iters the trainer switches late (engine/trainer.py).
        switch_to_cascade_(model, m.cascade_fg_iou_threshs, m.cascade_bbox_reg_weights)
    if m.step == "fast":  # fixed-size training step (fast_step.py); raises for keypoint and cascade models
        if m.cascade:
            raise ConfigError("model.step=fast has no cascade heads; use model.step=torchvision")
        make_fast_(model)
    return model
