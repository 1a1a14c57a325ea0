"""A three-arm mini study with two imported arms in different formats (a MoCo v2 `.pth.tar` and a timm folder with
its own normalization), run to its report: every arm trains in its file's convention and reaches the verdict."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import MINI_CONFIG, tiny_study_overrides, write_study_spec

from scratchdet.config import load_config
from scratchdet.modeling.detector import build_detector
from scratchdet.report.results import load_study
from scratchdet.study import runner

pytestmark = pytest.mark.e2e  # a whole study


def test_scratch_moco_and_timm_arms_run_to_the_report(shapes_dir, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)  # not the runs' seed: the imported weights must differ from the scratch arm's init
    body = build_detector(load_config(MINI_CONFIG, ["output=unused"]), num_classes=6).backbone.body.state_dict()
    tensors = {k: v for k, v in body.items() if not k.endswith("num_batches_tracked")}
    moco = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    encoder = {f"module.encoder_q.{k}": v for k, v in tensors.items()}
    encoder |= {f"module.encoder_k.{k}": v.clone() for k, v in tensors.items()}  # the momentum encoder, set aside
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": encoder}, moco, _use_new_zipfile_serialization=False)
    timm_dir = tmp_path / "timm"
    timm_dir.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(timm_dir / "model.safetensors"))
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    (timm_dir / "config.json").write_text(
        json.dumps({"architecture": "resnet18", "pretrained_cfg": {"mean": clip_mean, "std": clip_std}})
    )
    arms = [
        {"name": "scratch"},
        {"name": "moco_v2", "init": "pretrained", "weights": str(moco)},
        {"name": "timm_clip", "init": "pretrained", "weights": str(timm_dir / "model.safetensors")},
    ]
    spec = write_study_spec(
        tmp_path / "spec.yaml",
        tmp_path / "study",
        tiny_study_overrides(shapes_dir),
        arms=arms,
        schedules=[1],
        scratch_convention="moco_v2",
    )
    study = runner.run_study(spec)
    inits = {arm: json.loads((study / f"runs/{arm}_all_1x/init.json").read_text()) for arm in ("moco_v2", "timm_clip")}
    assert all(record["report"]["coverage"] == 1.0 for record in inits.values())
    assert inits["timm_clip"]["input_convention"]["pixel_std"] == pytest.approx(clip_std)
    # The momentum encoder is listed as set aside, never counted in coverage.
    assert any("encoder_k" in key for keys in inits["moco_v2"]["report"]["set_aside"].values() for key in keys)
    loaded = load_study(study)
    assert {r.arm for r in loaded.runs if r.finished} == {"scratch", "moco_v2", "timm_clip"}
    first_loss = {r.arm: r.trains[0]["loss"] for r in loaded.runs}
    assert first_loss["moco_v2"] != first_loss["scratch"]  # the import changed the network
    verdict = (study / "report" / "report.html").read_text()
    assert "moco_v2" in verdict and "timm_clip" in verdict
