"""Checkpoints that survive a crash: atomic writes, a pointer to the latest, and every RNG state for exact resume.

Layout inside a run folder: `checkpoints/model_0001234.pth` (1234 = iterations finished) and
`checkpoints/last_checkpoint` (a text file naming the newest). A save writes a temp file in the same folder, fsyncs
it, renames it into place, and only then moves the pointer, so a kill at any moment leaves the previous checkpoint
loadable. Only the pointer decides what is loaded: a temp file left by a kill (`.model_*.pth.*.tmp`) is never read,
and the next save deletes it (one writer per run folder, so any temp file found then is a dead one). See
docs/RELIABILITY.md, promises 1, 2, 4 and 9.
"""

from __future__ import annotations

import itertools
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from scratchdet.distributed import SINGLE, DistContext, all_gather, main_first
from scratchdet.errors import CheckpointError, OutputError
from scratchdet.files import atomic_write, atomic_write_bytes, free_bytes
from scratchdet.run_folder import POINTER, checkpoint_name

# Temp files of files.atomic_write: "." + final name + "." + random part + ".tmp".
_TEMP_PATTERNS = (".model_*.pth.*.tmp", f".{POINTER}.*.tmp")


def remove_stray_temp_files(folder: str | Path) -> list[Path]:
    """Deletes temp files that a killed save left in `folder`; returns them."""
    stray = [p for pattern in _TEMP_PATTERNS for p in Path(folder).glob(pattern)]
    for p in stray:
        p.unlink(missing_ok=True)
    return stray


def rng_state() -> dict:
    """Python, NumPy, torch CPU and (when present) CUDA generator states."""
    # Stored as plain containers and tensors only, so checkpoints load with torch.load(weights_only=True).
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {
        "kind": kind,
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }
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


def save_checkpoint(folder: str | Path, iteration: int, state: dict) -> Path:
    """Atomically writes `state` as model_{iteration:07d}.pth in `folder` and points last_checkpoint at it.

    Raises:
        CheckpointError: the write failed (full disk, read-only folder, I/O error); the message says that the
            previous checkpoint is intact and still named by last_checkpoint.
    """
    folder = Path(folder)
    pointer = folder / POINTER
    path = folder / checkpoint_name(iteration)
    try:
        previous = pointer.read_text().strip() if pointer.is_file() else None
    except OSError:
        previous = None
    kept = (
        f"the previous checkpoint {previous} is intact and {POINTER} still names it"
        if previous
        else "no earlier checkpoint exists"
    )
    step = "writing"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stray_temp_files(folder)  # before writing: a dead temp file may hold the space this save needs
        atomic_write(path, lambda f: torch.save(state, f))
        step = f"moving {POINTER} to"
        atomic_write_bytes(pointer, path.name.encode())
    except (OSError, RuntimeError, OutputError) as e:  # torch.save reports ENOSPC as RuntimeError
        cause = e.__cause__ if isinstance(e, OutputError) and e.__cause__ is not None else e
        free = free_bytes(folder)
        space = f"{free:,} bytes free" if free is not None else "free space unknown"
        raise CheckpointError(
            f"{step} checkpoint {path} failed ({type(cause).__name__}: {cause}; {space}); {kept}. Fix the cause "
            "(full disk? read-only folder?) and rerun with resume=true"
        ) from None
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


