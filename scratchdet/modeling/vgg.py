"""VGG-16 Faster R-CNN without normalization, the original design (docs/PAPER.md, "VGG-16").

No FPN: RPN and RoIAlign both read conv5_3 (stride 16, 512 channels), and the box head is the classic fc6/fc7 pair.
Choices, stated because the paper leaves them open:
- Anchors: one level with every size of model.anchor_sizes (default 32..512) x ratios (0.5, 1, 2) = 15 anchors per
  location, as Detectron's single-level (C4/VGG) RPN does; the 2015 paper used 3 sizes (128, 256, 512) = 9.
- RoI features: RoIAlign 7x7, sampling ratio 2 (Detectron), not the 2015 RoIPool; 7x7 is what fc6 expects.
- fc6/fc7: model.vgg_fc_dim wide (4096 as in VGG-16 and the original Faster R-CNN), no dropout (Detectron's head).
- Width: model.stem_width is the first conv's width (64 = VGG-16); narrower values give CPU-sized variants.
The body is a Sequential laid out like torchvision's `vgg16().features[:30]`, so its keys ("N.weight") are
torchvision's "features.N.weight"; init=pretrained imports ImageNet VGG-16 into it, and fc6/fc7 into the box head as
the original Faster R-CNN does (weights/vgg.py, called by weights/initialization.py).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from scratchdet.config import Config, validate_backbone
from scratchdet.modeling.roi_align import MultiScaleRoIAlign

# torchvision's "D" configuration: conv widths per stage in units of the first width, "M" = 2x2 max-pool.
VGG16_LAYOUT = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8)
STRIDE = 16  # four max-pools; the fifth (after conv5_3) is dropped as in Faster R-CNN


class VGG16Backbone(nn.Module):
    """conv1_1 .. conv5_3 + ReLU, no normalization (convs keep their bias); output stride 16."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_ch = int(item) * width
                layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_ch = out_ch
        # `body` is the name initialization and weight loading look for on a detector's backbone.
        self.body = nn.Sequential(*layers)
        self.out_channels = in_ch

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)  # FasterRCNN wraps a single tensor as feature "0"


def build_vgg16_faster_rcnn(cfg: Config, num_classes: int, common: dict) -> FasterRCNN:
    """Returns an uninitialized VGG-16 Faster R-CNN; `common` holds the transform/RPN/RoI-sampling kwargs.

    init=pretrained weights are loaded afterwards, by weights/initialization.py (weights/vgg.py).

    Raises:
        ConfigError: unsupported settings.
    """
    validate_backbone(cfg)  # also run by load_config; repeated for configs built in code
    m = cfg.model
    backbone = VGG16Backbone(m.stem_width)
    anchors = AnchorGenerator((tuple(m.anchor_sizes),), ((0.5, 1.0, 2.0),))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    # fc6, fc7; at full width and vgg_fc_dim=4096 they take VGG-16's ImageNet classifier.0/3 under init=pretrained.
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, m.vgg_fc_dim)
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(m.vgg_fc_dim, num_classes),
        **common,
    )
