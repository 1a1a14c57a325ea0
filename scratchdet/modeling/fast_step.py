"""model.step=fast: torchvision's RPN and RoI heads with a training step whose tensor sizes do not depend on the data.

torchvision's training step works image by image with data-dependent sizes (`torch.where`, boolean indexing,
`.item()`, one NMS per image and level): on a GPU each of those makes the host wait for the device (191 stream
synchronizations per iteration at batch 8, benchmarks/RESULTS.md). The classes below extend torchvision's and
change only the training step; evaluation runs torchvision's code unchanged.

- `FastRegionProposalNetwork` (RegionProposalNetwork): the per-level top-k is torchvision's (already batched over
  images); clipping, small-box and score filters become a validity mask; one NMS per level over all images of the
  batch (torchvision's coordinate-offset batched NMS, in float64 so the offsets do not round the boxes); the
  post-NMS top-k per image on the masked scores. Proposals: (B, P, 4) with a (B, P) validity mask, P = min(post-NMS
  top-n, candidates); the valid ones are torchvision's boxes in torchvision's order. Anchor matching for all images
  at once on padded ground truth, fg/bg sampling by random keys, losses as masked sums.
- `FastRoIHeads` (RoIHeads): matching and sampling of all images at once, a fixed `batch_size_per_image` RoIs per
  image (a validity mask marks missing ones when an image has fewer candidates), a fixed `batch_size_per_image *
  positive_fraction` mask RoIs per image, mask targets by one RoIAlign of every image's ground-truth masks, losses
  as masked sums with torchvision's normalizers. The poolers become FixedShapeMultiScaleRoIAlign (roi_align.py):
  every RoI pooled on every level, its own level kept by `torch.where`, no per-level selection.
- `FastMaskRCNN` / `FastFasterRCNN`: the training forward checks the boxes of the whole batch with one device-side
  assertion instead of one host read per image.
- `AutocastGroupNorm` (nn.GroupNorm): under autocast, GroupNorm in the autocast dtype (statistics in fp32 inside
  the kernel) instead of autocast's fp32 policy, so no activation is cast around it.

The sampler draws the same distribution as torchvision's BalancedPositiveNegativeSampler (a uniformly random subset
of min(count, quota) positives, then of negatives up to the batch size) from other random numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align

from scratchdet.errors import ConfigError
from scratchdet.modeling.roi_align import FixedShapeMultiScaleRoIAlign, MultiScaleRoIAlign

BELOW_LOW = det_utils.Matcher.BELOW_LOW_THRESHOLD  # -1
BETWEEN = det_utils.Matcher.BETWEEN_THRESHOLDS  # -2


def image_sizes_tensor(image_sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """(B, 2) int64 (height, width) on `device`, copied without making the host wait (pinned, non-blocking)."""
    sizes = torch.tensor(image_sizes, dtype=torch.int64)
    if device.type == "cuda":
        return sizes.pin_memory().to(device, non_blocking=True)
    return sizes.to(device)


def pad_per_image(tensors: list[Tensor], fill: float = 0) -> tuple[Tensor, Tensor]:
    """Stacks per-image tensors of shape (n_i, ...) into (B, max n_i, ...) filled with `fill`, and the (B, max n_i)
    validity mask. The sizes are host-side shape metadata: no synchronization."""
    count = max((t.shape[0] for t in tensors), default=0)
    out = tensors[0].new_full((len(tensors), count, *tensors[0].shape[1:]), fill)
    valid = torch.zeros((len(tensors), count), dtype=torch.bool, device=tensors[0].device)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
        valid[i, : t.shape[0]] = True
    return out, valid


def match_batched(
    iou: Tensor, gt_valid: Tensor, high: float, low: float, allow_low_quality_matches: bool
) -> Tensor:  # fmt: skip
    """torchvision's Matcher (`det_utils.Matcher.__call__` and `set_low_quality_matches_`) for a batch at once.

    Args:
        iou: (B, G, N) IoU of ground truth g with box n; padded ground-truth rows are ignored.
        gt_valid: (B, G) bool, the real ground-truth boxes.
        high, low: Matcher's thresholds (>= high: foreground; < low: BELOW_LOW (-1); between: BETWEEN (-2)).
        allow_low_quality_matches: keep the match of each box that is some ground truth's best (RPN: true).
    Returns:
        (B, N) int64: the matched ground-truth index, or -1 / -2; all -1 for an image without ground truth.
    """
    b, g, n = iou.shape
    if g == 0:
        return torch.full((b, n), BELOW_LOW, dtype=torch.int64, device=iou.device)
    iou = torch.where(gt_valid[:, :, None], iou, -1.0)  # padded rows never win, never count as any box's best
    matched_vals, matches = iou.max(dim=1)
    all_matches = matches
    matches = torch.where(matched_vals < low, BELOW_LOW, matches)
    matches = torch.where((matched_vals >= low) & (matched_vals < high), BETWEEN, matches)
    if allow_low_quality_matches:
        highest = iou.max(dim=2, keepdim=True).values  # (B, G, 1): each ground truth's best IoU
        best_of_some_gt = ((iou == highest) & gt_valid[:, :, None]).any(dim=1)
        matches = torch.where(best_of_some_gt, all_matches, matches)
    return matches


def sample_batched(labels: Tensor, batch_size_per_image: int, positive_fraction: float) -> tuple[Tensor, Tensor]:
    """torchvision's BalancedPositiveNegativeSampler for every image at once, with fixed sizes.

    Each image takes min(#positives, int(batch_size_per_image * positive_fraction)) positives, uniformly at random,
    then min(#negatives, batch_size_per_image - positives taken) negatives: the sampler's distribution, drawn as
    "random key, rank among its kind below the quota" instead of randperm.

    Args:
        labels: (B, N) int, >= 1 positive, 0 negative, -1 ignored.
    Returns:
        (positive, negative): (B, N) bool masks of the sampled boxes.
    """
    keys = torch.rand(labels.shape, device=labels.device)
    positive, negative = labels >= 1, labels == 0

    def rank_among(kind: Tensor) -> Tensor:
        order = torch.where(kind, keys, 2.0).argsort(dim=1)  # this kind first, in random order
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        return ranks

    pos_quota = int(batch_size_per_image * positive_fraction)
    pos = positive & (rank_among(positive) < pos_quota)
    neg_quota = batch_size_per_image - pos.sum(dim=1, keepdim=True)
    neg = negative & (rank_among(negative) < neg_quota)
    return pos, neg


def first_k(mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices of the first k True entries of each row of `mask` (B, N) in index order, padded: (B, k') indices
    and (B, k') validity, k' = min(k, N). A row with fewer than k True entries pads with indices of False ones."""
    n = mask.shape[1]
    k = min(k, n)
    priority = mask.to(torch.float32) * 2 * n - torch.arange(n, device=mask.device)  # True first, then by index
    index = priority.topk(k, dim=1).indices
    return index, mask.gather(1, index)


class FastRegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RegionProposalNetwork (same arguments, same weights, same test-time behaviour) whose training
    step has fixed sizes (module docstring). In training, `forward` returns ((B, P, 4) proposals, (B, P) validity)
    instead of a list, which `FastRoIHeads` takes."""

    def filter_proposals_fixed(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_sizes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """torchvision's `filter_proposals` for all images at once.

        Args:
            proposals: (B, A, 4) decoded boxes; objectness: (B*A, 1) or (B, A) logits.
            image_sizes: (height, width) per image, for clipping.
            num_anchors_per_level: anchors per image on each FPN level.
        Returns:
            boxes (B, P, 4), scores (B, P) (sigmoid of objectness, -inf where invalid), valid (B, P) bool; the valid
            entries of row i, in order, are torchvision's boxes and scores for image i.
        """
        num_images = proposals.shape[0]
        device = proposals.device
        objectness = objectness.detach().reshape(num_images, -1)
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)  # (B, K): per level, batched over images
        scores = torch.sigmoid(objectness.gather(1, top_n_idx))
        boxes = proposals.gather(1, top_n_idx[:, :, None].expand(-1, -1, 4))
        # clip_boxes_to_image with one (height, width) per image
        size = image_sizes_tensor(image_sizes, device).to(boxes.dtype)
        limit = torch.stack([size[:, 1], size[:, 0], size[:, 1], size[:, 0]], dim=1)[:, None, :]
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        wh = boxes[..., 2:] - boxes[..., :2]
        # remove_small_boxes and the score threshold (torchvision keeps scores >= score_thresh)
        valid = (wh >= self.min_size).all(dim=2) & (scores >= self.score_thresh)
        k = boxes.shape[1]
        # NMS per level over all images at once (torchvision's coordinate-offset batched NMS, images as groups, in
        # float64 so the offsets do not round the boxes); invalid boxes form a group of their own, suppressing
        # nothing valid. Each call returns a data-dependent count (one host wait on CUDA), so one call per level,
        # not per image and level. One call for the whole batch would be one wait but quadratic work in the batch
        # size (benchmarks/RESULTS.md: 6.6 s against 0.9 s per group for 4 images x 5 levels x 1000 boxes).
        keep = []
        start = 0
        for n in num_anchors_per_level:
            width = min(self.pre_nms_top_n(), n)  # this level's columns of top_n_idx (_get_top_n_idx's order)
            level_valid = valid[:, start : start + width]
            group = torch.where(level_valid, torch.arange(num_images, device=device)[:, None], num_images)
            kept = box_ops._batched_nms_coordinate_trick(  # not batched_nms: above 4000 boxes it loops over groups
                boxes[:, start : start + width].reshape(-1, 4).double(),
                scores[:, start : start + width].reshape(-1).double(),
                group.reshape(-1),
                self.nms_thresh,
            )
            mask = torch.zeros(num_images * width, dtype=torch.bool, device=device).index_fill_(0, kept, True)
            keep.append(mask.view(num_images, width) & level_valid)
            start += width
        keep = torch.cat(keep, dim=1)
        # torchvision keeps the post_nms_top_n best-scored survivors of each image, in descending score order.
        ranked = torch.where(keep, scores, float("-inf"))
        top_scores, top = ranked.topk(min(self.post_nms_top_n(), k), dim=1)
        return boxes.gather(1, top[:, :, None].expand(-1, -1, 4)), top_scores, top_scores > float("-inf")

    def forward(self, images, features, targets=None):
        """As torchvision's in evaluation; in training returns (((B, P, 4) proposals, (B, P) validity), losses)."""
        if not self.training:
            return super().forward(images, features, targets)
        if targets is None:
            raise ValueError("targets should not be None")
        features = list(features.values())
        objectness, pred_bbox_deltas = self.head(features)
        anchors = self.anchor_generator(images, features)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _, valid = self.filter_proposals_fixed(proposals, objectness, images.image_sizes, num_anchors_per_level)

        anchors = torch.stack(anchors)  # (B, A, 4): every image of a batch has the same anchors' count
        gt, gt_valid = pad_per_image([t["boxes"].to(anchors.dtype) for t in targets])
        matches = match_batched(
            batched_box_iou(gt, anchors),
            gt_valid,
            self.proposal_matcher.high_threshold,
            self.proposal_matcher.low_threshold,
            self.proposal_matcher.allow_low_quality_matches,
        )
        labels = torch.where(matches >= 0, 1, torch.where(matches == BETWEEN, -1, 0))
        matched_gt = gather_rows(gt, matches.clamp(min=0)) if gt.shape[1] else torch.zeros_like(anchors)
        targets_reg = self.box_coder.encode_single(matched_gt.reshape(-1, 4), anchors.reshape(-1, 4))
        pos, neg = sample_batched(labels, self.fg_bg_sampler.batch_size_per_image, self.fg_bg_sampler.positive_fraction)
        # Only positives' targets enter the loss; the others may encode a padded (zero) box as -inf, and 0 * inf
        # would make the masked sum NaN.
        targets_reg = torch.where(pos.reshape(-1, 1), targets_reg, 0.0)
        # torchvision's compute_loss: BCE mean over the sampled anchors, smooth L1 summed over the positive ones and
        # divided by the sampled count, both over the whole batch.
        sampled = (pos | neg).reshape(-1)
        count = sampled.sum().clamp(min=1)
        bce = F.binary_cross_entropy_with_logits(
            objectness.flatten(), pos.reshape(-1).to(objectness.dtype), reduction="none"
        )
        loss_objectness = (bce * sampled).sum() / count
        box = F.smooth_l1_loss(pred_bbox_deltas, targets_reg, beta=1 / 9, reduction="none").sum(dim=1)
        loss_box = (box * pos.reshape(-1)).sum() / count
        return (boxes, valid), {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """box_iou (torchvision.ops.box_iou, same arithmetic) per image: (B, G, 4) x (B, N, 4) -> (B, G, N)."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.max(boxes1[:, :, None, :2], boxes2[:, None, :, :2])
    rb = torch.min(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, :, None] + area2[:, None, :] - inter
    return inter / union


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """table (B, G, ...) gathered at index (B, N) along dim 1: (B, N, ...)."""
    b = torch.arange(table.shape[0], device=table.device)[:, None]
    return table[b, index]


class FastRoIHeads(RoIHeads):
    """torchvision's RoIHeads (same arguments and weights; evaluation unchanged) whose training step takes the fixed
    proposals of FastRegionProposalNetwork and keeps every size fixed (module docstring). Box and mask heads only
    (no keypoint head)."""

    def forward(self, features, proposals, image_shapes, targets=None):
        """As torchvision's in evaluation; in training `proposals` is ((B, P, 4), (B, P) validity)."""
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets should not be None")
        if self.has_keypoint():
            raise ConfigError("model.step=fast has no keypoint head; use model.step=torchvision")
        boxes, valid = proposals
        gt, gt_valid = pad_per_image([t["boxes"].to(boxes.dtype) for t in targets])
        gt_labels, _ = pad_per_image([t["labels"] for t in targets])
        # add_gt_proposals: every image's ground truth joins its proposals (padded rows are not valid proposals).
        boxes = torch.cat([boxes, gt], dim=1)
        valid = torch.cat([valid, gt_valid], dim=1)
        if gt.shape[1]:
            iou = batched_box_iou(gt, boxes)
            iou = torch.where(valid[:, None, :], iou, -1.0)  # invalid proposals are never matched
            matches = match_batched(iou, gt_valid, self.proposal_matcher.high_threshold,
                                    self.proposal_matcher.low_threshold, False)  # fmt: skip
            matched_labels = gather_rows(gt_labels, matches.clamp(min=0))
            matched_boxes = gather_rows(gt, matches.clamp(min=0))
        else:  # no ground truth in the whole batch: every proposal is background
            matches = torch.full(valid.shape, BELOW_LOW, dtype=torch.int64, device=boxes.device)
            matched_labels = torch.zeros(valid.shape, dtype=torch.int64, device=boxes.device)
            matched_boxes = torch.zeros_like(boxes)
        labels = torch.where(matches == BELOW_LOW, 0, matched_labels)
        labels = torch.where((matches == BETWEEN) | ~valid, -1, labels)
        pos, neg = sample_batched(labels, self.fg_bg_sampler.batch_size_per_image, self.fg_bg_sampler.positive_fraction)
        index, picked = first_k(pos | neg, self.fg_bg_sampler.batch_size_per_image)  # (B, S)
        rois = gather_rows(boxes, index)
        roi_labels = torch.where(picked, labels.gather(1, index), 0)
        roi_targets = self.box_coder.encode_single(
            gather_rows(matched_boxes, index).reshape(-1, 4), rois.reshape(-1, 4)
        )
        # Only positive RoIs' targets enter the loss; a padded RoI or ground truth (a zero box) encodes as inf/NaN.
        roi_targets = torch.where((roi_labels > 0).reshape(-1, 1), roi_targets, 0.0)

        box_features = self.box_roi_pool(features, list(rois.unbind(0)), image_shapes)
        class_logits, box_regression = self.box_predictor(self.box_head(box_features))
        # fastrcnn_loss: cross entropy averaged over the sampled RoIs; smooth L1 of the positive RoIs' class box
        # summed and divided by the sampled count.
        flat_labels, flat_picked = roi_labels.reshape(-1), picked.reshape(-1)
        count = flat_picked.sum().clamp(min=1)
        ce = F.cross_entropy(class_logits, flat_labels, reduction="none")
        loss_classifier = (ce * flat_picked).sum() / count
        class_box = box_regression.reshape(flat_labels.shape[0], -1, 4)
        class_box = class_box.gather(1, flat_labels[:, None, None].expand(-1, 1, 4))[:, 0]
        box = F.smooth_l1_loss(class_box, roi_targets, beta=1 / 9, reduction="none").sum(dim=1)
        loss_box_reg = (box * (flat_labels > 0)).sum() / count
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        if self.has_mask():
            losses["loss_mask"] = self._mask_loss(features, image_shapes, targets, rois, roi_labels, index, matches)
        return [], losses

    def _mask_loss(self, features, image_shapes, targets, rois, roi_labels, index, matches) -> Tensor:
        """maskrcnn_loss over a fixed number of positive RoIs per image (the sampler's positive quota): BCE of the
        RoI's class mask against its ground-truth mask pooled by one RoIAlign (project_masks_on_boxes), averaged
        over the real positives' pixels; 0 without positives, as torchvision's."""
        quota = int(self.fg_bg_sampler.batch_size_per_image * self.fg_bg_sampler.positive_fraction)
        slot, is_pos = first_k(roi_labels > 0, quota)  # (B, Q) slots among the sampled RoIs
        mask_rois = gather_rows(rois, slot)
        mask_labels = roi_labels.gather(1, slot)
        gt_index = matches.gather(1, index).gather(1, slot).clamp(min=0)  # ground truth of each RoI, in its image
        mask_features = self.mask_roi_pool(features, list(mask_rois.unbind(0)), image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(mask_features))
        size = mask_logits.shape[-1]
        # Every image's ground-truth masks in one (sum G, 1, H, W) tensor; each RoI pools from its own.
        masks = [t["masks"] for t in targets]
        height = max(m.shape[-2] for m in masks)
        width = max(m.shape[-1] for m in masks)
        stacked = torch.cat([F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])) for m in masks])
        first = torch.tensor([0] + [m.shape[0] for m in masks[:-1]], device=rois.device).cumsum(0)
        if stacked.shape[0] == 0:
            return mask_logits.sum() * 0
        # Slots that are not positives (an image with fewer positives than the quota, or without ground truth) point
        # past their image's masks: keep them inside the stack, their loss is masked out below.
        rows = (first[:, None] + gt_index).clamp(max=stacked.shape[0] - 1).reshape(-1, 1).to(rois.dtype)
        mask_targets = roi_align(stacked[:, None].to(rois.dtype), torch.cat([rows, mask_rois.reshape(-1, 4)], 1),
                                 (size, size), 1.0)[:, 0]  # fmt: skip
        logits = mask_logits.gather(1, mask_labels.reshape(-1)[:, None, None, None].expand(-1, 1, size, size))[:, 0]
        bce = F.binary_cross_entropy_with_logits(logits, mask_targets, reduction="none").mean(dim=(1, 2))
        weight = is_pos.reshape(-1).to(bce.dtype)
        # where, not a product: a non-positive slot's pooled box may be degenerate, and 0 x NaN is NaN.
        return torch.where(is_pos.reshape(-1), bce, torch.zeros_like(bce)).sum() / weight.sum().clamp(min=1)


class AutocastGroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state dict) that under autocast normalizes in the input's dtype: autocast
    puts group_norm on its fp32 list, so each GN layer would cast its bf16/fp16 input up and the next convolution
    cast the output back down. The kernels accumulate the statistics in fp32 either way (opmath type). On CPU the
    kernel takes fp32 scale and shift with a bf16/fp16 input; elsewhere they are cast to the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        device = x.device.type
        if not torch.is_autocast_enabled(device) or x.dtype == torch.float32:
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if device != "cpu" and weight is not None:
            weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        with torch.autocast(device, enabled=False):
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)


class _FastTrainingForward:
    """GeneralizedRCNN.forward for training without its per-image degenerate-box check (`if boxes.any()`: one host
    wait per image); the check runs as one device-side assertion over the batch instead (`torch._assert_async`:
    on a GPU a failure is a device-side assert at the next synchronization, not a Python exception)."""

    def forward(self, images, targets=None):
        if not self.training:
            return super().forward(images, targets)
        if targets is None:
            raise ValueError("targets should not be None when in training mode")
        images, targets = self.transform(images, targets)
        boxes = torch.cat([t["boxes"] for t in targets])
        torch._assert_async(
            (boxes[:, 2:] > boxes[:, :2]).all(), "All bounding boxes should have positive height and width."
        )
        features = self.backbone(images.tensors)
        proposals, proposal_losses = self.rpn(images, features, targets)
        _, detector_losses = self.roi_heads(features, proposals, images.image_sizes, targets)
        return {**detector_losses, **proposal_losses}


