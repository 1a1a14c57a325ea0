"""Helpers shared by tests (importable as `helpers`: pyproject sets pytest's pythonpath to tests/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MINI_CONFIG = ROOT / "configs" / "mini" / "mask_rcnn_R18_FPN_GN_scratch.yaml"
# Real data and metric oracles beside the checkout (../shared/data/coco_tiny, ../shared/oracles/...): not in git.
SHARED = ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    """SHARED/parts..., for a test that needs it: skips the test when it is absent, but fails it under CI=true
    (CI must run these tests, never skip them)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"{path} is missing: ../shared is not beside this checkout"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run with ../shared beside the checkout")
        pytest.skip(reason)
    return path


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


def tiny_study_overrides(data_root: Path, **extra) -> list[str]:
    """Run overrides of a seconds-long study over the mini config: 1x = 4 iterations at batch 2, LR drops at the
    last 2 and 1, so 1x and 2x share a trunk up to iteration 2 (1x's first drop) and 6 (2x's)."""
    study = {
        "solver.reference_batch": 2,
        "schedule.unit_iters": 4,
        "schedule.drop_tails": "[2,1]",
        "solver.warmup_iters": 1,
        "eval.period": 0,
        "eval.max_images": 2,
    }
    return [o for o in tiny_overrides(data_root, Path("unused"), **study, **extra) if not o.startswith("output=")]


def write_study_spec(path: Path, output: Path, overrides: list[str], **fields) -> Path:
    """A study spec over the mini config (one scratch arm, schedules 1x and 2x unless `fields` say otherwise)."""
    import yaml

    spec = {
        "name": output.name,
        "base_config": str(MINI_CONFIG),
        "output": str(output),
        "overrides": overrides,
        "schedules": [1, 2],
        "arms": [{"name": "scratch"}],
        **fields,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def slurm_up() -> str | None:
    """None when a SLURM cluster answers here, else why not."""
    if shutil.which("sinfo") is None:
        return "no sinfo on PATH (start one with `bash scripts/local_slurm.sh start`)"
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    states = result.stdout.split()
    if result.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        return f"SLURM does not answer or has no usable node: {result.stderr.strip() or states}"
    return None


def need_slurm() -> None:
    why = slurm_up()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the SLURM tests against a real cluster: {why}")
    pytest.skip(why)


ACTIVE = ("running", "queued", "waiting", "requeued", "submitted", "preempted")


def wait_for_study(study: Path, timeout: float = 420) -> list:
    """Polls `study status` until no job is queued, waiting or running (a failed job's dependents are cancelled by
    SLURM at its next scheduling pass, after the failure itself); returns the statuses."""
    from scratchdet.study.status import format_status, study_status

    deadline = time.time() + timeout
    while True:
        statuses = study_status(study)
        if not any(s.state in ACTIVE for s in statuses):
            return statuses
        if time.time() > deadline:
            pytest.fail(f"study {study} still pending after {timeout} s:\n{format_status(statuses)}")
        time.sleep(1.0)


def moved_detections(dataset, shift: float, seed: int, *, skip_crowd=False, false_positives=False) -> list[dict]:
    """Detections made from a COCO dataset's ground truth: each box moved by `shift` x its size in a random direction
    (normal), a random score in [0.1, 1); crowd regions left out with `skip_crowd`; with `false_positives`, half the
    objects also get a half-width box of the next category. Seeded: the same arguments give the same list."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_categories = len(dataset.coco.getCatIds())
    out = []
    for ann in dataset.coco.dataset["annotations"]:
        if skip_crowd and ann.get("iscrowd"):
            continue
        x, y, w, h = ann["bbox"]
        dx, dy = rng.normal(0, shift, 2) * (w, h)
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": [x + dx, y + dy, w, h],
                    "score": float(rng.uniform(0.1, 1.0))})  # fmt: skip
        if false_positives and rng.uniform() < 0.5:
            other = ann["category_id"] % n_categories + 1
            out.append({"image_id": ann["image_id"], "category_id": other, "bbox": [x, y, w / 2, h],
                        "score": float(rng.uniform(0.1, 1.0))})  # fmt: skip
    return out
