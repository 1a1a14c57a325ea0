import json
from pathlib import Path

import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.distributed import SINGLE
from scratchdet.engine import run_eval, trainer
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.loop import stop_if_not_finite
from scratchdet.engine.metrics import read_metrics
from scratchdet.errors import CheckpointError, TrainingError


def test_short_run_writes_the_run_folder(tiny_config):
    result = trainer.train(tiny_config)
    out = tiny_config.output
    names = {p.name for p in Path(out).iterdir()}
    assert {"config.yaml", "env.json", "metrics.jsonl", "checkpoints", "eval", "tb", "dataset_train.json"} <= names
    train_records = read_metrics(out, "train")
    assert [r["iter"] for r in train_records] == [1, 2]
    assert all(r["loss"] > 0 and r["lr"] > 0 for r in train_records)
    # Samples seen are counted from the post-transform tensors: 2 images per iteration.
    assert train_records[-1]["seen"]["images"] == 4
    assert train_records[-1]["seen"]["pixels"] > 4 * 64 * 64 - 1
    evals = read_metrics(out, "eval")
    assert len(evals) == 1 and evals[0]["iter"] == 2
    saved = json.loads((Path(out) / "eval" / "iter_0000002.json").read_text())
    assert saved["images"] == 4
    assert result.iter == 2
    env = json.loads((Path(out) / "env.json").read_text())
    assert env["seed"] == 0 and "torch" in env["versions"]


def _final_state(output):
    return load_checkpoint(latest_checkpoint(output / "checkpoints"))


def test_resume_gives_the_same_result_as_a_straight_run(shapes_dir, tmp_path):
    straight = load_config(MINI_CONFIG, tiny_overrides(shapes_dir, tmp_path / "straight", **{"train.max_iters": 4}))
    trainer.train(straight)
    half = tiny_overrides(shapes_dir, tmp_path / "resumed", **{"train.max_iters": 2})
    trainer.train(load_config(MINI_CONFIG, half))
    rest = tiny_overrides(shapes_dir, tmp_path / "resumed", **{"train.max_iters": 4, "resume": "true"})
    trainer.train(load_config(MINI_CONFIG, rest))

    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert a["iteration"] == b["iteration"] == 4
    assert a["seen"] == b["seen"]
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=1e-5, atol=1e-6, msg=key)
    loss_a = read_metrics(tmp_path / "straight", "train")[-1]["loss"]
    loss_b = read_metrics(tmp_path / "resumed", "train")[-1]["loss"]
    assert loss_a == pytest.approx(loss_b, rel=1e-5)


def test_resume_without_checkpoint_is_an_error(shapes_dir, tmp_path):
    cfg = load_config(MINI_CONFIG, tiny_overrides(shapes_dir, tmp_path / "new", resume="true"))
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        trainer.train(cfg)


def test_fresh_start_into_a_used_folder_and_changed_config_are_refused(tiny_config, shapes_dir):
    trainer.train(tiny_config)
    again = load_config(MINI_CONFIG, tiny_overrides(shapes_dir, tiny_config.output, **{"train.max_iters": 2}))
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        trainer.train(again)
    changed = tiny_overrides(shapes_dir, tiny_config.output, resume="true", **{"solver.base_lr": 0.5})
    with pytest.raises(CheckpointError, match=r"solver.base_lr: 0.02 -> 0.5"):
        trainer.train(load_config(MINI_CONFIG, changed))


def test_non_finite_loss_stops_with_iteration_values_and_image_ids(tiny_config, monkeypatch):
    real_build = trainer.build_detector

    def build_poisoned(cfg, num_classes, *args, **kwargs):
        model = real_build(cfg, num_classes, *args, **kwargs)
        forward, calls = model.forward, []

        def poisoned(images, targets=None):
            losses = forward(images, targets)
            calls.append(1)
            if model.training and len(calls) == 2:
                losses["loss_mask"] = losses["loss_mask"] * float("nan")
            return losses

        model.forward = poisoned
        return model

    monkeypatch.setattr(trainer, "build_detector", build_poisoned)
    with pytest.raises(TrainingError, match=r"non-finite loss at iteration 1: .*loss_mask=nan.*image ids \[\d+, \d+\]"):
        trainer.train(tiny_config)


