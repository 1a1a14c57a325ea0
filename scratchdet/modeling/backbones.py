"""ResNet and ResNeXt bodies with a configurable normalization and width.

The module names are torchvision's (conv1, bn1, layer1..layer4, and its BasicBlock/Bottleneck classes), so a
torchvision ImageNet state_dict loads by name (weights/audit.py). What torchvision's own ResNet class cannot do,
and why this file exists: a stem narrower than 64 channels for CPU-sized models, GN/none instead of BN in every
block, and the stride of each stage in the first block's 1x1 conv (`stride_in_1x1`), as MSRA's ResNets in
Detectron's R-50.pkl / R-101.pkl were trained (torchvision's Bottleneck, "ResNet v1.5", strides in the 3x3;
Detectron RESNETS.STRIDE_1X1).
Moving the stride changes no weight shape or name, only what the network computes.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from scratchdet.modeling.norm import NormFactory

# depth -> (block, blocks per stage): He et al. 2016, Table 1.
RESNET_SPECS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """A ResNet/ResNeXt body returning nothing but its stages (no pooling or classifier).

    Input [B, 3, H, W]; layer1..layer4 have strides 4, 8, 16, 32 and `stage_channels` channels.
    With stride_in_1x1, the first block of layer2..layer4 downsamples in conv1 (1x1) instead of conv2 (3x3);
    bottleneck depths only (ValueError for basic blocks, which have no 1x1 conv).
    """

    def __init__(
        self,
        depth: int,
        *,
        norm_layer: NormFactory,
        stem_width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ):
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"ResNet depth {depth} is not one of {sorted(RESNET_SPECS)}")
        block, blocks_per_stage = RESNET_SPECS[depth]
        if block is BasicBlock and (groups != 1 or width_per_group != 64):
            raise ValueError(f"ResNet-{depth} uses basic blocks, which have no groups/width_per_group")
        if block is BasicBlock and stride_in_1x1:
            raise ValueError(f"ResNet-{depth} uses basic blocks, which have no 1x1 conv to put the stride in")
        self.stride_in_1x1 = stride_in_1x1
        self.groups = groups
        self.base_width = width_per_group
        self.dilation = 1
        self.norm_layer = norm_layer
        self.inplanes = stem_width
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stage_channels: list[int] = []
        for i, n_blocks in enumerate(blocks_per_stage):
            planes = stem_width * 2**i
            layer = self._make_layer(block, planes, n_blocks, stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", layer)
            self.stage_channels.append(planes * block.expansion)

    def _make_layer(self, block, planes: int, n_blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                self.norm_layer(planes * block.expansion),
            )
        kwargs = dict(groups=self.groups, base_width=self.base_width, norm_layer=self.norm_layer)
        layers = [block(self.inplanes, planes, stride, downsample, **kwargs)]
        if self.stride_in_1x1 and stride != 1:
            # Same modules and names, so weights load by name; only the conv that subsamples changes (the shortcut
            # keeps its stride-2 1x1 either way, in Caffe2's branch1 as in torchvision's downsample).
            layers[0].conv1.stride, layers[0].conv2.stride = (stride, stride), (1, 1)
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **kwargs) for _ in range(1, n_blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Module]:
        """Stage 1 is the stem (conv1 + bn1), stages 2..5 are layer1..layer4 (Detectron's res2..res5)."""
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]

    def freeze(self, freeze_at: int) -> None:
        """Stops gradients for stages 1..freeze_at (Detectron's FREEZE_AT); 0 trains everything."""
        for stage in self.stages()[:freeze_at]:
            for p in stage.parameters():
                p.requires_grad_(False)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)
