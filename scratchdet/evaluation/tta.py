"""Test-time augmentation (docs/PAPER.md, "Testing"): several test scales and a horizontal flip, merged as
Detectron does.

The merge implemented here follows Detectron's `TEST.BBOX_AUG` with `SCORE_HEUR: UNION` and `COORD_HEUR: UNION`,
and `TEST.MASK_AUG` with `HEUR: SOFT_AVG` (the settings of its test_time_aug/ Mask R-CNN configs):

1. Boxes: the model runs once per augmentation (each short side in `sizes`, each optionally flipped); each pass's
   detections are mapped to the original image (the model's transform un-resizes, `unflip_boxes` un-flips). The
   union of all passes' detections gets per-class NMS at the model's own test NMS threshold, then the top
   `detections_per_img` by score are kept. One difference from Detectron: torchvision already applies the score
   threshold, per-class NMS and the per-image top-k inside each pass, so the union is of post-NMS detections rather
   than of all raw RoI scores. No box voting (Detectron's TEST.BBOX_VOTE is off in those configs too).
2. Masks: for the final boxes only, the mask head runs again at every augmentation on those same boxes (mapped into
   that pass's resized, possibly flipped frame); the M x M mask probabilities of the box's class are un-flipped and
   averaged over the passes (SOFT_AVG), then pasted into the original image once. This needs a second backbone pass
   per augmentation, as in Detectron: keeping every pass's feature maps would hold all scales in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torchvision.models.detection.roi_heads import maskrcnn_inference, paste_masks_in_image
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import batched_nms

from scratchdet.errors import ConfigError

# Detectron's TTA for Mask R-CNN R-50-FPN: short sides 400..1200 step 100, long side at most 2000, plus h-flip.
DETECTRON_TTA_SIZES = [400, 500, 600, 700, 800, 900, 1000, 1100, 1200]
DETECTRON_TTA_MAX_SIZE = 2000


def unflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Maps XYXY absolute-pixel boxes [N, 4] of a horizontally flipped image of `width` back to the unflipped one.

    Same convention as the training flip (data/transforms.py): x -> width - x, so flipping twice is the identity.
    """
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def merge_detections(
    detections: Sequence[dict[str, torch.Tensor]], nms_thresh: float, detections_per_img: int
) -> dict[str, torch.Tensor]:
    """Detectron's UNION merge: concatenate all passes' detections, per-class NMS, keep the top-k by score.

    Args:
        detections: one dict per augmentation with "boxes" [N, 4] XYXY absolute pixels of the original image,
            "scores" [N] and "labels" [N].
        nms_thresh: IoU above which a lower-scored box of the same class is suppressed.
        detections_per_img: at most this many detections are returned.
    Returns:
        "boxes", "scores", "labels" of the kept detections, sorted by descending score.
    """
    boxes = torch.cat([d["boxes"] for d in detections]).reshape(-1, 4)
    scores = torch.cat([d["scores"] for d in detections])
    labels = torch.cat([d["labels"] for d in detections])
    keep = batched_nms(boxes.float(), scores, labels, nms_thresh)[:detections_per_img]  # sorted by score
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


@contextmanager
def resized_for_test(model: nn.Module, min_size: int, max_size: int) -> Iterator[None]:
    """Temporarily makes the model's transform resize test images to short side `min_size`, long side <= max_size."""
    transform = model.transform
    saved = transform.min_size, transform.max_size
    transform.min_size, transform.max_size = (min_size,), max_size
    try:
        yield
    finally:
        transform.min_size, transform.max_size = saved


@contextmanager
def boxes_only(model: nn.Module) -> Iterator[None]:
    """Temporarily turns off the mask branch: the box passes' masks would be thrown away (masks are redone on the
    merged boxes), and pasting them at full resolution is the costly part of inference on CPU."""
    heads = model.roi_heads
    saved = heads.mask_roi_pool
    heads.mask_roi_pool = None  # torchvision's RoIHeads.has_mask() is False without it
    try:
        yield
    finally:
        heads.mask_roi_pool = saved


