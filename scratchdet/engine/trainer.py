"""The training loop: one function, read top to bottom (DESIGN.md style rule 4).

Per iteration: next batch -> LR from the schedule -> forward -> stop if any loss is not finite -> backward -> step.
Around it: logging every train.log_period iterations, evaluation every eval.period iterations (the learning curve
of the paper's figures), checkpoints every train.checkpoint_period iterations and at the end, and exact resume.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from scratchdet.config import Config
from scratchdet.data.build import build_train_dataset, build_train_loader, build_val_dataset, check_categories
from scratchdet.distributed import (
    SINGLE,
    DistContext,
    agree_on_host,
    all_gather,
    all_reduce_sum,
    all_reduce_tensors,
    init_distributed,
    main_first,
    ranks_not_finite,
)
from scratchdet.engine.cascade_switch import cascade_switch_iter, switch_in_run
from scratchdet.engine.checkpoint import (
    check_free_space,
    estimate_checkpoint_bytes,
    planned_checkpoints,
    restore_training_state,
    rng_state,
    save_checkpoint,
)
from scratchdet.engine.initialization import initialize, resolve_input_convention
from scratchdet.engine.metrics import MetricsWriter
from scratchdet.engine.model_state import MODEL_STATE_KEY, record_model_state, resume_model_
from scratchdet.engine.optim import build_optimizer
from scratchdet.engine.preemption import StopRequest
from scratchdet.engine.run_dir import prepare_run_dir, write_env
from scratchdet.engine.schedule import schedule_from_config
from scratchdet.errors import ConfigError, Preempted, TrainingError
from scratchdet.evaluation.split import evaluate_split
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.input_convention import model_input_convention
from scratchdet.modeling.sync_bn import use_native_sync_bn

MODEL_TARGET_KEYS = ("boxes", "labels", "masks", "keypoints")  # keypoints: Keypoint R-CNN (model.arch=keypoint_rcnn)
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # train.amp


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


def run_evaluation(model, val_set, cfg: Config, device, iteration: int, out: Path, metrics: MetricsWriter,
                   ctx: DistContext = SINGLE) -> dict:
    """Evaluates (sharded over the training processes), writes eval/iter_XXXXXXX.json and an "eval" record.

    COCO AP for data.format=coco; VOC mAP (report key "voc") for data.format=voc. Every rank returns the report;
    rank 0 alone writes it.
    """
    report, text = evaluate_split(model, val_set, cfg, device, ctx=ctx)
    report["iter"] = iteration
    if ctx.is_main:
        (out / "eval").mkdir(exist_ok=True)
        (out / "eval" / f"iter_{iteration:07d}.json").write_text(json.dumps(report, indent=2) + "\n")
        metrics.write({"type": "eval", **report})
        tqdm.write(f"[iter {iteration}] evaluation:\n{text}")
    return report


def _setup_run_folder(cfg: Config, device: torch.device, world_size: int):
    """Rank 0's start-up checks and writes: the run folder rules (resume / refuse), env.json."""
    resume_from = prepare_run_dir(cfg)
    write_env(Path(cfg.output), cfg, f"{device} x {world_size}" if world_size > 1 else str(device))
    return resume_from


def _place(model: nn.Module, cfg: Config, ctx: DistContext, device: torch.device) -> None:
    """Moves `model` to its device and memory layout, in place; on CUDA under torchrun, SyncBN becomes torch's fused
    nn.SyncBatchNorm (the same Parameter objects, so an optimizer built before stays valid)."""
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.model.norm == "SyncBN" and device.type == "cuda" and ctx.enabled:
        use_native_sync_bn(model)  # converts the children in place (the top module is never a norm layer)


