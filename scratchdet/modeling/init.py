"""Random initialization as the paper trains from scratch (PAPER.md, "initialization"; Sec. 3 of the paper).

Convolutions: MSRA / He normal with fan_out (He et al. 2015). Normalization: weight 1, bias 0, and deliberately no
zero-gamma init of the last norm in each residual block. Fully connected layers of the box head: Detectron's
"XavierFill" (kaiming_uniform with a=1). Output layers keep the small Gaussians Detectron uses (box classifier
std 0.01, box regressor std 0.001; the RPN head already has std 0.01 from torchvision), because MSRA-scaled logits
at initialization give huge first losses.
"""

from __future__ import annotations

from torch import nn

from scratchdet.modeling.norm import ChannelBias, is_norm


def msra_fill_(module: nn.Module) -> None:
    """MSRA (fan_out) for every conv, unit scale for every norm, in `module` and its children."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)
        elif is_norm(m) and getattr(m, "weight", None) is not None and isinstance(m.weight, nn.Parameter):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, ChannelBias):
            nn.init.zeros_(m.bias)


def init_detector_(model: nn.Module) -> None:
    """Initializes a torchvision Faster/Mask R-CNN built by `build_detector` for training from scratch."""
    msra_fill_(model.backbone)
    heads = model.roi_heads
    msra_fill_(heads.box_head)
    predictor = heads.box_predictor
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)
    if getattr(heads, "mask_head", None) is not None:
        msra_fill_(heads.mask_head)
        msra_fill_(heads.mask_predictor)
