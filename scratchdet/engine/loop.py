"""The parts both training loops are built from: detection (engine/trainer.py) and classification pre-training
(pretrain/classify.py).

Each part owns one concern of an iteration, so a loop reads as its step and nothing else:

- `next_batch`: load the batch, then let the ranks agree (one host-side all-reduce) on whether any failed to load
  or was asked to stop, so all of them stop at the same boundary before any step (scratchdet/distributed.py);
- `preempt`: the stop itself (checkpoint, "preempted" record, `Preempted`);
- `stop_if_not_finite`: the loss must be known finite on every rank before the optimizer step; it is the loop's
  one per-iteration device-to-host transfer;
- `LossWindow`: loss sums kept on the device and read once per log record, averaged over ranks;
- `SampleCounter`: images, instances and pixels fed, summed over ranks when a record or checkpoint needs them
  (the paper's accounting of samples seen, docs/PAPER.md, "Sample accounting (Fig. 2)");
- `due`: whether a periodic action (log, checkpoint, evaluation) falls on an iteration;
- `progress_bar`: tqdm on rank 0, redrawn rarely when stderr is not a terminal;
- `deterministic_kernels`: train.deterministic, scoped to the loop;
- `intra_op_threads`: train.num_threads, scoped to the run.

The checkpoint state itself is assembled and restored by engine/checkpoint.py (`save_training_state`,
`restore_training_state`), so both loops resume exactly the same way.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from scratchdet.distributed import DistContext, agree_on_host, all_reduce_sum, all_reduce_tensors, ranks_not_finite
from scratchdet.engine.metrics import MetricsWriter
from scratchdet.engine.preemption import StopRequest
from scratchdet.errors import Preempted, TrainingError


class LossWindow:
    """Sums of scalar losses since the last log record, kept on the device (adding needs no host sync)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.iters = 0
        self.data_time = 0.0  # seconds spent waiting for batches
        self.start = time.perf_counter()

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            value = value.detach()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.iters += 1

    def flush(self, ctx: DistContext, device: torch.device) -> dict:
        """Means over the window's iterations (and over ranks), "time_per_iter" and "data_time" in seconds per
        iteration; starts a new window. Every rank must call it at the same iteration (one all-reduce)."""
        n = max(self.iters, 1)
        # Read the sums first: that waits for the device to finish the window's work, which belongs to its time
        # (on a GPU the host runs ahead of the kernels it queued).
        means = all_reduce_tensors(ctx, device, list(self.sums.values()))
        elapsed = time.perf_counter() - self.start
        record = {key: total / n for key, total in zip(self.sums, means, strict=True)}
        record.update(time_per_iter=elapsed / n, data_time=self.data_time / n)
        self.__init__()
        return record


class SampleCounter:
    """Images, instances and pixels fed to training, over all processes.

    Each process counts its own batches locally; `sync` sums the counts since the last sync over ranks (one
    host-side all-reduce), so the totals never need a collective per iteration.
    """

    KEYS = ("images", "instances", "pixels")

    def __init__(self, seen: dict | None = None) -> None:
        self.seen = {key: int((seen or {}).get(key, 0)) for key in self.KEYS}
        self._pending = [0, 0, 0]

    def add(self, images: int, instances: int, pixels: int) -> None:
        """pixels: after the training transform, before batch padding (what the network is fed)."""
        for i, n in enumerate((images, instances, pixels)):
            self._pending[i] += int(n)

    def sync(self, ctx: DistContext) -> dict:
        """The totals over all ranks so far (a copy); every rank must call it at the same iteration."""
        for key, total in zip(self.KEYS, all_reduce_sum(ctx, self._pending), strict=True):
            self.seen[key] += total
        self._pending = [0, 0, 0]
        return dict(self.seen)


