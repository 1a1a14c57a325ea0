"""docs/RELIABILITY.md, promises 1 and 9: a kill or a failed write during a save never costs the previous checkpoint.

A child process saves checkpoint 1, then dies (SIGKILL) at a chosen moment of saving checkpoint 2. The previous
checkpoint must stay loadable through last_checkpoint and the dead temp file must never be used; the next save
deletes it (decision documented in engine/checkpoint.py and docs/RELIABILITY.md).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

from scratchdet.engine import checkpoint as ckpt
from scratchdet.engine.checkpoint import POINTER, latest_checkpoint, load_checkpoint, save_checkpoint
from scratchdet.errors import CheckpointError

# Saves checkpoint 1, then dies at MODE while saving checkpoint 2:
#   half_written: torch.save has written half of the file (flushed to disk) when the process is killed
#   renamed:      model_0000002.pth is in place, the pointer not yet moved
#   pointer:      the pointer's temp file is written and fsynced, not yet renamed
DIE_DURING_SAVE = """
import io, os, signal, sys
import torch
from scratchdet.engine.checkpoint import save_checkpoint

folder, mode = sys.argv[1], sys.argv[2]
save_checkpoint(folder, 1, {"w": torch.arange(1000.0)})

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "half_written":
    real_save = torch.save
    def half_save(obj, f):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        die()
    torch.save = half_save
elif mode == "renamed":
    real_replace = os.replace
    def replace_then_die(src, dst):
        real_replace(src, dst)
        if str(dst).endswith("model_0000002.pth"):
            die()
    os.replace = replace_then_die
elif mode == "pointer":
    real_fsync = os.fsync
    calls = []
    def fsync_then_die(fd):
        real_fsync(fd)
        calls.append(fd)
        if len(calls) == 2:  # 1: the model's temp file, 2: the pointer's temp file
            die()
    os.fsync = fsync_then_die
save_checkpoint(folder, 2, {"w": torch.arange(1000.0) * 2})
"""


def _temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("mode", ["half_written", "renamed", "pointer"])
def test_kill_during_save_keeps_previous_checkpoint_and_ignores_temp_file(tmp_path, mode):
    folder = tmp_path / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", DIE_DURING_SAVE, str(folder), mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    assert latest_checkpoint(folder).name == "model_0000001.pth"
    assert torch.equal(load_checkpoint(latest_checkpoint(folder))["w"], torch.arange(1000.0))
    if mode == "renamed":
        assert _temp_files(folder) == []  # complete but unreferenced: only the pointer decides what is loaded
        assert (folder / "model_0000002.pth").is_file()
    else:
        (stray,) = _temp_files(folder)  # the kill really happened mid-write
        assert stray.startswith(".model_0000002.pth." if mode == "half_written" else f".{POINTER}.")

    save_checkpoint(folder, 3, {"w": torch.arange(3.0)})  # the next save cleans up and moves on
    assert _temp_files(folder) == []
    assert latest_checkpoint(folder).name == "model_0000003.pth"
    assert torch.equal(load_checkpoint(latest_checkpoint(folder))["w"], torch.arange(3.0))


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
    ],
)
def test_failed_write_keeps_previous_checkpoint_and_pointer(tmp_path, monkeypatch, failure):
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 1, {"w": torch.ones(10)})
    pointer_before = (folder / POINTER).read_text()

    def full_disk_save(obj, f):
        f.write(b"PK\x03\x04 partial")  # some bytes reach the temp file before the disk fills up
        raise failure

    monkeypatch.setattr(ckpt.torch, "save", full_disk_save)
    with pytest.raises(
        CheckpointError,
        match=r"model_0000002\.pth failed .*model_0000001\.pth is intact and "
        r"last_checkpoint still names it.*resume=true",
    ):
        save_checkpoint(folder, 2, {"w": torch.zeros(10)})
    monkeypatch.undo()

    assert (folder / POINTER).read_text() == pointer_before
    assert torch.equal(load_checkpoint(latest_checkpoint(folder))["w"], torch.ones(10))
    assert not (folder / "model_0000002.pth").exists() and _temp_files(folder) == []


def test_failed_pointer_update_keeps_previous_pointer(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 1, {"w": torch.ones(3)})
    real_atomic_write_bytes = ckpt.atomic_write_bytes

    def pointer_write_fails(path, data):
        if path.name == POINTER:
            raise OSError(errno.EIO, "Input/output error")
        real_atomic_write_bytes(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", pointer_write_fails)
    with pytest.raises(CheckpointError, match=r"moving last_checkpoint to .*model_0000001\.pth is intact"):
        save_checkpoint(folder, 2, {"w": torch.zeros(3)})
    assert latest_checkpoint(folder).name == "model_0000001.pth"


def test_first_save_failing_says_there_is_no_earlier_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt.torch, "save", lambda obj, f: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only")))
    with pytest.raises(CheckpointError, match="no earlier checkpoint exists"):
        save_checkpoint(tmp_path / "checkpoints", 1, {"w": torch.ones(1)})
    assert latest_checkpoint(tmp_path / "checkpoints") is None
