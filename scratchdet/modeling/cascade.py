"""Cascade R-CNN box heads (Cai & Vasconcelos, CVPR 2018) on top of torchvision's RoIHeads (docs/PAPER.md,
"Train aug, cascade, TTA (Fig. 5)", "ResNeXt-152 (Table 3)").

Three box stages, each with its own 4conv1fc box head (same design and norm as the plain head) and predictor.
Stage t is trained with foreground IoU threshold 0.5 / 0.6 / 0.7 and box regression weights (10, 10, 5, 5) /
(20, 20, 10, 10) / (30, 30, 15, 15) (the Cascade R-CNN paper's target normalization, Detectron2's defaults).

Choices, and where they come from:
- Class-agnostic box regression in every stage, as in the Cascade R-CNN paper and Detectron2's cascade configs
  (CLS_AGNOSTIC_BBOX_REG: True): the refined box that feeds the next stage must not depend on a class guess.
- Training: stage t+1 matches and samples (with the GT boxes added again, torchvision's `select_training_samples`)
  from stage t's refined boxes, detached (no gradient through the box coordinates, as Detectron2). Refined boxes
  with zero width or height are dropped before matching (their regression targets would be infinite).
- Losses: every stage's classifier and box loss at weight 1 (Detectron2's default, ROI_BOX_CASCADE_HEAD has no
  per-stage weights), named `loss_classifier_stage{1,2,3}` / `loss_box_reg_stage{1,2,3}`. As Detectron2, the
  gradient from each stage into the pooled features is scaled by 1/3, so the trunk sees the average, not the sum.
- Inference: each stage refines the previous stage's boxes; the class scores are the mean of the three stages'
  softmax scores, applied to the last stage's boxes (Cascade R-CNN Sec. 4.3 "ensemble"; Detectron2).
- Mask head: on the last stage's positive samples for training (IoU >= 0.7 with their GT) and on the final boxes
  at test time. Detectron2 instead trains the mask head on stage 1's samples; the last stage's are used here, so the
  mask head trains on the better-aligned boxes it is applied to at test time.
- Keypoint heads are not supported with cascade (ValueError).

Why `forward` is overridden: torchvision's `RoIHeads.forward` runs one box stage and then the mask branch inline.
The cascade reuses its sampling (`select_training_samples`, by pointing `proposal_matcher`/`box_coder` at the
current stage's), its `postprocess_detections` (fed the averaged scores) and its mask loss/inference functions.

Late switch (paper, "cascade from scratch": trained without cascade, switched for the last 270k iterations):
`cascade_from_plain` turns trained plain heads into cascade heads. Stage 1 *is* the trained plain box head and
classifier (the same modules, so their SGD momentum carries over); its class-agnostic regressor starts as the mean
of the plain head's foreground-class regressors. Stages 2-3 are fresh copies of the head design with the random
init of `modeling/init.py`. The mask head is kept as trained.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops

from scratchdet.modeling.init import msra_fill_

DEFAULT_FG_IOU_THRESHS = (0.5, 0.6, 0.7)
DEFAULT_BBOX_REG_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` (Detectron2's cascade trick, see module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class AgnosticBoxPredictor(nn.Module):
    """Class scores [N, num_classes] (background included) and one class-agnostic box delta [N, 4] per RoI."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeStage(nn.Module):
    """One cascade stage: box head (pooled RoI features -> vector) and its predictor."""

    def __init__(self, box_head: nn.Module, box_predictor: nn.Module) -> None:
        super().__init__()
        self.box_head = box_head
        self.box_predictor = box_predictor