def next_batch(loader: Iterator, ctx: DistContext, stop: StopRequest, iteration: int) -> tuple[object, bool, float]:
    """(this rank's batch, whether any rank was asked to stop, seconds spent waiting for the batch) for `iteration`.

    The ranks agree on load failures and stop requests before the forward pass. A process alone re-raises its load
    error at once; among several, the failed rank re-raises its own and the others raise a TrainingError naming it,
    all at the same boundary, nothing stepped.
    """
    tick = time.perf_counter()
    batch, load_error = None, None
    try:
        batch = next(loader)
    except Exception as e:  # e.g. DataError naming the image
        if not ctx.enabled:
            raise
        load_error = e
    waited = time.perf_counter() - tick
    failed, stopping = agree_on_host(ctx, failed=load_error is not None, stop=stop.signum is not None)
    if failed:
        if load_error is not None:
            raise load_error
        raise TrainingError(
            f"rank(s) {failed} could not load their batch of iteration {iteration} (see their "
            f"error); rank {ctx.rank} stops with them, nothing was stepped"
        )
    return batch, stopping, waited


def preempt(
    stop: StopRequest, iteration: int, save: Callable[[int], Path | None], metrics: MetricsWriter, progress: tqdm
) -> None:
    """Checkpoints iteration `iteration` (the boundary before it), records the stop and raises `Preempted`."""
    path = save(iteration)
    signum = stop.signum or signal.SIGTERM  # another rank's signal: this one saw none
    metrics.write({"type": "preempted", "iter": iteration, "signal": int(signum)})
    progress.close()
    raise Preempted(signum, iteration, str(path))


def stop_if_not_finite(
    ctx: DistContext, device: torch.device, loss: torch.Tensor, iteration: int, describe: Callable[[], str], hint: str
) -> None:
    """Raises TrainingError on every rank when any rank's `loss` is NaN/inf, before the optimizer step, so the
    parameters stay those of the previous step.

    The rank that saw it names the iteration and `describe()` (the loss values, the batch); the others name it.
    """
    not_finite = ranks_not_finite(ctx, device, loss)
    if not not_finite:
        return
    if ctx.rank in not_finite:
        raise TrainingError(f"non-finite loss at iteration {iteration}: {describe()}. {hint}")
    raise TrainingError(
        f"non-finite loss on rank(s) {not_finite} at iteration {iteration} (see their error); "
        f"rank {ctx.rank} stops with them, nothing was stepped"
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def due(done: int, period: int | None, end_iter: int, extra: Iterable[int] = ()) -> bool:
    """Whether a periodic action falls after `done` iterations: every `period` (0/None: never), at the end, and at
    the `extra` iterations."""
    return bool(period) and done % period == 0 or done == end_iter or done in extra


def progress_bar(total: int, initial: int, desc: str, enabled: bool = True) -> tqdm:
    # Redraw at most every 5 s when stderr is a file or pipe (CI, nohup, SLURM logs), so logs stay readable.
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="it",
        dynamic_ncols=True,
        mininterval=0.1 if sys.stderr.isatty() else 5.0,
        disable=not enabled,
    )


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """train.num_threads: torch's intra-op thread count inside the block (None: left as it is), the previous count
    restored after it.

    Why scoped: the count is the process's, and runs share a process (the inprocess study launcher runs every job
    in one; so do library callers and the tests). Left set, a 1-thread job made every later job of the process run
    on one thread: the learning test took 136 s after such a test instead of 95 s on its own.
    """
    if not threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """train.deterministic: inside the block every kernel is deterministic (torch.use_deterministic_algorithms;
    cuDNN then picks deterministic algorithms), and the previous settings are restored after it.

    Why: on a GPU, atomics in backward kernels make two runs differ in the last bits after one step, and
    detection's discrete choices (RPN top-k, NMS, RoI sampling) grow that into different losses within a few
    iterations, so a resumed or repeated CUDA run equals the original only in this mode. On CUDA,
    torchvision's RoIAlign then runs its pure-PyTorch implementation instead of its kernel (torchvision
    ops/roi_align.py); the mode made a GPU run many times slower (benchmarks/RESULTS.md), where the time goes was
    not profiled.

    cuBLAS is deterministic only with a fixed workspace (CUBLAS_WORKSPACE_CONFIG, PyTorch's reproducibility notes):
    set to ":4096:8" here when absent. cuBLAS reads it when a process first uses it, so set it before the process
    starts when the same process ran CUDA work before the run.

    Raises:
        RuntimeError: (from PyTorch, inside the block) an operation without a deterministic implementation on its
            device, named in the message.
    """
    if not enabled:
        yield
        return
    mode = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark, workspace = torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if workspace is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if workspace is None:
            del os.environ["CUBLAS_WORKSPACE_CONFIG"]


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators (both training loops, before the model is built)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
