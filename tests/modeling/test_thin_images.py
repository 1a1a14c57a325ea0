"""An image so elongated that the test-time resize would give it a 0-px side (issue 24, kind 7): the model's resize
clamps each side to >= 1 px, as the training resize does, in plain inference and in TTA; every other image is
resized by torchvision's code, to the bit."""

from __future__ import annotations

import torch
from helpers import MINI_CONFIG
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from scratchdet.config import load_config
from scratchdet.data.transforms import resized_shape
from scratchdet.evaluation.tta import build_tta_predictor
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.input_transform import InputConventionTransform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_test_resize_clamps_a_zero_side_and_leaves_other_images_to_torchvision():
    ours = InputConventionTransform(96, 128, MEAN, STD).eval()
    theirs = GeneralizedRCNNTransform(96, 128, MEAN, STD).eval()
    thin = torch.rand(3, 2, 400)  # scale min(96/2, 128/400) = 0.32: torchvision floors 0.64 px to 0
    resized, _ = ours.resize(thin)
    assert resized.shape == (3, 1, 128)
    assert resized_shape(2, 400, 96, 128) == (1, 128)  # the training resize's clamp gives the same size
    torch.manual_seed(0)
    for shape in ((3, 48, 64), (3, 97, 31), (3, 3, 160), (3, 400, 5)):
        image = torch.rand(shape)
        assert ours.resize(image)[0].equal(theirs.resize(image)[0]), shape


def test_detector_and_tta_evaluate_a_400_x_2_image():
    cfg = load_config(MINI_CONFIG, ["output=unused", "data.min_size_test=96", "data.max_size_test=128"])
    torch.manual_seed(0)
    model = build_detector(cfg, num_classes=3).eval()
    thin = torch.rand(3, 2, 400)
    with torch.no_grad():
        out = model([thin])[0]  # was: RuntimeError ... output (H: 0, W: 128)
        tta = build_tta_predictor(model, [96], 128, flip=True)(thin)
    for result in (out, tta):
        assert result["masks"].shape[-2:] == (2, 400)
        boxes = result["boxes"]
        assert bool((boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 400).all())
        assert bool((boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 2).all())
