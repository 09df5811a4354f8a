"""Load-or-compute artifacts keyed by a hash of their configuration.

Anything a chapter or benchmark trains (a feature network, a teacher, a ladder of students) is
stored under ``cache_root()/<name>-<hash>/``; the hash covers the whole configuration, so a changed
config never reuses a stale result, and any chapter can run alone, in any order, in a fresh kernel.
A directory is only published (atomically renamed into place) once its computation finished, so an
interrupted run leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["cache_root", "config_hash", "load_or_compute"]


def cache_root() -> Path:
    """``$KACLIB_CACHE_DIR`` if set, else ``~/.cache/kaclib``."""
    root = os.environ.get("KACLIB_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kaclib")
    return Path(root)


#: Bumped whenever a change in kaclib alters what a cached artifact would contain for the same
#: config (2: GroupNorm no longer erases the time/class embedding), so stale results are never reused.
CACHE_VERSION = 2


def config_hash(config: dict, length: int = 12) -> str:
    """Stable short hash of a JSON-serialisable configuration (and :data:`CACHE_VERSION`)."""
    blob = json.dumps({"config": config, "cache_version": CACHE_VERSION}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def load_or_compute(name: str, config: dict, compute: Callable[[Path], None], root: Path | None = None) -> Path:
    """Return the directory of artifact ``name`` for ``config``, computing it first if needed.

    ``compute(tmp_dir)`` writes the artifact's files into ``tmp_dir``; on success the directory is
    renamed to its final place together with ``config.json``.
    """
    root = Path(root) if root is not None else cache_root()
    final = root / f"{name}-{config_hash(config)}"
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        compute(tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        try:
            os.replace(tmp, final)
        except OSError:  # another process published it first
            if not (final / "config.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
