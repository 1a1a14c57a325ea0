"""Multi-process training on torch.distributed: who this process is, and the few collectives the training loop
needs.

Launch with torchrun, unchanged from the single-process command:

    torchrun --nproc_per_node=8 -m scratchdet train CONFIG ...                       (one machine)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT -m scratchdet train ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a task of a multi-task SLURM step (`srun -n 8 scratchdet train ...`,
or a study's slurm launcher) gets them from SLURM's variables (`adopt_slurm_environment`). Without them the process
runs alone and nothing here communicates.
The backend is NCCL when the run uses CUDA and gloo on CPU. train.batch_size stays the global batch (the paper's
16 images per iteration), so the LR schedule is the same at any world size; each process loads
train.batch_size / world_size images per iteration (data/samplers.py: TrainingBatchSampler).

Roles: rank 0 alone writes the run folder (logs, checkpoints, evaluation reports); every rank trains and evaluates
its shard. Failures: every iteration the ranks agree, before the forward pass, on whether any of them failed to
load its batch or was asked to stop (SIGTERM) (`agree_on_host`, one small host-side all-reduce), and after it on
whether any saw a non-finite loss (`ranks_not_finite`); then all of them stop at the same iteration boundary, before
any optimizer step, instead of the healthy ranks hanging in the next gradient all-reduce. An exception inside one
rank's forward pass (e.g. out of memory) is not agreed on: torchrun stops the whole group when that process exits
with an error (docs/RELIABILITY.md, "Not covered yet").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from scratchdet.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class DistContext:
    """This process's place among the training processes (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


# The context of a process not launched by torchrun: rank 0 of 1, nothing to agree on.
SINGLE = DistContext()


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[07-09,12],cpu3" -> "gpu07"."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist[: nodelist.index("]") + 1]
    if "[" not in head:
        return head
    prefix, ranges = head.split("[", 1)
    return prefix + ranges.rstrip("]").split(",")[0].split("-")[0]


def adopt_slurm_environment() -> bool:
    """In a SLURM job step of several tasks (`srun`, or a job the study's slurm launcher submitted), sets the
    variables torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from SLURM's, unless
    they are set already; returns whether it did.

    The master is the step's first node; the port is derived from the job id, so that two jobs sharing a node
    do not collide and every task of one job computes the same port. A process started directly in a batch
    script (no srun) is one process, whatever the job's task count: SLURM_STEP_NUM_TASKS, not SLURM_NTASKS, says
    how many processes this step started.
    """
    env = os.environ
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if "RANK" in env or "SLURM_PROCID" not in env or tasks <= 1:
        return False
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = str(tasks)
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_ADDR", _first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")))
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    return True


def scheduler_rank() -> int:
    """This process's rank as its launcher (torchrun or a SLURM step) gives it, before any process group exists."""
    adopt_slurm_environment()
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    adopt_slurm_environment()
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """train.device (auto | cpu | cuda) -> the device of this process (cuda:LOCAL_RANK under torchrun)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                "visible; lower --nproc_per_node"
            )
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[DistContext, torch.device]:
    """Joins the process group torchrun describes (if any); returns this process's context and device.

    A process group already initialized by the caller (tests spawning processes themselves) is used as it is.
    """
    world = env_world_size()
    if world == 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(), resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank), device


def _collective_device(device: torch.device) -> torch.device:
    # NCCL communicates CUDA tensors only; gloo takes CPU tensors.
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


_CONTROL: list = []  # the CPU process group for control flags, created once per process


def _control_group():
    """A gloo group for small host-side exchanges (flags, counters): under NCCL they then need no CUDA tensor, so
    they never wait for the GPU; under gloo it is the default group."""
    if not _CONTROL:
        _CONTROL.append(dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else dist.group.WORLD)
    return _CONTROL[0]


def agree_on_host(ctx: DistContext, *, failed: bool, stop: bool) -> tuple[list[int], bool]:
    """Host-side flags of every rank (e.g. "my batch failed to load", "I got SIGTERM"), exchanged without
    touching the GPU. Returns (ranks that failed, any rank asked to stop)."""
    if not ctx.enabled:
        return ([0] if failed else []), stop
    flags = torch.zeros(ctx.world_size + 1)
    flags[ctx.rank], flags[-1] = float(failed), float(stop)
    dist.all_reduce(flags, group=_control_group())
    values = flags.tolist()
    return [r for r in range(ctx.world_size) if values[r] > 0], values[-1] > 0


def ranks_not_finite(ctx: DistContext, device: torch.device, value: torch.Tensor) -> list[int]:
    """The ranks whose `value` (this iteration's loss) is NaN or infinite.

    This is the training loop's one per-iteration transfer from the device to the host: the loss must be known to
    be finite before the optimizer step, on every rank at once.
    """
    bad = ~torch.isfinite(value.detach())
    if not ctx.enabled:
        return [0] if bool(bad) else []
    where = _collective_device(device)
    flags = torch.zeros(ctx.world_size, device=where)
    flags[ctx.rank] = bad.to(where, torch.float32)
    dist.all_reduce(flags)
    return [r for r, v in enumerate(flags.tolist()) if v > 0]


def all_reduce_sum(ctx: DistContext, values: list[int]) -> list[int]:
    """Sums a short list of host-side counts over ranks (float64, exact below 2**53)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=_control_group())
    return [int(v) for v in t.tolist()]


def all_reduce_tensors(ctx: DistContext, device: torch.device, values: list[torch.Tensor]) -> list[float]:
    """Averages scalar tensors (losses summed over a log window) over ranks, with one transfer to the host."""
    if not values:
        return []
    stacked = torch.stack([v.detach().float() for v in values])
    if ctx.enabled:
        stacked = stacked.to(_collective_device(device))
        dist.all_reduce(stacked)
        stacked /= ctx.world_size
    return stacked.tolist()


def gather_to_main(ctx: DistContext, obj: object) -> list[object] | None:
    """Every rank's `obj` as a list on rank 0 (rank order), None on the others."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0, group=_control_group())
    return out


def all_gather(ctx: DistContext, obj: object) -> list[object]:
    """Every rank's `obj` on every rank (rank order)."""
    if not ctx.enabled:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=_control_group())
    return out


def broadcast_from_main(ctx: DistContext, obj: object) -> object:
    """Rank 0's `obj` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control_group())
    return box[0]


def main_first(ctx: DistContext, fn, *args):
    """Runs fn(*args) on rank 0 only and returns its result on every rank.

    A failure on rank 0 is re-raised there and reported on the other ranks as a TrainingError naming it, so no
    rank is left waiting for a result that will not come.
    """
    if not ctx.enabled:
        return fn(*args)
    outcome: tuple = ("ok", None)
    if ctx.is_main:
        try:
            outcome = ("ok", fn(*args))
        except Exception as e:
            broadcast_from_main(ctx, ("error", f"{type(e).__name__}: {e}"))
            raise
    kind, value = broadcast_from_main(ctx, outcome)
    if kind == "error":
        raise TrainingError(f"rank 0 failed, so rank {ctx.rank} stops too: {value}")
    return value


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL.clear()