class FastMaskRCNN(_FastTrainingForward, MaskRCNN):
    """torchvision's MaskRCNN with the fast training forward (same modules and weights)."""


class FastFasterRCNN(_FastTrainingForward, FasterRCNN):
    """torchvision's FasterRCNN with the fast training forward (same modules and weights)."""


def make_fast_(model: nn.Module) -> nn.Module:
    """Turns a torchvision Faster/Mask R-CNN built by build_detector into model.step=fast in place: the RPN and RoI
    heads become the Fast* subclasses (same modules, same weights), every nn.GroupNorm an AutocastGroupNorm.

    Raises:
        ConfigError: a keypoint or cascade model (no fast step for their heads).
    """
    if type(model.roi_heads) is not RoIHeads or model.roi_heads.has_keypoint():
        raise ConfigError("model.step=fast supports the mask_rcnn and faster_rcnn heads without cascade")
    model.__class__ = FastMaskRCNN if isinstance(model, MaskRCNN) else FastFasterRCNN
    model.rpn.__class__ = FastRegionProposalNetwork
    model.roi_heads.__class__ = FastRoIHeads
    for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
        if type(pool) is MultiScaleRoIAlign:
            pool.__class__ = FixedShapeMultiScaleRoIAlign
    for module in model.modules():
        if type(module) is nn.GroupNorm:
            module.__class__ = AutocastGroupNorm
    return model
