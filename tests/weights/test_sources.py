"""The pre-trained arms practitioners bring: MoCo v2/v3, DINO, SwAV, Barlow Twins, timm, Hugging Face transformers and
OpenMMLab ResNets, each imported through `init=pretrained weights=PATH` and run as the network it was trained as.

Every file is written here the way its source writes it: a reference network built with the source's module names
(torchvision's Bottleneck for the torchvision-named sources, a transformers-style module tree for Hugging Face),
wrapped as the source wraps it (MoCo's encoder_q/encoder_k/queue under DDP's module., DINO's MultiCropWrapper
with its DINOHead, mmengine's meta + state_dict), saved in the source's container (legacy .pth.tar, zip .pth, .bin,
safetensors with config.json) and fed with the source's own preprocessing. The detector's backbone features on the
same RGB image must equal the reference's to 1e-4 (relative to the largest activation).
"""

from __future__ import annotations

import argparse
import copy
import json
import re

import pytest
import torch
import torchvision.transforms.functional as TF
from helpers import MINI_CONFIG
from safetensors.torch import save_file
from torch import nn
from torchvision.models.resnet import Bottleneck

from scratchdet.config import load_config
from scratchdet.errors import CheckpointError, ConfigError
from scratchdet.modeling.detector import build_detector
from scratchdet.weights.initialization import initialize, resolve_input_convention

STEM = 16  # narrow ResNet-50: stage widths 16..128, outputs 64..512 (model.stem_width=16)
BLOCKS = (3, 4, 6, 3)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # timm's OPENAI_CLIP_MEAN / STD (timm/data/constants.py)
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SWAV_STD = [0.228, 0.224, 0.225]  # swav/src/multicropdataset.py


# ---------------------------------------------------------------------------------------------------------------
# Reference networks, written each source's way
# ---------------------------------------------------------------------------------------------------------------


_LAST_NORM = re.compile(r"(bn3|downsample\.1|layer\.2\.normalization|shortcut\.normalization)$")


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and BN statistics, He-scaled convs, each residual branch's last BN damped: moderate activations
    whose every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                damp = (
                    0.3
                    if re.search(r"(bn3|downsample\.1|layer\.2\.normalization|shortcut\.normalization)$", name)
                    else 1
                )
                c = m.num_features
                m.weight.copy_((1 + 0.1 * torch.randn(c, generator=g)) * damp)
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(1 + 0.2 * torch.rand(c, generator=g))
    return module.eval()


class TorchvisionStyleResNet(nn.Module):
    """torchvision's ResNet-50 layout (conv1, bn1, layer1..4 of torchvision Bottlenecks, fc) at a narrow stem, as MoCo,
    DINO, SwAV, Barlow Twins, timm and mmpretrain build theirs. stride_in_1x1 moves each stage's stride to the first
    block's 1x1 conv, as mmpretrain's style='caffe' does (conv1_stride)."""

    def __init__(self, stem: int = STEM, num_classes: int = 10, stride_in_1x1: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem
        for i, n in enumerate(BLOCKS):
            planes, stride = stem * 2**i, 1 if i == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
            blocks = [Bottleneck(inplanes, planes, stride, downsample)]
            blocks += [Bottleneck(planes * 4, planes) for _ in range(n - 1)]
            if stride_in_1x1 and stride == 2:
                blocks[0].conv1.stride, blocks[0].conv2.stride = (2, 2), (1, 1)
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes * 4
        self.fc = nn.Linear(inplanes, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            out.append(x)
        return out


class HFConvLayer(nn.Module):  # transformers ResNetConvLayer
    def __init__(self, cin, cout, k=3, stride=1, act=True):
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.normalization = nn.BatchNorm2d(cout)
        self.activation = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        return self.activation(self.normalization(self.convolution(x)))


class HFShortCut(nn.Module):  # transformers ResNetShortCut
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.normalization = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.normalization(self.convolution(x))


class HFBottleNeckLayer(nn.Module):  # transformers ResNetBottleNeckLayer, with downsample_in_bottleneck
    def __init__(self, cin, cout, stride=1, downsample_in_bottleneck=False):
        super().__init__()
        mid = cout // 4
        self.shortcut = HFShortCut(cin, cout, stride) if cin != cout or stride != 1 else nn.Identity()
        self.layer = nn.Sequential(
            HFConvLayer(cin, mid, 1, stride if downsample_in_bottleneck else 1),
            HFConvLayer(mid, mid, 3, 1 if downsample_in_bottleneck else stride),
            HFConvLayer(mid, cout, 1, act=False),
        )

    def forward(self, x):
        return torch.relu(self.layer(x) + self.shortcut(x))


class HFResNetForImageClassification(nn.Module):
    """transformers' ResNetForImageClassification module tree (resnet.embedder / resnet.encoder.stages / classifier)."""

    def __init__(self, config: dict):
        super().__init__()
        self.resnet = nn.Module()
        self.resnet.embedder = nn.Module()
        self.resnet.embedder.embedder = HFConvLayer(3, config["embedding_size"], 7, 2)
        self.resnet.embedder.pooler = nn.MaxPool2d(3, 2, 1)
        self.resnet.encoder = nn.Module()
        stages, cin = [], config["embedding_size"]
        for i, (width, depth) in enumerate(zip(config["hidden_sizes"], config["depths"], strict=True)):
            stride = 2 if i > 0 or config["downsample_in_first_stage"] else 1
            down = config["downsample_in_bottleneck"]
            stage = nn.Module()
            stage.layers = nn.Sequential(
                HFBottleNeckLayer(cin, width, stride, down),
                *[HFBottleNeckLayer(width, width) for _ in range(depth - 1)],
            )
            stages.append(stage)
            cin = width
        self.resnet.encoder.stages = nn.ModuleList(stages)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin, config["num_labels"]))

    def features(self, x):
        x = self.resnet.embedder.pooler(self.resnet.embedder.embedder(x))
        out = []
        for stage in self.resnet.encoder.stages:
            x = stage.layers(x)
            out.append(x)
        return out


