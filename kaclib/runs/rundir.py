"""Opening a run directory for writing: its name, its lock, its config (:func:`prepare_run_dir`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Mapping

from .atomic import atomic_write_json
from .checkpoint import has_checkpoint, recover_checkpoint
from .config import _normalise, config_diff, read_config
from .layout import CONFIG_FILE, LOCK_FILE, METRICS_FILE, ConfigMismatchError, RunBusyError, RunDirError
from .lock import run_lock


def check_run_path(run_dir) -> Path:
    """``run_dir`` as a Path; an empty name (which would mean the current directory) is refused."""
    if run_dir is None or (isinstance(run_dir, (str, bytes)) and not str(run_dir).strip()):
        raise RunDirError(f"run directory must be a non-empty path, got {run_dir!r}")
    return Path(run_dir)


def find_run_root(path: str | os.PathLike) -> Path | None:
    """The run directory (a folder with ``config.json``) that ``path`` lies in or is, if any."""
    p = Path(os.path.abspath(path))
    for folder in (p, *p.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    return None


def _check_not_foreign(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and not (run_dir / CONFIG_FILE).is_file():
        others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise RunDirError(
                f"{run_dir} is not empty and holds no run (no {CONFIG_FILE}; it holds {shown}): "
                "refusing to write into it; use a new or empty directory"
            )


@contextlib.contextmanager
def writer(run_dir: str | os.PathLike):
    """Open ``run_dir`` for writing and hold its lock (:func:`run_lock`).

    Refuse an empty name, a file, or a non-empty directory that is not a run; create it; hold its
    lock.  On failure, a directory this call created and that holds no checkpoint is removed again
    (nothing half-made is left behind).
    """
    run_dir = check_run_path(run_dir)
    _check_not_foreign(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(run_dir):
            _check_not_foreign(run_dir)  # re-checked under the lock
            yield run_dir
    except RunBusyError:
        raise
    except BaseException:
        if created and not has_checkpoint(run_dir):
            names = {p.name for p in run_dir.iterdir()}
            if names <= {LOCK_FILE, CONFIG_FILE, METRICS_FILE}:
                for n in names:
                    with contextlib.suppress(OSError):
                        (run_dir / n).unlink()
                with contextlib.suppress(OSError):
                    run_dir.rmdir()
        raise


def prepare_run_dir(
    run_dir: str | os.PathLike,
    config: Mapping,
    resume: bool = False,
    mutable: Iterable[str] = (),
    write: bool = True,
    rewrite: bool = False,
) -> bool:
    """Create or re-open a run directory for ``config``; returns whether a checkpoint exists.

    * an empty name, a file, or a non-empty directory without ``config.json``: :class:`RunDirError`;
    * new or empty directory: writes ``config.json`` (when ``write``);
    * existing ``config.json`` that differs from ``config`` outside the ``mutable`` fields:
      :class:`ConfigMismatchError` listing the differences, nothing is written;
    * same config with a checkpoint but ``resume=False``: ``FileExistsError`` (a finished or
      interrupted run is never overwritten silently);
    * otherwise a changed ``mutable`` field (``steps`` on resume) is NOT written here: the new
      config is committed with the next checkpoint (:func:`save_checkpoint`), so a command that
      fails before its first checkpoint leaves ``config.json`` as it was (``rewrite=True``: written
      now, for directories without checkpoints such as a ladder's top folder).

    With ``write`` the caller must hold the directory's lock (:func:`writer`); an interrupted
    checkpoint is then rolled forward.  ``write=False`` performs the same checks without touching
    the disk (non-zero ranks).
    """
    run_dir = check_run_path(run_dir)
    config = _normalise(dict(config))
    path = run_dir / CONFIG_FILE
    _check_not_foreign(run_dir)
    if path.is_file():
        saved = read_config(run_dir)
        diff = config_diff(saved, config, ignore=mutable)
        if diff:
            raise ConfigMismatchError(run_dir, diff)
        if write:
            recover_checkpoint(run_dir)
        exists = has_checkpoint(run_dir)
        if exists and not resume:
            raise FileExistsError(
                f"{run_dir} already holds a checkpoint of this config: pass resume=True to continue it, "
                "or use another run directory"
            )
        if write and rewrite and saved != config:
            atomic_write_json(path, config)
        return exists
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, config)
    return False
