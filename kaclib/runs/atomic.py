"""Atomic files (temporary, fsync, ``os.replace``) and JSON-lines metric logs."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable, Mapping

from .layout import _TMP


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` into ``<path>.tmp``, fsync, ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + _TMP)
    try:
        _write_temporary(tmp, write)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    return atomic_write_bytes(path, _json_bytes(obj))


def _write_synced(path: Path, write: Callable) -> None:
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _write_temporary(path: Path, write: Callable) -> None:
    """:func:`_write_synced`, looked up on the package :mod:`kaclib.runs` at each call.

    :func:`_write_synced`, looked up on the package :mod:`kaclib.runs` at each call, so that
    replacing ``kaclib.runs._write_synced`` (the crash tests do) reaches every writer.
    """
    from .. import runs

    runs._write_synced(path, write)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported (e.g. Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def append_jsonl(path: str | os.PathLike, record: Mapping) -> None:
    """Append one JSON line (flushed) to ``path``."""
    with open(path, "a") as fh:
        fh.write(json.dumps(dict(record), sort_keys=True) + "\n")
        fh.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete records (JSON objects) of a JSONL file.

    All complete records (JSON objects) of a JSONL file; a torn last line from a crash, or any
    line that is not a JSON object, is skipped.
    """
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def truncate_jsonl(path: str | os.PathLike, max_step: int, key: str = "step") -> None:
    """Keep the records with an integer ``record[key] <= max_step``."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [r for r in read_jsonl(path) if isinstance(r.get(key), int) and r[key] <= max_step]
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep).encode())
