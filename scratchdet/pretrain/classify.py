"""Classification pre-training of the detector's backbone: one loop, read top to bottom, like engine/trainer.py.

Per iteration: next batch -> LR (warm-up, then cosine or step) -> forward -> cross-entropy (optional label
smoothing) -> stop if not finite -> backward -> SGD step (no weight decay on norms). Around it: logging every
train.log_period iterations, top-1/top-5 on val every eval.period iterations and at the end, checkpoints every
train.checkpoint_period iterations and at the end, exact resume.

The result is the "pre-trained" arm of the paper's comparison made with our own code: the same backbone (norm,
depth, widths) as the from-scratch detector, its weights saved in torchvision's ResNet layout so the detector
loads them exactly like torchvision's published ImageNet weights. Samples seen (images, pixels) are counted, since
the paper's accounting charges pre-training images to the pre-trained arm (docs/PAPER.md, "Sample accounting (Fig. 2)").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from scratchdet.data.classification import (
    ImageFolderClassification,
    SyntheticClassification,
    build_classification_eval_loader,
    build_classification_train_loader,
    build_classification_transform,
)
from scratchdet.distributed import SINGLE, resolve_device
from scratchdet.engine import loop
from scratchdet.engine.checkpoint import restore_training_state, save_training_state
from scratchdet.engine.metrics import MetricsWriter
from scratchdet.engine.optim import param_groups
from scratchdet.engine.preemption import StopRequest
from scratchdet.engine.run_dir import prepare_run_dir, write_env
from scratchdet.engine.schedule import linear_warmup
from scratchdet.files import atomic_write, atomic_write_json
from scratchdet.modeling.classifier import ResNetClassifier, build_classifier
from scratchdet.pretrain.config import PretrainConfig
from scratchdet.run_folder import RunFolder
from scratchdet.weights.convention import TORCHVISION


@dataclass(frozen=True)
class ClassifySchedule:
    """LR per iteration of a pre-training run; all counts are iterations at solver.batch_size."""

    base_lr: float  # already scaled to the batch size
    max_iters: int
    kind: str  # cosine | step
    milestones: tuple[int, ...]  # step: LR x gamma from each of these iterations on
    gamma: float
    warmup_iters: int
    warmup_factor: float

    def lr_at(self, iteration: int) -> float:
        """LR of the update made at `iteration` (0-based)."""
        if self.kind == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * iteration / self.max_iters))
        else:
            factor = self.gamma ** sum(1 for m in self.milestones if iteration >= m)
        return self.base_lr * factor * linear_warmup(iteration, self.warmup_iters, self.warmup_factor)

    def describe(self) -> str:
        shape = "cosine to 0" if self.kind == "cosine" else f"x{self.gamma:g} at {', '.join(map(str, self.milestones))}"
        return f"{self.max_iters} iters, LR {self.base_lr:g} ({shape}), warm-up {self.warmup_iters} iters"


def build_classify_schedule(cfg: PretrainConfig, train_images: int) -> ClassifySchedule:
    """Resolves epochs (or iters) and step_epochs into iterations at solver.batch_size for a training set size."""
    s, batch = cfg.solver, cfg.solver.batch_size
    iters_per_epoch = train_images / batch
    max_iters = cfg.train.iters if cfg.train.iters is not None else max(1, round(cfg.train.epochs * iters_per_epoch))
    milestones = tuple(m for m in (round(e * iters_per_epoch) for e in s.step_epochs) if 0 < m < max_iters)
    return ClassifySchedule(
        base_lr=s.base_lr * batch / s.reference_batch,
        max_iters=max_iters,
        kind=s.lr_schedule,
        milestones=milestones,
        gamma=s.gamma,
        warmup_iters=s.warmup_iters,
        warmup_factor=s.warmup_factor,
    )


def build_classification_datasets(cfg: PretrainConfig) -> tuple[Dataset, Dataset, list[str]]:
    """(train set with the training transform, val set with the eval transform, class names) from data.*."""
    d = cfg.data
    train_tf = build_classification_transform(d.crop_size, train=True)
    val_tf = build_classification_transform(d.crop_size, train=False)
    if d.synthetic:
        common = dict(num_classes=d.synthetic_classes, size=d.synthetic_size, seed=d.synthetic_seed)
        train_set = SyntheticClassification(d.synthetic_train_images, split="train", transform=train_tf, **common)
        val_set = SyntheticClassification(d.synthetic_val_images, split="val", transform=val_tf, **common)
    else:
        root = Path(d.root)
        train_set = ImageFolderClassification(root / "train", train_tf)
        val_set = ImageFolderClassification(root / "val", val_tf, classes=train_set.classes)
    return train_set, val_set, list(train_set.classes)


def _eval_subset(val_set: Dataset, max_images: int | None) -> Dataset:
    if max_images is None or max_images >= len(val_set):
        return val_set
    # Evenly spaced, not the first N: ImageFolder orders images by class, so a prefix would hold few classes.
    indices = np.unique(np.linspace(0, len(val_set) - 1, max_images).round().astype(int))
    return Subset(val_set, indices.tolist())


@torch.no_grad()
def evaluate_classifier(model: ResNetClassifier, loader, device: torch.device) -> dict:
    """Top-1 and top-5 accuracy in percent over every batch of `loader` (top-5 = top-k with k = min(5, classes))."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    for images, labels in loader:
        logits = model(images.to(device, non_blocking=True))
        labels = labels.to(device)
        topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((topk[:, 0] == labels).sum())
        correct5 += int((topk == labels[:, None]).any(dim=1).sum())
        total += len(labels)
    model.train(was_training)
    return {"top1": 100.0 * correct1 / max(total, 1), "top5": 100.0 * correct5 / max(total, 1), "images": total}


