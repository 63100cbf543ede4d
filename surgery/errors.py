"""The one error family of surgery. Exit codes are defined here and nowhere else."""

from __future__ import annotations


class SurgeryError(Exception):
    """A failure the user can act on. `str(e)` is the message; `hint` says what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class CheckpointError(SurgeryError):
    """Unreadable, inconsistent or unsupported input checkpoint or tokenizer."""


class InputError(SurgeryError):
    """A bad keep list or flag combination (same code as click usage errors)."""

    exit_code = 2


class VerifyError(SurgeryError):
    """The output failed its checks; nothing was moved into place."""

    exit_code = 3


class OutputFullError(SurgeryError):
    """The disk, a quota or the file-size limit stopped a write; nothing was moved into place."""
