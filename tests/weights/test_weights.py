"""Pre-trained weight import: real key layouts (torchvision, scratchdet, Detectron) built locally with random values."""

from __future__ import annotations

import os
import pickle
import re
import struct

import numpy as np
import pytest
import torch
import torchvision
from helpers import MINI_CONFIG

from scratchdet.config import load_config
from scratchdet.errors import CheckpointError
from scratchdet.modeling.backbones import ResNet
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.norm import build_norm
from scratchdet.weights.audit import WeightReport, describe_body, load_backbone_weights
from scratchdet.weights.names import read_weight_file


def body(depth: int, norm: str, **kwargs) -> ResNet:
    return ResNet(depth, norm_layer=build_norm(norm, 32, for_backbone_block=True), **kwargs)


def assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory):
    """torchvision's ResNet-18 ImageNet layout (weights=None: random values, real keys, including fc.*)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("tv") / "resnet18-f37072fd.pth"
    torch.save(state, path)
    return path, state


# ---------------------------------------------------------------------------------------------------------------
# torchvision files
# ---------------------------------------------------------------------------------------------------------------


def test_torchvision_resnet50_loads_fully_and_exactly(tmp_path):
    state = torchvision.models.resnet50().state_dict()
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(state, path)
    model = body(50, "BN")
    report = load_backbone_weights(model, path, target_norm="BN")
    assert (report.source_format, report.source_norm, report.coverage) == ("torchvision", "BN", 1.0)
    assert not report.missing and not report.unexpected and not report.shape_mismatched
    assert {"fc.weight", "fc.bias"} <= set(report.ignored)
    assert_loaded(model, state)
    assert "coverage 100.00%" in report.summary()
    assert report.to_dict()["coverage"] == 1.0


def test_torchvision_resnext_loads_and_resnext101_32x8d_names_match(tmp_path):
    state = torchvision.models.resnext50_32x4d().state_dict()
    path = tmp_path / "resnext50_32x4d-7cdf4587.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # wrapped, saved from DDP
    model = body(50, "FrozenBN", groups=32, width_per_group=4)
    report = load_backbone_weights(model, path, target_norm="FrozenBN")
    assert report.coverage == 1.0 and not report.unexpected
    assert_loaded(model, state)
    # ResNeXt-101 32x8d is too big to save in a unit test: check names and shapes on the meta device instead.
    with torch.device("meta"):
        theirs = torchvision.models.resnext101_32x8d().state_dict()
        ours = body(101, "BN", groups=32, width_per_group=8)
    assert describe_body(ours) == "ResNeXt-101 32x8d"
    expected = {k: v.shape for k, v in theirs.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected


def test_legacy_torch_format_loads(tmp_path, r18_file):
    _, state = r18_file
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    tensors, fmt = read_weight_file(path)
    assert fmt == "torchvision" and torch.equal(tensors["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])


def test_renamed_keys_fail_naming_missing_keys_and_coverage(tmp_path, r18_file):
    _, state = r18_file
    path = tmp_path / "renamed.pth"
    torch.save({k.replace("layer", "stage"): v for k, v in state.items()}, path)
    model = body(18, "BN")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(model, path, target_norm="BN")
    msg = str(e.value)
    assert "renamed.pth covers only" in msg and "of the ResNet-18 backbone (min 99%)" in msg
    assert re.search(r"covers only \d+\.\d%", msg)
    assert "first missing keys: layer1.0.bn1.bias" in msg and "first unexpected: stage1.0" in msg
    assert_loaded(model, before)  # nothing is loaded when the audit fails


def test_shape_mismatch_resnet18_into_resnet50_fails_clearly(r18_file):
    path, _ = r18_file
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(body(50, "BN"), path, target_norm="BN")
    msg = str(e.value)
    assert "of the ResNet-50 backbone" in msg and "is this the right file/depth?" in msg
    assert "layer1.0.conv1.weight (file [64, 64, 3, 3] vs body [64, 64, 1, 1])" in msg


def test_low_min_coverage_loads_partially_and_lists_mismatches(r18_file):
    path, state = r18_file
    model = body(50, "BN")
    report = load_backbone_weights(model, path, target_norm="BN", min_coverage=0.0)
    assert "layer1.0.conv1.weight" in report.shape_mismatched and "layer1.0.conv3.weight" in report.missing
    assert "layer1.1.conv2.weight" in report.matched  # 3x3, 64 -> 64 in both depths
    assert torch.equal(model.conv1.weight, state["conv1.weight"]) and 0 < report.coverage < 1


# ---------------------------------------------------------------------------------------------------------------
# Norm mismatches
# ---------------------------------------------------------------------------------------------------------------


def test_bn_weights_into_gn_body_error_by_default(r18_file):
    path, _ = r18_file
    with pytest.raises(
        CheckpointError,
        match=r"BN-normalized weights but the ResNet-18 body uses GN.*skip_norm.*"
        r"load_affine",
    ):
        load_backbone_weights(body(18, "GN"), path, target_norm="GN")


def test_bn_weights_into_gn_body_skip_norm_loads_convs_only(r18_file):
    path, state = r18_file
    model = body(18, "GN")
    report = load_backbone_weights(model, path, target_norm="GN", norm_mismatch="skip_norm")
    assert torch.equal(model.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert torch.equal(model.layer2[0].downsample[1].weight, torch.ones(128))
    assert torch.equal(model.bn1.bias, torch.zeros(64))
    assert "bn1.weight" in report.missing and "layer2.0.downsample.1.bias" in report.missing
    assert "layer2.0.bn1.running_mean" in report.ignored
    assert 0.99 < report.coverage < 1.0  # norms are ~0.2% of ResNet-18's elements


def test_bn_weights_into_gn_body_load_affine_copies_scale_shift(r18_file):
    path, state = r18_file
    model = body(18, "GN")
    report = load_backbone_weights(model, path, target_norm="GN", norm_mismatch="load_affine")
    assert report.coverage == 1.0 and not report.missing
    assert torch.equal(model.layer3[1].bn2.weight, state["layer3.1.bn2.weight"])
    assert {"bn1.running_mean", "bn1.running_var"} <= set(report.ignored)


def test_gn_weights_into_bn_body_load_affine_keeps_bn_stats_at_init(tmp_path):
    source = body(18, "GN")
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = tmp_path / "model_0001000.pth"
    torch.save({"model": source.state_dict(), "iteration": 1000}, path)  # a scratchdet GN classification run
    model = body(18, "BN")
    report = load_backbone_weights(model, path, target_norm="BN", norm_mismatch="load_affine")
    assert (report.source_format, report.source_norm) == ("scratchdet", "GN")
    assert torch.equal(model.bn1.weight, source.bn1.weight)
    assert torch.equal(model.bn1.running_var, torch.ones(64)) and "bn1.running_var" in report.missing
    assert report.coverage > 0.99


def test_target_norm_must_describe_the_body(r18_file):
    path, _ = r18_file
    with pytest.raises(ValueError, match="target_norm='GN' does not describe the ResNet-18 body"):
        load_backbone_weights(body(18, "BN"), path, target_norm="GN")
    with pytest.raises(ValueError, match="norm_mismatch='ignore' is not valid"):
        load_backbone_weights(body(18, "BN"), path, target_norm="BN", norm_mismatch="ignore")


# ---------------------------------------------------------------------------------------------------------------
# Detectron caffe2 pickles
# ---------------------------------------------------------------------------------------------------------------


def caffe2_name(key: str, norm: str) -> str | None:
    """Detectron's blob name of a torchvision key (written independently of names.py); None for running stats."""
    *module, field = key.split(".")
    if field in ("running_mean", "running_var"):
        return None
    suffix = {"bn": {"weight": "bn_s", "bias": "bn_b"}, "gn": {"weight": "gn_s", "bias": "gn_b"}}[norm]
    if module == ["conv1"]:
        return "conv1_w"
    if module == ["bn1"]:
        return "res_conv1_bn_" + suffix[field][-1] if norm == "bn" else "conv1_gn_" + suffix[field][-1]
    layer, block, *part = module
    prefix = f"res{int(layer[len('layer') :]) + 1}_{block}_branch"
    part = ".".join(part)
    convs = {"conv1": "2a", "conv2": "2b", "conv3": "2c", "downsample.0": "1"}
    norms = {"bn1": "2a", "bn2": "2b", "bn3": "2c", "downsample.1": "1"}
    if part in convs:
        return f"{prefix}{convs[part]}_w"
    return f"{prefix}{norms[part]}_{suffix[field]}"


