"""The training loop: one function, read top to bottom (DESIGN.md style rule 4).

Per iteration: next batch -> LR from the schedule -> forward -> stop if any loss is not finite -> backward -> step.
Around it: logging every train.log_period iterations, evaluation every eval.period iterations (the learning curve
of the paper's figures), checkpoints every train.checkpoint_period iterations and at the end, and exact resume.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from scratchdet.config import Config
from scratchdet.data.build import build_train_dataset, build_train_loader, build_val_dataset
from scratchdet.engine.cascade_switch import cascade_switch_iter, convert_model, resume_needs_cascade, switch_in_run
from scratchdet.engine.checkpoint import (
    check_free_space,
    estimate_checkpoint_bytes,
    planned_checkpoints,
    restore_training_state,
    rng_state,
    save_checkpoint,
)
from scratchdet.engine.initialization import initialize
from scratchdet.engine.metrics import MetricsWriter
from scratchdet.engine.optim import build_optimizer
from scratchdet.engine.preemption import StopRequest
from scratchdet.engine.run_dir import prepare_run_dir, write_env
from scratchdet.engine.schedule import schedule_from_config
from scratchdet.errors import ConfigError, Preempted, TrainingError
from scratchdet.evaluation.coco import evaluate, format_report
from scratchdet.modeling.detector import build_detector

MODEL_TARGET_KEYS = ("boxes", "labels", "masks", "keypoints")  # keypoints: Keypoint R-CNN (issue 7)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_finite(total: torch.Tensor, losses: dict, iteration: int, targets: list[dict]) -> None:
    """Raises TrainingError before the optimizer step if the loss is NaN/inf, so parameters stay those of the
    previous step, naming the iteration, every loss value and the batch's image ids."""
    if torch.isfinite(total):
        return
    values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
    ids = [int(t["image_id"]) for t in targets]
    raise TrainingError(
        f"non-finite loss at iteration {iteration}: {values}; batch image ids {ids}. "
        "Lower solver.base_lr or lengthen solver.warmup_iters, and check these images' annotations."
    )


def run_evaluation(model, val_set, cfg: Config, device, iteration: int, out: Path, metrics: MetricsWriter) -> dict:
    """Evaluates, writes eval/iter_XXXXXXX.json and an "eval" record in metrics.jsonl.

    COCO AP for data.format=coco; VOC mAP (report key "voc") for data.format=voc.
    """
    if cfg.data.format == "voc":
        # Imported here so the COCO path and its imports stay exactly as they were (issue 7 part 7).
        from scratchdet.evaluation.voc import evaluate_voc, format_voc_report, voc_use_07_metric

        report = evaluate_voc(model, val_set, device, max_images=cfg.eval.max_images,
                              use_07_metric=voc_use_07_metric(cfg.data))
        report["iter"] = iteration
        (out / "eval").mkdir(exist_ok=True)
        (out / "eval" / f"iter_{iteration:07d}.json").write_text(json.dumps(report, indent=2) + "\n")
        metrics.write({"type": "eval", **report})
        tqdm.write(f"[iter {iteration}] evaluation:\n{format_voc_report(report)}")
        return report
    report = evaluate(model, val_set, device, max_images=cfg.eval.max_images)
    report["iter"] = iteration
    (out / "eval").mkdir(exist_ok=True)
    (out / "eval" / f"iter_{iteration:07d}.json").write_text(json.dumps(report, indent=2) + "\n")
    metrics.write({"type": "eval", **report})
    tqdm.write(f"[iter {iteration}] evaluation:\n{format_report(report)}")
    return report


