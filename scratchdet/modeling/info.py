"""Parameter and FLOP counts of a configured detector (`scratchdet model-info CONFIG`).

docs/PAPER.md, "The system": ResNeXt-152 (8x32d) has "~4x the FLOPs of R101"; this module makes that checkable
for our models.

Convention: FLOPs = 2 x multiply-adds, as `torch.utils.flop_counter.FlopCounterMode` counts them. Only the ops in
its registry are counted (convolutions, linear layers / matmuls, and their transposed forms); normalization,
activations, additions, pooling, interpolation, RoIAlign, NMS and box decoding are not. These are < 1-2% of a
ResNet-FPN's compute, and Detectron's and fvcore's published numbers leave them out as well.

Everything runs on PyTorch's "meta" device: modules and tensors carry shapes but no storage, so counting the full
800x1333 X152 model takes about a second and no memory, and the numbers are exact for the shapes given (not scaled
from a smaller input).

What is counted, for one image of `size` (H, W), padded up to a multiple of 32 as torchvision's transform does
(800x1333 -> 800x1344):
    backbone: the ResNet/ResNeXt body (stem + res2..res5)
    fpn:      lateral + output 3x3 convs (P2..P5) and the P6 max-pool
    rpn:      the RPN head (3x3 conv + objectness and box-delta 1x1 convs) on P2..P6
    box_head: box head + predictor on `model.rpn_post_nms_top_n_test` RoIs of 7x7 (the fixed proposal count)
    mask_head: mask head + predictor on `model.box_detections_per_img` RoIs of 14x14 (fixed detection count)
The "whole model" total is their sum; in a real run the RPN may keep fewer proposals and fewer detections survive
the score threshold, so it is an upper bound for inference at that image size.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scratchdet.config import Config
from scratchdet.errors import ConfigError
from scratchdet.modeling.detector import build_detector

COCO_NUM_CLASSES = 81  # 80 object classes + background
SIZE_DIVISIBLE = 32  # torchvision's GeneralizedRCNNTransform pads each side to a multiple of this


def _count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _flops(fn, *args) -> tuple[int, object]:
    """Runs fn(*args) under FlopCounterMode; returns (FLOPs, output)."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return int(counter.get_total_flops()), out


def padded_size(size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) rounded up to a multiple of 32, the shape the backbone actually sees."""
    return tuple(int(math.ceil(s / SIZE_DIVISIBLE) * SIZE_DIVISIBLE) for s in size)


def model_info(cfg: Config, size: tuple[int, int] = (800, 1333), num_classes: int = COCO_NUM_CLASSES) -> dict:
    """Parameters and inference FLOPs of the detector `cfg` describes, for one image of `size` pixels.

    Args:
        cfg: a run config (only `model.*` is used).
        size: input (height, width) in pixels after resizing; padded to a multiple of 32 before counting.
        num_classes: object classes + 1 for background (81 = COCO).

    Returns:
        {"params": {part: count}, "flops": {part: FLOPs}, "input_size": [H, W], "padded_size": [H, W],
        "num_proposals": int, "num_detections": int, "flops_convention": str}; parts are backbone, fpn, rpn,
        box_head, mask_head (0 for faster_rcnn), plus backbone_fpn and total.
    """
    if len(size) != 2 or any(int(s) <= 0 for s in size):
        raise ConfigError(f"model-info --size must be two positive integers H W, got {list(size)}")
    m = cfg.model
    with torch.device("meta"):  # shapes only: no allocation, no real compute (see module docstring)
        model = build_detector(cfg, num_classes).eval()
        h, w = padded_size(size)
        image = torch.empty(1, 3, h, w)
        rois_box = torch.empty(m.rpn_post_nms_top_n_test, model.backbone.out_channels, 7, 7)
        rois_mask = torch.empty(m.box_detections_per_img, m.fpn_channels, 14, 14)
    backbone = model.backbone
    fpn = getattr(backbone, "fpn", None)  # VGG-16 (the original Faster R-CNN) has a single stride-16 map, no FPN
    heads = model.roi_heads
    has_mask = getattr(heads, "mask_head", None) is not None
    # Cascade heads keep one (box_head, box_predictor) pair per stage; a plain head is a cascade of one.
    box_stages = list(heads.stages) if hasattr(heads, "stages") else [heads]
    params = {
        "backbone": _count_params(backbone.body),
        "fpn": _count_params(fpn) if fpn is not None else 0,
        "rpn": _count_params(model.rpn),
        "box_head": sum(_count_params(st.box_head) + _count_params(st.box_predictor) for st in box_stages),
        "mask_head": (_count_params(heads.mask_head) + _count_params(heads.mask_predictor)) if has_mask else 0,
    }
    with torch.no_grad():
        flops = {}
        flops["backbone"], c_feats = _flops(backbone.body, image)
        if fpn is not None:
            flops["fpn"], features = _flops(fpn, c_feats)
        else:
            flops["fpn"], features = 0, {"0": c_feats}
        flops["rpn"], _ = _flops(model.rpn.head, list(features.values()))
        flops["box_head"] = sum(
            _flops(lambda x, st=st: st.box_predictor(st.box_head(x)), rois_box)[0] for st in box_stages
        )
        flops["mask_head"] = _flops(lambda x: heads.mask_predictor(heads.mask_head(x)), rois_mask)[0] if has_mask else 0
    for table in (params, flops):
        table["backbone_fpn"] = table["backbone"] + table["fpn"]
        table["total"] = sum(table[k] for k in ("backbone", "fpn", "rpn", "box_head", "mask_head"))
    params["total"] = _count_params(model)  # every parameter, also any not in the parts above
    return {
        "params": params,
        "flops": flops,
        "input_size": [int(size[0]), int(size[1])],
        "padded_size": [h, w],
        "num_proposals": m.rpn_post_nms_top_n_test,
        "num_detections": m.box_detections_per_img if has_mask else 0,
        "flops_convention": "FLOPs = 2 x multiply-adds (conv/linear only; torch.utils.flop_counter)",
    }


def format_model_info(info: dict, name: str = "") -> str:
    """A plain-text table of `model_info`'s result: parameters in millions, FLOPs in GFLOPs."""
    rows = [
        ("backbone", "body (stem + res2..res5)"),
        ("fpn", "FPN P2..P6"),
        ("backbone_fpn", "backbone + FPN"),
        ("rpn", "RPN head, P2..P6"),
        ("box_head", f"box head + predictor, {info['num_proposals']} RoIs"),
        ("mask_head", f"mask head + predictor, {info['num_detections']} RoIs"),
        ("total", "whole model"),
    ]
    h, w = info["input_size"]
    ph, pw = info["padded_size"]
    lines = [
        f"model-info {name}".rstrip(),
        f"input {h}x{w} (padded to {ph}x{pw}); {info['flops_convention']}",
        f"{'part':<14}{'params (M)':>12}{'GFLOPs':>12}  counted",
        "-" * 72,
    ]
    for key, what in rows:
        lines.append(f"{key:<14}{info['params'][key] / 1e6:>12.2f}{info['flops'][key] / 1e9:>12.1f}  {what}")
    return "\n".join(lines)
