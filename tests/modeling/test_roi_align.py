"""RoIAlign's sparse CPU backward gives torchvision's gradients; the pooler gives torchvision's pooler's results."""

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign as TorchvisionPooler
from torchvision.ops import roi_align as torchvision_roi_align

from scratchdet.modeling.roi_align import MultiScaleRoIAlign, roi_align


def make_rois(n_images: int, height: int, width: int, scale: float, count: int, seed: int) -> torch.Tensor:
    """RoIs in image pixels of every awkward kind: ordinary, sub-pixel, partly and wholly outside, on the last
    row/column, and degenerate (x1 == x2)."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([width, height], dtype=torch.float64) / scale
    start = torch.rand(count, 2, generator=g, dtype=torch.float64) * size
    boxes = torch.cat([start, start + torch.rand(count, 2, generator=g, dtype=torch.float64) * size / 2], 1)
    boxes[:4, 2:] = boxes[:4, :2] + 0.3  # smaller than a feature-map pixel
    boxes[4:8, :2] -= size / 3  # partly outside, top-left
    boxes[8:10] = torch.tensor([-40.0, -40.0, -20.0, -20.0], dtype=torch.float64)  # wholly outside
    boxes[10:12, 2:] = size  # reaching the last row and column
    boxes[12, 2] = boxes[12, 0]  # zero width
    image = torch.randint(0, n_images, (count, 1), generator=g).to(torch.float64)
    return torch.cat([image, boxes], 1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize(("output_size", "ratio"), [((7, 7), 2), ((14, 14), 2), ((3, 5), 3), ((7, 7), 1)])
def test_gradient_equals_torchvision(aligned, output_size, ratio):
    scale = 0.25
    features = torch.randn(3, 5, 13, 17, dtype=torch.float64, requires_grad=True)
    rois = make_rois(3, 13, 17, scale, 40, seed=len(output_size) + ratio)
    ours = roi_align(features, rois, output_size, scale, ratio, aligned)
    reference = torchvision_roi_align(features, rois, output_size, scale, ratio, aligned)
    assert torch.equal(ours, reference)  # the forward is torchvision's kernel itself
    upstream = torch.randn_like(reference)
    (grad,) = torch.autograd.grad(ours, features, upstream)
    (expected,) = torch.autograd.grad(reference, features, upstream)
    assert grad.shape == expected.shape and grad.is_contiguous()
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


def test_gradient_is_the_numerical_one_and_repeats_bit_for_bit():
    features = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = make_rois(2, 6, 7, 0.5, 14, seed=3)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, (2, 3), 0.5, 2, False), (features,))
    upstream = torch.randn(14, 3, 2, 3, dtype=torch.float64)
    first = torch.autograd.grad(roi_align(features, rois, (2, 3), 0.5, 2), features, upstream)[0]
    second = torch.autograd.grad(roi_align(features, rois, (2, 3), 0.5, 2), features, upstream)[0]
    assert torch.equal(first, second)


def test_float32_gradient_matches_to_rounding_and_no_rois_give_zeros():
    features = torch.randn(2, 8, 24, 32, requires_grad=True)
    rois = make_rois(2, 24, 32, 0.25, 128, seed=5).float()
    upstream = torch.randn(128, 8, 7, 7)
    grad = torch.autograd.grad(roi_align(features, rois, (7, 7), 0.25, 2), features, upstream)[0]
    expected = torch.autograd.grad(torchvision_roi_align(features, rois, (7, 7), 0.25, 2), features, upstream)[0]
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)
    none = roi_align(features, rois[:0], (7, 7), 0.25, 2)
    assert none.shape == (0, 8, 7, 7)
    assert torch.equal(torch.autograd.grad(none.sum(), features)[0], torch.zeros_like(features))


def test_adaptive_ratio_falls_back_to_torchvision():
    features = torch.randn(1, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    rois = make_rois(1, 9, 9, 1.0, 16, seed=7)
    ours = roi_align(features, rois, (3, 3), 1.0, 0)
    assert ours.grad_fn is not None and "RoIAlignSparseBackward" not in type(ours.grad_fn).__name__
    assert torch.equal(ours, torchvision_roi_align(features, rois, (3, 3), 1.0, 0))


def test_multiscale_pooler_equals_torchvision_pooler():
    g = torch.Generator().manual_seed(0)
    names = ["0", "1", "2", "3"]
    features = OrderedDict(
        (name, torch.randn(2, 4, 64 // 2**i, 96 // 2**i, generator=g, dtype=torch.float64, requires_grad=True))
        for i, name in enumerate([*names, "pool"])
    )
    image_sizes = [(256, 384), (240, 380)]
    boxes = []
    for _ in image_sizes:
        xy = torch.rand(30, 2, generator=g, dtype=torch.float64) * torch.tensor([300.0, 200.0])
        wh = torch.exp(torch.rand(30, 2, generator=g, dtype=torch.float64) * 5.5)  # 1..245 px: every FPN level
        boxes.append(torch.cat([xy, xy + wh], 1))
    ours = MultiScaleRoIAlign(names, 7, 2)(features, boxes, image_sizes)
    reference = TorchvisionPooler(names, 7, 2)(features, boxes, image_sizes)
    assert torch.equal(ours, reference)
    upstream = torch.randn_like(reference)
    inputs = [features[name] for name in names]
    grads = torch.autograd.grad(ours, inputs, upstream)
    expected = torch.autograd.grad(reference, inputs, upstream)
    for name, a, b in zip(names, grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=f"level {name}")
