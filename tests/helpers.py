"""Helpers shared by tests (importable as `helpers`: pyproject sets pytest's pythonpath to tests/)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINI_CONFIG = ROOT / "configs" / "mini" / "mask_rcnn_R18_FPN_GN_scratch.yaml"


def tiny_overrides(data_root: Path, output: Path, **extra) -> list[str]:
    """Overrides that make the mini config a few-second smoke run on `data_root`."""
    values = {
        "data.root": str(data_root),
        "output": str(output),
        "data.num_workers": 0,
        "data.min_size_train": "[64]",
        "data.max_size_train": 96,
        "data.min_size_test": 64,
        "data.max_size_test": 96,
        "train.batch_size": 2,
        "train.log_period": 1,
        "eval.max_images": 4,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
