"""Checkpoints that survive a crash: atomic writes, a pointer to the latest, and every RNG state for exact resume.

Layout inside a run folder: `checkpoints/model_0001234.pth` (1234 = iterations finished) and
`checkpoints/last_checkpoint` (a text file naming the newest). A save writes a temp file in the same folder, fsyncs
it, renames it into place, and only then moves the pointer, so a kill at any moment leaves the previous checkpoint
loadable.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from scratchdet.errors import CheckpointError

POINTER = "last_checkpoint"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict:
    """Python, NumPy, torch CPU and (when present) CUDA generator states."""
    # Stored as plain containers and tensors only, so checkpoints load with torch.load(weights_only=True).
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | Path, iteration: int, state: dict, keep: int | None = None) -> Path:
    """Atomically writes `state` as model_{iteration:07d}.pth in `folder` and points last_checkpoint at it.

    Args:
        keep: if given, delete all but the newest `keep` checkpoints after the pointer has moved.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model_{iteration:07d}.pth"
    _atomic_write(path, lambda f: torch.save(state, f))
    _atomic_write(folder / POINTER, lambda f: f.write(path.name.encode()))
    if keep is not None:
        for old in sorted(folder.glob("model_*.pth"))[:-keep]:
            old.unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint last_checkpoint names, or None when the folder has no pointer."""
    pointer = Path(folder) / POINTER
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    if not path.is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist; the run folder was altered")
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Loads a checkpoint written by save_checkpoint; raises CheckpointError naming the file if it is unreadable."""
    try:
        # weights_only=True: loading a file must never run code from it (RNG states are stored as tensors).
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
