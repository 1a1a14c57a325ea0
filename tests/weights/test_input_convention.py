"""Every pre-trained file runs as the network it was trained as: its input convention (channel order, scale,
mean/std) and its ResNet stride placement.

The references below are written here, independently of scratchdet's code: a functional ResNet-50 computed the way
Detectron builds it (stem conv 7x7/2 + norm + ReLU + max-pool 3x3/2, bottlenecks branch2a/2b/2c + branch1 shortcut,
the stage's stride in branch2a or branch2b) from a torchvision-named state, fed as each source feeds it. Files are
written from that state in each source's layout with the test's own name mappings.
"""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import config_to_dict, load_config
from scratchdet.engine import trainer
from scratchdet.engine.run_eval import evaluate_run
from scratchdet.errors import CheckpointError, ConfigError
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.input_transform import model_input_convention
from scratchdet.weights.convention import DETECTRON_MSRA, read_weight_convention
from scratchdet.weights.initialization import initialize, resolve_input_convention

BLOCKS = (3, 4, 6, 3)  # ResNet-50
DETECTRON_MEAN = torch.tensor([102.9801, 115.9465, 122.7717])  # Detectron PIXEL_MEANS, BGR order, 0..255
D2_MEAN = torch.tensor([103.530, 116.280, 123.675])  # detectron2 MODEL.PIXEL_MEAN default, BGR
TV_MEAN, TV_STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


# ---------------------------------------------------------------------------------------------------------------
# A random ResNet-50 state in torchvision names, and the reference network
# ---------------------------------------------------------------------------------------------------------------