def agnostic_fastrcnn_loss(
    class_logits: torch.Tensor, box_deltas: torch.Tensor, labels: list[torch.Tensor], targets: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's `fastrcnn_loss` (cross-entropy; smooth L1, beta 1/9, over foreground, / all samples) for
    class-agnostic deltas [N, 4]."""
    labels_cat = torch.cat(labels)
    targets_cat = torch.cat(targets)
    loss_cls = F.cross_entropy(class_logits, labels_cat)
    pos = torch.where(labels_cat > 0)[0]
    loss_box = F.smooth_l1_loss(box_deltas[pos], targets_cat[pos], beta=1 / 9, reduction="sum")
    return loss_cls, loss_box / labels_cat.numel()


class CascadeRoIHeads(RoIHeads):
    """torchvision RoIHeads with a cascade of box stages (see the module docstring for every choice).

    `box_head`/`box_predictor` of the base class are None; the stages live in `self.stages`. Boxes are XYXY in
    absolute pixels of the (resized) input images, as everywhere in torchvision's detection models.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        stages: Sequence[CascadeStage],
        fg_iou_threshs: Sequence[float],
        bbox_reg_weights: Sequence[Sequence[float]],
        batch_size_per_image: int,
        positive_fraction: float,
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
        mask_roi_pool: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
    ) -> None:
        if not len(stages) == len(fg_iou_threshs) == len(bbox_reg_weights):
            raise ValueError(
                f"cascade needs one IoU threshold and one weight tuple per stage: {len(stages)} stages, "
                f"fg_iou_threshs={list(fg_iou_threshs)}, bbox_reg_weights={[list(w) for w in bbox_reg_weights]}"
            )
        super().__init__(
            box_roi_pool,
            None,
            None,
            fg_iou_threshs[0],
            fg_iou_threshs[0],
            batch_size_per_image,
            positive_fraction,
            tuple(bbox_reg_weights[0]),
            score_thresh,
            nms_thresh,
            detections_per_img,
            mask_roi_pool=mask_roi_pool,
            mask_head=mask_head,
            mask_predictor=mask_predictor,
        )
        self.stages = nn.ModuleList(stages)
        # bg threshold = fg threshold: every RoI below the stage's IoU is background (Detectron2's cascade matchers).
        self.stage_matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in fg_iou_threshs]
        self.stage_box_coders = [det_utils.BoxCoder(tuple(w)) for w in bbox_reg_weights]
        self.fg_iou_threshs = [float(t) for t in fg_iou_threshs]

    def use_stage(self, k: int) -> None:
        """Points the base class's matcher and box coder at stage k's, so its sampling/postprocessing serve it."""
        self.proposal_matcher = self.stage_matchers[k]
        self.box_coder = self.stage_box_coders[k]

    def _refine(self, deltas: torch.Tensor, proposals: list[torch.Tensor], image_shapes) -> list[torch.Tensor]:
        """Applies the current stage's deltas [N, 4] to `proposals`; clipped, detached boxes per image."""
        boxes = self.box_coder.decode(deltas.detach(), proposals).reshape(-1, 4)
        out = []
        for b, shape in zip(boxes.split([len(p) for p in proposals]), image_shapes, strict=True):
            b = box_ops.clip_boxes_to_image(b, shape)
            if self.training:  # zero-area boxes would get infinite regression targets in the next stage
                b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
            out.append(b)
        return out

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Same contract as torchvision's RoIHeads.forward (proposals [N_i, 4] XYXY per image)."""
        if self.keypoint_roi_pool is not None:
            raise ValueError("cascade heads do not support keypoint heads; set model.cascade=false for keypoints")
        losses: dict[str, torch.Tensor] = {}
        stage_scores: list[torch.Tensor] = []
        labels = matched_idxs = None
        n = len(self.stages)
        for k, stage in enumerate(self.stages):
            self.use_stage(k)
            if self.training:
                proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
            pooled = _ScaleGradient.apply(self.box_roi_pool(features, proposals, image_shapes), 1.0 / n)
            class_logits, deltas = stage.box_predictor(stage.box_head(pooled))
            if self.training:
                loss_cls, loss_box = agnostic_fastrcnn_loss(class_logits, deltas, labels, regression_targets)
                losses[f"loss_classifier_stage{k + 1}"] = loss_cls
                losses[f"loss_box_reg_stage{k + 1}"] = loss_box
            else:
                stage_scores.append(F.softmax(class_logits, -1))
            if k + 1 < n:  # decoded with stage k's box coder, before use_stage(k + 1)
                proposals = self._refine(deltas, proposals, image_shapes)

        result: list[dict[str, torch.Tensor]] = []
        if not self.training:
            result = self.detections_from_stages(stage_scores, deltas, proposals, image_shapes)
        if self.has_mask():
            losses.update(self._forward_mask(features, proposals, image_shapes, targets, result, labels, matched_idxs))
        return result, losses

    def detections_from_stages(
        self, stage_scores: list[torch.Tensor], last_deltas: torch.Tensor, proposals: list[torch.Tensor], image_shapes
    ) -> list[dict[str, torch.Tensor]]:
        """Mean of the stages' class probabilities [N, C] on the last stage's boxes, then torchvision's postprocess.

        `postprocess_detections` takes logits and applies softmax; softmax(log p) = p for probabilities p that sum
        to 1, so it gets log(mean p) and the last stage's deltas repeated per class (they are class-agnostic).
        """
        self.use_stage(len(self.stages) - 1)
        scores = torch.stack(stage_scores).mean(0)
        num_classes = scores.shape[1]
        boxes, scores, labels = self.postprocess_detections(
            scores.clamp(min=1e-12).log(), last_deltas.repeat(1, num_classes), proposals, image_shapes
        )
        return [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels, strict=True)]

    def _forward_mask(self, features, proposals, image_shapes, targets, result, labels, matched_idxs) -> dict:
        """torchvision's mask branch on the last stage's positives (training) or final boxes (test)."""
        if self.training:
            pos = [torch.where(lab > 0)[0] for lab in labels]
            mask_proposals = [p[i] for p, i in zip(proposals, pos, strict=True)]
            pos_matched_idxs = [m[i] for m, i in zip(matched_idxs, pos, strict=True)]
        else:
            mask_proposals = [r["boxes"] for r in result]
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes)))
        if self.training:
            gt_masks = [t["masks"] for t in targets]
            gt_labels = [t["labels"] for t in targets]
            return {"loss_mask": maskrcnn_loss(mask_logits, mask_proposals, gt_masks, gt_labels, pos_matched_idxs)}
        for prob, r in zip(maskrcnn_inference(mask_logits, [r["labels"] for r in result]), result, strict=True):
            r["masks"] = prob
        return {}