def verify_checkpoint(path: str | Path) -> None:
    """Checks a checkpoint's integrity without unpickling it: its zip archive opens and every CRC-32 matches.

    Reads the file once; catches truncated and bit-flipped files before a resumed run builds anything.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: its member {bad} fails the CRC check")


def load_checkpoint(path: str | Path) -> dict:
    """Loads a checkpoint written by save_checkpoint; raises CheckpointError naming the file if it is unreadable."""
    try:
        # weights_only=True: loading a file must never run code from it (RNG states are stored as tensors).
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None


def estimate_checkpoint_bytes(model: torch.nn.Module) -> int:
    """Expected bytes of one checkpoint of `model`, with headroom.

    Parameters and buffers x 3: the weights, SGD's momentum (one buffer per parameter), and a margin for RNG
    states, the zip container and optimizers with more state.
    """
    return 3 * sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


def planned_checkpoints(start_iter: int, end_iter: int, period: int, extra: list[int] | tuple = ()) -> int:
    """How many checkpoints a run from `start_iter` to `end_iter` writes (the trainer keeps all of them).

    `period` 0 means no periodic checkpoints (train.checkpoint_period=0: only the end and `extra`), as the loop's
    `due` reads it; validate_config refuses negative periods.
    """
    if end_iter <= start_iter:
        return 0
    marks = {end_iter} | {e for e in extra if start_iter < e <= end_iter}
    if period > 0:
        first = (start_iter // period + 1) * period
        marks |= set(range(first, end_iter + 1, period))
    return len(marks)


def check_free_space(folder: str | Path, checkpoint_bytes: int, count: int) -> None:
    """Fails before training when the disk under `folder` cannot hold `count` checkpoints of `checkpoint_bytes`.

    Raises:
        CheckpointError: naming the folder, the free and the needed bytes, and what to do.
    """
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # the folder may not exist yet
    free = shutil.disk_usage(existing).free
    needed = checkpoint_bytes * count
    if free < needed:
        raise CheckpointError(
            f"not enough free disk space for this run's checkpoints in {folder}: {free:,} bytes free, about "
            f"{needed:,} needed ({count} checkpoint(s) of up to {checkpoint_bytes:,} bytes); free space, choose "
            "another output=, or raise train.checkpoint_period"
        )


def save_training_state(
    folder: str | Path,
    iteration: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    seen: dict,
    ctx: DistContext = SINGLE,
    scaler: torch.amp.GradScaler | None = None,
    extra: dict | None = None,
) -> Path | None:
    """Saves what exact resume needs after `iteration` iterations (restore_training_state reads it back).

    The state: model and optimizer, the iteration, samples seen, every rank's RNG states (gathered, so each rank
    resumes its own stream), the fp16 grad scaler, and the loop's `extra` entries (what the model is, its input
    convention, ...). Every rank must call it; rank 0 writes, and every rank gets the path (None never: a failed
    write raises on all ranks through `main_first`).
    """
    rngs = all_gather(ctx, rng_state())
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "seen": seen,
        **(extra or {}),
        "rng": rngs[0],
    }
    if ctx.enabled:
        state["rng_per_rank"] = rngs
        state["world_size"] = ctx.world_size
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return main_first(ctx, save_checkpoint, folder, iteration, state)


def restore_training_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    rank: int = 0,
    world_size: int = 1,
    scaler: torch.amp.GradScaler | None = None,
) -> dict:
    """Loads model, optimizer, grad scaler and every RNG state from a checkpoint; returns it (iteration, seen, ...).

    Shared by the detection and pre-training loops, so both resume exactly the same way. A multi-process run stores
    every rank's RNG states ("rng_per_rank"); each rank takes its own when the world size is unchanged, else rank
    0's (the data order is unaffected: it depends on the stream position only).
    """
    state = load_checkpoint(path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # e.g. the training set's class count changed since the checkpoint was written
        detail = " ".join(str(e).split())
        raise CheckpointError(
            f"{path} does not fit the model being resumed: {detail[:500]}; resume with the config "
            "and data the run was started with"
        ) from None
    optimizer.load_state_dict(state["optimizer"])
    per_rank = state.get("rng_per_rank")
    set_rng_state(per_rank[rank] if per_rank is not None and len(per_rank) == world_size else state["rng"])
    if scaler is not None and scaler.is_enabled():
        if "scaler" not in state:
            raise CheckpointError(f"{path} has no grad-scaler state: it was written without train.amp=fp16")
        scaler.load_state_dict(state["scaler"])
    return state