def ddp(state: dict, prefix: str = "module.") -> dict:
    """A state_dict as DistributedDataParallel saves it."""
    return {prefix + k: v for k, v in state.items()}


def sgd_state(module: nn.Module) -> dict:
    """A real optimizer state_dict (momentum buffers after one step), as training checkpoints carry it."""
    params = [p for p in module.parameters()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    return opt.state_dict()


# ---------------------------------------------------------------------------------------------------------------
# The sources: each writes its file(s) and returns (weights path, a function computing the reference features on
# `rgb`, extra overrides)
# ---------------------------------------------------------------------------------------------------------------


def torchvision_normalize(rgb, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """ToTensor (RGB 0..1) then Normalize: what MoCo, DINO, SwAV, Barlow Twins and timm feed."""
    return TF.normalize(rgb, mean, std)


def reference(net, net_input):
    with torch.no_grad():
        return [f[0].float() for f in copy.deepcopy(net).double().features(net_input[None].double())]


def moco(tmp, rgb, mlp: bool = True):
    """moco/main_moco.py: {'epoch', 'arch', 'state_dict', 'optimizer'} saved by torch 1.4 (legacy format) as
    moco_v2_800ep_pretrain.pth.tar; model = DDP(MoCo(resnet50, mlp=...)): encoder_q / encoder_k whose fc is the
    projection (v1: the ResNet's own fc with 128 outputs; v2, mlp=True: Linear-ReLU before it), queue and queue_ptr."""
    encoder_q = randomize(TorchvisionStyleResNet(num_classes=32), 1)
    if mlp:
        encoder_q.fc = nn.Sequential(nn.Linear(8 * STEM * 4, 8 * STEM * 4), nn.ReLU(), nn.Linear(8 * STEM * 4, 32))
    encoder_k = randomize(copy.deepcopy(encoder_q), 2)  # drifted from encoder_q: taking it would be visible
    state = {
        **{f"encoder_q.{k}": v for k, v in encoder_q.state_dict().items()},
        **{f"encoder_k.{k}": v for k, v in encoder_k.state_dict().items()},
        "queue": torch.randn(32, 64),
        "queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    path = tmp / ("moco_v2_800ep_pretrain.pth.tar" if mlp else "moco_v1_200ep_pretrain.pth.tar")
    checkpoint = {"epoch": 800, "arch": "resnet50", "state_dict": ddp(state), "optimizer": sgd_state(encoder_q)}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    return path, lambda: reference(encoder_q, torchvision_normalize(rgb)), []


def moco_v3(tmp, rgb):
    """moco-v3/main_moco.py: {'epoch', 'arch', 'state_dict', 'optimizer', 'scaler'}; model = DDP(MoCo_ResNet):
    base_encoder / momentum_encoder (fc a projection MLP with BN) and predictor."""
    base = randomize(TorchvisionStyleResNet(), 3)
    base.fc = nn.Sequential(nn.Linear(8 * STEM * 4, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32))
    momentum = randomize(copy.deepcopy(base), 4)
    predictor = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32))
    state = {
        **{f"base_encoder.{k}": v for k, v in base.state_dict().items()},
        **{f"momentum_encoder.{k}": v for k, v in momentum.state_dict().items()},
        **{f"predictor.{k}": v for k, v in predictor.state_dict().items()},
    }
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
    path = tmp / "r-50-1000ep.pth.tar"
    checkpoint = {"epoch": 1000, "arch": "resnet50", "state_dict": ddp(state), "optimizer": sgd_state(base)}
    torch.save({**checkpoint, "scaler": {**scaler, "_growth_tracker": 0}}, path)
    return path, lambda: reference(base, torchvision_normalize(rgb)), []


def dino_network(seed: int) -> tuple[nn.Module, dict]:
    """dino/main_dino.py for a torchvision arch: MultiCropWrapper(resnet with fc = Identity, DINOHead), in DDP."""
    backbone = randomize(TorchvisionStyleResNet(), seed)
    backbone.fc = nn.Identity()
    head = {
        "mlp.0.weight": torch.randn(64, 8 * STEM * 4),
        "mlp.0.bias": torch.zeros(64),
        "mlp.2.weight": torch.randn(16, 64),
        "mlp.2.bias": torch.zeros(16),
        "last_layer.weight_g": torch.ones(128, 1),  # nn.utils.weight_norm's parameters
        "last_layer.weight_v": torch.randn(128, 16),
    }
    state = {
        **{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
        **{f"head.{k}": v for k, v in head.items()},
    }
    return backbone, ddp(state)


def dino(tmp, rgb):
    """dino/main_dino.py save_dict: student, teacher (both DDP for a BN network), optimizer, epoch, the argparse
    Namespace `args` and dino_loss's `center`; DINO's evaluation takes the teacher."""
    _, student = dino_network(5)
    teacher_net, teacher = dino_network(6)
    args = argparse.Namespace(arch="resnet50", out_dim=128, momentum_teacher=0.996, epochs=100, lr=0.3)
    path = tmp / "checkpoint.pth"
    torch.save(
        {
            "student": student,
            "teacher": teacher,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.3, "params": [0, 1]}]},
            "epoch": 100,
            "args": args,
            "dino_loss": {"center": torch.zeros(1, 128)},
        },
        path,
    )
    return path, lambda: reference(teacher_net, torchvision_normalize(rgb)), ["pretrained.checkpoint_key=teacher"]


