"""An image classifier on the detector's own backbone, for ImageNet-style pre-training (`scratchdet pretrain`).

`ResNetClassifier` is `scratchdet.modeling.backbones.ResNet` plus global average pooling and one `fc` layer, so its
state_dict has exactly torchvision's ResNet layout (conv1, bn1, layer1..layer4, fc) and, without `fc.*`, exactly the
keys of the detector's backbone body: weights it learns load into the detector the way torchvision's published
ImageNet weights do, with the same norm (GN, BN or none), depth and widths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from scratchdet.modeling.backbones import ResNet
from scratchdet.modeling.init import msra_fill_
from scratchdet.modeling.norm import NormFactory, build_norm
from scratchdet.weights.convention import TORCHVISION, InputConvention

if TYPE_CHECKING:  # imported for the type hint only: scratchdet.pretrain imports this module
    from scratchdet.pretrain.config import PretrainConfig


class ResNetClassifier(ResNet):
    """ResNet/ResNeXt body -> global average pooling -> fc.

    Input [B, 3, H, W] RGB in [0, 1] (any H, W >= 32); it is converted inside to `input_convention` (channel order,
    scale, mean/std; torchvision's by default) exactly as the detector's transform converts it, and the ResNet puts
    its strides where the convention says, so the weights see the same inputs and network in the detector.
    Output: logits [B, num_classes].
    """

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int,
        norm_layer: NormFactory,
        stem_width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        input_convention: InputConvention = TORCHVISION,
    ):
        super().__init__(
            depth,
            norm_layer=norm_layer,
            stem_width=stem_width,
            groups=groups,
            width_per_group=width_per_group,
            stride_in_1x1=input_convention.stride_in_1x1,
        )
        self.input_convention = input_convention
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.stage_channels[-1], num_classes)
        # Non-persistent: kept out of the state_dict, which must stay torchvision's layout.
        self.register_buffer("pixel_mean", torch.tensor(input_convention.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(input_convention.pixel_std).view(1, 3, 1, 1), persistent=False)
        init_classifier_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_convention.input_format == "BGR":
            x = x.flip(1)
        if self.input_convention.pixel_scale != 1.0:
            x = x * self.input_convention.pixel_scale
        x = (x - self.pixel_mean) / self.pixel_std
        features = super().forward(x)
        return self.fc(torch.flatten(self.avgpool(features), 1))

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The state_dict without `fc.*`: exactly the keys of the detector's ResNet body."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("fc.")}


def init_classifier_(model: ResNetClassifier) -> None:
    """MSRA fan_out convs and unit norms as the detector's from-scratch init (scratchdet.modeling.init); the
    classifier gets a small Gaussian (std 0.01, as torchvision/Detectron), so the first loss is about log(classes)."""
    msra_fill_(model)
    nn.init.normal_(model.fc.weight, std=0.01)
    nn.init.zeros_(model.fc.bias)


def build_classifier(cfg: PretrainConfig, num_classes: int) -> ResNetClassifier:
    """The classifier of a pre-training run: same norm factory, depth, groups, widths as the detector's backbone.

    Args:
        cfg: a PretrainConfig (its `model` section is read).
        num_classes: classes of the training set.
    """
    m = cfg.model
    return ResNetClassifier(
        m.depth,
        num_classes=num_classes,
        norm_layer=build_norm(m.norm, m.gn_groups, for_backbone_block=True),
        stem_width=m.stem_width,
        groups=m.groups,
        width_per_group=m.width_per_group,
        input_convention=InputConvention.from_values(vars(m)),
    )
