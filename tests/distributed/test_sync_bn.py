"""SyncBN on gloo (issue 5 part 2): 2 processes x 1 image give the statistics and gradients of 1 process x 2."""

from __future__ import annotations

import pytest
import torch
from dist_workers import run_in_processes, sync_bn_worker

from scratchdet.modeling.sync_bn import SyncBatchNorm2d


def _one_process(x: torch.Tensor, seed: int) -> dict:
    """The reference: the whole batch in one process (SyncBatchNorm2d alone is BatchNorm2d)."""
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
    grads = {name: p.grad for name, p in [*conv.named_parameters(prefix="conv"), *bn.named_parameters(prefix="bn")]}
    return {"y": y.detach(), "x_grad": x.grad, "grads": grads, "running_mean": bn.running_mean,
            "running_var": bn.running_var}


@pytest.mark.parametrize("split", [[1, 1], [2, 0]], ids=["one-image-each", "rank1-empty"])
def test_two_gloo_processes_match_one_process(tmp_path, split):
    x = torch.randn(sum(split), 3, 6, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 + 0.5
    run_in_processes(sync_bn_worker, 2, str(tmp_path), x, split, 0)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    ref = _one_process(x, 0)
    # Outputs and input gradients: each rank holds its rows of the one-process result.
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), ref["y"])
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), ref["x_grad"])
    for r in ranks:  # parameter gradients summed over ranks, and running statistics, equal everywhere
        for name, g in ref["grads"].items():
            torch.testing.assert_close(r["grads"][name], g)
        torch.testing.assert_close(r["running_mean"], ref["running_mean"])
        torch.testing.assert_close(r["running_var"], ref["running_var"])