NONFINITE_HINT = (
    "Lower solver.base_lr or lengthen solver.warmup_iters; with model.norm=none a lower LR is usually "
    "needed (nothing was stepped: the parameters are those of the previous iteration)."
)


def _describe_batch(loss: torch.Tensor, labels: torch.Tensor):
    return lambda: (
        f"classification loss={loss.item():.4g} (batch of {len(labels)} images, labels {labels[:8].tolist()}...)"
    )


def backbone_description(cfg: PretrainConfig, model: ResNetClassifier) -> dict:
    """What the weights are, and the detection config values under which they load by name."""
    m = cfg.model
    keys = ("depth", "groups", "width_per_group", "stem_width", "norm", "gn_groups")
    convention = model.input_convention
    return {
        **{k: getattr(m, k) for k in keys},
        "stage_channels": list(model.stage_channels),
        "layout": "torchvision ResNet state_dict: conv1, bn1, layer1..layer4, fc (fc is not part of the detector)",
        # The convention is also recorded in the checkpoints, from which a detector fills these keys by itself.
        "input_convention": convention.to_dict(),
        "detector_overrides": [f"model.{k}={getattr(m, k)}" for k in keys] + convention.overrides(),
    }


def _save_weights(path: Path, state_dict: dict) -> None:
    atomic_write(path, lambda f: torch.save(state_dict, f))  # a kill never leaves a half-written weights file


