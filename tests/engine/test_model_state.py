"""Every loader of a run's checkpoint rebuilds the model the run had when it wrote it (engine/model_state.py).

One tiny run switches to cascade heads late and is trained once for the module: 2 iterations of the mini schedule
at batch 2 (1440 iterations long) with model.cascade_switch_iters=1439, so it switches at the top of iteration 1;
model_0000001.pth holds plain heads and model_0000002.pth cascade heads.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.checkpoint import load_checkpoint, restore_training_state
from scratchdet.engine.metrics import read_metrics
from scratchdet.engine.model_state import (
    MODEL_STATE_KEY,
    build_model_for_checkpoint,
    check_resume_heads,
    checkpoint_model_state,
    is_cascade,
)
from scratchdet.engine.optim import build_optimizer
from scratchdet.engine.run_eval import evaluate_run, load_run
from scratchdet.errors import CheckpointError
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.sync_bn import use_native_sync_bn
from scratchdet.study.fork import fork_run
from scratchdet.weights.initialization import initialize

# Few test proposals and detections: evaluating an untrained model is most of these tests' time.
SWITCHED = {
    "model.cascade": "true",
    "model.cascade_switch_iters": 1439,
    "eval.max_images": 1,
    "model.rpn_post_nms_top_n_test": 50,
    "model.box_detections_per_img": 5,
}
STAGE_LOSSES = [f"loss_{kind}_stage{k}" for kind in ("classifier", "box_reg") for k in (1, 2, 3)]


def switched_config(shapes_dir, out, **extra):
    return load_config(MINI_CONFIG, tiny_overrides(shapes_dir, out, **SWITCHED, **extra))


@pytest.fixture(scope="module")
def switched_run(shapes_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("switched") / "run"
    trainer.train(switched_config(shapes_dir, run, **{"train.max_iters": 2, "train.extra_checkpoints": "[1]"}))
    return run


def checkpoint(run, iteration: int):
    return run / "checkpoints" / f"model_{iteration:07d}.pth"


def test_checkpoints_record_their_heads_and_old_ones_are_read_off_their_weights(switched_run):
    for iteration, cascade in ((1, False), (2, True)):
        state = load_checkpoint(checkpoint(switched_run, iteration))
        record = state[MODEL_STATE_KEY]
        classes = state["model"][
            "roi_heads.stages.0.box_predictor.cls_score.weight"
            if cascade
            else "roi_heads.box_predictor.cls_score.weight"
        ]
        assert record == {"cascade": cascade, "num_classes": classes.shape[0], "num_keypoints": None}
        # A checkpoint written before the record existed describes itself the same way through its weights.
        del state[MODEL_STATE_KEY]
        assert checkpoint_model_state(state, "old.pth") == record


def test_eval_plain_and_tta_load_the_switched_model(switched_run):
    loaded = load_run(switched_run)
    assert loaded.iteration == 2 and is_cascade(loaded.model)
    report = evaluate_run(switched_run, ["eval.max_images=1"])
    assert report["iter"] == 2 and not report["tta"]
    tta = evaluate_run(
        switched_run,
        ["tta=true", "eval.tta_sizes=[64]", "eval.tta_max_size=96", "eval.tta_flip=true", "eval.max_images=1"],
    )
    assert tta["tta"] and tta["tta_sizes"] == [64] and tta["path"].endswith("iter_0000002_tta.json")
    assert json.loads((switched_run / "eval" / "iter_0000002.json").read_text())["tta"] is False
    # The checkpoint written at the switch iteration still holds the plain heads.
    before = load_run(switched_run, [f"checkpoint={checkpoint(switched_run, 1)}"])
    assert before.iteration == 1 and not is_cascade(before.model)


def test_checkpoint_without_record_still_loads_into_cascade_heads(switched_run, tmp_path):
    state = load_checkpoint(checkpoint(switched_run, 2))
    del state[MODEL_STATE_KEY]
    old = tmp_path / "model_0000002.pth"
    torch.save(state, old)
    loaded = load_run(switched_run, [f"checkpoint={old}"])
    assert is_cascade(loaded.model)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key


def test_checkpoint_that_does_not_fit_the_config_is_a_checkpoint_error(switched_run):
    with pytest.raises(CheckpointError, match=r"model_0000002.pth does not fit the model of .*config.yaml"):
        load_run(switched_run, ["model.box_head_fc=128"])
    # A plain checkpoint into a config that builds cascade heads from the start.
    with pytest.raises(CheckpointError, match="holds plain box heads"):
        load_run(switched_run, [f"checkpoint={checkpoint(switched_run, 1)}", "model.cascade_switch_iters=null"])


def test_model_uses_the_recorded_class_count(switched_run):
    cfg = load_config(switched_run / "config.yaml")
    state = load_checkpoint(checkpoint(switched_run, 1))
    trained = state[MODEL_STATE_KEY]["num_classes"]
    model = build_model_for_checkpoint(cfg, state, "ckpt", "config.yaml")
    assert model.roi_heads.box_predictor.cls_score.out_features == trained
    state[MODEL_STATE_KEY] = {**state[MODEL_STATE_KEY], "num_classes": trained + 1}
    with pytest.raises(CheckpointError, match=r"does not fit .*cls_score"):
        build_model_for_checkpoint(cfg, state, "ckpt", "config.yaml")
    state[MODEL_STATE_KEY] = {"cascade": "yes"}
    with pytest.raises(CheckpointError, match="malformed"):
        checkpoint_model_state(state, "ckpt")


def test_init_pretrained_from_the_switched_run_imports_its_backbone(switched_run, shapes_dir, tmp_path):
    cfg = load_config(MINI_CONFIG, tiny_overrides(shapes_dir, tmp_path / "ft", init="pretrained", weights=switched_run))
    state = load_checkpoint(checkpoint(switched_run, 2))
    model = build_detector(cfg, state[MODEL_STATE_KEY]["num_classes"])
    record = initialize(model, cfg)
    assert record["report"]["coverage"] == 1.0 and record["pretrain_seen"] == state["seen"]
    for key, value in model.backbone.body.state_dict().items():
        assert torch.equal(value, state["model"][f"backbone.body.{key}"]), key


def test_fork_from_a_post_switch_checkpoint_resumes_with_cascade_heads(switched_run, tmp_path):
    fork = tmp_path / "fork"
    fork_run(switched_run, 2, load_config(switched_run / "config.yaml", [f"output={fork}"]))
    trainer.train(load_config(fork / "config.yaml", ["train.max_iters=3", "resume=true"]))
    state = load_checkpoint(checkpoint(fork, 3))
    assert state[MODEL_STATE_KEY]["cascade"] and "roi_heads.stages.2.box_head.0.0.weight" in state["model"]
    last = read_metrics(fork, "train")[-1]
    assert last["iter"] == 3 and all(math.isfinite(last[k]) for k in STAGE_LOSSES)
    assert not (fork / "cascade_switch.json").exists()  # no second switch: the heads came with the checkpoint


def test_fork_past_a_switch_the_fork_does_not_share_is_refused(switched_run, tmp_path):
    # 1x is 720 iterations: it switches at max(0, 720 - 1439) = 0, the trunk (2x) at 1.
    shorter = load_config(switched_run / "config.yaml", [f"output={tmp_path / 'fork_1x'}", "schedule.multiplier=1"])
    with pytest.raises(CheckpointError, match="switches to cascade heads at iteration 1 and this run at 0"):
        fork_run(switched_run, 2, shorter)


def test_resume_refuses_heads_its_schedule_does_not_have(shapes_dir, tmp_path):
    cfg = switched_config(shapes_dir, tmp_path / "r")
    plain, cascade = {"cascade": False}, {"cascade": True}
    check_resume_heads(plain, cfg, 1, 1, "c.pth")  # written at the switch: still plain
    check_resume_heads(cascade, cfg, 1, 2, "c.pth")
    with pytest.raises(CheckpointError, match="holds plain box heads.* switches to cascade heads at iteration 1"):
        check_resume_heads(plain, cfg, 1, 2, "c.pth")  # the loop would never switch
    with pytest.raises(CheckpointError, match="holds cascade box heads"):
        check_resume_heads(cascade, cfg, 1, 1, "c.pth")  # the loop would switch a second time


def test_resume_into_another_class_count_is_a_checkpoint_error(switched_run):
    cfg = load_config(switched_run / "config.yaml")
    path = checkpoint(switched_run, 1)
    model = build_detector(cfg, load_checkpoint(path)[MODEL_STATE_KEY]["num_classes"] + 1)
    optimizer = build_optimizer(model, cfg.solver, 0.01)
    with pytest.raises(CheckpointError, match=r"model_0000001.pth does not fit the model being resumed: .*cls_score"):
        restore_training_state(path, model, optimizer)


def test_native_sync_bn_keeps_every_name_and_shape(tiny_config):
    """On CUDA under torchrun the trainer swaps in nn.SyncBatchNorm; its checkpoints load into the built model."""
    tiny_config.model.norm = "SyncBN"
    built = build_detector(tiny_config, 4)
    native = use_native_sync_bn(build_detector(tiny_config, 4))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in native.modules())
    shapes = {k: v.shape for k, v in native.state_dict().items()}
    assert shapes == {k: v.shape for k, v in built.state_dict().items()}
    state = {"model": native.state_dict(), MODEL_STATE_KEY: {"cascade": False, "num_classes": 4, "num_keypoints": None}}
    loaded = build_model_for_checkpoint(tiny_config, state, "ckpt", "config.yaml")
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, native.state_dict()[key]), key
