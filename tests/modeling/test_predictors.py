"""The channels-last mask and keypoint predictors compute torchvision's predictors exactly, with the same
parameters, and the detector is built with them."""

from __future__ import annotations

import torch
from helpers import MINI_CONFIG
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from scratchdet.config import load_config
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.predictors import KeypointPredictor, MaskPredictor, channels_last_for_cpu_inference


def _same_as_torchvision(ours: torch.nn.Module, theirs: torch.nn.Module, in_channels: int) -> None:
    ours.double().eval()  # eval mode: the channels-last path
    theirs.double().eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, in_channels, 14, 14, dtype=torch.float64)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    assert y_ours.shape == y_theirs.shape
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(y_theirs)
    y_ours.backward(grad)
    y_theirs.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-10, atol=1e-10)
    for (name, p_ours), p_theirs in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p_ours.grad, p_theirs.grad, rtol=1e-10, atol=1e-10, msg=name)


def _bit_identical_in_training(ours: torch.nn.Module, theirs: torch.nn.Module, in_channels: int) -> None:
    """Training keeps torchvision's layout, so float32 outputs and gradients are torchvision's to the bit."""
    ours.float().train()
    theirs.float().train()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(6, in_channels, 14, 14)
    y_ours, y_theirs = ours(x), theirs(x)
    assert torch.equal(y_ours, y_theirs)
    grad = torch.randn_like(y_theirs)
    y_ours.backward(grad)
    y_theirs.backward(grad)
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p_ours.grad, p_theirs.grad)


def test_mask_predictor_is_torchvisions_in_values_gradients_and_names():
    torch.manual_seed(0)
    _same_as_torchvision(MaskPredictor(16, 16, 5), MaskRCNNPredictor(16, 16, 5), 16)
    _bit_identical_in_training(MaskPredictor(16, 16, 5), MaskRCNNPredictor(16, 16, 5), 16)


def test_keypoint_predictor_is_torchvisions_in_values_gradients_and_names():
    torch.manual_seed(0)
    _same_as_torchvision(KeypointPredictor(16, 17), KeypointRCNNPredictor(16, 17), 16)
    _bit_identical_in_training(KeypointPredictor(16, 17), KeypointRCNNPredictor(16, 17), 16)


def test_only_cpu_inference_changes_layout():
    x = torch.randn(2, 8, 14, 14)
    assert channels_last_for_cpu_inference(x, training=False).is_contiguous(memory_format=torch.channels_last)
    assert channels_last_for_cpu_inference(x, training=True) is x
    meta = torch.empty(2, 8, 14, 14, device="meta")
    assert channels_last_for_cpu_inference(meta, training=False) is meta


def test_the_mask_rcnn_is_built_with_it():
    model = build_detector(load_config(MINI_CONFIG, ["output=unused"]), num_classes=6)
    assert type(model.roi_heads.mask_predictor) is MaskPredictor