def swav(tmp, rgb):
    """swav_800ep_pretrain.pth.tar: the DDP state_dict of swav/src/resnet50.py (torchvision names, projection_head,
    prototypes); SwAV normalizes with std [0.228, 0.224, 0.225]."""
    net = randomize(TorchvisionStyleResNet(), 7)
    del net.fc
    state = dict(net.state_dict())
    state.update(
        {
            "projection_head.0.weight": torch.randn(64, 8 * STEM * 4),
            "projection_head.0.bias": torch.zeros(64),
            "projection_head.1.weight": torch.ones(64),
            "projection_head.1.bias": torch.zeros(64),
            "projection_head.1.running_mean": torch.zeros(64),
            "projection_head.1.running_var": torch.ones(64),
            "projection_head.3.weight": torch.randn(16, 64),
            "projection_head.3.bias": torch.zeros(16),
            "prototypes.weight": torch.randn(300, 16),
        }
    )
    path = tmp / "swav_800ep_pretrain.pth.tar"
    torch.save(ddp(state), path)
    return path, lambda: reference(net, torchvision_normalize(rgb, std=SWAV_STD)), []


def barlow_twins(tmp, rgb):
    """barlowtwins/main.py checkpoint.pth: {'epoch', 'model': DDP(BarlowTwins).state_dict(), 'optimizer'}: the
    backbone (fc = Identity), projector and the BN of its output."""
    backbone = randomize(TorchvisionStyleResNet(), 8)
    backbone.fc = nn.Identity()
    projector = nn.Sequential(nn.Linear(8 * STEM * 4, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64))
    state = {
        **{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
        **{f"projector.{k}": v for k, v in projector.state_dict().items()},
        **{f"bn.{k}": v for k, v in nn.BatchNorm1d(64, affine=False).state_dict().items()},
    }
    path = tmp / "checkpoint.pth"
    torch.save({"epoch": 1000, "model": ddp(state), "optimizer": sgd_state(backbone)}, path)
    return path, lambda: reference(backbone, torchvision_normalize(rgb)), []


def timm_config(arch: str = "resnet50") -> dict:
    """timm's config.json (timm/models/_hub.py save_for_hf), here with CLIP statistics in pretrained_cfg."""
    return {
        "architecture": arch,
        "num_classes": 10,
        "num_features": 8 * STEM * 4,
        "global_pool": "avg",
        "pretrained_cfg": {
            "tag": "clip_in1k",
            "custom_load": False,
            "input_size": [3, 224, 224],
            "fixed_input_size": False,
            "interpolation": "bicubic",
            "crop_pct": 0.95,
            "crop_mode": "center",
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
            "num_classes": 10,
            "pool_size": [7, 7],
            "first_conv": "conv1",
            "classifier": "fc",
        },
    }


def timm_safetensors(tmp, rgb):
    """A timm hub folder: model.safetensors (torchvision names, fc) + config.json with pretrained_cfg mean/std."""
    net = randomize(TorchvisionStyleResNet(), 9)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(timm_config()))
    return tmp / "model.safetensors", lambda: reference(net, torchvision_normalize(rgb, CLIP_MEAN, CLIP_STD)), []


