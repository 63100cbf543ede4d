"""Outputs are written beside their target under a partial name and renamed into place only when checked.

A partial name is `.NAME.partial-PID-XXXX`: never mistaken for output, and removed by the next run once its
process no longer runs.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path

LOG = logging.getLogger("surgery")
PARTIAL = ".partial-"


def partial_path(target: Path) -> Path:
    return target.parent / f".{target.name}{PARTIAL}{os.getpid()}-{secrets.token_hex(4)}"


def remove_stale_partials(target: Path) -> None:
    """Leftovers of a run that was killed: their pid no longer runs. They never carry the output's name."""
    for stale in target.parent.glob(f".{target.name}{PARTIAL}*"):
        pid_text = stale.name.rsplit(PARTIAL, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            LOG.info("removing %s, left by an interrupted run", stale.name)
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
