"""The run folder's layout: the one place its file names are spelled.

Everything that reads or writes a run folder from outside the training process (study launchers and status, fork,
resume, `scratchdet eval`, the report) names its files through `RunFolder`, so the layout can be read in one place:

    config.yaml            the resolved config (every default filled in)
    env.json               seed, versions, git commit, command line, device (env_resume_*.json per resume)
    metrics.jsonl          training and evaluation records (engine/metrics.py), the source of truth for curves
    tb/                    the same scalars for TensorBoard
    checkpoints/           model_XXXXXXX.pth (XXXXXXX = iterations finished) + last_checkpoint, the pointer that
                           alone decides what a resume loads (engine/checkpoint.py)
    eval/                  iter_XXXXXXX.json, one evaluation report per evaluation; the final evaluation's
                           detections as iter_XXXXXXX_detections.json.gz (COCO results)
    init.json              how the weights were initialized (weights/initialization.py)
    dataset_train.json     what dataset cleaning dropped or clipped, per split; the training categories
    dataset_val.json
    cascade_switch.json    the late switch to cascade heads, when the run made it
    pretrain_summary.json  a finished pre-training run's results; classifier_final.pth its weights
    discarded_*/           a run set aside by resume=true train.allow_fresh_start=true

This module imports nothing from scratchdet, so every package may use it.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
CHECKPOINTS = "checkpoints"
POINTER = "last_checkpoint"
EVAL = "eval"
INIT = "init.json"
CASCADE_SWITCH = "cascade_switch.json"
PRETRAIN_SUMMARY = "pretrain_summary.json"
PRETRAIN_WEIGHTS = "classifier_final.pth"
# What a run writes into its folder; set aside together when a run is discarded (engine/run_dir.py).
RUN_FILES = (CONFIG, "env*.json", METRICS, CHECKPOINTS, EVAL, TENSORBOARD, "dataset_*.json", INIT)


def checkpoint_name(iteration: int) -> str:
    return f"model_{iteration:07d}.pth"


def checkpoint_name_iteration(name: str) -> int:
    """The iterations finished by a checkpoint named `model_XXXXXXX.pth`."""
    return int(name.removeprefix("model_").removesuffix(".pth"))


class RunFolder:
    """Paths inside one run folder, and the state that can be read from them without loading anything large."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def env(self) -> Path:
        return self.root / ENV

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def pointer(self) -> Path:
        return self.checkpoints / POINTER

    @property
    def eval_dir(self) -> Path:
        return self.root / EVAL

    @property
    def init(self) -> Path:
        return self.root / INIT

    @property
    def cascade_switch(self) -> Path:
        return self.root / CASCADE_SWITCH

    @property
    def pretrain_summary(self) -> Path:
        return self.root / PRETRAIN_SUMMARY

    @property
    def pretrain_weights(self) -> Path:
        return self.root / PRETRAIN_WEIGHTS

    def dataset(self, split: str) -> Path:
        """dataset_train.json / dataset_val.json."""
        return self.root / f"dataset_{split}.json"

    def checkpoint(self, iteration: int) -> Path:
        return self.checkpoints / checkpoint_name(iteration)

    def eval_report(self, iteration: int) -> Path:
        return self.eval_dir / f"iter_{iteration:07d}.json"

    def detections(self, iteration: int) -> Path:
        """The COCO results of the evaluation at `iteration` (eval.save_detections: the final one)."""
        return self.eval_dir / f"iter_{iteration:07d}_detections.json.gz"

    def eval_reports(self) -> list[Path]:
        """The evaluation reports, in iteration order."""
        return sorted(self.eval_dir.glob("iter_???????.json"))

    def checkpoint_iteration(self) -> int | None:
        """Iterations finished by the latest checkpoint (read off the pointer's file name), None before the first.

        Cheap enough for status queries over many runs: reads one short file.
        """
        try:
            return checkpoint_name_iteration(self.pointer.read_text().strip())
        except (OSError, ValueError):
            return None
