"""`model_info` / `scratchdet model-info`: parameter and FLOP counts.

Counting runs on the meta device (no memory, ~1 s for X152 at 800x1333), so the paper's claim is checked at the
paper's input size directly rather than scaled from a small one.
"""

import pytest
import torch
from helpers import MINI_CONFIG, ROOT
from torch.utils.flop_counter import FlopCounterMode

from scratchdet.cli import main
from scratchdet.config import load_config
from scratchdet.errors import ConfigError
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.info import model_info, padded_size

PAPER = ROOT / "configs" / "paper"
R101 = PAPER / "mask_rcnn_R101_FPN_GN_scratch_6x.yaml"
X152 = PAPER / "mask_rcnn_X152_8x32d_FPN_GN_scratch_9x_trainaug.yaml"
SIZE = (800, 1333)


def _info(path, *overrides, size=SIZE):
    return model_info(load_config(path, ["output=unused", *overrides]), size=size)


def test_meta_count_equals_a_real_forward_count():
    # The meta device only propagates shapes; FLOPs must equal those of a real CPU forward of the same model.
    cfg = load_config(MINI_CONFIG, ["output=unused"])
    model = build_detector(cfg, num_classes=4).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.backbone(torch.zeros(1, 3, 64, 96))
    info = model_info(cfg, size=(64, 96), num_classes=4)
    assert info["flops"]["backbone_fpn"] == counter.get_total_flops() > 0
    assert info["params"]["total"] == sum(p.numel() for p in model.parameters())


def test_backbone_flops_scale_with_pixels():
    big = _info(R101, size=(768, 1344))["flops"]
    small = _info(R101, size=(384, 672))["flops"]  # both multiples of 32: no padding
    assert big["backbone"] / small["backbone"] == pytest.approx(4.0, rel=0.02)
    assert big["fpn"] / small["fpn"] == pytest.approx(4.0, rel=0.02)
    assert big["box_head"] == small["box_head"]  # fixed RoI count: independent of the image size


def test_x152_has_about_4x_the_flops_of_r101_at_800x1333():
    r101, x152 = _info(R101)["flops"], _info(X152)["flops"]
    # docs/PAPER.md, "The system": "~4x the FLOPs of R101". Measured: body 4.24x; with the (shared) FPN 3.37x.
    assert 3.6 < x152["backbone"] / r101["backbone"] < 4.7
    assert 3.3 < x152["backbone_fpn"] / r101["backbone_fpn"] < 4.7
    # Why the X152 config is 8x32d: Detectron's 32x8d would be only ~3.1x (body), off the paper's ~4x.
    x152_32x8d = _info(X152, "model.groups=32", "model.width_per_group=8")["flops"]
    assert 2.9 < x152_32x8d["backbone"] / r101["backbone"] < 3.3


def test_r50_fpn_mask_rcnn_parameter_counts():
    info = _info(PAPER / "mask_rcnn_R50_FPN_GN_scratch_6x.yaml")
    params, flops = info["params"], info["flops"]
    assert info["padded_size"] == [800, 1344] == list(padded_size(SIZE))
    assert 23.4e6 < params["backbone"] < 23.6e6  # ResNet-50 without its fc: 25.56M - 2.05M
    assert 3.3e6 < params["fpn"] < 3.4e6
    assert 44e6 < params["total"] < 47e6  # torchvision's 2fc R50-FPN Mask R-CNN: 44.4M; 4conv1fc adds ~1.3M
    assert params["total"] == sum(params[k] for k in ("backbone", "fpn", "rpn", "box_head", "mask_head"))
    assert 250e9 < flops["backbone_fpn"] < 350e9 and flops["total"] > flops["backbone_fpn"]


def test_faster_rcnn_has_no_mask_head_and_bad_sizes_name_the_option():
    info = _info(R101, "model.arch=faster_rcnn")
    assert info["params"]["mask_head"] == info["flops"]["mask_head"] == info["num_detections"] == 0
    with pytest.raises(ConfigError, match="--size"):
        _info(R101, size=(0, 1333))


def test_cli_prints_a_table(capsys):
    assert main(["model-info", str(R101), "model.depth=50", "--size", "512", "512"]) == 0
    out = capsys.readouterr().out
    assert "input 512x512" in out and "2 x multiply-adds" in out
    for part in ("backbone", "fpn", "backbone_fpn", "rpn", "box_head", "mask_head", "total"):
        assert any(line.split()[0] == part for line in out.splitlines()[4:] if line.strip())
    assert main(["model-info", str(R101), "--json"]) == 0
    assert '"backbone_fpn"' in capsys.readouterr().out


def test_cascade_counts_all_three_box_stages():
    from helpers import MINI_CONFIG

    from scratchdet.config import load_config
    from scratchdet.modeling.info import model_info

    plain = model_info(load_config(MINI_CONFIG, ["output=unused"]), size=(128, 160))
    cascade = model_info(load_config(MINI_CONFIG, ["output=unused", "model.cascade=true"]), size=(128, 160))
    assert cascade["flops"]["box_head"] > 2.5 * plain["flops"]["box_head"]
    assert cascade["params"]["box_head"] > 2.5 * plain["params"]["box_head"]


def test_vgg16_without_fpn_is_counted():
    from helpers import ROOT

    from scratchdet.config import load_config
    from scratchdet.modeling.info import model_info

    cfg = load_config(ROOT / "configs/paper/faster_rcnn_VGG16_scratch_11x_trainaug.yaml", ["output=unused"])
    info = model_info(cfg, size=(224, 224))
    assert info["params"]["fpn"] == 0 and info["flops"]["fpn"] == 0
    # VGG-16's conv body without its last pool: ~15.3 GMACs at 224x224, i.e. ~30.7 GFLOPs.
    assert 29e9 < info["flops"]["backbone"] < 32e9