def timm_bin_fp16(tmp, rgb):
    """The same folder with pytorch_model.bin (a torch zip file), weights stored in float16."""
    net = randomize(TorchvisionStyleResNet(), 10).half()
    torch.save(net.state_dict(), tmp / "pytorch_model.bin")
    (tmp / "config.json").write_text(json.dumps(timm_config()))
    return (
        tmp / "pytorch_model.bin",
        lambda: reference(net.float(), torchvision_normalize(rgb, CLIP_MEAN, CLIP_STD)),
        [],
    )


HF_CONFIG = {
    "architectures": ["ResNetForImageClassification"],
    "model_type": "resnet",
    "num_channels": 3,
    "embedding_size": STEM,
    "hidden_sizes": [STEM * 4 * 2**i for i in range(4)],
    "depths": list(BLOCKS),
    "layer_type": "bottleneck",
    "hidden_act": "relu",
    "downsample_in_first_stage": False,
    "downsample_in_bottleneck": True,
    "num_labels": 10,
}
HF_PREPROCESSOR = {
    "image_processor_type": "ConvNextImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "crop_pct": 0.875,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
}


def transformers_resnet(tmp, rgb):
    """A Hugging Face folder: model.safetensors of ResNetForImageClassification, config.json (here with
    downsample_in_bottleneck: the stride in the 1x1) and preprocessor_config.json (rescale 1/255, mean/std)."""
    net = randomize(HFResNetForImageClassification(HF_CONFIG), 11)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(HF_CONFIG))
    (tmp / "preprocessor_config.json").write_text(json.dumps(HF_PREPROCESSOR))
    pixels = (rgb * 255) * HF_PREPROCESSOR["rescale_factor"]  # the processor's input is a 0..255 RGB image
    return tmp / "model.safetensors", lambda: reference(net, TF.normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)), []


MMPRETRAIN_CFG = """auto_scale_lr = dict(base_batch_size=256)
model = dict(
    backbone=dict(
        depth=50,
        num_stages=4,
        out_indices=(3, ),
        style='pytorch',
        type='ResNet'),
    head=dict(in_channels=2048, num_classes=10, type='LinearClsHead'),
    neck=dict(type='GlobalAveragePooling'),
    type='ImageClassifier')
data_preprocessor = dict(
    mean=[
        123.675,
        116.28,
        103.53,
    ],
    num_classes=10,
    std=[
        58.395,
        57.12,
        57.375,
    ],
    to_rgb=True)
"""