def write_detectron_pkl(path, model: torch.nn.Module, norm: str, wrap: str = "blobs") -> dict[str, np.ndarray]:
    """An R-50.pkl / R-50-GN.pkl-style file: random float32 blobs, SGD momenta, the classifier and metadata."""
    rng = np.random.default_rng(0)
    blobs: dict[str, np.ndarray] = {}
    for key, value in model.state_dict().items():
        name = None if key.endswith("num_batches_tracked") else caffe2_name(key, norm)
        if name is not None:
            blobs[name] = rng.standard_normal(tuple(value.shape)).astype(np.float32)
    weights = dict(blobs)
    blobs.update({f"{k}_momentum": np.zeros_like(v) for k, v in weights.items() if k.endswith("_w")})
    blobs.update(
        fc1000_w=rng.standard_normal((1000, 2048)).astype(np.float32),
        fc1000_b=np.zeros(1000, np.float32),
        lr=np.array([0.1], np.float32),
        model_iter=np.array([0]),
        weight_order=np.array(sorted(weights)),
    )
    with open(path, "wb") as f:
        pickle.dump({wrap: blobs}, f, protocol=2)
    return weights


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_detectron_bn_affine_pkl_loads_and_computes_s_x_plus_b(tmp_path, norm):
    model = body(50, norm, stem_width=16)  # Detectron's names at 1/16 of the elements, for speed
    blobs = write_detectron_pkl(tmp_path / "R-50.pkl", model, "bn")
    report = load_backbone_weights(model, tmp_path / "R-50.pkl", target_norm=norm)
    assert (report.source_format, report.source_norm, report.coverage) == ("detectron", "BN-affine", 1.0)
    assert not report.unexpected and "res2_0_branch2a_w_momentum" in report.ignored and "fc.weight" in report.ignored
    assert "layer1.0.bn1.running_var" in report.matched and "layer1.0.bn1.running_var" in report.synthesized
    assert torch.equal(model.layer3[5].conv2.weight, torch.from_numpy(blobs["res4_5_branch2b_w"]))
    assert torch.equal(model.layer1[0].downsample[0].weight, torch.from_numpy(blobs["res2_0_branch1_w"]))
    assert torch.equal(model.bn1.weight, torch.from_numpy(blobs["res_conv1_bn_s"]))
    # AffineChannel semantics: the loaded norm in eval mode computes s * x + b to float32 rounding (var = 1 + eps
    # instead of 1 - eps would be off by 5e-6 relative, beyond rtol).
    bn = model.layer4[2].bn3.eval()
    s, b = torch.from_numpy(blobs["res5_2_branch2c_bn_s"]), torch.from_numpy(blobs["res5_2_branch2c_bn_b"])
    x = torch.randn(2, 512, 3, 3) * 10
    with torch.no_grad():
        torch.testing.assert_close(bn(x), s.view(1, -1, 1, 1) * x + b.view(1, -1, 1, 1), rtol=1e-6, atol=1e-6)


