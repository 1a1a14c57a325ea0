"""SyncBN on gloo: 2 processes x 1 image give the statistics and gradients of 1 process x 2."""

from __future__ import annotations

import pytest
import torch
from dist_workers import conv_bn_step, run_in_processes, sync_bn_worker

# Several processes (gloo, torchrun): `make test-fast` leaves them out.
pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("split", [[1, 1], [2, 0]], ids=["one-image-each", "rank1-empty"])
def test_two_gloo_processes_match_one_process(tmp_path, split):
    x = torch.randn(sum(split), 3, 6, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 + 0.5
    run_in_processes(sync_bn_worker, 2, str(tmp_path), x, split, 0)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    ref = conv_bn_step(x, 0)  # the whole batch in one process: SyncBatchNorm2d alone is BatchNorm2d
    # Outputs and input gradients: each rank holds its rows of the one-process result.
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), ref["y"])
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), ref["x_grad"])
    for r in ranks:  # parameter gradients summed over ranks, and running statistics, equal everywhere
        for name, g in ref["grads"].items():
            torch.testing.assert_close(r["grads"][name], g)
        torch.testing.assert_close(r["running_mean"], ref["running_mean"])
        torch.testing.assert_close(r["running_var"], ref["running_var"])
