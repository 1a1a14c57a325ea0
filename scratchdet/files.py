"""Writing a file so that a kill, a full disk or a second reader never sees half of it: the one way scratchdet does it.

Every record that a later process decides from (checkpoints and their pointer, config.yaml, init.json, evaluation
reports, a pre-training's summary, jobs.json, plan.json, job records) is written here: the bytes go to a temp file in
the same folder ("." + final name + "." + random part + ".tmp"), are flushed and fsynced, and the temp file is then
renamed over the final name (os.replace: atomic on POSIX within one file system). A reader sees the old file or the
new one, never a mix; a failure removes the temp file and leaves the old one in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Calls `write(f)` on a binary temp file beside `path`, then renames it to `path`.

    Raises:
        OSError: the folder does not exist or cannot be written (ENOSPC included); the temp file is removed and
            `path` keeps its old content. Whatever `write` raises, likewise.
    """
    path = Path(path)
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: object) -> None:
    """`obj` as indented JSON with a final newline (the form of every JSON record of a run or study folder)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