def _wrap(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """The module the loop calls: DDP over the model under torchrun, the model itself otherwise.

    broadcast_buffers=False: BN buffers are either synchronized (SyncBN), frozen (FrozenBN) or deliberately per
    process (BN); and with it DDP's forward runs no collective, so a rank that stops early cannot leave another
    waiting inside a forward pass.
    """
    if not ctx.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def train(cfg: Config) -> dict:
    """Trains (or resumes) the run described by `cfg`; returns a summary with the last evaluation report.

    Under torchrun every process calls this (distributed.py); the summary is the same on every rank.
    """
    out = Path(cfg.output)
    resolve_input_convention(cfg)  # model.input_* / stride_in_1x1 from the weight file, before config.yaml and model
    ctx, device = init_distributed(cfg.train.device)
    if cfg.train.batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} (the global batch) does not divide by the "
                          f"{ctx.world_size} training processes; choose a multiple of {ctx.world_size}")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    # The data is loaded and checked before the run folder is touched: a file that cannot be trained or scored
    # (no usable image, categories that differ between the splits, ...) fails without leaving a half-made run.
    train_set = build_train_dataset(cfg)
    val_set = build_val_dataset(cfg)
    check_categories(train_set, val_set)
    resume_from = main_first(ctx, _setup_run_folder, cfg, device, ctx.world_size)
    seed_everything(cfg.seed)
    if ctx.is_main:
        for name, dataset in (("train", train_set), ("val", val_set)):
            (out / f"dataset_{name}.json").write_text(json.dumps(dataset.summary.to_dict(), indent=2) + "\n")
    model = build_detector(cfg, train_set.num_classes, getattr(train_set, "num_keypoints", None))
    pretrain_seen = None
    if resume_from is None:
        # Loaded once, at the start: on resume the checkpoint already holds the fine-tuned weights.
        init_record = initialize(model, cfg)
        if ctx.is_main:
            (out / "init.json").write_text(json.dumps(init_record, indent=2) + "\n")
        pretrain_seen = init_record["pretrain_seen"]
    if ctx.enabled:  # different RPN/RoI sampling draws per process (the model itself is identical: same seed)
        seed_everything(cfg.seed + 1_000_003 * ctx.rank)
    _place(model, cfg, ctx, device)
    schedule = schedule_from_config(cfg)
    end_iter = min(schedule.max_iters, cfg.train.max_iters or schedule.max_iters)
    switch_iter = cascade_switch_iter(cfg, schedule.max_iters)  # model.cascade_switch_iters (PAPER.md)
    # On resume: the heads the checkpoint holds (cascade after the switch), built before it loads, then placed.
    if resume_from is not None and resume_model_(model, cfg, resume_from, switch_iter):
        _place(model, cfg, ctx, device)
    optimizer = build_optimizer(model, cfg.solver, schedule.base_lr)
    amp_dtype = AMP_DTYPES[cfg.train.amp]
    # fp16 needs loss scaling (its range underflows small gradients); bf16 has float32's range and does not.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    seen = {"images": 0, "instances": 0, "pixels": 0}  # over all processes

    start_iter = 0
    if resume_from is not None:
        state = restore_training_state(resume_from, model, optimizer, rank=ctx.rank, world_size=ctx.world_size,
                                       scaler=scaler)
        start_iter, seen, pretrain_seen = state["iteration"], state["seen"], state["pretrain_seen"]
        if ctx.is_main:
            tqdm.write(f"resuming {out} from {resume_from.name} (iteration {start_iter})")
    # A disk too full for this run's checkpoints fails now, not at a save hours into the run (docs/RELIABILITY.md,
    # promise 9).
    n_checkpoints = planned_checkpoints(start_iter, end_iter, cfg.train.checkpoint_period, cfg.train.extra_checkpoints)
    main_first(ctx, check_free_space, out / "checkpoints", estimate_checkpoint_bytes(model), n_checkpoints)
    train_model = _wrap(model, ctx, device)
    pending = [0, 0, 0]  # this process's images, instances, pixels since `seen` was last summed over processes

    def sync_seen() -> None:
        for key, total in zip(seen, all_reduce_sum(ctx, pending), strict=True):
            seen[key] += total
        pending[:] = [0, 0, 0]

    def checkpoint(iteration: int) -> Path | None:
        rngs = all_gather(ctx, rng_state())  # every rank's generators, so each resumes its own exactly
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
                 "seen": seen,
                 "pretrain_seen": pretrain_seen,  # carried along so fine-tuned totals include the pre-training
                 "rng": rngs[0]}
        # What the model was (cascade heads? classes?), so every loader rebuilds it (engine/model_state.py).
        state[MODEL_STATE_KEY] = record_model_state(model, train_set.num_classes,
                                                    getattr(train_set, "num_keypoints", None))
        # The pixels and stride the weights were trained with, so a copy of this file away from its run folder
        # still fine-tunes as the same network (modeling/input_convention.py reads it back).
        state["input_convention"] = model_input_convention(model).to_dict()
        if ctx.enabled:
            state["rng_per_rank"] = rngs
            state["world_size"] = ctx.world_size
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        return main_first(ctx, save_checkpoint, out / "checkpoints", iteration, state)

    metrics = MetricsWriter(out, enabled=ctx.is_main)
    metrics.write({"type": "start", "iter": start_iter, "schedule": schedule.describe(), "end_iter": end_iter,
                   "train_images": len(train_set), "val_images": len(val_set), "init": cfg.init,
                   "pretrain_seen": pretrain_seen, "world_size": ctx.world_size, "amp": cfg.train.amp})
    if ctx.is_main:
        tqdm.write(f"schedule: {schedule.describe()}; training iterations {start_iter}..{end_iter}"
                   + (f"; {ctx.world_size} processes" if ctx.enabled else ""))
    loader = iter(build_train_loader(train_set, cfg, start_iter, ctx.rank, ctx.world_size))
    train_model.train()
    window: dict[str, torch.Tensor] = {}  # loss sums on the device since the last log record (no host syncs)
    window_iters = 0
    window_start = time.perf_counter()
    data_time = 0.0
    report: dict = {}
    # Redraw at most every 5 s when stderr is a file or pipe (CI, nohup), so logs stay readable.
    progress = tqdm(total=end_iter, initial=start_iter, desc="train", unit="it", dynamic_ncols=True,
                    mininterval=0.1 if sys.stderr.isatty() else 5.0, disable=not ctx.is_main)
    with StopRequest() as stop:  # SIGTERM/SIGINT -> checkpoint at the next iteration boundary, then stop
        for iteration in range(start_iter, end_iter):
            tick = time.perf_counter()
            load_error = None
            try:
                images, targets = next(loader)
            except Exception as e:  # e.g. DataError; alone, raise at once; among several, stop together first
                if not ctx.enabled:
                    raise
                load_error = e
            data_time += time.perf_counter() - tick
            failed, stopping = agree_on_host(ctx, failed=load_error is not None, stop=stop.signum is not None)
            if failed:
                if load_error is not None:
                    raise load_error
                raise TrainingError(f"rank(s) {failed} could not load their batch of iteration {iteration} (see "
                                    f"their error); rank {ctx.rank} stops with them, nothing was stepped")
            if stopping and iteration > start_iter:
                path = checkpoint(iteration)
                metrics.write({"type": "preempted", "iter": iteration, "signal": stop.signum or signal.SIGTERM})
                progress.close()
                raise Preempted(stop.signum or signal.SIGTERM, iteration, str(path))
            if cfg.data.skip_bad_images:  # logged and counted run-wide (docs/RELIABILITY.md, promise 8)
                for skip in [r for rank_skips in all_gather(ctx, train_set.record_skips(targets)) for r in rank_skips]:
                    metrics.write({"type": "skip", "iter": iteration, **skip})
            if cfg.train.record_image_ids:  # "iter" = 0-based index of the iteration that consumes this batch
                ids = [i for rank_ids in all_gather(ctx, [int(t["image_id"]) for t in targets]) for i in rank_ids]
                metrics.write({"type": "batch", "iter": iteration, "image_ids": ids})
            pending[0] += len(images)
            pending[1] += sum(len(t["boxes"]) for t in targets)
            pending[2] += sum(img.shape[-1] * img.shape[-2] for img in images)  # post-transform, pre-padding
            images = [img.to(device, non_blocking=True) for img in images]
            model_targets = [{k: t[k].to(device, non_blocking=True) for k in MODEL_TARGET_KEYS if k in t}
                             for t in targets]

            lr = schedule.lr_at(iteration)
            if iteration == switch_iter:  # paper: cascade heads for the final K iterations (engine/cascade_switch.py)
                optimizer = switch_in_run(model, optimizer, cfg, iteration, lr, metrics)
                _place(model, cfg, ctx, device)  # the new heads (the optimizer keeps the same Parameter objects)
                del train_model  # the old DDP's reducer removes its gradient hooks when it is freed
                train_model = _wrap(model, ctx, device)  # new parameters: DDP must register them
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = train_model(images, model_targets)
            total = sum(losses.values())
            not_finite = ranks_not_finite(ctx, device, total)  # every rank stops together, before any step
            if not_finite:
                if ctx.rank in not_finite:
                    check_finite(total, losses, iteration, targets)
                raise TrainingError(f"non-finite loss on rank(s) {not_finite} at iteration {iteration} (see their "
                                    f"error); rank {ctx.rank} stops with them, nothing was stepped")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()

            for k, v in losses.items():
                window[k] = window.get(k, 0.0) + v.detach()
            window["loss"] = window.get("loss", 0.0) + total.detach()
            window_iters += 1
            done = iteration + 1
            progress.update(1)
            if done % cfg.train.log_period == 0 or done == end_iter:
                n = window_iters
                elapsed = time.perf_counter() - window_start
                means = dict(zip(window, all_reduce_tensors(ctx, device, list(window.values())), strict=True))
                sync_seen()
                record = {"type": "train", "iter": done, "lr": lr, **{k: v / n for k, v in means.items()},
                          "time_per_iter": elapsed / n, "data_time": data_time / n, "seen": dict(seen)}
                if scaler.is_enabled():
                    record["loss_scale"] = scaler.get_scale()
                metrics.write(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2g}")
                window, window_iters, data_time, window_start = {}, 0, 0.0, time.perf_counter()
            if done % cfg.train.checkpoint_period == 0 or done == end_iter or done in cfg.train.extra_checkpoints:
                sync_seen()
                checkpoint(done)
            if (cfg.eval.period and done % cfg.eval.period == 0) or done == end_iter:
                report = run_evaluation(model, val_set, cfg, device, done, out, metrics, ctx)
    progress.close()
    sync_seen()
    metrics.write({"type": "end", "iter": end_iter, "seen": seen, "pretrain_seen": pretrain_seen})
    metrics.close()
    return {"output": str(out), "iter": end_iter, "seen": seen, "pretrain_seen": pretrain_seen, "eval": report,
            "finished": end_iter == schedule.max_iters}
