"""Load-or-compute artifacts keyed by a hash of their configuration.

Anything a chapter or benchmark trains (a feature network, a teacher, a ladder of students) is
stored under ``cache_root()/<name>-<hash>/``; the hash covers the whole configuration, so a changed
config never reuses a stale result, and any chapter can run alone, in any order, in a fresh kernel.
A directory is only published (atomically renamed into place) once its computation finished, so an
interrupted run leaves nothing half-written behind.

Every published directory carries ``artifact.json``: the SHA-256 of each of its files.  An entry
whose files no longer match (a damaged disk, a hand edit, an entry written before the fingerprints)
is moved aside and computed again, so a corrupt cache entry heals instead of failing forever.  The
temporary directory of a computation killed with ``kill -9`` is removed by the next
:func:`load_or_compute` of the same cache root (its name records the host and pid of its owner).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["cache_root", "config_hash", "derived_run_dir", "load_or_compute", "ARTIFACT_MANIFEST"]


def cache_root() -> Path:
    """``$KACLIB_CACHE_DIR`` if set, else ``~/.cache/kaclib``."""
    root = os.environ.get("KACLIB_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kaclib")
    return Path(root)


#: Bumped whenever a change in kaclib alters what a cached artifact would contain for the same
#: config (2: GroupNorm no longer erases the time/class embedding; 3: generators learn from the
#: new ``train`` split of the held-out protocol), so stale results are never reused.
CACHE_VERSION = 3

ARTIFACT_MANIFEST = "artifact.json"


def config_hash(config: dict, length: int = 12) -> str:
    """Stable short hash of a JSON-serialisable configuration (and :data:`CACHE_VERSION`)."""
    blob = json.dumps(
        {"config": config, "cache_version": CACHE_VERSION}, sort_keys=True, default=str
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def derived_run_dir(prefix: str, teacher_dir, root=None, **parts) -> Path:
    """Where a run derived from a cached teacher is cached: ``<root>/<prefix>-<hash>``.

    The hash is that of the teacher directory's NAME (teacher runs are named by their config hash,
    so a moved cache still matches) and ``parts`` (JSON-ready configs, e.g.
    ``distill=config.to_dict()``).  The one naming rule of ladders
    (:func:`kaclib.distill.ladder_cache_dir`) and of the few-step methods' runs; ``root`` defaults
    to :func:`cache_root`.
    """
    root = Path(root) if root is not None else cache_root()
    return root / f"{prefix}-{config_hash({'teacher': Path(teacher_dir).name, **parts})}"


def _file_hashes(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != ARTIFACT_MANIFEST and p.name != "lock":  # a run's lock file changes
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _intact(final: Path, config: dict) -> bool:
    """Whether a published entry is whole: its config and every file match its manifest."""
    try:
        manifest = json.loads((final / ARTIFACT_MANIFEST).read_text())
        norm = json.loads(json.dumps(config, default=str))
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if manifest.get("config") != norm or not isinstance(files, dict):
            return False
        # the files it was published with (later additions, e.g. an evaluation.json, are not checked)
        return all(
            hashlib.sha256((final / rel).read_bytes()).hexdigest() == sha for rel, sha in files.items()
        )
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def _tmp_prefix(name: str) -> str:
    return f".{name}.tmp-{socket.gethostname()}-{os.getpid()}-"


_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _clean_stale(root: Path) -> None:
    """Remove temporary directories left by killed computations of this host."""
    host = socket.gethostname()
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    for p in entries:
        m = _TMP_RE.match(p.name)
        if m and m["host"] == host and p.is_dir() and not _pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)


def _discard(final: Path, root: Path) -> None:
    """Move a damaged entry aside (atomically) and delete it."""
    trash = Path(tempfile.mkdtemp(prefix=_tmp_prefix("damaged"), dir=root))
    try:
        os.replace(final, trash / final.name)
    except OSError:
        pass
    shutil.rmtree(trash, ignore_errors=True)


def load_or_compute(
    name: str, config: dict, compute: Callable[[Path], None], root: Path | None = None
) -> Path:
    """Return the directory of artifact ``name`` for ``config``, computing it first if needed.

    ``compute(tmp_dir)`` writes the artifact's files into ``tmp_dir``; on success the directory is
    renamed to its final place together with ``config.json`` (unless ``compute`` wrote one: a run
    directory keeps its own) and ``artifact.json`` (the config and the files' fingerprints).  A
    published entry that fails its fingerprints is computed again.
    """
    root = Path(root) if root is not None else cache_root()
    final = root / f"{name}-{config_hash(config)}"
    if final.exists():
        if _intact(final, config):
            return final
        _discard(final, root)  # damaged, or written before fingerprints: heal
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(name), dir=root))
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700: give the entry this user's usual mode
        compute(tmp)
        if not (tmp / "config.json").exists():
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        manifest = {"config": json.loads(json.dumps(config, default=str)), "files": _file_hashes(tmp)}
        (tmp / ARTIFACT_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        try:
            os.replace(tmp, final)
        except OSError:  # another process published it first
            if not (final / ARTIFACT_MANIFEST).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
