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
