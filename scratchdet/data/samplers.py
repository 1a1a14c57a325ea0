"""Samplers whose output is a pure function of (seed, position), so a resumed run sees the very same images.

The training stream is an endless sequence of shuffled epochs. Each element is `(index, sample_seed)`: the dataset
seeds the image's augmentation (flip, scale choice) from `sample_seed`, so nothing depends on worker processes or on
the global RNG, and resuming at iteration i just starts the stream at position i x batch_size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class TrainingSampler(Sampler):
    """Endless `(index, sample_seed)` stream over `size` items, reshuffled each epoch.

    Args:
        size: number of items in the dataset.
        seed: the run's seed; fixes every epoch's permutation and every sample's augmentation seed.
        start: position in the stream to begin at (iteration x batch size when resuming).
    """

    def __init__(self, size: int, seed: int, start: int = 0):
        if size <= 0:
            raise ValueError("TrainingSampler needs a non-empty dataset")
        self.size = size
        self.seed = seed
        self.start = start

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        epoch, offset = divmod(position, self.size)
        while True:
            order = self.permutation(epoch)
            for index in order[offset:]:
                # A distinct, reproducible augmentation seed per position: the same image gets a new flip/scale
                # draw each epoch, and the same one again after a resume.
                yield int(index), self.seed * 1_000_003 + position
                position += 1
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs this for its length hint
        return 2**62


# Aspect-ratio grouping reorders the stream within windows of this many iterations: at most one batch per window
# mixes landscape and portrait images, and a window is a pure function of its position, so resume stays exact.
GROUP_WINDOW_ITERS = 16


class TrainingBatchSampler(Sampler):
    """This process's batch of every iteration: its slice of the global batch of the `TrainingSampler` stream.

    Iteration i takes stream positions [i*B, (i+1)*B) with B = `batch_size` over all processes; rank r of W gets
    positions i*B + r*B/W .. i*B + (r+1)*B/W. So W processes x B/W images see exactly the images (and augmentation
    seeds) that one process x B images would, and a resumed run continues the same stream at any world size.

    With `group_ids` (one 0/1 per dataset index, e.g. landscape/portrait), each window of GROUP_WINDOW_ITERS
    iterations is stably sorted by group before it is cut into batches: batches, and every process's slice of them,
    are then single-group except at most one per window, so batches of mixed shapes are padded less. Every position
    of the stream is still used exactly once.

    Args:
        size: dataset length. seed: the run's seed. batch_size: global images per iteration.
        start_iter: the first iteration to yield (resume).
        rank, world_size: this process's place among the training processes; batch_size must divide by world_size.
        group_ids: None for no grouping.
    Yields:
        lists of `(index, sample_seed)`, batch_size / world_size long.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        batch_size: int,
        start_iter: int = 0,
        rank: int = 0,
        world_size: int = 1,
        group_ids: list[int] | None = None,
    ):
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} does not divide by {world_size} processes")
        if group_ids is not None and len(group_ids) != size:
            raise ValueError(f"group_ids has {len(group_ids)} entries for a dataset of {size}")
        self.size, self.seed, self.batch_size = size, seed, batch_size
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size
        self.group_ids = None if group_ids is None else np.asarray(group_ids)

    def _global_batches(self) -> Iterator[list[tuple[int, int]]]:
        b = self.batch_size
        window = 1 if self.group_ids is None else GROUP_WINDOW_ITERS
        first_window, skip = divmod(self.start_iter, window)
        stream = iter(TrainingSampler(self.size, self.seed, start=first_window * window * b))
        while True:
            chunk = [next(stream) for _ in range(window * b)]
            if self.group_ids is not None:
                groups = self.group_ids[[index for index, _ in chunk]]
                chunk = [chunk[k] for k in np.argsort(groups, kind="stable")]
            for w in range(skip, window):
                yield chunk[w * b : (w + 1) * b]
            skip = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_rank = self.batch_size // self.world_size
        for batch in self._global_batches():
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __len__(self) -> int:  # endless
        return 2**62


def aspect_groups(sizes: list[tuple[int, int]]) -> list[int]:
    """0 for landscape or square (width >= height), 1 for portrait: Detectron's two aspect-ratio groups."""
    return [0 if w >= h else 1 for w, h in sizes]