def test_detectron_gn_pkl_loads_into_gn_body(tmp_path):
    model = body(50, "GN", stem_width=16)
    blobs = write_detectron_pkl(tmp_path / "R-50-GN.pkl", model, "gn", wrap="model")  # Detectron2-export wrapper
    report = load_backbone_weights(model, tmp_path / "R-50-GN.pkl", target_norm="GN")
    assert (report.source_norm, report.coverage, report.synthesized) == ("GN", 1.0, [])
    assert torch.equal(model.bn1.weight, torch.from_numpy(blobs["conv1_gn_s"]))
    assert torch.equal(model.layer2[0].downsample[1].bias, torch.from_numpy(blobs["res3_0_branch1_gn_b"]))
    with pytest.raises(CheckpointError, match="GN-normalized weights but the ResNet-50 body uses FrozenBN"):
        load_backbone_weights(body(50, "FrozenBN", stem_width=16), tmp_path / "R-50-GN.pkl", target_norm="FrozenBN")


def python2_pickle(blobs: dict[str, np.ndarray]) -> bytes:
    """What Python 2 wrote for Detectron's {"blobs": {...}}: numpy.core names, array bytes as a Python 2 str."""

    def string(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING: a Python 2 str
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def integer(n: int) -> bytes:
        return b"J" + struct.pack("<i", n)

    def array(a: np.ndarray) -> bytes:
        dtype = (
            b"cnumpy\ndtype\n"
            + string(b"f4")
            + integer(0)
            + integer(1)
            + b"\x87R("
            + integer(3)
            + string(b"<")
            + b"NNN"
            + integer(-1)
            + integer(-1)
            + integer(0)
            + b"tb"
        )
        shape = b"(" + b"".join(integer(d) for d in a.shape) + b"t"
        return (
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            + integer(0)
            + b"\x85"
            + string(b"b")
            + b"\x87R("
            + integer(1)
            + shape
            + dtype
            + b"\x89"
            + string(a.astype("<f4").tobytes())
            + b"tb"
        )

    items = b"".join(string(k.encode()) + array(v) + b"s" for k, v in blobs.items())
    return b"\x80\x02}" + string(b"blobs") + b"}" + items + b"s."


def test_python2_detectron_pickle_reads(tmp_path):
    blobs = {
        "conv1_w": np.arange(64 * 3 * 7 * 7, dtype=np.float32).reshape(64, 3, 7, 7),
        "res_conv1_bn_s": np.linspace(0, 1, 64, dtype=np.float32),
    }
    (tmp_path / "R-50.pkl").write_bytes(python2_pickle(blobs))
    tensors, fmt = read_weight_file(tmp_path / "R-50.pkl")
    assert fmt == "detectron" and set(tensors) == {"conv1.weight", "bn1.weight"}
    assert torch.equal(tensors["conv1.weight"], torch.from_numpy(blobs["conv1_w"]))


def test_detectron2_native_names_load(tmp_path, r18_file):
    _, state = r18_file

    def d2(key: str) -> str:
        key = re.sub(r"^conv1\.", "stem.conv1.", re.sub(r"^bn1\.", "stem.conv1.norm.", key))
        key = re.sub(r"^layer(\d)", lambda m: f"res{int(m[1]) + 1}", key)
        key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
        return (
            key.replace("downsample.0.", "shortcut.")
            .replace("downsample.1.", "shortcut.norm.")
            .replace("fc.", "linear.")
        )

    with open(tmp_path / "R-18.pkl", "wb") as f:
        pickle.dump(
            {
                "model": {d2(k): v.numpy() for k, v in state.items()},
                "__author__": "torchvision",
                "matching_heuristics": True,
            },
            f,
        )
    model = body(18, "BN")
    report = load_backbone_weights(model, tmp_path / "R-18.pkl", target_norm="BN")
    assert (report.source_format, report.coverage, report.unexpected) == ("detectron", 1.0, [])
    assert_loaded(model, state)


# ---------------------------------------------------------------------------------------------------------------
# Safety: loading never runs code from the file
# ---------------------------------------------------------------------------------------------------------------


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "x": Exploit(marker)}}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"refusing to load (posix|os|nt)\.system from .*R-50\.pkl: not a plain"):
        read_weight_file(path)
    assert not marker.exists()


