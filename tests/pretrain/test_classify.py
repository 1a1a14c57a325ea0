import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import MINI_CONFIG, ROOT

from scratchdet.config import load_config
from scratchdet.data.classification import write_synthetic_classification
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.metrics import read_metrics
from scratchdet.errors import CheckpointError, ConfigError, DataError, Preempted, TrainingError
from scratchdet.modeling.backbones import ResNet
from scratchdet.modeling.classifier import ResNetClassifier, build_classifier
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.norm import build_norm
from scratchdet.pretrain import classify
from scratchdet.pretrain.config import load_pretrain_config

PRETRAIN_CONFIGS = ROOT / "configs" / "pretrain"
MINI_PRETRAIN = PRETRAIN_CONFIGS / "mini_R18_GN_synth.yaml"


def tiny(output: Path, **extra) -> list[str]:
    """Overrides for a seconds-long CPU run: ResNet-18 at stem width 16, 32 px crops of 48 px textures."""
    values = {
        "output": str(output),
        "data.synthetic": "true",
        "data.synthetic_classes": 3,
        "data.synthetic_train_images": 60,
        "data.synthetic_val_images": 12,
        "data.synthetic_size": 48,
        "data.crop_size": 32,
        "data.num_workers": 0,
        "model.depth": 18,
        "model.stem_width": 16,
        "solver.batch_size": 4,
        "solver.lr_schedule": "cosine",
        "train.epochs": "null",
        "train.iters": 4,
        "train.log_period": 1,
        "train.checkpoint_period": 2,
        "eval.batch_size": 12,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


# --- the classifier ----------------------------------------------------------------------------------------------


def test_classifier_state_dict_is_torchvision_resnet50_layout():
    bn = ResNetClassifier(50, num_classes=1000, norm_layer=build_norm("BN", for_backbone_block=True))
    reference = torchvision.models.resnet50().state_dict()
    ours = bn.state_dict()
    assert list(ours) == list(reference)  # same names, same order, fc included
    assert all(ours[k].shape == reference[k].shape for k in ours)
    torchvision.models.resnet50().load_state_dict(ours)  # strict

    gn = ResNetClassifier(50, num_classes=1000, norm_layer=build_norm("GN", for_backbone_block=True))
    parameters = [k for k, _ in torchvision.models.resnet50().named_parameters()]
    assert list(gn.state_dict()) == parameters  # GN has the weights and biases of BN, no running statistics
    body = ResNet(50, norm_layer=build_norm("GN", for_backbone_block=True)).state_dict()
    assert list(gn.backbone_state_dict()) == list(body)
    assert set(gn.state_dict()) - set(body) == {"fc.weight", "fc.bias"}


def test_classifier_forward_and_init():
    model = ResNetClassifier(18, num_classes=7, norm_layer=build_norm("GN", for_backbone_block=True), stem_width=16)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert model.fc.weight.std() < 0.02 and torch.all(model.fc.bias == 0)
    # MSRA fan_out: std = sqrt(2 / (out_channels x k x k)) for conv1 (16 x 7 x 7).
    assert model.conv1.weight.std().item() == pytest.approx((2 / (16 * 49)) ** 0.5, rel=0.15)


def test_pretrained_weights_load_into_the_detector_backbone(tmp_path):
    cfg = load_pretrain_config(MINI_PRETRAIN, [f"output={tmp_path}"])
    det_cfg = load_config(MINI_CONFIG, [f"output={tmp_path}"])
    for key in ("depth", "groups", "width_per_group", "stem_width", "norm", "gn_groups"):
        assert getattr(cfg.model, key) == getattr(det_cfg.model, key), key
    classifier = build_classifier(cfg, num_classes=10)
    detector = build_detector(det_cfg, num_classes=6)
    detector.backbone.body.load_state_dict(classifier.backbone_state_dict())  # strict: every key, every shape


# --- config ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["R50_GN_imagenet.yaml", "R50_BN_imagenet.yaml", "mini_R18_GN_synth.yaml"])
def test_shipped_configs_load(name, tmp_path):
    cfg = load_pretrain_config(PRETRAIN_CONFIGS / name, [f"output={tmp_path}"])
    if name.startswith("R50"):
        assert cfg.model.depth == 50 and cfg.solver.batch_size == 256 and cfg.data.crop_size == 224
        schedule = classify.build_classify_schedule(cfg, 1_281_167)
        assert schedule.base_lr == pytest.approx(0.1) and schedule.max_iters == round(100 * 1_281_167 / 256)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.norm=SyncBN"], "trains in one process, where SyncBN is plain BN"),
        (["model.norm=FrozenBN"], "model.norm='FrozenBN' is not valid"),
        (["data.root=/x", "data.synthetic=true"], "data.root='/x' and data.synthetic=true both given"),
        (["data.synthetic=false"], "no data: set data.root"),
        (["train.iters=10", "train.epochs=2"], "give exactly one schedule length"),
        (["solver.lr_schedule=poly"], "solver.lr_schedule='poly' is not valid"),
        (["solver.batch_sise=3"], "batch_sise"),
        (["data.synthetic_classes=20"], "data.synthetic_classes=20"),
    ],
)
def test_bad_config_values_name_the_key(overrides, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        load_pretrain_config(MINI_PRETRAIN, [f"output={tmp_path}", *overrides])


def test_command_line_data_and_schedule_length_win_over_the_file(tmp_path):
    # mini_R18_GN_synth.yaml sets data.synthetic: true and train.epochs: 2; the README's
    # `scratchdet pretrain CONFIG data.root=DIR` must train on DIR, and train.iters=N must set the length.
    with pytest.warns(
        UserWarning,
        match=r"data.root=/x is given on the command line and wins: data.synthetic=True "
        r"\(in the file\) is replaced by False \(file .*mini_R18_GN_synth.yaml\)",
    ):
        cfg = load_pretrain_config(MINI_PRETRAIN, [f"output={tmp_path}", "data.root=/x"])
    assert cfg.data.root == "/x" and cfg.data.synthetic is False
    with pytest.warns(UserWarning, match=r"train.epochs=2.0 \(in the file\) is replaced by None"):
        cfg = load_pretrain_config(MINI_PRETRAIN, [f"output={tmp_path}", "train.iters=10"])
    assert cfg.train.iters == 10 and cfg.train.epochs is None
    # The default epochs=100 gives way too, and the warning says it was the default.
    with pytest.warns(UserWarning, match=r"train.epochs=100.0 \(the default\) is replaced by None"):
        cfg = load_pretrain_config(None, [f"output={tmp_path}", "data.synthetic=true", "train.iters=7"])
    assert (cfg.train.iters, cfg.train.epochs, cfg.data.root) == (7, None, None)
    r50 = PRETRAIN_CONFIGS / "R50_GN_imagenet.yaml"  # root: datasets/imagenet in the file
    with pytest.warns(UserWarning, match=r"data.root=datasets/imagenet \(in the file\) is replaced by None"):
        cfg = load_pretrain_config(r50, [f"output={tmp_path}", "data.synthetic=true"])
    assert cfg.data.synthetic is True and cfg.data.root is None


def test_schedules_warm_up_then_cosine_or_step(tmp_path):
    cfg = load_pretrain_config(
        None, tiny(tmp_path, **{"solver.warmup_iters": 2, "solver.base_lr": 0.4, "solver.reference_batch": 4})
    )
    cosine = classify.build_classify_schedule(cfg, 60)
    # LR 0.4 x (cosine factor) x (warm-up factor: 0.1 -> 1 over 2 iterations).
    cos = [0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    expected = [0.4 * cos[0] * 0.1, 0.4 * cos[1] * 0.55, 0.4 * cos[2], 0.4 * cos[3]]
    assert [cosine.lr_at(i) for i in range(4)] == pytest.approx(expected)
    step_cfg = load_pretrain_config(
        None,
        tiny(
            tmp_path,
            **{"solver.lr_schedule": "step", "train.epochs": 1, "train.iters": "null", "solver.step_epochs": "[0.5]"},
        ),
    )
    step = classify.build_classify_schedule(step_cfg, 60)  # 15 iterations per epoch at batch 4
    assert step.max_iters == 15 and step.milestones == (8,)
    assert step.lr_at(7) == pytest.approx(0.1 * 4 / 256) and step.lr_at(8) == pytest.approx(0.1 * 4 / 256 * 0.1)


# --- the loop ----------------------------------------------------------------------------------------------------


def test_short_run_counts_samples_and_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = classify.pretrain(load_pretrain_config(None, tiny(out)))
    names = {p.name for p in out.iterdir()}
    assert {
        "config.yaml",
        "env.json",
        "metrics.jsonl",
        "checkpoints",
        "eval",
        "pretrain_summary.json",
        "classifier_final.pth",
    } <= names
    # 4 iterations x 4 images of 32 x 32 pixels, one labelled object each.
    expected = {"images": 16, "instances": 16, "pixels": 16 * 32 * 32}
    train_records = read_metrics(out, "train")
    assert [r["iter"] for r in train_records] == [1, 2, 3, 4]
    assert [r["seen"]["images"] for r in train_records] == [4, 8, 12, 16]
    assert train_records[-1]["seen"] == expected == result.seen
    assert load_checkpoint(latest_checkpoint(out / "checkpoints"))["seen"] == expected
    evals = read_metrics(out, "eval")
    assert [e["iter"] for e in evals] == [4] and 0 <= evals[0]["top1"] <= evals[0]["top5"] <= 100
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert summary["seen"] == expected and summary["iterations"] == 4 and summary["finished"]
    assert summary["backbone"]["depth"] == 18 and summary["backbone"]["norm"] == "GN"
    weights = torch.load(out / "classifier_final.pth", weights_only=True)
    assert list(weights) == [k for k, _ in torchvision.models.resnet18().named_parameters()]


def test_train_num_threads_is_set_for_the_pretraining_only(tmp_path):
    """As for detection runs (tests/engine/test_trainer.py): the caller's thread count is given back."""
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    classify.pretrain(load_pretrain_config(None, tiny(tmp_path / "run", **{"train.num_threads": threads})))
    assert torch.get_num_threads() == before


def test_resume_gives_the_same_parameters_as_a_straight_run(tmp_path):
    classify.pretrain(load_pretrain_config(None, tiny(tmp_path / "straight")))
    classify.pretrain(load_pretrain_config(None, tiny(tmp_path / "resumed", **{"train.max_iters": 2})))
    classify.pretrain(load_pretrain_config(None, tiny(tmp_path / "resumed", resume="true")))
    a = load_checkpoint(latest_checkpoint(tmp_path / "straight" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "resumed" / "checkpoints"))
    assert a["iteration"] == b["iteration"] == 4 and a["seen"] == b["seen"]
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=0, atol=0, msg=key)
    loss_a = read_metrics(tmp_path / "straight", "train")[-1]["loss"]
    loss_b = read_metrics(tmp_path / "resumed", "train")[-1]["loss"]
    assert loss_a == loss_b


def test_sigterm_checkpoints_at_the_boundary_and_resume_is_exact(tmp_path, monkeypatch):
    """A scheduler's SIGTERM during pre-training: checkpoint at the next iteration boundary, `Preempted`, and a
    resume that ends with the parameters of a run never stopped (the same parts as the detection loop)."""
    classify.pretrain(load_pretrain_config(None, tiny(tmp_path / "straight", **{"train.checkpoint_period": 100})))
    real_build = classify.build_classifier

    def build_signalling(cfg, num_classes):
        model = real_build(cfg, num_classes)
        forward, calls = model.forward, []

        def signalled(x):
            calls.append(1)
            if len(calls) == 2:  # during iteration 1: the loop must finish it, then stop before iteration 2
                os.kill(os.getpid(), signal.SIGTERM)
            return forward(x)

        model.forward = signalled
        return model

    monkeypatch.setattr(classify, "build_classifier", build_signalling)
    stopped = tmp_path / "stopped"
    with pytest.raises(Preempted) as info:
        classify.pretrain(load_pretrain_config(None, tiny(stopped, **{"train.checkpoint_period": 100})))
    assert info.value.iteration == 2 and read_metrics(stopped, "preempted")[0]["iter"] == 2
    monkeypatch.setattr(classify, "build_classifier", real_build)
    classify.pretrain(load_pretrain_config(None, tiny(stopped, resume="true", **{"train.checkpoint_period": 100})))
    a = load_checkpoint(latest_checkpoint(tmp_path / "straight" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(stopped / "checkpoints"))
    assert a["iteration"] == b["iteration"] == 4 and a["seen"] == b["seen"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_resume_refusals(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        classify.pretrain(load_pretrain_config(None, tiny(tmp_path / "new", resume="true")))
    classify.pretrain(load_pretrain_config(None, tiny(tmp_path / "run", **{"train.max_iters": 2})))
    with pytest.raises(CheckpointError, match=r"solver.base_lr: 0.1 -> 0.5"):
        classify.pretrain(load_pretrain_config(None, tiny(tmp_path / "run", resume="true", **{"solver.base_lr": 0.5})))


def test_non_finite_loss_stops_naming_the_iteration(tmp_path, monkeypatch):
    real_build = classify.build_classifier

    def build_poisoned(cfg, num_classes):
        model = real_build(cfg, num_classes)
        forward, calls = model.forward, []

        def poisoned(x):
            calls.append(1)
            logits = forward(x)
            return logits * float("nan") if len(calls) == 3 else logits

        model.forward = poisoned
        return model

    monkeypatch.setattr(classify, "build_classifier", build_poisoned)
    with pytest.raises(TrainingError, match=r"non-finite loss at iteration 2: classification loss=nan"):
        classify.pretrain(load_pretrain_config(None, tiny(tmp_path / "run")))


def test_image_folder_data(tmp_path):
    write_synthetic_classification(tmp_path / "data", num_classes=2, train_per_class=4, val_per_class=2, size=40)
    overrides = tiny(tmp_path / "run", **{"data.synthetic": "false", "data.root": str(tmp_path / "data")})
    result = classify.pretrain(load_pretrain_config(None, overrides))
    assert result.eval["images"] == 4 and result.seen["images"] == 16
    missing = tiny(tmp_path / "run2", **{"data.synthetic": "false", "data.root": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match=r"image folder not found.*nowhere/train"):
        classify.pretrain(load_pretrain_config(None, missing))


def test_a_short_run_learns_two_texture_classes(tmp_path):
    # Horizontal vs vertical stripes: 150 iterations of batch 16 take a few seconds. Over seeds 0-5 they ended at
    # 93-97% val top-1 with the last logged loss below 0.25 x the first; the bounds leave a wide margin, so another
    # BLAS, thread count or platform cannot flip them.
    out = tmp_path / "learn"
    overrides = tiny(
        out,
        **{
            "data.synthetic_classes": 2,
            "data.synthetic_train_images": 2000,
            "data.synthetic_val_images": 200,
            "data.synthetic_size": 64,
            "solver.batch_size": 16,
            "solver.base_lr": 0.16,
            "solver.warmup_iters": 5,
            "train.iters": 150,
            "train.log_period": 20,
            "train.checkpoint_period": 150,
            "eval.batch_size": 100,
        },
    )
    result = classify.pretrain(load_pretrain_config(None, overrides))
    losses = [r["loss"] for r in read_metrics(out, "train")]
    assert losses[-1] < 0.6 * losses[0], losses
    assert result.eval["top1"] >= 75.0, result.eval  # chance: 50%
