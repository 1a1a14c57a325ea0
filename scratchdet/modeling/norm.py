"""Normalization chosen once per model and applied to backbone, FPN and RoI heads ("gn-all", docs/PAPER.md,
"Normalization").

The paper's point (i): normalization must work at detection batch sizes (1-2 images per device). GroupNorm does,
independent of the batch; SyncBN does by pooling statistics over devices; plain BN with 2 images per device does
not; FrozenBN is only meaningful with pre-trained statistics. `none` is the no-normalization baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from scratchdet.errors import ConfigError
from scratchdet.modeling.sync_bn import SyncBatchNorm2d

NormFactory = Callable[[int], nn.Module]


def group_count(channels: int, groups: int = 32) -> int:
    """GN group count for `channels`: `groups` when it divides them, else their largest common divisor.

    The paper's models always have multiples of 32 channels; narrow CPU variants may not, and there the closest
    valid grouping is used instead of failing.
    """
    return math.gcd(channels, groups)


class ChannelBias(nn.Module):
    """A learnable per-channel shift: the `none` stand-in for a norm layer inside torchvision's ResNet blocks.

    torchvision's blocks always build their convs without bias and call norm_layer after them; conv + ChannelBias is
    exactly a conv with bias, so `norm=none` keeps the blocks (and the weight layout) while removing normalization.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(1, -1, 1, 1)


def build_norm(norm: str, gn_groups: int = 32, *, for_backbone_block: bool = False) -> NormFactory | None:
    """Returns a factory `channels -> module` for the chosen normalization, or None for convs with bias.

    Args:
        norm: GN | SyncBN | BN | FrozenBN | none.
        gn_groups: groups of GroupNorm (32 in the paper).
        for_backbone_block: the caller is a torchvision ResNet block, which needs a module even for `none`.
    """
    if norm == "GN":
        return lambda c: nn.GroupNorm(group_count(c, gn_groups), c)
    if norm == "BN":
        return nn.BatchNorm2d
    if norm == "FrozenBN":
        return FrozenBatchNorm2d
    if norm == "none":
        return ChannelBias if for_backbone_block else None
    if norm == "SyncBN":  # statistics over every process's images; plain BN when training in one process
        return SyncBatchNorm2d
    raise ConfigError(f"model.norm={norm!r} is not valid; choose one of GN, SyncBN, BN, FrozenBN, none")


NORM_TYPES = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d, nn.LayerNorm)


def is_norm(module: nn.Module) -> bool:
    """True for normalization layers, whose scale/shift get weight_decay_norm (0, Detectron's WEIGHT_DECAY_GN)."""
    return isinstance(module, NORM_TYPES)
