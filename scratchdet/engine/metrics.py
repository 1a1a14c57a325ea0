"""Run metrics: one JSON object per line in metrics.jsonl (the source of truth for curves and reports), mirrored to
TensorBoard for browsing. Every record has a "type":

- "start": first and end iteration, schedule, dataset sizes (detection runs also: init, world size, AMP);
- "train": losses, LR, times and samples seen, every train.log_period iterations;
- "eval": the evaluation report (COCO AP, VOC mAP, or pre-training top-1/top-5);
- "switch": the late switch to cascade heads (engine/cascade_switch.py);
- "skip": an unreadable image replaced (data.skip_bad_images);
- "batch": the image ids of one iteration (train.record_image_ids);
- "preempted": SIGTERM/SIGINT, with the iteration checkpointed;
- "end": the last iteration and the samples seen.

A forked run (study/fork.py) starts with its trunk's "start", "train" and "eval" records, marked "forked_from"."""

from __future__ import annotations

import json
import math
from pathlib import Path

from scratchdet.files import output_errors
from scratchdet.run_folder import RunFolder


class MetricsWriter:
    """Appends records to `run_dir/metrics.jsonl` and scalars to `run_dir/tb/`.

    Appending (not an atomic rewrite) keeps a write per record cheap; a kill -9 mid-write can therefore leave a torn
    last line. A writer that finds one (a resumed run) ends it with a newline before its first record, so that record
    stays a line of its own; `read_metrics` skips the torn fragment. A failed write (full disk, quota, read-only
    folder) raises OutputError naming the file and the free space (scratchdet/files.py); the checkpoints written
    before it are untouched.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled  # False on every training process but rank 0: one writer per run folder
        self.path = RunFolder(run_dir).metrics
        self._tb_dir = RunFolder(run_dir).tensorboard
        self._tb = None
        self._use_tb = tensorboard
        self._checked_tail = False

    def _tensorboard(self):
        if self._tb is None and self._use_tb:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

            with output_errors(self._tb_dir):
                self._tb = SummaryWriter(str(self._tb_dir))
        return self._tb

    def _line_start(self) -> str:
        """ "\n" when the file ends inside a line (a torn record of a killed writer), else ""; checked once."""
        if self._checked_tail:
            return ""
        self._checked_tail = True
        try:
            with self.path.open("rb") as f:
                f.seek(0, 2)
                if f.tell() == 0:
                    return ""
                f.seek(-1, 2)
                return "" if f.read(1) == b"\n" else "\n"
        except FileNotFoundError:
            return ""

    def write(self, record: dict) -> None:
        """Appends `record` as one JSON line (and its numbers to TensorBoard).

        Raises:
            OutputError: the line or the TensorBoard event could not be written (e.g. ENOSPC).
        """
        if not self.enabled:
            return
        line = json.dumps(record, allow_nan=True) + "\n"
        with output_errors(self.path):
            prefix = self._line_start()
            with self.path.open("a") as f:
                f.write(prefix + line)
        tb = self._tensorboard()
        if tb is not None and "iter" in record:
            prefix = record.get("type", "train")
            # TensorBoard writes on a background thread and re-raises its OSError at the next call.
            with output_errors(self._tb_dir):
                for key, value in _flatten(record).items():
                    if key not in ("iter", "type") and isinstance(value, (int, float)) and math.isfinite(value):
                        tb.add_scalar(f"{prefix}/{key}", value, record["iter"])
                tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            with output_errors(self._tb_dir):
                self._tb.close()


def _flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_metrics(run_dir: str | Path, record_type: str | None = None) -> list[dict]:
    """All records of a run's metrics.jsonl, optionally only those of one type; a torn last line is skipped."""
    path = RunFolder(run_dir).metrics
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a kill mid-write can leave one partial line; the checkpoint, not this log, is authoritative
        if record_type is None or record.get("type") == record_type:
            records.append(record)
    return records