def r50_state(stem: int, norm: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision-named ResNet-50 tensors at stem width `stem`; norm: affine (scale/shift only), bn (+ running
    statistics) or gn. Convs are He-scaled and the last conv of each block damped, so activations stay moderate."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name, out, inp, k, damp=1.0):
        state[name] = torch.randn(out, inp, k, k, generator=g) * (2.0 / (inp * k * k)) ** 0.5 * damp

    def nrm(name, c):
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        if norm == "bn":
            state[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
            state[f"{name}.running_var"] = 1 + 0.2 * torch.rand(c, generator=g)

    conv("conv1.weight", stem, 3, 7)
    nrm("bn1", stem)
    inplanes = stem
    for i, n in enumerate(BLOCKS):
        planes = stem * 2**i
        for b in range(n):
            p = f"layer{i + 1}.{b}."
            conv(p + "conv1.weight", planes, inplanes, 1)
            nrm(p + "bn1", planes)
            conv(p + "conv2.weight", planes, planes, 3)
            nrm(p + "bn2", planes)
            conv(p + "conv3.weight", planes * 4, planes, 1, damp=0.3)
            nrm(p + "bn3", planes * 4)
            if b == 0:
                conv(p + "downsample.0.weight", planes * 4, inplanes, 1, damp=0.3)
                nrm(p + "downsample.1", planes * 4)
            inplanes = planes * 4
    return state


def reference_features(state, net_input: torch.Tensor, *, norm: str, stride_in_1x1: bool) -> list[torch.Tensor]:
    """res2..res5 of a ResNet-50 computed as Detectron does; net_input [3, H, W] is already in the file's convention.

    norm: affine (Detectron's AffineChannel: s * x + b), bn (BN in inference), gn (GroupNorm, 32 groups).
    """

    def nrm(x, name):
        w, b = state[f"{name}.weight"][:, None, None], state[f"{name}.bias"][:, None, None]
        if norm == "affine":
            return x * w + b
        if norm == "bn":
            mean, var = state[f"{name}.running_mean"][:, None, None], state[f"{name}.running_var"][:, None, None]
            return (x - mean) / torch.sqrt(var + 1e-5) * w + b
        return F.group_norm(x, 32, state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-5)

    x = net_input[None].double()
    state = {k: v.double() for k, v in state.items()}
    x = F.max_pool2d(F.relu(nrm(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    features = []
    for i, n in enumerate(BLOCKS):
        for b in range(n):
            p = f"layer{i + 1}.{b}."
            stride = 2 if i > 0 and b == 0 else 1
            s1, s2 = (stride, 1) if stride_in_1x1 else (1, stride)
            y = F.relu(nrm(F.conv2d(x, state[p + "conv1.weight"], stride=s1), p + "bn1"))  # branch2a
            y = F.relu(nrm(F.conv2d(y, state[p + "conv2.weight"], stride=s2, padding=1), p + "bn2"))  # branch2b
            y = nrm(F.conv2d(y, state[p + "conv3.weight"]), p + "bn3")  # branch2c
            if b == 0:  # branch1
                x = nrm(F.conv2d(x, state[p + "downsample.0.weight"], stride=stride), p + "downsample.1")
            x = F.relu(y + x)
        features.append(x[0].float())
    return features


def detectron_input(rgb: torch.Tensor, mean: torch.Tensor = DETECTRON_MEAN) -> torch.Tensor:
    """Detectron's blob: BGR (cv2.imread's order) in 0..255 minus the mean pixel, std 1."""
    return rgb.flip(0) * 255 - mean[:, None, None]


def torchvision_input(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - TV_MEAN[:, None, None]) / TV_STD[:, None, None]


# ---------------------------------------------------------------------------------------------------------------
# Writing the state in each source's layout (the test's own mappings, not weights/names.py's)
# ---------------------------------------------------------------------------------------------------------------

_C2_BRANCH = {
    "conv1": "2a",
    "bn1": "2a",
    "conv2": "2b",
    "bn2": "2b",
    "conv3": "2c",
    "bn3": "2c",
    "downsample.0": "1",
    "downsample.1": "1",
}
_C2_FIELD = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


def caffe2_blobs(state: dict[str, torch.Tensor], norm: str) -> dict[str, np.ndarray]:
    """Detectron blob names: conv1_w, res_conv1_bn_s / conv1_gn_s, res{S}_{B}_branch{1,2a,2b,2c}_{w,bn_s,gn_b,...}."""
    kind = "gn" if norm == "gn" else "bn"
    blobs = {}
    for key, value in state.items():
        module, field = key.rsplit(".", 1)
        if module == "conv1":
            name = "conv1_w"
        elif module == "bn1":
            name = f"res_conv1_bn_{_C2_FIELD[field]}" if kind == "bn" else f"conv1_gn_{_C2_FIELD[field]}"
        else:
            layer, block, part = module.split(".", 2)
            prefix = f"res{int(layer[5:]) + 1}_{block}_branch{_C2_BRANCH[part]}"
            name = f"{prefix}_w" if part.startswith(("conv", "downsample.0")) else f"{prefix}_{kind}_{_C2_FIELD[field]}"
        blobs[name] = value.numpy().astype(np.float32)
    blobs["fc1000_w"] = np.zeros((10, 4), np.float32)
    return blobs


def d2_name(key: str) -> str:
    """tools/convert-torchvision-to-d2.py's renaming."""
    if "layer" not in key:
        key = "stem." + key
    for t in (1, 2, 3, 4):
        key = key.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        key = key.replace(f"bn{t}", f"conv{t}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def write_pickle(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


# ---------------------------------------------------------------------------------------------------------------
# Through the normal path: load_config -> resolve_input_convention -> build_detector -> initialize
# ---------------------------------------------------------------------------------------------------------------


def pretrained_config(tmp_path, path, stem: int, norm: str, *extra: str):
    return load_config(
        MINI_CONFIG,
        [
            f"output={tmp_path / 'run'}",
            "init=pretrained",
            f"weights={path}",
            "model.depth=50",
            f"model.stem_width={stem}",
            f"model.norm={norm}",
            "model.fpn_channels=32",
            *extra,
        ],
    )


def detector_features(cfg, rgb: torch.Tensor) -> tuple[list[torch.Tensor], dict, torch.nn.Module]:
    """The detector's body features on an RGB 0..1 image, through its own transform; and the init record."""
    model = build_detector(cfg, num_classes=3)
    record = initialize(model, cfg)
    model.eval()
    model.transform.train()  # normalize and batch, but no test-time resize: compare at the image's own size
    with torch.no_grad():
        images, _ = model.transform([rgb])
        features = model.backbone.body(images.tensors)
    return [features[str(i)][0] for i in range(4)], record, model


def relative_error(ours: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    assert [t.shape for t in ours] == [t.shape for t in reference]
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, reference, strict=True))


@pytest.fixture(scope="module")
def rgb():
    """An RGB image in [0, 1], sides multiples of 32 (no padding), as the data pipeline yields it."""
    return torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(3))


def test_detectron_msra_r50_pkl_runs_bgr_255_with_the_stride_in_the_1x1(tmp_path, rgb):
    state = r50_state(16, "affine")
    path = tmp_path / "R-50.pkl"
    write_pickle(path, {"blobs": caffe2_blobs(state, "affine")})
    cfg = pretrained_config(tmp_path, path, 16, "FrozenBN")
    resolved = resolve_input_convention(cfg)
    m = cfg.model
    assert (m.input_format, m.pixel_scale, m.pixel_std, m.stride_in_1x1) == ("BGR", 255.0, [1.0, 1.0, 1.0], True)
    assert m.pixel_mean == pytest.approx(DETECTRON_MEAN.tolist())
    assert resolved["source"]["stride_in_1x1"] == "weights file R-50.pkl" and resolved["weights_file"]["known"]

    ours, record, model = detector_features(cfg, rgb)
    expected = reference_features(state, detectron_input(rgb), norm="affine", stride_in_1x1=True)
    assert relative_error(ours, expected) < 1e-4
    # The same weights with the stride in the 3x3, or fed torchvision's input, are other networks.
    assert (
        relative_error(ours, reference_features(state, detectron_input(rgb), norm="affine", stride_in_1x1=False)) > 1e-2
    )
    assert (
        relative_error(ours, reference_features(state, torchvision_input(rgb), norm="affine", stride_in_1x1=True))
        > 1e-2
    )
    assert model.backbone.body.layer3[0].conv1.stride == (2, 2) and model.backbone.body.layer3[0].conv2.stride == (1, 1)
    conv = record["input_convention"]
    assert conv["input_format"] == "BGR" and conv["stride_in_1x1"] is True and conv["source"] == "weights file"
    assert "MSRA" in conv["weights_file"]["origin"] and record["report"]["input_convention"]["known"] is True


@pytest.fixture(scope="module")
def fair_gn_file(tmp_path_factory):
    state = r50_state(32, "gn", seed=1)  # 32-channel multiples: GN with 32 groups everywhere, as Detectron's
    path = tmp_path_factory.mktemp("gn") / "R-50-GN.pkl"
    write_pickle(path, caffe2_blobs(state, "gn"))  # names at the top level, as detectron2 also accepts
    return path, state


def test_detectron_fair_gn_pkl_runs_bgr_255_with_the_stride_in_the_3x3(tmp_path, rgb, fair_gn_file):
    path, state = fair_gn_file
    cfg = pretrained_config(tmp_path, path, 32, "GN")
    resolve_input_convention(cfg)
    assert (cfg.model.input_format, cfg.model.pixel_scale, cfg.model.stride_in_1x1) == ("BGR", 255.0, False)
    ours, record, _ = detector_features(cfg, rgb)
    assert relative_error(ours, reference_features(state, detectron_input(rgb), norm="gn", stride_in_1x1=False)) < 1e-4
    assert relative_error(ours, reference_features(state, detectron_input(rgb), norm="gn", stride_in_1x1=True)) > 1e-2
    assert "GN" in record["input_convention"]["weights_file"]["origin"]


def test_detectron2_reconverted_msra_pkl_uses_detectron2_mean_and_bn_statistics(tmp_path, rgb):
    state = r50_state(16, "bn", seed=2)
    path = tmp_path / "R-50.pkl"
    write_pickle(path, caffe2_blobs(state, "bn"))  # BN not folded: bn_s, bn_b, bn_rm, bn_riv
    cfg = pretrained_config(tmp_path, path, 16, "FrozenBN")
    resolve_input_convention(cfg)
    assert cfg.model.pixel_mean == pytest.approx(D2_MEAN.tolist()) and cfg.model.stride_in_1x1 is True
    ours, _, _ = detector_features(cfg, rgb)
    expected = reference_features(state, detectron_input(rgb, D2_MEAN), norm="bn", stride_in_1x1=True)
    assert relative_error(ours, expected) < 1e-4


def test_detectron2_torchvision_conversion_runs_rgb_like_torchvision(tmp_path, rgb):
    state = r50_state(16, "bn", seed=3)
    path = tmp_path / "R-50-tv.pkl"
    write_pickle(
        path,
        {
            "model": {d2_name(k): v.numpy() for k, v in state.items()},
            "__author__": "torchvision",
            "matching_heuristics": True,
        },
    )
    cfg = pretrained_config(tmp_path, path, 16, "FrozenBN")
    resolve_input_convention(cfg)
    m = cfg.model
    assert (m.input_format, m.pixel_scale, m.stride_in_1x1) == ("RGB", 255.0, False)
    assert m.pixel_mean == pytest.approx([123.675, 116.28, 103.53]) and m.pixel_std == pytest.approx(
        [58.395, 57.12, 57.375]
    )
    ours, _, _ = detector_features(cfg, rgb)
    assert (
        relative_error(ours, reference_features(state, torchvision_input(rgb), norm="bn", stride_in_1x1=False)) < 1e-4
    )
    # The same numbers written in 0..1 units are the same convention: an explicit setting of them is accepted.
    same = pretrained_config(
        tmp_path,
        path,
        16,
        "FrozenBN",
        "model.pixel_scale=1.0",
        "model.pixel_mean=[0.485,0.456,0.406]",
        "model.pixel_std=[0.229,0.224,0.225]",
    )
    resolve_input_convention(same)
    assert same.model.pixel_scale == 1.0 and same.model.input_format == "RGB"


def test_torchvision_pth_runs_with_torchvision_normalization(tmp_path, rgb):
    state = r50_state(16, "bn", seed=4)
    path = tmp_path / "resnet50-narrow.pth"
    torch.save(state, path)
    cfg = pretrained_config(tmp_path, path, 16, "FrozenBN")
    resolved = resolve_input_convention(cfg)
    assert (cfg.model.input_format, cfg.model.pixel_scale, cfg.model.stride_in_1x1) == ("RGB", 1.0, False)
    assert resolved["weights_file"]["known"] is False  # a plain state_dict does not say: torchvision's assumed
    ours, record, _ = detector_features(cfg, rgb)
    assert (
        relative_error(ours, reference_features(state, torchvision_input(rgb), norm="bn", stride_in_1x1=False)) < 1e-4
    )
    assert record["input_convention"]["source"].startswith("weights file (assumed")


# ---------------------------------------------------------------------------------------------------------------
# Refusals and precedence
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def msra_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("msra") / "R-50.pkl"
    write_pickle(path, {"blobs": caffe2_blobs(r50_state(16, "affine"), "affine")})
    return path


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.input_format=RGB", "model.input_format='RGB'"),
        ("model.stride_in_1x1=false", "model.stride_in_1x1=False"),
        ("model.pixel_scale=1.0", "model.pixel_scale=1.0"),
    ],
)
def test_explicit_setting_conflicting_with_a_known_file_is_refused(tmp_path, msra_file, override, named):
    cfg = pretrained_config(tmp_path, msra_file, 16, "FrozenBN", override)
    with pytest.raises(ConfigError) as e:
        resolve_input_convention(cfg)
    msg = str(e.value)
    assert f"the config sets {named}, but R-50.pkl needs" in msg
    assert "model.input_format='BGR'" in msg and "model.stride_in_1x1=True" in msg and "MSRA" in msg
    assert "Drop these model.* keys to follow the file" in msg


def test_explicit_setting_wins_over_an_assumed_convention(tmp_path):
    path = tmp_path / "mine.pth"  # a torchvision-layout file: its convention is only assumed
    torch.save(r50_state(16, "bn"), path)
    cfg = pretrained_config(
        tmp_path,
        path,
        16,
        "FrozenBN",
        "model.input_format=BGR",
        "model.pixel_scale=255.0",
        "model.pixel_mean=[100.0,110.0,120.0]",
        "model.pixel_std=[1.0,1.0,1.0]",
    )
    resolved = resolve_input_convention(cfg)
    assert cfg.model.input_format == "BGR" and resolved["source"]["pixel_mean"] == "config"
    record = initialize(build_detector(cfg, num_classes=3), cfg)
    assert record["input_convention"]["source"].startswith("config (model.* keys), overriding")


def test_a_detector_built_before_resolving_is_refused_by_initialize(tmp_path, msra_file):
    cfg = pretrained_config(tmp_path, msra_file, 16, "FrozenBN")  # keys unset: built with torchvision's
    model = build_detector(cfg, num_classes=3)
    before = model.backbone.body.conv1.weight.clone()
    with pytest.raises(CheckpointError, match=r"resolve_input_convention"):
        initialize(model, cfg)
    assert torch.equal(model.backbone.body.conv1.weight, before)  # refused before loading anything


def test_scratch_gets_torchvision_unless_set_and_records_it(tmp_path):
    cfg = load_config(MINI_CONFIG, [f"output={tmp_path}/r"])
    resolved = resolve_input_convention(cfg)
    assert (cfg.model.input_format, cfg.model.pixel_mean, cfg.model.stride_in_1x1) == (
        "RGB",
        [0.485, 0.456, 0.406],
        False,
    )
    assert resolved["source"]["input_format"].startswith("torchvision's convention")
    record = initialize(build_detector(cfg, num_classes=3), cfg)
    assert record["input_convention"]["source"].startswith("torchvision's convention")
    bgr = load_config(
        MINI_CONFIG,
        [
            f"output={tmp_path}/b",
            "model.input_format=BGR",
            "model.pixel_scale=255.0",
            "model.pixel_mean=[103.0,116.0,123.0]",
            "model.pixel_std=[1.0,1.0,1.0]",
        ],
    )
    resolve_input_convention(bgr)
    model = build_detector(bgr, num_classes=3)
    assert model_input_convention(model).input_format == "BGR"
    assert initialize(model, bgr)["input_convention"]["source"] == "config (model.* keys)"


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.input_format=YUV", "model.input_format='YUV' is not valid"),
        ("model.pixel_mean=[1.0,2.0]", r"model.pixel_mean=\[1.0, 2.0\] needs 3 values"),
        ("model.pixel_std=[1.0,0.0,1.0]", "model.pixel_std=.* must be positive"),
        ("model.pixel_scale=0", "model.pixel_scale=0.0 must be positive"),
        ("model.stride_in_1x1=true", "ResNet-18 .basic blocks. has no such conv"),
    ],
)
def test_bad_convention_values_name_the_key(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(MINI_CONFIG, [f"output={tmp_path}/r", override])


# ---------------------------------------------------------------------------------------------------------------
# Through `scratchdet train`: config.yaml and init.json; `scratchdet pretrain` records its convention
# ---------------------------------------------------------------------------------------------------------------


def test_training_from_a_gn_pkl_records_the_convention(shapes_dir, tmp_path, fair_gn_file):
    path, _ = fair_gn_file
    out = tmp_path / "ft"
    cfg = load_config(
        MINI_CONFIG,
        tiny_overrides(
            shapes_dir,
            out,
            init="pretrained",
            weights=path,
            **{
                "model.depth": 50,
                "model.stem_width": 32,
                "model.fpn_channels": 32,
                "train.max_iters": 1,
                "eval.max_images": 1,
            },
        ),
    )
    given = config_to_dict(cfg)
    trainer.train(cfg)
    # The run filled in the file's convention in its own copy: the caller's config is as it was given.
    assert config_to_dict(cfg) == given and cfg.model.input_format is None
    saved = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert (saved["input_format"], saved["pixel_scale"], saved["pixel_std"], saved["stride_in_1x1"]) == (
        "BGR",
        255.0,
        [1.0, 1.0, 1.0],
        False,
    )
    record = json.loads((out / "init.json").read_text())
    assert record["input_convention"]["source"] == "weights file"
    assert record["input_convention"]["weights_file"]["known"] is True


def test_pretrain_records_its_convention_and_the_detector_follows_it(tmp_path):
    from scratchdet.pretrain.classify import pretrain
    from scratchdet.pretrain.config import load_pretrain_config

    out = tmp_path / "pre"
    bgr = [
        "model.input_format=BGR",
        "model.pixel_scale=255.0",
        "model.pixel_mean=[103.0,116.0,123.0]",
        "model.pixel_std=[57.0,57.0,58.0]",
    ]
    pretrain(
        load_pretrain_config(
            None,
            [
                f"output={out}",
                "data.synthetic=true",
                "data.synthetic_classes=2",
                "data.synthetic_train_images=8",
                "data.synthetic_val_images=4",
                "data.synthetic_size=32",
                "data.crop_size=32",
                "data.num_workers=0",
                "model.depth=18",
                "model.stem_width=8",
                "solver.batch_size=4",
                "train.epochs=null",
                "train.iters=2",
                "train.checkpoint_period=2",
                "eval.batch_size=4",
                *bgr,
            ],
        )
    )
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert summary["backbone"]["input_convention"]["input_format"] == "BGR"
    assert "model.pixel_scale=255.0" in summary["backbone"]["detector_overrides"]
    for weights in (out, out / "classifier_final.pth"):  # the run folder (latest checkpoint) or the flat weights
        cfg = load_config(
            MINI_CONFIG, [f"output={tmp_path}/det", "init=pretrained", f"weights={weights}", "model.stem_width=8"]
        )
        resolved = resolve_input_convention(cfg)
        assert (cfg.model.input_format, cfg.model.pixel_std) == ("BGR", [57.0, 57.0, 58.0])
        assert resolved["weights_file"]["known"] is True
    # The flat weights record a non-torchvision convention themselves, so a copy away from the run folder keeps it.
    copy = tmp_path / "elsewhere" / "my_backbone.pth"
    copy.parent.mkdir()
    shutil.copy(out / "classifier_final.pth", copy)
    copied = read_weight_convention(copy)
    assert copied.known and copied.convention.input_format == "BGR" and "recorded in the file" in copied.origin
    with pytest.raises(ConfigError, match="model.input_format='RGB'"):
        resolve_input_convention(
            load_config(
                MINI_CONFIG, [f"output={tmp_path}/d2", "init=pretrained", f"weights={out}", "model.input_format=RGB"]
            )
        )


def test_a_detection_checkpoint_copied_out_of_its_run_keeps_its_convention(shapes_dir, tmp_path, msra_file):
    run = tmp_path / "msra_run"
    cfg = load_config(
        MINI_CONFIG,
        [
            *tiny_overrides(shapes_dir, run, **{"train.max_iters": 1}),
            "init=pretrained",
            f"weights={msra_file}",
            "model.depth=50",
            "model.stem_width=16",
            "model.norm=FrozenBN",
        ],
    )
    trainer.train(cfg)
    copy = tmp_path / "det_copy.pth"
    shutil.copy(run / "checkpoints" / "model_0000001.pth", copy)
    found = read_weight_convention(copy)
    assert found.known and found.convention.same_network(DETECTRON_MSRA)
    with pytest.raises(ConfigError, match="give all four"):  # a partial pixel map would mix conventions
        resolve_input_convention(load_config(MINI_CONFIG, [f"output={tmp_path}/p", "model.input_format=BGR"]))
    # Evaluating the run with another convention would run another network on the same weights: refused.
    with pytest.raises(ConfigError, match="another network for the same weights"):
        evaluate_run(run, ["model.stride_in_1x1=false", "eval.max_images=1"])


def test_a_bottleneck_file_into_a_basic_block_body_fails_on_depth_not_on_the_stride(tmp_path, msra_file):
    cfg = pretrained_config(tmp_path, msra_file, 16, "FrozenBN", "model.depth=18")
    resolve_input_convention(cfg)
    assert cfg.model.stride_in_1x1 is False
    with pytest.raises(CheckpointError, match="covers only"):
        initialize(build_detector(cfg, 3), cfg)
