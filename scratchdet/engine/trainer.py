"""The training loop: one function, read top to bottom (docs/ARCHITECTURE.md, "Decisions worth knowing", Code style).

Per iteration: next batch -> LR from the schedule -> forward -> stop if any loss is not finite -> backward -> step.
Around it: logging every train.log_period iterations, evaluation every eval.period iterations (the learning curve
of the paper's figures), checkpoints every train.checkpoint_period iterations and at the end, and exact resume.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from scratchdet.config import Config
from scratchdet.data.build import build_train_dataset, build_train_loader, build_val_dataset, check_categories
from scratchdet.data.detection import DetectionDataset
from scratchdet.distributed import SINGLE, DistContext, all_gather, init_distributed, main_first
from scratchdet.engine.cascade_switch import cascade_switch_iter, switch_in_run
from scratchdet.engine.checkpoint import (
    check_free_space,
    estimate_checkpoint_bytes,
    planned_checkpoints,
    restore_training_state,
    save_training_state,
)
from scratchdet.engine.loop import (
    LossWindow,
    SampleCounter,
    deterministic_kernels,
    due,
    intra_op_threads,
    next_batch,
    preempt,
    progress_bar,
    seed_everything,
    set_lr,
    stop_if_not_finite,
)
from scratchdet.engine.metrics import MetricsWriter
from scratchdet.engine.model_state import MODEL_STATE_KEY, record_model_state, resume_model_
from scratchdet.engine.optim import build_optimizer
from scratchdet.engine.preemption import StopRequest
from scratchdet.engine.run_dir import check_run_categories, prepare_run_dir, write_env
from scratchdet.engine.schedule import Schedule, schedule_from_config
from scratchdet.errors import ConfigError
from scratchdet.evaluation.split import evaluate_split
from scratchdet.files import atomic_write_json
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.input_transform import model_input_convention
from scratchdet.modeling.sync_bn import use_native_sync_bn
from scratchdet.run_folder import RunFolder
from scratchdet.weights.initialization import initialize, resolve_input_convention

MODEL_TARGET_KEYS = ("boxes", "labels", "masks", "keypoints")  # keypoints: Keypoint R-CNN (model.arch=keypoint_rcnn)
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # train.amp
NONFINITE_HINT = (
    "Lower solver.base_lr or lengthen solver.warmup_iters, and check these images' annotations "
    "(nothing was stepped: the parameters are those of the previous iteration)."
)


def run_evaluation(
    model,
    val_set,
    cfg: Config,
    device,
    iteration: int,
    out: Path,
    metrics: MetricsWriter,
    ctx: DistContext = SINGLE,
    keep_detections: bool = False,
) -> dict:
    """Evaluates (sharded over the training processes), writes eval/iter_XXXXXXX.json and an "eval" record.

    COCO AP for data.format=coco; VOC mAP (report key "voc") for data.format=voc. Every rank returns the report;
    rank 0 alone writes it. keep_detections: also write the detections (COCO data; RunFolder.detections).
    """
    results_path = RunFolder(out).detections(iteration) if keep_detections else None
    report, text = evaluate_split(model, val_set, cfg, device, ctx=ctx, results_path=results_path)
    report["iter"] = iteration
    if ctx.is_main:
        folder = RunFolder(out)
        folder.eval_dir.mkdir(exist_ok=True)
        atomic_write_json(folder.eval_report(iteration), report)
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
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
    )


def _describe_losses(losses: dict, targets: list[dict]) -> Callable[[], str]:
    def describe() -> str:
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        return f"{values}; batch image ids {[int(t['image_id']) for t in targets]}"

    return describe


def _record_batch(
    cfg: Config, ctx: DistContext, train_set, iteration: int, targets: list[dict], metrics: MetricsWriter
) -> None:
    """The optional per-iteration records: images skipped (data.skip_bad_images, counted run-wide:
    docs/RELIABILITY.md, promise 8) and the batch's image ids (train.record_image_ids; "iter" is the 0-based index
    of the iteration that consumes the batch)."""
    if cfg.data.skip_bad_images:
        for skip in [r for rank_skips in all_gather(ctx, train_set.record_skips(targets)) for r in rank_skips]:
            metrics.write({"type": "skip", "iter": iteration, **skip})
    if cfg.train.record_image_ids:
        ids = [i for rank_ids in all_gather(ctx, [int(t["image_id"]) for t in targets]) for i in rank_ids]
        metrics.write({"type": "batch", "iter": iteration, "image_ids": ids})


def _to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    return (
        [img.to(device, non_blocking=True) for img in images],
        [{k: t[k].to(device, non_blocking=True) for k in MODEL_TARGET_KEYS if k in t} for t in targets],
    )


@dataclass(frozen=True)
class TrainResult:
    """What `train` returns (the same on every rank under torchrun)."""

    output: str  # the run folder
    iter: int  # the last iteration trained
    seen: dict  # samples seen by this run: {"images", "instances", "pixels"} (engine/loop.py, SampleCounter)
    pretrain_seen: dict | None  # the pre-training's samples seen (a pre-trained run), else None
    eval: dict  # the last evaluation report of this call ({} when it evaluated nothing)
    finished: bool  # whether the schedule's last iteration was reached


@dataclass
class _Run:
    """A detection run ready to train: everything `train` sets up before its first iteration."""

    cfg: Config
    ctx: DistContext
    device: torch.device
    train_set: DetectionDataset
    val_set: DetectionDataset
    model: nn.Module
    optimizer: torch.optim.Optimizer  # replaced at the late cascade switch
    scaler: torch.amp.GradScaler
    schedule: Schedule
    start_iter: int
    end_iter: int
    switch_iter: int | None
    counter: SampleCounter
    pretrain_seen: dict | None

    @property
    def out(self) -> Path:
        return Path(self.cfg.output)

    def save(self, iteration: int) -> Path | None:
        """Checkpoints the state after `iteration` iterations; every rank calls it, rank 0 writes."""
        extra = {
            "pretrain_seen": self.pretrain_seen,  # carried along so fine-tuned totals include the pre-training
            # What the model is (cascade heads? classes?), so every loader rebuilds it (engine/model_state.py).
            MODEL_STATE_KEY: record_model_state(
                self.model, self.train_set.num_classes, getattr(self.train_set, "num_keypoints", None)
            ),
            # The pixels and stride the weights were trained with, so a copy of this file away from its run
            # folder still fine-tunes as the same network (weights/convention.py reads it back).
            "input_convention": model_input_convention(self.model).to_dict(),
        }
        return save_training_state(
            RunFolder(self.out).checkpoints,
            iteration,
            self.model,
            self.optimizer,
            seen=self.counter.sync(self.ctx),
            ctx=self.ctx,
            scaler=self.scaler,
            extra=extra,
        )

    def switch_heads(self, train_model: nn.Module, iteration: int, lr: float, metrics: MetricsWriter) -> nn.Module:
        """The late switch to cascade heads (engine/cascade_switch.py) in the running loop. Replaces the optimizer
        (it keeps the surviving Parameter objects and their momentum) and returns the module the loop calls from
        now on: DDP must register the new parameters."""
        self.optimizer = switch_in_run(self.model, self.optimizer, self.cfg, iteration, lr, metrics)
        _place(self.model, self.cfg, self.ctx, self.device)
        del train_model  # the old DDP's reducer removes its gradient hooks when it is freed
        return _wrap(self.model, self.ctx, self.device)


def _start(cfg: Config) -> _Run:
    """Everything before the first iteration, in the order that keeps failures cheap: the input convention and the
    data are checked before the run folder is touched, the weights are loaded (fresh runs) or the checkpoint
    restored (resumed runs), and the disk is checked for the checkpoints to come. `cfg` is the run's own copy:
    the weight file's input convention is written into it."""
    out = Path(cfg.output)
    folder = RunFolder(out)
    resolve_input_convention(cfg)  # model.input_* / stride_in_1x1 from the weight file, before config.yaml and model
    ctx, device = init_distributed(cfg.train.device)
    if cfg.train.batch_size % ctx.world_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} (the global batch) does not divide by the "
            f"{ctx.world_size} training processes; choose a multiple of {ctx.world_size}"
        )
    # The data is loaded and checked before the run folder is touched: a file that cannot be trained or scored
    # (no usable image, categories that differ between the splits, ...) fails without leaving a half-made run.
    train_set = build_train_dataset(cfg)
    val_set = build_val_dataset(cfg)
    check_categories(train_set, val_set)
    if cfg.resume:
        # Before anything of the run is rewritten: a re-export with renumbered categories would train on with
        # label 1 meaning another class, and dataset_train.json would then record the new map.
        check_run_categories(out, train_set)
    resume_from = main_first(ctx, _setup_run_folder, cfg, device, ctx.world_size)
    seed_everything(cfg.seed)
    if ctx.is_main:
        for name, dataset in (("train", train_set), ("val", val_set)):
            atomic_write_json(folder.dataset(name), dataset.summary.to_dict())
    model = build_detector(cfg, train_set.num_classes, getattr(train_set, "num_keypoints", None))
    pretrain_seen = None
    if resume_from is None:
        # Loaded once, at the start: on resume the checkpoint already holds the fine-tuned weights.
        init_record = initialize(model, cfg)
        if ctx.is_main:
            atomic_write_json(folder.init, init_record)
        pretrain_seen = init_record["pretrain_seen"]
    if ctx.enabled:  # different RPN/RoI sampling draws per process (the model itself is identical: same seed)
        seed_everything(cfg.seed + 1_000_003 * ctx.rank)
    _place(model, cfg, ctx, device)
    schedule = schedule_from_config(cfg)
    end_iter = min(schedule.max_iters, cfg.train.max_iters or schedule.max_iters)
    # model.cascade_switch_iters: docs/PAPER.md, "Cascade from scratch"
    switch_iter = cascade_switch_iter(cfg, schedule.max_iters)
    # On resume: the heads the checkpoint holds (cascade after the switch), built before it loads, then placed.
    if resume_from is not None and resume_model_(model, cfg, resume_from, switch_iter):
        _place(model, cfg, ctx, device)
    optimizer = build_optimizer(model, cfg.solver, schedule.base_lr)
    # fp16 needs loss scaling (its range underflows small gradients); bf16 has float32's range and does not.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    start_iter, counter = 0, SampleCounter()
    if resume_from is not None:
        state = restore_training_state(
            resume_from, model, optimizer, rank=ctx.rank, world_size=ctx.world_size, scaler=scaler
        )
        start_iter, counter, pretrain_seen = state["iteration"], SampleCounter(state["seen"]), state["pretrain_seen"]
        if ctx.is_main:
            tqdm.write(f"resuming {out} from {resume_from.name} (iteration {start_iter})")
    # A disk too full for this run's checkpoints fails now, not at a save hours into the run (docs/RELIABILITY.md,
    # promise 9).
    n_checkpoints = planned_checkpoints(start_iter, end_iter, cfg.train.checkpoint_period, cfg.train.extra_checkpoints)
    main_first(ctx, check_free_space, folder.checkpoints, estimate_checkpoint_bytes(model), n_checkpoints)
    return _Run(
        cfg=cfg,
        ctx=ctx,
        device=device,
        train_set=train_set,
        val_set=val_set,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        schedule=schedule,
        start_iter=start_iter,
        end_iter=end_iter,
        switch_iter=switch_iter,
        counter=counter,
        pretrain_seen=pretrain_seen,
    )


