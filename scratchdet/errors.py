"""Error types users see. Every message names the offending file, id or key and says what to do.

The CLI prints a `ScratchdetError` as one clear line (no traceback); anything else is a bug in scratchdet.
"""

from __future__ import annotations


class ScratchdetError(Exception):
    """Base class of the errors that are the user's to fix (bad input, bad config, diverged training)."""


class ConfigError(ScratchdetError):
    """A config value or override is invalid; the message names the key and the valid choices."""


class DataError(ScratchdetError):
    """A dataset file is malformed or inconsistent.

    The message always names the file and, where there is one, the image id, the annotation id, the category id
    and the field.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        image_id: object = None,
        ann_id: object = None,
        field: str | None = None,
        category_id: object = None,
    ):
        where = []
        if path is not None:
            where.append(f"file {path}")
        if image_id is not None:
            where.append(f"image id {image_id}")
        if ann_id is not None:
            where.append(f"annotation id {ann_id}")
        if category_id is not None:
            where.append(f"category id {category_id}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.message = message  # without the location, for reports that print the location in their own column
        self.path = path
        self.image_id = image_id
        self.ann_id = ann_id
        self.category_id = category_id
        self.field = field


class OutputError(ScratchdetError):
    """A file of a run or study folder cannot be written (full disk, quota, read-only or vanished folder).

    The message names the file, the operating system's reason and the free space left on its file system; files
    written before it (the last checkpoint among them) are untouched.
    """


class TrainingError(ScratchdetError):
    """Training cannot go on (e.g. a non-finite loss); the message names the iteration and the batch's image ids."""


class CheckpointError(ScratchdetError):
    """A checkpoint is missing, unreadable or belongs to a different config."""


class Preempted(Exception):  # noqa: N818 - it is a request, not an error
    """SIGTERM/SIGINT arrived; a checkpoint was saved at the iteration boundary. Rerun with resume=true.

    Not a ScratchdetError on purpose: a study must stop on it, not record a failed run and go on.
    """

    def __init__(self, signum: int, iteration: int, checkpoint: str):
        super().__init__(
            f"stopped by signal {signum} after iteration {iteration}; checkpoint {checkpoint} saved, "
            "rerun the same command with resume=true (a study resumes by itself)"
        )
        self.signum = signum
        self.iteration = iteration
        self.checkpoint = checkpoint


def exit_status(fn, *args) -> int:
    """Calls `fn(*args)` and returns the process exit status its ending means, printing one line for a known stop.

    The one mapping from how a command ended to its exit status, for the CLI and for study jobs forked by the local
    launcher (study/launchers.py), so that both end the same way: `fn`'s own int (None: 0); 2 for a
    ScratchdetError (the user's to fix, printed as one line without a traceback); 128 + N for a stop by signal N
    (the shell's convention, so launchers tell a preemption from a failure); 130 for Ctrl-C. Any other exception is
    a bug in scratchdet and propagates with its traceback.
    """
    import sys

    try:
        status = fn(*args)
    except ScratchdetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)
