"""The writer's advisory lock on a run directory (:func:`run_lock`)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from .layout import LOCK_FILE, RunBusyError

try:  # POSIX advisory locks; elsewhere a run directory is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


_HELD: dict[str, list] = {}  # realpath of a run dir -> [fd, depth] (locks held by this process)


def _holder_text(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike):
    """Hold the run directory's advisory lock (``fcntl.flock`` on ``run_dir/lock``, non-blocking).

    Re-entrant within a process.  Another holder: :class:`RunBusyError` naming its pid and host.
    The lock file holds the holder's pid, host and start time while held and is emptied on release
    (a killed holder's lock is released by the operating system).
    """
    key = os.path.realpath(run_dir)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder_text(fd)
        os.close(fd)
        raise RunBusyError(
            f"{run_dir} is being written by another process ({holder}): "
            "wait for it to finish, or use another run directory"
        ) from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock
