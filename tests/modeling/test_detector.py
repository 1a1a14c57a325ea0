import math

import pytest
import torch
from helpers import MINI_CONFIG
from torch import nn
from torchvision.models import resnet50, resnext101_32x8d
from torchvision.ops import FrozenBatchNorm2d

from scratchdet.config import load_config
from scratchdet.engine.optim import build_optimizer
from scratchdet.errors import ConfigError
from scratchdet.modeling.backbones import ResNet
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.norm import ChannelBias, build_norm, group_count


def mini(*overrides):
    return load_config(MINI_CONFIG, ["output=unused", *overrides])


def convs_followed_by_norm(module: nn.Module):
    """(conv, norm) pairs where a conv is directly followed by a norm inside a Sequential or a ResNet block."""
    pairs = []
    for m in module.modules():
        children = list(m.named_children())
        for (_, a), (_, b) in zip(children, children[1:], strict=False):
            if isinstance(a, nn.Conv2d) and isinstance(b, (nn.GroupNorm, nn.BatchNorm2d, FrozenBatchNorm2d)):
                pairs.append((a, b))
    return pairs


def test_gn_everywhere_and_no_bias_before_a_norm():
    model = build_detector(mini(), num_classes=6)
    for part in (model.backbone.body, model.backbone.fpn, model.roi_heads.box_head, model.roi_heads.mask_head):
        assert any(isinstance(m, nn.GroupNorm) for m in part.modules()), part.__class__.__name__
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules())
    pairs = convs_followed_by_norm(model)
    assert len(pairs) > 30
    assert all(conv.bias is None for conv, _ in pairs)
    # The paper's 4conv1fc box head and 4-conv mask head.
    assert sum(isinstance(m, nn.Conv2d) for m in model.roi_heads.box_head.modules()) == 4
    assert sum(isinstance(m, nn.Linear) for m in model.roi_heads.box_head.modules()) == 1
    assert sum(isinstance(m, nn.Conv2d) for m in model.roi_heads.mask_head.modules()) == 4


def test_random_init_is_msra_with_unit_norms_and_nothing_frozen():
    torch.manual_seed(0)
    model = build_detector(mini("model.stem_width=64", "model.fpn_channels=256"), num_classes=6)
    assert all(p.requires_grad for p in model.parameters())
    conv = model.backbone.body.layer3[0].conv2  # 3x3, 256 -> 256 channels: a large sample of weights
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)  # no zero-gamma on residual branches
    cls = model.roi_heads.box_predictor.cls_score.weight
    assert cls.std().item() == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "none"])
def test_other_norms_build_and_run(norm):
    model = build_detector(mini(f"model.norm={norm}"), num_classes=4)
    kinds = {"BN": nn.BatchNorm2d, "FrozenBN": FrozenBatchNorm2d}
    assert not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    if norm == "none":
        assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules())
        assert any(isinstance(m, ChannelBias) for m in model.backbone.body.modules())
        # FPN and head convs without a norm after them keep their bias.
        assert all(m.bias is not None for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Conv2d))
    else:
        assert any(isinstance(m, kinds[norm]) for m in model.roi_heads.box_head.modules())
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80)])
    assert set(out[0]) == {"boxes", "labels", "scores", "masks"}


def test_syncbn_is_batchnorm_in_one_process():
    layer = build_norm("SyncBN")(8).train()
    reference = torch.nn.BatchNorm2d(8).train()
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(layer(x), reference(x))
    torch.testing.assert_close(layer.running_var, reference.running_var)


def test_group_count_falls_back_to_a_divisor():
    assert group_count(256) == 32
    assert group_count(48) == 16


def test_resnet_matches_torchvision_layout():
    # Same names and shapes as torchvision, so its ImageNet state_dicts load by name (weights/audit.py).
    for ours, theirs in (
        (ResNet(50, norm_layer=nn.BatchNorm2d), resnet50()),
        (ResNet(101, norm_layer=nn.BatchNorm2d, groups=32, width_per_group=8), resnext101_32x8d()),
    ):
        reference = {k: v.shape for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
        assert {k: v.shape for k, v in ours.state_dict().items()} == reference
    assert ResNet(152, norm_layer=nn.BatchNorm2d).stage_channels == [256, 512, 1024, 2048]
    assert ResNet(18, norm_layer=nn.BatchNorm2d, stem_width=32).stage_channels == [32, 64, 128, 256]


def test_freeze_at_requires_pretrained_and_freezes_stages():
    with pytest.raises(ConfigError, match="freeze_at=2 with init=scratch"):
        mini("model.freeze_at=2")
    body = ResNet(18, norm_layer=nn.BatchNorm2d, stem_width=16)
    body.freeze(2)
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad


def test_no_weight_decay_on_norm_parameters():
    model = build_detector(mini(), num_classes=4)
    optimizer = build_optimizer(model, mini().solver, lr=0.01)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["default"]["weight_decay"] == pytest.approx(1e-4)
    assert groups["norm"]["weight_decay"] == 0.0
    gn_params = {id(p) for m in model.modules() if isinstance(m, nn.GroupNorm) for p in m.parameters()}
    assert {id(p) for p in groups["norm"]["params"]} == gn_params
    n_all = sum(1 for _ in model.parameters())
    assert len(groups["norm"]["params"]) + len(groups["default"]["params"]) == n_all


def test_full_size_r50_fpn_gn_builds_with_the_paper_head():
    cfg = load_config(None, ["output=unused"])
    model = build_detector(cfg, num_classes=81)
    assert model.backbone.out_channels == 256
    assert model.roi_heads.box_head[-2].out_features == 1024  # 4conv1fc: fc(1024) + ReLU
    n_params = sum(p.numel() for p in model.parameters())
    assert 40e6 < n_params < 50e6  # R50-FPN Mask R-CNN with 4conv1fc is ~46M parameters
