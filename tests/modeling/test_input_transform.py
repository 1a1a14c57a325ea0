"""Applying an input convention in the model: the stride placement of a ResNet body, the pixel conversion of the
transform. (Which convention a weight file needs, and the end-to-end checks against reference networks:
tests/weights/test_input_convention.py.)"""

from __future__ import annotations

import pytest
import torch

from scratchdet.modeling.backbones import ResNet
from scratchdet.modeling.input_transform import InputConventionTransform
from scratchdet.modeling.norm import build_norm


def test_stride_in_1x1_moves_the_stride_and_keeps_names_and_shapes():
    norm = build_norm("FrozenBN", for_backbone_block=True)
    v15, msra = ResNet(50, norm_layer=norm, stem_width=8), ResNet(50, norm_layer=norm, stem_width=8, stride_in_1x1=True)
    assert {k: v.shape for k, v in v15.state_dict().items()} == {k: v.shape for k, v in msra.state_dict().items()}
    for layer in (msra.layer2, msra.layer3, msra.layer4):
        assert (layer[0].conv1.stride, layer[0].conv2.stride, layer[0].downsample[0].stride) == ((2, 2), (1, 1), (2, 2))
        assert all(block.conv1.stride == (1, 1) for block in layer[1:])
    assert msra.layer1[0].conv1.stride == (1, 1)
    x = torch.randn(1, 3, 64, 64)
    assert msra(x).shape == v15(x).shape == (1, 256, 2, 2)
    with pytest.raises(ValueError, match="basic blocks, which have no 1x1 conv"):
        ResNet(18, norm_layer=norm, stride_in_1x1=True)


def test_transform_flips_scales_then_normalizes():
    t = InputConventionTransform(
        64, 96, [100.0, 110.0, 120.0], [2.0, 4.0, 8.0], input_format="BGR", pixel_scale=255.0, _skip_resize=True
    )
    image = torch.rand(3, 32, 32)
    expected = (image.flip(0) * 255 - torch.tensor([100.0, 110.0, 120.0])[:, None, None]) / torch.tensor(
        [2.0, 4.0, 8.0]
    )[:, None, None]
    torch.testing.assert_close(t.normalize(image), expected)
    assert "input_format=BGR, pixel_scale=255" in repr(t)
    with pytest.raises(TypeError, match="float images"):
        t.normalize(torch.zeros(3, 4, 4, dtype=torch.uint8))
