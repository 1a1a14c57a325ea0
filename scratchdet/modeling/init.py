"""Random initialization as the paper trains from scratch (docs/PAPER.md, "Initialization"; Sec. 3 of the paper).

Convolutions: MSRA / He normal with fan_out (He et al. 2015), except the FPN's lateral and output convs, which get
Caffe2's "XavierFill" as in Detectron (FPN.py) and detectron2 (c2_xavier_fill). Normalization: weight 1, bias 0, and
deliberately no zero-gamma init of the last norm in each residual block. Fully connected layers of the box head:
Detectron's "XavierFill" (kaiming_uniform with a=1). Output layers keep the small Gaussians Detectron uses (box
classifier std 0.01, box regressor std 0.001; the RPN head already has std 0.01 from torchvision), because
MSRA-scaled logits at initialization give huge first losses; the mask head, its deconv and its per-class 1x1
predictor are MSRA, Detectron's MRCNN.CONV_INIT in the GN configs. docs/FIDELITY.md compares every layer with
Detectron's and detectron2's.
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


def xavier_fill_(module: nn.Module) -> None:
    """Caffe2's XavierFill for every conv in `module`: uniform in +-sqrt(3 / fan_in), bias 0 (kaiming_uniform, a=1)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, a=1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_detector_(model: nn.Module) -> None:
    """Initializes a torchvision Faster/Mask R-CNN built by `build_detector` for training from scratch."""
    msra_fill_(model.backbone)
    fpn = getattr(model.backbone, "fpn", None)
    if fpn is not None:
        # Both reference implementations fill the FPN convs with XavierFill, not MSRA; each is followed by GN here,
        # so only the effective step size of these weights changes, not the forward signal at iteration 0.
        xavier_fill_(fpn)
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
