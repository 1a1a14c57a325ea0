"""Writing a file so that a kill, a full disk or a second reader never sees half of it: the one way scratchdet does it.

Every record that a later process decides from (checkpoints and their pointer, config.yaml, init.json, evaluation
reports, a pre-training's summary, jobs.json, plan.json, job records) is written here: the bytes go to a temp file in
the same folder ("." + final name + "." + random part + ".tmp"), are flushed and fsynced, and the temp file is then
renamed over the final name (os.replace: atomic on POSIX within one file system). A reader sees the old file or the
new one, never a mix; a failure removes the temp file and leaves the old one in place.

Records that are appended instead (metrics.jsonl, TensorBoard's event files) cannot be written this way; their
writers go through `output_errors`, so a full disk ends every write the same way: an `OutputError` naming the file,
the reason and the free space left (docs/RELIABILITY.md, promise 9), never a raw `OSError: [Errno 28]` traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from scratchdet.errors import OutputError


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent); None when it cannot be read."""
    path = Path(path)
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
        return shutil.disk_usage(existing).free
    except (OSError, StopIteration):
        return None


def output_error(path: str | Path, error: OSError) -> OutputError:
    """The OutputError for a failed write of `path`: the file, the OS reason and the free space left."""
    free = free_bytes(Path(path).parent)
    space = f"{free:,} bytes free on its file system" if free is not None else "free space unknown"
    reason = error.strerror or str(error)
    return OutputError(
        f"cannot write {path}: {reason} ({space}); files written before it, checkpoints included, are intact. "
        "Free space (or fix the folder's permissions) and rerun with resume=true"
    )


@contextlib.contextmanager
def output_errors(path: str | Path) -> Iterator[None]:
    """Turns an OSError raised inside the block (ENOSPC, EDQUOT, EROFS, EIO, ...) into `output_error(path, e)`."""
    try:
        yield
    except OSError as e:
        raise output_error(path, e) from e


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Calls `write(f)` on a binary temp file beside `path`, then renames it to `path`.

    Raises:
        OutputError: the folder does not exist or cannot be written (ENOSPC included), naming `path` and the free
            space; the temp file is removed and `path` keeps its old content. Whatever else `write` raises, likewise
            (the temp file removed).
    """
    path = Path(path)
    with output_errors(path):
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