def test_pth_with_objects_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "payload": Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth holds objects of type (posix|os|nt)\.system beside"):
        load_backbone_weights(body(18, "BN"), path, target_norm="BN")
    assert not marker.exists()
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "report": WeightReport("p", "t", "BN", "BN")}, path)
    with pytest.raises(CheckpointError, match="type scratchdet.weights.audit.WeightReport beside its tensors") as e:
        read_weight_file(path)
    assert "weights_only=False" in str(e.value) and "evil.state_dict.pth" in str(e.value)


def test_missing_and_foreign_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth does not exist"):
        read_weight_file(tmp_path / "nope.pth")
    (tmp_path / "notes.pkl").write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.pkl is neither a torch file nor a Detectron weight pickle"):
        read_weight_file(tmp_path / "notes.pkl")
    with open(tmp_path / "list.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(CheckpointError, match=r"list\.pkl holds a list, not a dict of weights"):
        read_weight_file(tmp_path / "list.pkl")


# ---------------------------------------------------------------------------------------------------------------
# scratchdet detection checkpoints
# ---------------------------------------------------------------------------------------------------------------


def test_detection_checkpoint_loads_backbone_and_ignores_heads(tmp_path):
    cfg = load_config(MINI_CONFIG, [f"output={tmp_path / 'run'}"])
    torch.manual_seed(1)
    source = build_detector(cfg, num_classes=3)
    path = tmp_path / "model_0000090.pth"
    torch.save({"model": source.state_dict(), "iteration": 90, "seen": 360}, path)
    torch.manual_seed(2)
    target = build_detector(cfg, num_classes=3)
    report = load_backbone_weights(target.backbone.body, path, target_norm=cfg.model.norm)
    assert (report.source_format, report.source_norm, report.coverage) == ("scratchdet", "GN", 1.0)
    assert not report.unexpected and not report.missing
    assert any(k.startswith("rpn.") for k in report.ignored) and any(k.startswith("roi_heads.") for k in report.ignored)
    prefix = "backbone.body."
    body_state = {k[len(prefix) :]: v for k, v in source.state_dict().items() if k.startswith(prefix)}
    assert_loaded(target.backbone.body, body_state)
    assert not torch.equal(target.backbone.fpn.inner_blocks[0][0].weight, source.backbone.fpn.inner_blocks[0][0].weight)
