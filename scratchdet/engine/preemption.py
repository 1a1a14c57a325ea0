"""Graceful stop on SIGTERM / SIGINT / SIGUSR2 (docs/RELIABILITY.md, promise 3).

Cluster schedulers send SIGTERM some time before killing a job. The handler only records the request; the training
loop checks it at each iteration boundary, saves a checkpoint and raises `Preempted`, so nothing but the current
iteration is lost. A second SIGINT (Ctrl-C twice) interrupts at once.
"""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """Context manager that turns SIGTERM/SIGINT/SIGUSR2 into a flag (`signum`) for the duration of training."""

    # SIGUSR2: the warning SLURM sends before a job's time limit when asked (`--signal=USR2@SECONDS`, what
    # submitit and the study's slurm launcher ask for); the job checkpoints and requeues itself (study/jobs.py).
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user does not want to wait for the iteration
        self.signum = signum

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread (not, e.g., from a test runner's worker).
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