def train(cfg: Config) -> dict:
    """Trains (or resumes) the run described by `cfg`; returns a summary with the last evaluation report."""
    out = Path(cfg.output)
    resume_from = prepare_run_dir(cfg)
    device = resolve_device(cfg.train.device)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    write_env(out, cfg, str(device))
    seed_everything(cfg.seed)

    train_set = build_train_dataset(cfg)
    val_set = build_val_dataset(cfg)
    for name, dataset in (("train", train_set), ("val", val_set)):
        (out / f"dataset_{name}.json").write_text(json.dumps(dataset.summary.to_dict(), indent=2) + "\n")
    model = build_detector(cfg, train_set.num_classes, getattr(train_set, "num_keypoints", None))
    if resume_from is None:
        # Loaded once, at the start: on resume the checkpoint already holds the fine-tuned weights.
        init_record = initialize(model, cfg)
        (out / "init.json").write_text(json.dumps(init_record, indent=2) + "\n")
        pretrain_seen = init_record["pretrain_seen"]
    model.to(device)
    schedule = schedule_from_config(cfg)
    end_iter = min(schedule.max_iters, cfg.train.max_iters or schedule.max_iters)
    switch_iter = cascade_switch_iter(cfg, schedule.max_iters)  # model.cascade_switch_iters (issue 7)
    if resume_from is not None and resume_needs_cascade(resume_from, switch_iter):
        convert_model(model, cfg)  # the checkpoint holds cascade heads: rebuild them before loading it
    optimizer = build_optimizer(model, cfg.solver, schedule.base_lr)
    seen = {"images": 0, "instances": 0, "pixels": 0}

    start_iter = 0
    if resume_from is not None:
        state = restore_training_state(resume_from, model, optimizer)
        start_iter, seen, pretrain_seen = state["iteration"], state["seen"], state["pretrain_seen"]
        tqdm.write(f"resuming {out} from {resume_from.name} (iteration {start_iter})")
    # Issue 6, promise 9: a disk too full for this run's checkpoints fails now, not at a save hours into the run.
    n_checkpoints = planned_checkpoints(start_iter, end_iter, cfg.train.checkpoint_period, cfg.train.extra_checkpoints)
    check_free_space(out / "checkpoints", estimate_checkpoint_bytes(model), n_checkpoints)

    def checkpoint(iteration: int) -> Path:
        return save_checkpoint(out / "checkpoints", iteration, {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "seen": seen,
            "pretrain_seen": pretrain_seen,  # carried along so fine-tuned totals include the pre-training
            "rng": rng_state(),
        })

    metrics = MetricsWriter(out)
    metrics.write({"type": "start", "iter": start_iter, "schedule": schedule.describe(), "end_iter": end_iter,
                   "train_images": len(train_set), "val_images": len(val_set), "init": cfg.init,
                   "pretrain_seen": pretrain_seen})
    tqdm.write(f"schedule: {schedule.describe()}; training iterations {start_iter}..{end_iter}")
    loader = iter(build_train_loader(train_set, cfg, start_iter))
    model.train()
    window: dict[str, float] = {}  # loss sums since the last log record, over window_iters iterations
    window_iters = 0
    window_start = time.perf_counter()
    data_time = 0.0
    report: dict = {}
    # Redraw at most every 5 s when stderr is a file or pipe (CI, nohup), so logs stay readable.
    progress = tqdm(total=end_iter, initial=start_iter, desc="train", unit="it", dynamic_ncols=True,
                    mininterval=0.1 if sys.stderr.isatty() else 5.0)
    with StopRequest() as stop:  # SIGTERM/SIGINT -> checkpoint at the next iteration boundary, then stop
        for iteration in range(start_iter, end_iter):
            tick = time.perf_counter()
            images, targets = next(loader)
            data_time += time.perf_counter() - tick
            if cfg.data.skip_bad_images:  # issue 6: every replaced unreadable image is logged and counted run-wide
                for skip in train_set.record_skips(targets):
                    metrics.write({"type": "skip", "iter": iteration, **skip})
            if cfg.train.record_image_ids:  # "iter" = 0-based index of the iteration that consumes this batch
                metrics.write({"type": "batch", "iter": iteration, "image_ids": [int(t["image_id"]) for t in targets]})
            seen["images"] += len(images)
            seen["instances"] += sum(len(t["boxes"]) for t in targets)
            seen["pixels"] += sum(img.shape[-1] * img.shape[-2] for img in images)  # post-transform, pre-padding
            images = [img.to(device, non_blocking=True) for img in images]
            model_targets = [{k: t[k].to(device, non_blocking=True) for k in MODEL_TARGET_KEYS if k in t}
                             for t in targets]

            lr = schedule.lr_at(iteration)
            if iteration == switch_iter:  # paper: cascade heads for the final K iterations (engine/cascade_switch.py)
                optimizer = switch_in_run(model, optimizer, cfg, iteration, lr, metrics)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses = model(images, model_targets)
            total = sum(losses.values())
            check_finite(total, losses, iteration, targets)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()

            for k, v in losses.items():
                window[k] = window.get(k, 0.0) + float(v.detach())
            window["loss"] = window.get("loss", 0.0) + float(total.detach())
            window_iters += 1
            done = iteration + 1
            progress.update(1)
            if done % cfg.train.log_period == 0 or done == end_iter:
                n = window_iters
                elapsed = time.perf_counter() - window_start
                record = {"type": "train", "iter": done, "lr": lr, **{k: v / n for k, v in window.items()},
                          "time_per_iter": elapsed / n, "data_time": data_time / n, "seen": dict(seen)}
                metrics.write(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2g}")
                window, window_iters, data_time, window_start = {}, 0, 0.0, time.perf_counter()
            if done % cfg.train.checkpoint_period == 0 or done == end_iter or done in cfg.train.extra_checkpoints:
                checkpoint(done)
            if (cfg.eval.period and done % cfg.eval.period == 0) or done == end_iter:
                report = run_evaluation(model, val_set, cfg, device, done, out, metrics)
            if stop.signum is not None and done < end_iter:
                path = checkpoint(done)
                metrics.write({"type": "preempted", "iter": done, "signal": stop.signum})
                progress.close()
                raise Preempted(stop.signum, done, str(path))
    progress.close()
    metrics.write({"type": "end", "iter": end_iter, "seen": seen, "pretrain_seen": pretrain_seen})
    metrics.close()
    return {"output": str(out), "iter": end_iter, "seen": seen, "pretrain_seen": pretrain_seen, "eval": report,
            "finished": end_iter == schedule.max_iters}
