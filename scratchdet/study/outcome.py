"""What became of one job of a study in one launch: a state from a fixed set plus a detail for people.

Jobs (study/jobs.py) return one, launchers collect one per job, the runner decides from them whether the study
failed, and `study status` shows the last one each job recorded. Code tests the state, never the text: a sentence
can be reworded, a state cannot drift (submitit's job objects answer `done()`/`result()` the same way).

The record form (`jobs/<id>.json`, `status.json`) is `{"state": "...", "detail": "..."}`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class JobState(enum.Enum):
    """The states of a job's outcome; the value is the word shown to people."""

    TRAINED = "trained"  # trained from its start in this launch
    RESUMED = "resumed"  # trained on from a checkpoint an interruption left
    CONTINUED = "continued"  # trained on from the plan's own starting point (a trunk segment, a fork's tail)
    SKIPPED = "skipped"  # its work was already in its run folder
    FINISHED = "finished"  # exited cleanly without saying more (a local job whose record was lost)
    SUBMITTED = "submitted"  # handed to SLURM in this launch
    QUEUED = "queued"  # already queued or running in SLURM from an earlier launch
    FAILED = "failed"  # raised; the detail is the error
    NOT_RUN = "not run"  # a job it depends on failed
    STOPPED = "stopped"  # a stop request ended it after a checkpoint; rerun the study to go on
    NOT_NEEDED = "not needed"  # the sequential study settled its question first (study/stopping.py)
    CHECKED = "checked"  # a sequential study's decision job looked at a finished schedule (settled or not)


TRAINED_STATES = frozenset({JobState.TRAINED, JobState.RESUMED, JobState.CONTINUED})
DONE_STATES = TRAINED_STATES | {JobState.SKIPPED, JobState.FINISHED, JobState.CHECKED}
FAILED_STATES = frozenset({JobState.FAILED, JobState.NOT_RUN})


@dataclass(frozen=True)
class JobOutcome:
    """`state` decides; `detail` says more in words (the error of a failure, the iteration a fork started from)."""

    state: JobState
    detail: str = ""

    @property
    def trained(self) -> bool:
        """Whether this launch trained the job (so its images count in the launch's throughput)."""
        return self.state in TRAINED_STATES

    @property
    def done(self) -> bool:
        """Whether the job's work is done, so its dependents may start."""
        return self.state in DONE_STATES

    @property
    def failed(self) -> bool:
        return self.state in FAILED_STATES

    def __str__(self) -> str:
        if not self.detail:
            return self.state.value
        separator = ": " if self.state in FAILED_STATES else " "
        return f"{self.state.value}{separator}{self.detail}"

    def to_record(self) -> dict:
        return {"state": self.state.value, "detail": self.detail}

    @classmethod
    def from_record(cls, record: object) -> JobOutcome | None:
        """The outcome a record holds, or None when it holds none (or one this version cannot read)."""
        if not isinstance(record, dict):
            return None
        try:
            return cls(JobState(record.get("state")), str(record.get("detail") or ""))
        except ValueError:
            return None