def _augmentations(sizes: Sequence[int], flip: bool) -> list[tuple[int, bool]]:
    return [(s, f) for s in sizes for f in ((False, True) if flip else (False,))]


@torch.no_grad()
def mask_probs_on_boxes(
    model: nn.Module, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, flip: bool
) -> torch.Tensor:
    """Runs backbone + mask head of `model` (in eval mode, test size already set) on given boxes.

    Args:
        image: [3, H, W] in [0, 1], the original (unflipped) image.
        boxes: [N, 4] XYXY absolute pixels of the original image; labels: [N] contiguous class labels.
        flip: run on the horizontally flipped image (boxes are flipped along, the masks flipped back).
    Returns:
        [N, 1, M, M] mask probabilities of each box's class, in the box's frame of the unflipped image.
    """
    height, width = image.shape[-2:]
    if flip:
        image, boxes = image.flip(-1), unflip_boxes(boxes, width)  # unflip is its own inverse
    images, _ = model.transform([image])
    features = model.backbone(images.tensors)
    resized = resize_boxes(boxes, [height, width], list(images.image_sizes[0]))
    heads = model.roi_heads
    mask_features = heads.mask_head(heads.mask_roi_pool(features, [resized], images.image_sizes))
    probs = maskrcnn_inference(heads.mask_predictor(mask_features), [labels])[0]
    return probs.flip(-1) if flip else probs


@torch.no_grad()
def predict_tta(
    model: nn.Module, image: torch.Tensor, sizes: Sequence[int], max_size: int, flip: bool = True
) -> dict[str, torch.Tensor]:
    """One image's detections with test-time augmentation (merge described in the module docstring).

    Args:
        model: a torchvision Mask R-CNN / Faster R-CNN in eval mode.
        image: [3, H, W] float in [0, 1] on the model's device, at its original size.
        sizes: test short sides in pixels; max_size: cap on the long side.
        flip: also run each size on the horizontally flipped image.
    Returns:
        The model's output format in original image coordinates: "boxes" [N, 4] XYXY, "scores", "labels", and for
        a mask model "masks" [N, 1, H, W] probabilities.
    """
    heads = model.roi_heads
    has_mask = heads.has_mask()
    width = image.shape[-1]
    passes = []
    for size, flipped in _augmentations(sizes, flip):
        with resized_for_test(model, size, max_size), boxes_only(model):
            out = model([image.flip(-1) if flipped else image])[0]
        if flipped:
            out["boxes"] = unflip_boxes(out["boxes"], width)
        passes.append(out)
    merged = merge_detections(passes, heads.nms_thresh, heads.detections_per_img)
    if has_mask:
        n = len(merged["boxes"])
        if n == 0:
            merged["masks"] = image.new_zeros((0, 1, *image.shape[-2:]))
        else:
            probs = torch.zeros((), device=image.device)
            augs = _augmentations(sizes, flip)
            for size, flipped in augs:
                with resized_for_test(model, size, max_size):
                    probs = probs + mask_probs_on_boxes(model, image, merged["boxes"], merged["labels"], flipped)
            merged["masks"] = paste_masks_in_image(probs / len(augs), merged["boxes"], tuple(image.shape[-2:]))
    return merged


def build_tta_predictor(
    model: nn.Module, sizes: Sequence[int], max_size: int, flip: bool
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """A `predict(image) -> detections` for evaluation/coco.py's inference loop, with TTA at `sizes` (+ flip)."""
    if not sizes or any(s <= 0 for s in sizes) or max_size <= 0:
        raise ValueError(f"TTA needs positive sizes and max size, got sizes={list(sizes)} max_size={max_size}")
    if getattr(model.roi_heads, "has_keypoint", lambda: False)():
        # The merge carries boxes and masks only; keypoints would be silently dropped (Detectron's KPS_AUG is not
        # implemented here), which COCOeval would score as misses.
        raise ConfigError("eval.tta=true does not support keypoint models yet; evaluate this run without tta")
    return lambda image: predict_tta(model, image, list(sizes), max_size, flip)