def _fresh_predictor(in_channels: int, num_classes: int, like: nn.Module) -> AgnosticBoxPredictor:
    """A new predictor with the output-layer init of modeling/init.py, on `like`'s device and dtype."""
    pred = AgnosticBoxPredictor(in_channels, num_classes)
    nn.init.normal_(pred.cls_score.weight, std=0.01)
    nn.init.normal_(pred.bbox_pred.weight, std=0.001)
    nn.init.zeros_(pred.cls_score.bias)
    nn.init.zeros_(pred.bbox_pred.bias)
    ref = next(like.parameters())
    return pred.to(device=ref.device, dtype=ref.dtype)


def cascade_from_plain(
    plain: RoIHeads,
    fg_iou_threshs: Sequence[float] = DEFAULT_FG_IOU_THRESHS,
    bbox_reg_weights: Sequence[Sequence[float]] = DEFAULT_BBOX_REG_WEIGHTS,
) -> CascadeRoIHeads:
    """Cascade heads from plain torchvision RoIHeads (fresh or trained); see the module docstring ("Late switch").

    Stage 1 reuses the plain box head and classifier modules; its class-agnostic regressor is the mean of the
    plain regressor's foreground-class rows (FastRCNNPredictor.bbox_pred: [num_classes * 4, C]). Stages 2..n are
    deep copies of the plain box head, re-initialized (MSRA), with fresh predictors.
    """
    if plain.keypoint_roi_pool is not None:
        raise ValueError("cascade heads do not support keypoint heads; set model.cascade=false for keypoints")
    old_pred = plain.box_predictor
    num_classes, in_channels = old_pred.cls_score.out_features, old_pred.cls_score.in_features
    stage1_pred = _fresh_predictor(in_channels, num_classes, old_pred)
    stage1_pred.cls_score = old_pred.cls_score
    with torch.no_grad():
        w = old_pred.bbox_pred.weight.reshape(num_classes, 4, in_channels)[1:].mean(0)
        b = old_pred.bbox_pred.bias.reshape(num_classes, 4)[1:].mean(0)
        stage1_pred.bbox_pred.weight.copy_(w)
        stage1_pred.bbox_pred.bias.copy_(b)
    stages = [CascadeStage(plain.box_head, stage1_pred)]
    for _ in range(1, len(fg_iou_threshs)):
        head = copy.deepcopy(plain.box_head)
        msra_fill_(head)
        stages.append(CascadeStage(head, _fresh_predictor(in_channels, num_classes, old_pred)))
    return CascadeRoIHeads(
        plain.box_roi_pool,
        stages,
        fg_iou_threshs,
        bbox_reg_weights,
        batch_size_per_image=plain.fg_bg_sampler.batch_size_per_image,
        positive_fraction=plain.fg_bg_sampler.positive_fraction,
        score_thresh=plain.score_thresh,
        nms_thresh=plain.nms_thresh,
        detections_per_img=plain.detections_per_img,
        mask_roi_pool=plain.mask_roi_pool,
        mask_head=plain.mask_head,
        mask_predictor=plain.mask_predictor,
    )


def switch_to_cascade_(model: nn.Module, fg_iou_threshs: Sequence[float], bbox_reg_weights) -> None:
    """Replaces `model.roi_heads` (plain) by cascade heads built by `cascade_from_plain`, in place."""
    if isinstance(model.roi_heads, CascadeRoIHeads):
        raise ValueError("the model already has cascade heads; switch_to_cascade_ was called twice")
    training = model.roi_heads.training
    model.roi_heads = cascade_from_plain(model.roi_heads, fg_iou_threshs, bbox_reg_weights).train(training)


def switch_iteration(max_iters: int, switch_iters: int | None) -> int | None:
    """The iteration index at which a run with model.cascade_switch_iters=K switches: max_iters - K (>= 0)."""
    if switch_iters is None:
        return None
    return max(0, max_iters - switch_iters)


def carry_momentum(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> int:
    """Copies the per-parameter state (SGD momentum) of every parameter `new` shares with `old`; returns how many.

    After the switch the trunk, RPN, mask head and stage 1's box head and classifier keep their momentum; the new
    parameters (stage 1's regressor, stages 2-3) start without, so SGD's first step there is the plain gradient.
    """
    carried = 0
    for group in new.param_groups:
        for p in group["params"]:
            if p in old.state:
                new.state[p] = old.state[p]
                carried += 1
    return carried