@dataclass(frozen=True)
class PretrainResult:
    """What `pretrain` returns."""

    output: str  # the run folder
    iter: int  # the last iteration trained
    seen: dict  # samples seen: {"images", "instances", "pixels"}
    eval: dict  # the last evaluation: top1/top5 in percent, images
    summary: str  # path of pretrain_summary.json
    weights: str  # path of the final weights (torchvision layout)
    finished: bool  # whether the schedule's last iteration was reached


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Pre-trains (or resumes) the classifier described by `cfg`.

    Returns:
        output folder, iterations done, samples seen, the last evaluation (top1/top5 in percent), paths of
        pretrain_summary.json and of the final weights (torchvision layout), and whether the schedule finished.
    """
    with loop.intra_op_threads(cfg.train.num_threads):  # the process's count, set for this run only
        return _pretrain(cfg)


def _pretrain(cfg: PretrainConfig) -> PretrainResult:
    out = Path(cfg.output)
    resume_from = prepare_run_dir(cfg)
    device = resolve_device(cfg.train.device)
    write_env(out, cfg, str(device))
    loop.seed_everything(cfg.seed)

    train_set, val_set, classes = build_classification_datasets(cfg)
    eval_set = _eval_subset(val_set, cfg.eval.max_images)
    model = build_classifier(cfg, len(classes)).to(device)
    schedule = build_classify_schedule(cfg, len(train_set))
    end_iter = min(schedule.max_iters, cfg.train.max_iters or schedule.max_iters)
    s = cfg.solver
    optimizer = torch.optim.SGD(
        param_groups(model, s.weight_decay, s.weight_decay_norm), lr=schedule.base_lr, momentum=s.momentum
    )
    start_iter, counter = 0, loop.SampleCounter()
    if resume_from is not None:
        state = restore_training_state(resume_from, model, optimizer)
        start_iter, counter = state["iteration"], loop.SampleCounter(state["seen"])
        tqdm.write(f"resuming {out} from {resume_from.name} (iteration {start_iter})")

    def save(iteration: int) -> Path | None:
        # The input convention is read back by a detector loading this checkpoint (weights/convention.py),
        # so it is fed alike; the weights are in torchvision's ResNet layout.
        return save_training_state(
            RunFolder(out).checkpoints,
            iteration,
            model,
            optimizer,
            seen=counter.sync(SINGLE),
            extra={"input_convention": model.input_convention.to_dict()},
        )

    metrics = MetricsWriter(out)
    eval_loader = build_classification_eval_loader(eval_set, cfg.eval.batch_size, num_workers=cfg.data.num_workers)

    def run_evaluation(iteration: int) -> dict:
        report = {"iter": iteration, **evaluate_classifier(model, eval_loader, device)}
        RunFolder(out).eval_dir.mkdir(exist_ok=True)
        atomic_write_json(RunFolder(out).eval_report(iteration), report)
        metrics.write({"type": "eval", **report})
        tqdm.write(
            f"[iter {iteration}] val top-1 {report['top1']:.2f}%, top-5 {report['top5']:.2f}% "
            f"({report['images']} images)"
        )
        return report

    metrics.write(
        {
            "type": "start",
            "iter": start_iter,
            "schedule": schedule.describe(),
            "end_iter": end_iter,
            "train_images": len(train_set),
            "val_images": len(eval_set),
            "num_classes": len(classes),
        }
    )
    tqdm.write(f"pre-training schedule: {schedule.describe()}; iterations {start_iter}..{end_iter}")
    batches = iter(
        build_classification_train_loader(
            train_set, s.batch_size, seed=cfg.seed, start_iter=start_iter, num_workers=cfg.data.num_workers
        )
    )
    model.train()
    window, report = loop.LossWindow(), {}
    progress = loop.progress_bar(end_iter, start_iter, "pretrain")
    with StopRequest() as stop:  # SIGTERM/SIGINT -> checkpoint at the next iteration boundary, then stop
        for iteration in range(start_iter, end_iter):
            (images, labels), stopping, waited = loop.next_batch(batches, SINGLE, stop, iteration)
            window.data_time += waited
            if stopping and iteration > start_iter:
                loop.preempt(stop, iteration, save, metrics, progress)
            # One labelled object per image; pixels after the crop, as fed.
            counter.add(len(images), len(images), len(images) * images.shape[-2] * images.shape[-1])
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            lr = schedule.lr_at(iteration)
            loop.set_lr(optimizer, lr)
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=s.label_smoothing)
            loop.stop_if_not_finite(SINGLE, device, loss, iteration, _describe_batch(loss, labels), NONFINITE_HINT)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            # train_top1: on the augmented crops, before the step (every batch has solver.batch_size images).
            window.add({"loss": loss, "train_top1": (logits.detach().argmax(1) == labels).float().mean() * 100.0})
            done = iteration + 1
            progress.update(1)
            if loop.due(done, cfg.train.log_period, end_iter):
                record = {
                    "type": "train",
                    "iter": done,
                    "lr": lr,
                    **window.flush(SINGLE, device),
                    "seen": counter.sync(SINGLE),
                }
                metrics.write(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2g}")
            if loop.due(done, cfg.train.checkpoint_period, end_iter):
                save(done)
            if loop.due(done, cfg.eval.period, end_iter):
                report = run_evaluation(done)
    progress.close()
    if not report:  # resumed a run that had already reached end_iter: evaluate what it left
        report = run_evaluation(end_iter)
    seen = counter.sync(SINGLE)
    metrics.write({"type": "end", "iter": end_iter, "seen": seen})
    metrics.close()

    summary = _write_results(cfg, model, schedule, end_iter, report, seen, len(train_set), len(classes))
    return PretrainResult(
        output=str(out),
        iter=end_iter,
        seen=seen,
        eval=report,
        summary=summary["summary"],
        weights=summary["weights"],
        finished=summary["finished"],
    )


def _write_results(
    cfg: PretrainConfig,
    model: ResNetClassifier,
    schedule: ClassifySchedule,
    end_iter: int,
    report: dict,
    seen: dict,
    train_images: int,
    num_classes: int,
) -> dict:
    """Writes the final weights (classifier_final.pth) and pretrain_summary.json; returns the summary."""
    out = Path(cfg.output)
    folder = RunFolder(out)
    weights = folder.pretrain_weights
    # torchvision's convention: a plain torchvision-layout state_dict, loadable anywhere. Any other convention is
    # recorded beside the tensors, so the file, copied out of its run folder, cannot be fed the wrong pixels.
    plain = model.input_convention.same_network(TORCHVISION)
    _save_weights(
        weights,
        model.state_dict()
        if plain
        else {"state_dict": model.state_dict(), "input_convention": model.input_convention.to_dict()},
    )
    layout = "torchvision layout" if plain else "torchvision names under 'state_dict', with its 'input_convention'"
    summary = {
        "output": str(out),
        "iterations": end_iter,
        "finished": end_iter == schedule.max_iters,
        "schedule": schedule.describe(),
        "top1": report["top1"],
        "top5": report["top5"],
        "eval_images": report["images"],
        "seen": seen,
        "epochs_seen": seen["images"] / train_images,
        "train_images": train_images,
        "num_classes": num_classes,
        "data": cfg.data.root if cfg.data.root else f"synthetic textures (seed {cfg.data.synthetic_seed})",
        "backbone": backbone_description(cfg, model),
        "weights": str(weights),
        "checkpoint": str(folder.checkpoint(end_iter)),
    }
    summary_path = folder.pretrain_summary
    atomic_write_json(summary_path, summary)  # its presence means "finished": never half a file
    tqdm.write(
        f"pre-training results: {summary_path} (top-1 {report['top1']:.2f}%, top-5 {report['top5']:.2f}%); "
        f"weights ({layout}): {weights}; curves: {folder.metrics}"
    )
    return {**summary, "summary": str(summary_path)}
