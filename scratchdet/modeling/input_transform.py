"""Applying an input convention in the model: the pixel conversion in its transform, the stride placement of its body.

The convention values, and which one a weight file was trained with, are weights/convention.py's. The data pipeline
always yields RGB images in 0..1; `InputConventionTransform` converts them (channel flip, scale) before normalizing,
and `ResNet(stride_in_1x1=True)` moves the stride (backbones.py). `model_input_convention` reads back the convention
a built detector applies, so that a weight file can be checked against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes, resize_keypoints
from torchvision.models.resnet import Bottleneck

from scratchdet.weights.convention import INPUT_FORMATS, InputConvention


class InputConventionTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform with the pixel conversion of an input convention before normalizing.

    Input: images [3, H, W], RGB in [0, 1], as the data pipeline yields them. Each is turned into `input_format`
    channel order, multiplied by `pixel_scale`, then normalized with `image_mean`/`image_std` (given in those units
    and that order); resizing and batching are torchvision's. Padding is 0 after normalization, as in Detectron.
    """

    def __init__(
        self,
        min_size,
        max_size,
        image_mean,
        image_std,
        *,
        input_format: str = "RGB",
        pixel_scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(min_size, max_size, image_mean, image_std, **kwargs)
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format={input_format!r} is not valid; choose one of {', '.join(INPUT_FORMATS)}")
        self.input_format = input_format
        self.pixel_scale = float(pixel_scale)

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        """torchvision's resize, except that no side is resized to 0 px.

        At test time torchvision scales by one factor and floors each side (interpolate with scale_factor and
        recompute_scale_factor), so a very elongated image (400 x 2 px at min_size 96 / max_size 128: scale 0.32)
        gets a 0-px side and interpolate raises. The training resize clamps each side to >= 1 px
        (data/transforms.py `resized_shape`); here the same clamp applies where torchvision's size would be 0.
        Every other image goes through torchvision's code unchanged, so its pixels and detections are
        torchvision's to the bit. `postprocess` maps detections back with the actual resized size.
        """
        if self.training or self.fixed_size is not None:
            return super().resize(image, target)
        height, width = image.shape[-2:]
        short, long = min(height, width), max(height, width)
        scale = min(self.min_size[-1] / short, self.max_size / long)
        # interpolate's output size for scale_factor with recompute_scale_factor=True: floor(side * scale).
        size = [math.floor(height * scale), math.floor(width * scale)]
        if min(size) >= 1:
            return super().resize(image, target)
        size = [max(side, 1) for side in size]
        resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is not None:  # an evaluation-mode forward with targets (losses are not computed in eval mode)
            target = dict(target)
            target["boxes"] = resize_boxes(target["boxes"], (height, width), resized.shape[-2:])
            if "keypoints" in target:
                target["keypoints"] = resize_keypoints(target["keypoints"], (height, width), resized.shape[-2:])
            if "masks" in target:
                masks = target["masks"][:, None].float()
                target["masks"] = F.interpolate(masks, size=size)[:, 0].byte()
        return resized, target

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            raise TypeError(f"expected float images in [0, 1] (RGB), got {image.dtype}")
        if self.input_format == "BGR":
            image = image.flip(0)
        if self.pixel_scale != 1.0:
            image = image * self.pixel_scale
        return super().normalize(image)

    def __repr__(self) -> str:
        return (
            super()
            .__repr__()
            .replace("Normalize(", f"Normalize(input_format={self.input_format}, pixel_scale={self.pixel_scale:g}, ", 1)
        )


def stride_in_1x1(body: nn.Module) -> bool:
    """Whether a ResNet body (or its IntermediateLayerGetter) downsamples stage 3 in the first block's 1x1 conv."""
    layer2 = getattr(body, "layer2", None)
    first = layer2[0] if isinstance(layer2, nn.Sequential) and len(layer2) else None
    return isinstance(first, Bottleneck) and tuple(first.conv1.stride) != (1, 1)


def model_input_convention(model: nn.Module) -> InputConvention:
    """The convention a built detector applies: its transform's pixel conversion and its body's stride placement."""
    transform = model.transform
    return InputConvention(
        getattr(transform, "input_format", "RGB"),
        float(getattr(transform, "pixel_scale", 1.0)),
        tuple(float(v) for v in transform.image_mean),
        tuple(float(v) for v in transform.image_std),
        stride_in_1x1(model.backbone.body),
    )
