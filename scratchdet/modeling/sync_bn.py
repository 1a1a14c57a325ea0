"""SyncBN that runs on every backend: BatchNorm whose training statistics are pooled over all training processes
(docs/PAPER.md, "Normalization": SyncBN is one of the two normalizations that make from-scratch training work).

`nn.SyncBatchNorm` is the fast path but accepts CUDA tensors only; the trainer converts these modules to it on GPUs
(`nn.SyncBatchNorm.convert_sync_batchnorm` keeps names and values). This class is what the model is built with, and
what runs on CPU/gloo: its statistics are exchanged with autograd-aware all-reduces
(`torch.distributed.nn.functional.all_reduce`), so the gradient of every process's loss flows into the inputs of
every other process, exactly as one process holding the whole batch would compute it.

Empty inputs: the RoI heads can hand one process zero boxes. Such a process still joins every all-reduce with
zero sums and a zero count (the collectives would otherwise hang), and its (empty) output is returned as is. When
the whole batch is empty on every process, the layer passes its input through and leaves the running stats alone.

Outside distributed training (one process, or evaluation mode) it is exactly nn.BatchNorm2d.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def differentiable_all_reduce(t: Tensor) -> Tensor:
    """Sum over processes whose backward sums the gradients over processes.

    torch.distributed.nn.functional.all_reduce does this but warns that it is deprecated; its suggested replacement
    (_functional_collectives) is private. This is the same autograd function, five lines, owned here.
    """
    return _AllReduceSum.apply(t)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the union of every process's batch; plain BatchNorm2d when alone or in eval mode."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(x)
        channels = x.shape[1]
        # Statistics in float32 also under autocast (half inputs), as nn.SyncBatchNorm computes them.
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        # Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2, which cancels badly in float32.
        count = xf.new_tensor([xf.numel() // channels if channels else 0])
        first = differentiable_all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), count]))
        n = first[-1]
        n_total = int(n.item())  # the same on every rank, so every rank takes the same branch below
        if n_total == 0:
            return x
        mean = first[:channels] / n
        centered = xf - mean.view(1, -1, 1, 1)
        var = differentiable_all_reduce((centered * centered).sum(dim=(0, 2, 3))) / n  # biased, for normalizing
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n_total)
        y = centered * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: int) -> None:
        # As nn.BatchNorm2d: momentum=None means a cumulative average; running_var takes the unbiased variance.
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (n / (n - 1)) if n > 1 else var
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def use_native_sync_bn(model: nn.Module) -> nn.Module:
    """On CUDA, swaps every SyncBatchNorm2d for torch's fused nn.SyncBatchNorm (same parameters and buffers)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
