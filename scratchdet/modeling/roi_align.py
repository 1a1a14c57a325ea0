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


def level_mosaic(features: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
    """The FPN levels of every image laid out side by side on one canvas, so that one RoIAlign call pools every RoI
    on its own level without selecting RoIs by level.

    Layout: the first (largest) level on the left, the others stacked below each other to its right; every level
    framed by a one-pixel copy of its own edge (`F.pad(mode="replicate")`), so that a sample within one pixel past
    the map's last row or column reads the edge value, as RoIAlign's clamping does on the level alone. Gaps are
    zeros. Autograd carries the gradients of the frame back to the edge pixels.

    Args:
        features: per level (N, C, H_l, W_l), the same N and C.
    Returns:
        canvas (N, C, H, W); the (y, x) canvas position of each level's pixel (0, 0).
    """
    framed = [torch.nn.functional.pad(f, (1, 1, 1, 1), mode="replicate") for f in features]
    first, rest = framed[0], framed[1:]
    height = max(first.shape[2], sum(f.shape[2] for f in rest))
    width = max((f.shape[3] for f in rest), default=0)
    column = [torch.nn.functional.pad(f, (0, width - f.shape[3])) for f in rest]
    origins, y = [(1, 1)], 0
    for f in rest:
        origins.append((y + 1, first.shape[3] + 1))
        y += f.shape[2]
    left = torch.nn.functional.pad(first, (0, 0, 0, height - first.shape[2]))
    if not column:
        return left, origins
    right = torch.cat(column, dim=2)
    right = torch.nn.functional.pad(right, (0, 0, 0, height - right.shape[2]))
    return torch.cat([left, right], dim=3), origins


class FixedShapeMultiScaleRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign (same arguments) that in training pools every RoI on its own level (Eq. 1 of the FPN paper)
    in ONE RoIAlign call over a mosaic of the levels (`level_mosaic`): each RoI's box is scaled to its level and
    moved to that level's place on the canvas. No `torch.where(levels == level)` per level (a `nonzero`, so a host
    wait per level on a GPU), and each RoI is pooled once, as torchvision pools it (an earlier version pooled every
    RoI on all four levels and kept its own: 4x the RoIAlign work, 1.3x slower steps on CPU, benchmarks/RESULTS.md).

    Equal to torchvision's pooler up to float rounding (the box is scaled and moved before the kernel adds its bin
    offsets) for RoIs inside the image, which training's are: proposals are clipped to the image and ground-truth
    boxes were clipped when the data were read. RoIs are clamped to their level's map first, so one reaching past
    it cannot read a neighbouring level (torchvision would pool zeros there). Evaluation pools as
    MultiScaleRoIAlign. model.step=fast (fast_step.py) uses it for the box and mask heads."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if not self.training or len(features) == 1:
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        canvas, origins = level_mosaic(features)
        scale, oy, ox, h, w = self._level_table(features, origins, rois)[levels].unbind(1)
        x1, y1, x2, y2 = rois[:, 1:].unbind(1)
        moved = torch.stack(
            [
                rois[:, 0],
                torch.minimum((x1 * scale).clamp(min=0), w) + ox,
                torch.minimum((y1 * scale).clamp(min=0), h) + oy,
                torch.minimum((x2 * scale).clamp(min=0), w) + ox,
                torch.minimum((y2 * scale).clamp(min=0), h) + oy,
            ],
            dim=1,
        )
        return roi_align(canvas, moved, self.output_size, 1.0, self.sampling_ratio)

    def _level_table(self, features: list[Tensor], origins: list[tuple[int, int]], rois: Tensor) -> Tensor:
        """(levels, 5) scale, canvas y and x of the level's origin, its height and width, on the RoIs' device. Kept
        per feature shape: building it is a host-to-device copy, which waits for the device on CUDA."""
        key = (tuple(f.shape[2:] for f in features), rois.device, rois.dtype)
        cache = self.__dict__.setdefault("_tables", {})
        if key not in cache:
            if len(cache) >= 256:  # one entry per padded batch shape seen: bounded for any data
                cache.clear()
            rows = [
                (s, oy, ox, f.shape[2], f.shape[3])
                for s, (oy, ox), f in zip(self.scales, origins, features, strict=True)
            ]
            cache[key] = torch.tensor(rows, dtype=rois.dtype, device=rois.device)
        return cache[key]
