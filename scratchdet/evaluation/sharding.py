"""Sharded evaluation: each training process runs inference on its own images, rank 0 scores.

Rank r of W takes images r, r + W, r + 2W, ... of the first n: every image exactly once, no padding duplicates
(DistributedSampler pads to a multiple of W, which would count some images twice in AP), and a world size that
does not divide n simply gives some ranks one image more. Rank 0 gathers the per-image outputs and puts them back in
image order, so the metrics are computed from exactly the list a single process would have produced.
"""

from __future__ import annotations

from scratchdet.distributed import DistContext, gather_to_main


def shard(n: int, ctx: DistContext) -> range:
    """The indices of the first `n` images this rank evaluates."""
    return range(ctx.rank, n, ctx.world_size)


def gather_in_order(ctx: DistContext, per_index: dict[int, object]) -> list[object] | None:
    """Every rank's {index: output} merged into one list in index order on rank 0; None on the other ranks."""
    parts = gather_to_main(ctx, per_index)
    if parts is None:
        return None
    merged: dict[int, object] = {}
    for part in parts:
        merged.update(part)
    return [merged[i] for i in sorted(merged)]