def train(cfg: Config) -> TrainResult:
    """Trains (or resumes) the run described by `cfg`; returns a summary with the last evaluation report.

    Under torchrun every process calls this (distributed.py); the summary is the same on every rank. `cfg` is left
    as it was given: the run works on a copy, completed with the weight file's input convention (what the run
    folder's config.yaml records).

    Raises:
        ConfigError, DataError, CheckpointError: before training, naming the key, file or folder.
        TrainingError: a non-finite loss or a batch that cannot be loaded, before that iteration's step.
        Preempted: SIGTERM/SIGINT; the iteration boundary was checkpointed.
    """
    with intra_op_threads(cfg.train.num_threads):  # the process's count, set for this run only
        return _train(cfg)


def _train(cfg: Config) -> TrainResult:
    run = _start(copy.deepcopy(cfg))
    cfg = run.cfg
    ctx, device, model, scaler, schedule = run.ctx, run.device, run.model, run.scaler, run.schedule
    start_iter, end_iter = run.start_iter, run.end_iter
    amp_dtype = AMP_DTYPES[cfg.train.amp]
    metrics = MetricsWriter(run.out, enabled=ctx.is_main)
    metrics.write(
        {
            "type": "start",
            "iter": start_iter,
            "schedule": schedule.describe(),
            "end_iter": end_iter,
            "train_images": len(run.train_set),
            "val_images": len(run.val_set),
            "init": cfg.init,
            "pretrain_seen": run.pretrain_seen,
            "world_size": ctx.world_size,
            "amp": cfg.train.amp,
        }
    )
    if ctx.is_main:
        tqdm.write(
            f"schedule: {schedule.describe()}; training iterations {start_iter}..{end_iter}"
            + (f"; {ctx.world_size} processes" if ctx.enabled else "")
        )
    loader = iter(build_train_loader(run.train_set, cfg, start_iter, ctx.rank, ctx.world_size))
    train_model = _wrap(model, ctx, device)
    train_model.train()
    window, report = LossWindow(), {}
    if (
        start_iter > 0
        and due(start_iter, cfg.eval.period, end_iter)
        and not RunFolder(run.out).eval_report(start_iter).is_file()
    ):
        # The checkpoint of this iteration was written and its evaluation was not: the loop saves before it
        # evaluates, and a kill came between. Evaluate the restored model first, so the curve has every point and a
        # run resumed at its end gets its final number (docs/RELIABILITY.md); the model is the one that checkpoint
        # holds, so the number is the one the uninterrupted run would have written.
        final = start_iter == schedule.max_iters and cfg.eval.save_detections
        report = run_evaluation(model, run.val_set, cfg, device, start_iter, run.out, metrics, ctx, final)
    progress = progress_bar(end_iter, start_iter, "train", enabled=ctx.is_main)
    # SIGTERM/SIGINT -> checkpoint at the next iteration boundary, then stop.
    with deterministic_kernels(cfg.train.deterministic), StopRequest() as stop:
        for iteration in range(start_iter, end_iter):
            (images, targets), stopping, waited = next_batch(loader, ctx, stop, iteration)
            window.data_time += waited
            if stopping and iteration > start_iter:
                preempt(stop, iteration, run.save, metrics, progress)
            _record_batch(cfg, ctx, run.train_set, iteration, targets, metrics)
            run.counter.add(
                len(images), sum(len(t["boxes"]) for t in targets), sum(img.shape[-1] * img.shape[-2] for img in images)
            )
            images, model_targets = _to_device(images, targets, device)
            lr = schedule.lr_at(iteration)
            if iteration == run.switch_iter:  # paper: cascade heads for the final K iterations
                train_model = run.switch_heads(train_model, iteration, lr, metrics)
            set_lr(run.optimizer, lr)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = train_model(images, model_targets)
            total = sum(losses.values())
            stop_if_not_finite(ctx, device, total, iteration, _describe_losses(losses, targets), NONFINITE_HINT)
            run.optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(run.optimizer)
            scaler.update()

            window.add({**losses, "loss": total})
            done = iteration + 1
            progress.update(1)
            if due(done, cfg.train.log_period, end_iter):
                record = {
                    "type": "train",
                    "iter": done,
                    "lr": lr,
                    **window.flush(ctx, device),
                    "seen": run.counter.sync(ctx),
                }
                if scaler.is_enabled():
                    record["loss_scale"] = scaler.get_scale()
                metrics.write(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2g}")
            if due(done, cfg.train.checkpoint_period, end_iter, cfg.train.extra_checkpoints):
                run.save(done)
            if due(done, cfg.eval.period, end_iter):
                final = done == schedule.max_iters and cfg.eval.save_detections  # the study report reads them
                report = run_evaluation(model, run.val_set, cfg, device, done, run.out, metrics, ctx, final)
    progress.close()
    seen = run.counter.sync(ctx)
    metrics.write({"type": "end", "iter": end_iter, "seen": seen, "pretrain_seen": run.pretrain_seen})
    metrics.close()
    return TrainResult(
        output=str(run.out),
        iter=end_iter,
        seen=seen,
        pretrain_seen=run.pretrain_seen,
        eval=report,
        finished=end_iter == schedule.max_iters,
    )