def mmpretrain_pytorch(tmp, rgb):
    """mmengine's checkpoint of an mmpretrain ImageClassifier: {'meta': {cfg (pretty_text), ...}, 'state_dict':
    backbone.* and head.fc.*}; images read BGR 0..255 by mmcv, flipped to RGB (to_rgb), normalized in 0..255."""
    net = randomize(TorchvisionStyleResNet(), 12)
    state = {f"backbone.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state.update({"head.fc.weight": net.fc.weight.detach(), "head.fc.bias": net.fc.bias.detach()})
    meta = {
        "cfg": MMPRETRAIN_CFG,
        "seed": 0,
        "experiment_name": "resnet50_8xb32_in1k",
        "time": "20230101_000000",
        "mmengine_version": "0.10.3",
        "dataset_meta": {"classes": tuple(f"c{i}" for i in range(10))},
        "epoch": 100,
        "iter": 500400,
    }
    path = tmp / "resnet50_8xb32_in1k_20210831-ea4938fc.pth"
    torch.save({"meta": meta, "state_dict": state}, path)
    bgr255 = rgb.flip(0) * 255  # mmcv.imread
    net_input = TF.normalize(bgr255.flip(0), [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])  # to_rgb
    return path, lambda: reference(net, net_input), []


MMCV_CAFFE_CFG = """img_norm_cfg = dict(
    mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], to_rgb=False)
model = dict(
    type='MoCo',
    backbone=dict(
        type='ResNet',
        depth=50,
        in_channels=3,
        out_indices=[4],
        norm_cfg=dict(type='BN'),
        style='caffe'),
    neck=dict(type='MoCoV2Neck', in_channels=2048, hid_channels=2048, out_channels=128),
    head=dict(type='ContrastiveHead', temperature=0.2))
"""


def mmselfsup_caffe(tmp, rgb):
    """An mmcv-era mmselfsup MoCo checkpoint of a caffe-style ResNet: {'meta': {'config': ...}, 'state_dict':
    backbone.*, neck.*, queue, queue_ptr, encoder_q.0.* (the same backbone registered twice: mmselfsup 0.x sets
    self.backbone = self.encoder_q[0]) and encoder_k.0.*}; BGR 0..255 minus the mean, std 1, stride in the 1x1."""
    net = randomize(TorchvisionStyleResNet(stride_in_1x1=True), 13)
    del net.fc
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    state.update({f"encoder_q.0.{k}": v for k, v in net.state_dict().items()})
    state.update({f"encoder_k.0.{k}": v + 1 for k, v in net.state_dict().items()})
    state.update({"neck.mlp.0.weight": torch.randn(64, 8 * STEM * 4), "neck.mlp.0.bias": torch.zeros(64)})
    state.update({"queue": torch.randn(128, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)})
    path = tmp / "mocov2_resnet50_caffe.pth"
    torch.save({"meta": {"epoch": 200, "iter": 1000, "config": MMCV_CAFFE_CFG}, "state_dict": state}, path)
    net_input = rgb.flip(0) * 255 - torch.tensor([103.53, 116.28, 123.675])[:, None, None]
    return path, lambda: reference(net, net_input), []


SOURCES = {
    "moco_v1": lambda tmp, rgb: moco(tmp, rgb, mlp=False),
    "moco_v2": moco,
    "moco_v3": moco_v3,
    "dino": dino,
    "swav": swav,
    "barlow_twins": barlow_twins,
    "timm_safetensors": timm_safetensors,
    "timm_bin_fp16": timm_bin_fp16,
    "transformers": transformers_resnet,
    "mmpretrain_pytorch_style": mmpretrain_pytorch,
    "mmselfsup_caffe_style": mmselfsup_caffe,
}
# The values that differ from torchvision's are those the source states: SwAV's std, timm's pretrained_cfg (CLIP's
# here), the transformers processor's rescale and config's downsample_in_bottleneck, mmpretrain's 0..255 statistics,
# the caffe style's BGR mean and stride.
MEAN_STD = {
    "swav": (IMAGENET_MEAN, SWAV_STD),
    "timm_safetensors": (CLIP_MEAN, CLIP_STD),
    "timm_bin_fp16": (CLIP_MEAN, CLIP_STD),
    "mmpretrain_pytorch_style": ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
    "mmselfsup_caffe_style": ([103.53, 116.28, 123.675], [1.0, 1.0, 1.0]),
}
EXPECTED = {  # source_format, convention (input_format, pixel_scale, stride_in_1x1), what is set aside
    "moco_v1": ("moco", ("RGB", 1.0, False), ["MoCo key encoder", "MoCo queue", "projection head"]),
    "moco_v2": ("moco", ("RGB", 1.0, False), ["MoCo key encoder", "MoCo queue", "projection head"]),
    "moco_v3": ("moco-v3", ("RGB", 1.0, False), ["MoCo v3 momentum encoder", "MoCo v3 prediction head", "projection"]),
    "dino": ("dino", ("RGB", 1.0, False), ["DINO projection head"]),
    "swav": ("swav", ("RGB", 1.0, False), ["SwAV projection head", "SwAV prototypes"]),
    "barlow_twins": ("barlowtwins", ("RGB", 1.0, False), ["Barlow Twins projector", "Barlow Twins BN"]),
    "timm_safetensors": ("timm", ("RGB", 1.0, False), []),
    "timm_bin_fp16": ("timm", ("RGB", 1.0, False), []),
    "transformers": ("transformers", ("RGB", 1.0, True), []),
    "mmpretrain_pytorch_style": ("openmmlab", ("RGB", 255.0, False), ["not the backbone"]),
    "mmselfsup_caffe_style": ("openmmlab", ("BGR", 255.0, True), ["not the backbone"]),
}


# ---------------------------------------------------------------------------------------------------------------
# Through the normal path: load_config -> resolve_input_convention -> build_detector -> initialize
# ---------------------------------------------------------------------------------------------------------------


def pretrained_config(tmp_path, path, *extra: str):
    return load_config(
        MINI_CONFIG,
        [
            f"output={tmp_path / 'run'}",
            "init=pretrained",
            f"weights={path}",
            "model.depth=50",
            f"model.stem_width={STEM}",
            "model.norm=FrozenBN",
            "model.fpn_channels=32",
            *extra,
        ],
    )


def detector_features(cfg, rgb):
    """The detector's body features on an RGB 0..1 image, through its own transform; the init record; the body."""
    model = build_detector(cfg, num_classes=3)
    record = initialize(model, cfg)
    model.eval()
    model.transform.train()  # normalize and batch, but no test-time resize: compare at the image's own size
    with torch.no_grad():
        images, _ = model.transform([rgb])
        features = model.backbone.body(images.tensors)
    return [features[str(i)][0] for i in range(4)], record, model.backbone.body


def relative_error(ours, reference_features) -> float:
    assert [t.shape for t in ours] == [t.shape for t in reference_features]
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, reference_features, strict=True))


