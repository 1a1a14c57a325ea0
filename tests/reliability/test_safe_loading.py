"""docs/RELIABILITY.md, promise 11, for training checkpoints: resuming from a crafted checkpoint never runs its code.

(Weight files and Detectron pickles: tests/weights/test_weights.py.)
"""

from __future__ import annotations

import os

import pytest
import torch

from scratchdet.engine.checkpoint import load_checkpoint, save_checkpoint
from scratchdet.errors import CheckpointError


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_with_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = save_checkpoint(tmp_path / "checkpoints", 1, {"model": {"w": torch.zeros(1)}, "x": Exploit(marker)})
    with pytest.raises(CheckpointError, match=r"model_0000001\.pth cannot be read \(UnpicklingError"):
        load_checkpoint(path)
    assert not marker.exists()
