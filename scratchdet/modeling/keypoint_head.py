"""Keypoint R-CNN head with the model's normalization (the paper's keypoint experiment, docs/PAPER.md,
"Keypoints (Fig. 6)").

torchvision's KeypointRCNNHeads is 8 x (conv3x3 512, ReLU) with no norm option. The paper uses GN in every head
("gn-all", docs/PAPER.md, "Normalization"), so this head is the same stack with the chosen norm after every conv;
the conv bias is off then (the norm's shift replaces it). With norm=none it equals torchvision's head. The predictor
(deconv + x2 upsampling to 56x56 heatmaps, one per keypoint) is torchvision's KeypointRCNNPredictor (predictors.py).
"""

from __future__ import annotations

from torch import nn

from scratchdet.modeling.norm import NormFactory

__all__ = ["KeypointRCNNConvNormHead"]


class KeypointRCNNConvNormHead(nn.Sequential):
    """`len(layers)` x (conv3x3 -> norm -> ReLU) on RoI features [R, in_channels, 14, 14] -> [R, layers[-1], 14, 14].

    Args:
        in_channels: channels of the pooled FPN features.
        layers: output channels of each conv (Detectron: 8 x 512).
        norm_layer: factory `channels -> module`, or None for plain convs with bias.
    """

    def __init__(self, in_channels: int, layers: list[int], norm_layer: NormFactory | None = None):
        modules: list[nn.Module] = []
        channels = in_channels
        for out_channels in layers:
            modules.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=norm_layer is None))
            if norm_layer is not None:
                modules.append(norm_layer(out_channels))
            modules.append(nn.ReLU(inplace=True))
            channels = out_channels
        super().__init__(*modules)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