@pytest.fixture(scope="module")
def rgb():
    """An RGB image in [0, 1], sides multiples of 32 (no padding), as the data pipeline yields it."""
    return torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(3))


def import_source(name: str, tmp_path, rgb) -> tuple[float, float, dict, object]:
    """Writes source `name`, imports it through the normal path; returns (max relative feature difference, the same
    with the loaded body fed torchvision's input instead of the source's, init record, resolved config)."""
    path, expected, extra = SOURCES[name](tmp_path, rgb)
    cfg = pretrained_config(tmp_path, path, *extra)
    resolve_input_convention(cfg)
    ours, record, body = detector_features(cfg, rgb)
    with torch.no_grad():
        plain = body(torchvision_normalize(rgb)[None])
    reference_features = expected()
    plain_error = relative_error([plain[str(i)][0] for i in range(4)], reference_features)
    return relative_error(ours, reference_features), plain_error, record, cfg


@pytest.mark.parametrize("name", list(SOURCES))
def test_each_source_runs_as_the_network_it_was_trained_as(name, tmp_path, rgb):
    error, plain_error, record, cfg = import_source(name, tmp_path, rgb)
    assert error < 1e-4, f"{name}: features differ from the reference by {error:.2e}"
    # Where the source's pixels differ from torchvision's (mmpretrain's 0..255 statistics are torchvision's x 255: the
    # same pixels), a loader that fed torchvision's input would be caught at this tolerance.
    if name in ("swav", "timm_safetensors", "timm_bin_fp16", "mmselfsup_caffe_style"):
        assert plain_error > 1e-4, f"{name}: torchvision's input gives the same features ({plain_error:.2e})"
    report = record["report"]
    source_format, (input_format, scale, stride), set_aside = EXPECTED[name]
    assert (report["source_format"], report["coverage"], report["unexpected"]) == (source_format, 1.0, [])
    assert (cfg.model.input_format, cfg.model.pixel_scale, cfg.model.stride_in_1x1) == (input_format, scale, stride)
    mean, std = MEAN_STD.get(name, (IMAGENET_MEAN, IMAGENET_STD))
    assert cfg.model.pixel_mean == pytest.approx(mean) and cfg.model.pixel_std == pytest.approx(std)
    conv = record["input_convention"]
    assert conv["source"] == "weights file" and conv["weights_file"]["known"] is True
    # Heads, key/momentum encoders and queues are listed by rule, never loaded nor counted in coverage.
    reasons = " | ".join(report["set_aside"])
    assert all(r in reasons for r in set_aside), reasons
    set_aside_keys = [k for keys in report["set_aside"].values() for k in keys]
    assert set(set_aside_keys) <= set(report["ignored"])
    assert not set(set_aside_keys) & set(report["matched"])


# ---------------------------------------------------------------------------------------------------------------
# Several networks in one file: pretrained.checkpoint_key
# ---------------------------------------------------------------------------------------------------------------


def test_a_file_with_several_networks_is_refused_without_checkpoint_key(tmp_path, rgb):
    path, _, _ = dino(tmp_path, rgb)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pth holds several networks: student, teacher; set "):
        resolve_input_convention(pretrained_config(tmp_path, path))
    with pytest.raises(CheckpointError, match=r"no network under pretrained.checkpoint_key='ema'.*student, teacher"):
        resolve_input_convention(pretrained_config(tmp_path, path, "pretrained.checkpoint_key=ema"))
    # The student is another network: chosen explicitly, it loads, and the record says which one ran.
    cfg = pretrained_config(tmp_path, path, "pretrained.checkpoint_key=student")
    resolve_input_convention(cfg)
    ours, record, _ = detector_features(cfg, rgb)
    student_net, _ = dino_network(5)  # the seed dino() gave the student
    assert relative_error(ours, reference(student_net, torchvision_normalize(rgb))) < 1e-4
    assert record["report"]["checkpoint_key"] == "student"


def test_timm_ema_checkpoint_chooses_between_state_dict_and_state_dict_ema(tmp_path, rgb):
    """timm's train.py checkpoint: state_dict and state_dict_ema (plus args, a Namespace): ambiguous until chosen."""
    live, ema = randomize(TorchvisionStyleResNet(), 20), randomize(TorchvisionStyleResNet(), 21)
    (tmp_path / "config.json").write_text(json.dumps(timm_config()))
    path = tmp_path / "model_best.pth.tar"
    torch.save(
        {
            "epoch": 99,
            "arch": "resnet50",
            "state_dict": live.state_dict(),
            "state_dict_ema": ema.state_dict(),
            "optimizer": sgd_state(live),
            "version": 2,
            "args": argparse.Namespace(model="resnet50", lr=0.5),
            "metric": 80.1,
        },
        path,
    )
    with pytest.raises(CheckpointError, match="holds several networks: state_dict, state_dict_ema"):
        resolve_input_convention(pretrained_config(tmp_path, path))
    cfg = pretrained_config(tmp_path, path, "pretrained.checkpoint_key=state_dict_ema")
    resolve_input_convention(cfg)
    ours, record, _ = detector_features(cfg, rgb)
    assert relative_error(ours, reference(ema, torchvision_normalize(rgb, CLIP_MEAN, CLIP_STD))) < 1e-4
    assert record["report"]["checkpoint_key"] == "state_dict_ema"


