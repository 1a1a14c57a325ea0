"""Runs a function in N gloo processes for the distributed tests (a module on the tests' import path, so that
spawned children can import the workers by name; pytest's importlib mode gives test modules names they cannot)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        # Leave together: a rank that tears its gloo connections down while a peer still reads from them can make
        # that peer's process abort at exit ("terminate called without an active exception", SIGABRT).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_in_processes(fn: Callable, world: int, *args) -> None:
    """Calls fn(rank, world, *args) in `world` spawned processes joined in a gloo group; re-raises a failure."""
    mp.spawn(_entry, args=(world, _free_port(), fn, args), nprocs=world, join=True)


# ---- workers (module level: spawned processes import them by name) ----


def conv_bn_step(x: torch.Tensor, seed: int) -> dict:
    """Conv -> SyncBatchNorm2d -> a per-sample-summed loss on `x`, backward; the outputs, input gradient, parameter
    gradients and running statistics. The same computation for one process (the reference) and for each rank."""
    from scratchdet.modeling.sync_bn import SyncBatchNorm2d

    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)  # no bias before a norm (its gradient is 0)
    bn = SyncBatchNorm2d(4)
    conv, bn = conv.double(), bn.double()  # float64: an exact comparison, no summation-order noise
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = x.clone().requires_grad_(True)
    y = bn(conv(x))
    (torch.relu(y) ** 2 * torch.arange(1, 5).view(1, 4, 1, 1)).sum().backward()
    grads = {
        name: p.grad.clone() for name, p in [*conv.named_parameters(prefix="conv"), *bn.named_parameters(prefix="bn")]
    }
    return {
        "y": y.detach(),
        "x_grad": x.grad,
        "grads": grads,
        "running_mean": bn.running_mean,
        "running_var": bn.running_var,
    }


def sync_bn_worker(rank: int, world: int, out: str, x: torch.Tensor, split: list[int], seed: int) -> None:
    """`conv_bn_step` on this rank's rows of `x` (split[r] rows for rank r); saves its results.

    The loss sums over samples, so summed over ranks it is the one-process loss; gradients are summed over ranks
    (all-reduce SUM), which is DDP's average times the world size.
    """
    start = sum(split[:rank])
    result = conv_bn_step(x[start : start + split[rank]], seed)
    for g in result["grads"].values():
        dist.all_reduce(g)
    torch.save(result, Path(out) / f"rank{rank}.pt")


def sharded_eval_worker(rank: int, world: int, out: str, cfg_path: str, overrides: list[str], weights: str) -> None:
    """Builds the detector of `cfg_path`, loads `weights`, evaluates with sharded inference, saves the report."""
    import json

    from scratchdet.config import load_config
    from scratchdet.data.build import build_val_dataset
    from scratchdet.distributed import DistContext
    from scratchdet.evaluation.coco import evaluate
    from scratchdet.modeling.detector import build_detector

    cfg = load_config(cfg_path, overrides)
    val = build_val_dataset(cfg)
    model = build_detector(cfg, val.num_classes)
    model.load_state_dict(torch.load(weights, weights_only=True))
    ctx = DistContext(rank, world, rank)
    report = evaluate(model, val, torch.device("cpu"), max_images=cfg.eval.max_images, ctx=ctx)
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


def nan_on_rank1_worker(rank: int, world: int, out: str, overrides: list[str]) -> None:
    """Trains the mini config with rank 1's loss turned NaN at iteration 1; saves each rank's error message."""
    import json

    from helpers import MINI_CONFIG

    from scratchdet.config import load_config
    from scratchdet.engine import trainer

    build = trainer.build_detector
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        model = build(*args, **kwargs)
        forward = model.forward

        def forward_with_nan(images, targets=None):
            losses = forward(images, targets)
            if model.training:
                calls["n"] += 1
                if rank == 1 and calls["n"] == 2:
                    losses["loss_classifier"] = losses["loss_classifier"] * float("nan")
            return losses

        model.forward = forward_with_nan
        return model

    trainer.build_detector = poisoned
    try:
        trainer.train(load_config(MINI_CONFIG, overrides))
        message = "finished"
    except Exception as e:
        message = f"{type(e).__name__}: {e}"
    Path(out, f"rank{rank}.json").write_text(json.dumps({"message": message, "forward_calls": calls["n"]}))
