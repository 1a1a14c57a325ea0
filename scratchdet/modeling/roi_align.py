"""RoIAlign with a fast CPU backward pass, and the multi-scale pooler that uses it.

torchvision's CPU kernel for RoIAlign's backward pass scatters one bilinear weight at a time into a channel-strided
gradient, in one thread: on the mini config at 96 px it was 12-17% of a training iteration, 20x its own forward
(benchmarks/RESULTS.md, "Where the time goes"). The backward of RoIAlign is linear in the output gradient: with M the
sparse matrix of bilinear sampling weights (one row per pooled bin, one column per input pixel, 4 x sampling_ratio^2
non-zeros per row), grad_input = M^T @ grad_output. Building M from the RoIs and multiplying it as a sparse matrix
gives the same numbers (to float rounding: the sums run in another order) several times faster.

The forward pass is torchvision's own kernel. The fast backward applies on CPU with float32/float64 features and a
fixed sampling ratio (Detectron's `ROI_XFORM_SAMPLING_RATIO: 2`, torchvision's default for the box and mask heads);
anything else (CUDA, autocast's bf16, the adaptive ratio 0) uses torchvision's autograd unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torchvision.ops import MultiScaleRoIAlign as _TorchvisionMultiScaleRoIAlign
from torchvision.ops import roi_align as _torchvision_roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def _bilinear_1d(start: Tensor, bin_size: Tensor, pooled: int, ratio: int, size: int) -> tuple[Tensor, Tensor]:
    """Sampling positions along one axis and their two neighbours' weights, as torchvision's CPU kernel computes them
    (roi_align_kernel.cpp: bilinear_interpolate_gradient).

    Args:
        start, bin_size: (R,) the RoI's first coordinate and bin length on the feature map.
    Returns:
        index (R, pooled, ratio, 2) int64 pixel indices; weight (R, pooled, ratio, 2), 0 for samples more than one
        pixel outside the map.
    """
    bins = torch.arange(pooled, dtype=start.dtype, device=start.device)
    steps = torch.arange(ratio, dtype=start.dtype, device=start.device) + 0.5
    # Same operation order as the kernel: start + bin * size + (step + 0.5) * size / ratio.
    pos = (start[:, None, None] + bins[None, :, None] * bin_size[:, None, None]) + (
        steps[None, None, :] * bin_size[:, None, None]
    ) / ratio
    inside = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.to(torch.int64)
    last = low >= size - 1
    low = torch.where(last, torch.full_like(low, size - 1), low)
    high = torch.where(last, low, low + 1)
    frac = torch.where(last, torch.zeros_like(pos), pos - low.to(pos.dtype))
    weight = torch.stack([1.0 - frac, frac], dim=-1) * inside[..., None]
    return torch.stack([low, high], dim=-1), weight


def sampling_matrix(
    rois: Tensor, feature_shape: tuple[int, int, int], output_size: tuple[int, int], spatial_scale: float,
    sampling_ratio: int, aligned: bool,
) -> Tensor:  # fmt: skip
    """The (N*H*W, R*PH*PW) sparse COO matrix whose column for bin (r, ph, pw) holds the bilinear weights RoIAlign
    averages over that bin; pooled = M^T @ features viewed as (N*H*W, C).

    Args:
        rois: (R, 5) float, (batch index, x1, y1, x2, y2) in image pixels.
        feature_shape: (N, H, W) of the feature map.
        output_size: (PH, PW) bins per RoI.
        spatial_scale: feature-map pixels per image pixel.
        sampling_ratio: samples per bin along each axis (> 0).
        aligned: the half-pixel shift of torchvision's `aligned=True`.
    """
    n, height, width = feature_shape
    ph, pw = output_size
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # the legacy (Detectron) behaviour: RoIs of at least one feature-map pixel
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    y_index, y_weight = _bilinear_1d(y1, roi_h / ph, ph, sampling_ratio, height)
    x_index, x_weight = _bilinear_1d(x1, roi_w / pw, pw, sampling_ratio, width)
    r = rois.shape[0]
    image = rois[:, 0].to(torch.int64)
    # Axes: (R, PH, ratio_y, 2, PW, ratio_x, 2).
    row = (image * (height * width))[:, None, None, None, None, None, None] + (
        y_index[:, :, :, :, None, None, None] * width + x_index[:, None, None, None, :, :, :]
    )
    weight = y_weight[:, :, :, :, None, None, None] * x_weight[:, None, None, None, :, :, :] / sampling_ratio**2
    bins = torch.arange(r * ph * pw, device=rois.device).view(r, ph, 1, 1, pw, 1, 1)
    column = bins.expand_as(row)
    return torch.sparse_coo_tensor(
        torch.stack([row.reshape(-1), column.reshape(-1)]),
        weight.reshape(-1),
        (n * height * width, r * ph * pw),
        check_invariants=False,  # indices are built in range above
    )


class _RoIAlignSparseBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.args = (features.shape, output_size, spatial_scale, sampling_ratio, aligned)
        return torch.ops.torchvision.roi_align(
            features, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        shape, output_size, spatial_scale, sampling_ratio, aligned = ctx.args
        n, c, h, w = shape
        grad_rois = None  # RoIs are detached proposals (torchvision's kernel gives them no gradient either)
        if rois.shape[0] == 0:
            return grad_output.new_zeros(shape), grad_rois, None, None, None, None
        matrix = sampling_matrix(rois, (n, h, w), output_size, spatial_scale, sampling_ratio, aligned)
        per_bin = grad_output.permute(0, 2, 3, 1).reshape(-1, c)  # (R*PH*PW, C); rois' dtype, as roi_align checked
        grad = torch.sparse.mm(matrix, per_bin)  # (N*H*W, C)
        grad_features = grad.view(n, h, w, c).permute(0, 3, 1, 2).contiguous()
        return grad_features, grad_rois, None, None, None, None


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """torchvision.ops.roi_align (same arguments, same forward numbers) with the sparse backward on CPU.

    Args:
        features: (N, C, H, W). rois: (R, 5) float, (batch index, x1, y1, x2, y2) in image pixels.
    Returns:
        (R, C, PH, PW) pooled features.
    """
    fast = (
        features.device.type == "cpu"
        and sampling_ratio > 0
        and features.dtype in (torch.float32, torch.float64)
        and rois.dtype == features.dtype
        and not torch.is_autocast_enabled("cpu")
        and torch.is_grad_enabled()
        and features.requires_grad
    )
    if not fast:
        return _torchvision_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return _RoIAlignSparseBackward.apply(features, rois, tuple(output_size), spatial_scale, sampling_ratio, aligned)


class MultiScaleRoIAlign(_TorchvisionMultiScaleRoIAlign):
    """torchvision's FPN RoI pooler (level per RoI by Eq. 1 of the FPN paper, same arguments), pooling through
    `roi_align` above so that its CPU backward is the sparse one."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            in_level = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[in_level], self.output_size, scale, self.sampling_ratio)
            result[in_level] = pooled.to(result.dtype)
        return result


class FixedShapeMultiScaleRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign (same arguments, same numbers) that in training pools every RoI on every level and keeps
    each RoI's own level with `torch.where`, instead of selecting each level's RoIs with `torch.where(levels ==
    level)` (a `nonzero` per level, so a host wait per level on a GPU). It pools 4x the RoIs (P2-P5): cheap next to
    a host wait on a GPU, a cost on CPU (benchmarks/RESULTS.md, "A training step without host waits"). Evaluation
    pools as MultiScaleRoIAlign. model.step=fast (fast_step.py) uses it for the box and mask heads."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if not self.training or len(features) == 1:
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)[:, None, None, None]
        result = None
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            pooled = roi_align(feature, rois, self.output_size, scale, self.sampling_ratio)
            result = pooled if result is None else torch.where(levels == level, pooled, result)
        return result