# ---------------------------------------------------------------------------------------------------------------
# Renamed and truncated variants are refused, naming the missing keys and the coverage
# ---------------------------------------------------------------------------------------------------------------

_LAST_STAGE = {"transformers": "stages.3.", "default": "layer4."}
_RENAME = {"transformers": (r"\.convolution\.", ".conv."), "default": (r"\blayer(\d)", r"stage\1")}


def _rewrite(path, name, change) -> None:
    """Rewrites the file of source `name` in its own container, with `change` applied to its network's keys."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        save_file(change(load_file(path)), path)
        return
    obj = torch.load(path, map_location="cpu", weights_only=False)  # the test's own file
    key = {"dino": "teacher", "barlow_twins": "model"}.get(name, "state_dict" if "state_dict" in obj else None)
    if key:
        obj[key] = change(obj[key])
    else:
        obj = change(obj)
    legacy = name in ("moco_v1", "moco_v2")
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize("name", list(SOURCES))
@pytest.mark.parametrize("variant", ["truncated", "renamed"])
def test_renamed_or_truncated_variants_are_refused(name, variant, tmp_path, rgb):
    path, _, extra = SOURCES[name](tmp_path, rgb)
    kind = "transformers" if name == "transformers" else "default"
    if variant == "truncated":
        stage = _LAST_STAGE[kind]
        _rewrite(path, name, lambda sd: {k: v for k, v in sd.items() if stage not in k})
    else:
        old, new = _RENAME[kind]
        _rewrite(path, name, lambda sd: {re.sub(old, new, k): v for k, v in sd.items()})
    cfg = pretrained_config(tmp_path, path, *extra)
    resolve_input_convention(cfg)
    with pytest.raises(CheckpointError) as e:
        detector_features(cfg, rgb)
    msg = str(e.value)
    assert re.search(r"covers only \d+\.\d% of the ResNet-50 backbone \(min 99%\): first missing keys: \S+", msg), msg
    assert ("layer4." in msg) if variant == "truncated" else ("first missing keys: bn1" in msg or "layer1" in msg)


# ---------------------------------------------------------------------------------------------------------------
# Files that do not state their convention
# ---------------------------------------------------------------------------------------------------------------

TORCHVISION_KEYS = [
    "model.input_format=RGB",
    "model.pixel_scale=1.0",
    "model.pixel_mean=[0.485,0.456,0.406]",
    "model.pixel_std=[0.229,0.224,0.225]",
    "model.stride_in_1x1=false",
]


def test_a_bare_safetensors_file_needs_the_convention_keys(tmp_path, rgb):
    net = randomize(TorchvisionStyleResNet(), 30)
    path = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    with pytest.raises(ConfigError) as e:
        resolve_input_convention(pretrained_config(tmp_path, path, *TORCHVISION_KEYS[:2]))
    msg = str(e.value)
    assert (
        "is not determined by the file" in msg and "set model.pixel_mean, model.pixel_std, model.stride_in_1x1" in msg
    )
    cfg = pretrained_config(tmp_path, path, *TORCHVISION_KEYS)
    resolve_input_convention(cfg)
    ours, record, _ = detector_features(cfg, rgb)
    assert relative_error(ours, reference(net, torchvision_normalize(rgb))) < 1e-4
    assert record["input_convention"]["source"].startswith("config (model.* keys): the weights file does not state")
    assert record["report"]["input_convention"]["pixel_mean"] is None


def test_openmmlab_and_transformers_files_without_their_config_need_the_keys(tmp_path, rgb):
    path, _, _ = mmpretrain_pytorch(tmp_path, rgb)
    obj = torch.load(path, weights_only=True)
    torch.save({"state_dict": obj["state_dict"], "meta": {"epoch": 100}}, path)
    with pytest.raises(ConfigError, match=r"OpenMMLab checkpoint \(backbone\.\*\) without a config in its meta"):
        resolve_input_convention(pretrained_config(tmp_path, path))
    hf = tmp_path / "hf"
    hf.mkdir()
    path, _, _ = transformers_resnet(hf, rgb)
    (hf / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match="without its preprocessor_config.json with image_mean and image_std"):
        resolve_input_convention(pretrained_config(hf, path))


def test_torchvision_layout_files_keep_the_assumed_torchvision_convention(tmp_path, rgb):
    """A plain torchvision-named .pth (torchvision's own, DINO's and Barlow Twins' backbone-only releases) is not
    refused: its layout is torchvision's and every such source trains with torchvision's input, so that convention
    is assumed as before, and explicit keys still win."""
    net = randomize(TorchvisionStyleResNet(), 31)
    net.fc = nn.Identity()  # dino_resnet50_pretrain.pth / Barlow Twins resnet50.pth: no classifier
    path = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save(net.state_dict(), path)
    cfg = pretrained_config(tmp_path, path)
    resolved = resolve_input_convention(cfg)
    assert resolved["weights_file"]["known"] is False and cfg.model.pixel_std == pytest.approx(IMAGENET_STD)
    ours, _, _ = detector_features(cfg, rgb)
    assert relative_error(ours, reference(net, torchvision_normalize(rgb))) < 1e-4


def test_transformers_first_stage_downsampling_is_refused(tmp_path, rgb):
    transformers_resnet(tmp_path, rgb)
    (tmp_path / "config.json").write_text(json.dumps({**HF_CONFIG, "downsample_in_first_stage": True}))
    with pytest.raises(CheckpointError, match="config.json sets downsample_in_first_stage"):
        resolve_input_convention(pretrained_config(tmp_path, tmp_path / "model.safetensors"))


# ---------------------------------------------------------------------------------------------------------------
# Loading never runs code from the file, whatever its container
# ---------------------------------------------------------------------------------------------------------------


class Exploit:
    """Unpickling this calls os.system, which would create `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _evil_checkpoint(marker) -> dict:
    net = randomize(TorchvisionStyleResNet(), 40)
    return {"epoch": 1, "arch": "resnet50", "state_dict": ddp(net.state_dict()), "payload": Exploit(marker)}


def _write_zip(path, marker):
    torch.save(_evil_checkpoint(marker), path)


def _write_legacy(path, marker):
    torch.save(_evil_checkpoint(marker), path, _use_new_zipfile_serialization=False)


def _write_pickle(path, marker):
    import pickle

    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": torch.zeros(2).numpy(), "x": Exploit(marker)}}, f, protocol=2)


def _write_namespace_payload(path, marker):
    """An argparse.Namespace (admitted) whose attribute is the exploit (not admitted)."""
    checkpoint = _evil_checkpoint(marker)
    checkpoint["args"] = argparse.Namespace(arch="resnet50", hook=checkpoint.pop("payload"))
    torch.save(checkpoint, path)


def _write_disguised_safetensors(path, marker):
    """A pickle named model.safetensors, beside a timm config.json."""
    import pickle

    (path.parent / "config.json").write_text(json.dumps(timm_config()))
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": Exploit(marker)}, f, protocol=4)


@pytest.mark.parametrize(
    ("filename", "write", "message"),
    [
        ("moco_v2_800ep_pretrain.pth.tar", _write_legacy, r"holds objects of type (posix|os|nt)\.system"),
        ("checkpoint.pth", _write_zip, r"holds objects of type (posix|os|nt)\.system"),
        ("checkpoint.pth", _write_namespace_payload, r"holds objects of type (posix|os|nt)\.system"),
        ("R-50.pkl", _write_pickle, r"refusing to load (posix|os|nt)\.system"),
        ("pytorch_model.bin", _write_zip, r"holds objects of type (posix|os|nt)\.system"),
        ("model.safetensors", _write_disguised_safetensors, r"named \.safetensors but is not a safetensors file"),
    ],
)
def test_a_malicious_object_in_any_container_is_refused_and_never_runs(tmp_path, filename, write, message):
    marker = tmp_path / "pwned"
    path = tmp_path / filename
    write(path, marker)
    with pytest.raises(CheckpointError, match=message) as e:
        resolve_input_convention(pretrained_config(tmp_path, path))
    assert not marker.exists()
    if "holds objects of type" in message:  # the one-line extraction a user can run on a file they trust
        assert "weights_only=False" in str(e.value) and ".state_dict.pth" in str(e.value)


def test_hub_config_code_references_are_never_imported(tmp_path, rgb):
    """transformers' auto_map (trust_remote_code) names Python files of the repository: they are never imported."""
    marker = tmp_path / "pwned"
    (tmp_path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    path, expected, _ = transformers_resnet(tmp_path, rgb)
    config = {**HF_CONFIG, "auto_map": {"AutoModelForImageClassification": "modeling_evil.EvilResNet"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = pretrained_config(tmp_path, path)
    resolve_input_convention(cfg)
    ours, _, _ = detector_features(cfg, rgb)
    assert relative_error(ours, expected()) < 1e-4 and not marker.exists()