def test_stop_if_not_finite_passes_finite_losses():
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    stop_if_not_finite(SINGLE, torch.device("cpu"), sum(losses.values()), 0, lambda: "unused", "")


def test_final_evaluation_keeps_its_detections_and_a_cut_run_does_not(shapes_dir, tmp_path):
    from scratchdet.evaluation.coco import read_results
    from scratchdet.run_folder import RunFolder

    schedule = {"solver.reference_batch": 2, "schedule.unit_iters": 4, "schedule.drop_tails": "[2,1]"}
    schedule |= {"schedule.multiplier": 1, "solver.warmup_iters": 1, "eval.max_images": 3}
    cut = trainer.train(
        load_config(MINI_CONFIG, tiny_overrides(shapes_dir, tmp_path / "cut", **schedule, **{"train.max_iters": 2}))
    )
    assert not cut.finished and not list(RunFolder(tmp_path / "cut").eval_dir.glob("*detections*"))
    done = trainer.train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, tmp_path / "full", **schedule)))
    assert done.finished and done.iter == 4
    results = read_results(RunFolder(tmp_path / "full").detections(4))
    assert len(results) == done.eval["detections"]
    assert all("segmentation" in r and r["image_id"] >= 0 for r in results)


def test_resume_of_a_run_whose_final_evaluation_is_missing_evaluates_it(shapes_dir, tmp_path, monkeypatch):
    """A stop between the final checkpoint and the final evaluation (the loop saves, then evaluates): resume=true
    trains nothing, writes the missing evaluation (equal to an uninterrupted run's) and then the end record."""
    real = trainer.run_evaluation

    def stopped_before_evaluating(model, val_set, cfg, device, iteration, *args, **kwargs):
        if iteration == 2:
            raise KeyboardInterrupt  # where a kill -9 would land; the checkpoint of iteration 2 is on disk
        return real(model, val_set, cfg, device, iteration, *args, **kwargs)

    run = tmp_path / "run"
    overrides = tiny_overrides(shapes_dir, run, **{"train.max_iters": 2})
    monkeypatch.setattr(trainer, "run_evaluation", stopped_before_evaluating)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(load_config(MINI_CONFIG, overrides))
    monkeypatch.undo()
    assert latest_checkpoint(run / "checkpoints").name == "model_0000002.pth"
    assert not (run / "eval" / "iter_0000002.json").exists() and not read_metrics(run, "end")

    result = trainer.train(load_config(MINI_CONFIG, [*overrides, "resume=true"]))
    trainer.train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, tmp_path / "straight", **{"train.max_iters": 2})))
    evaluated = json.loads((run / "eval" / "iter_0000002.json").read_text())
    straight = json.loads((tmp_path / "straight" / "eval" / "iter_0000002.json").read_text())
    assert evaluated["bbox"] == straight["bbox"] and result.eval["bbox"] == straight["bbox"]
    assert [r["iter"] for r in read_metrics(run, "train")] == [1, 2]  # nothing trained twice
    assert [r["iter"] for r in read_metrics(run, "eval")] == [2] and read_metrics(run, "end")[-1]["iter"] == 2


def test_train_num_threads_is_set_for_the_run_and_its_evaluation_only(shapes_dir, tmp_path, monkeypatch):
    """train.num_threads is the process's torch thread count: a run sets it for its own loop and evaluation and
    gives the caller's back (an inprocess study runs every job in one process, and a 1-thread job left the later
    ones on one thread)."""
    seen = []

    def counting(fn):
        def counted(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return fn(*args, **kwargs)

        return counted

    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    out = tmp_path / "run"
    monkeypatch.setattr(trainer, "stop_if_not_finite", counting(trainer.stop_if_not_finite))  # once per iteration
    overrides = tiny_overrides(shapes_dir, out, **{"train.num_threads": threads, "train.max_iters": 2})
    trainer.train(load_config(MINI_CONFIG, overrides))
    assert seen == [threads, threads] and torch.get_num_threads() == before

    seen.clear()
    monkeypatch.setattr(run_eval, "evaluate_split", counting(run_eval.evaluate_split))
    run_eval.evaluate_run(out, [f"train.num_threads={threads}"])
    assert seen == [threads] and torch.get_num_threads() == before
