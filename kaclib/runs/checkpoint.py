"""Fingerprinted checkpoints committed as one atomic group, read back verified.

See :mod:`kaclib.runs`: temporaries, then the journal (the commit point), then the renames;
readers verify every file against the manifest and read again while a writer renames.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from .atomic import _fsync_dir, _json_bytes, _sha256, _write_temporary, atomic_write_bytes, atomic_write_json
from .config import _normalise, _parse_json_object, config_fingerprint, read_config
from .layout import (
    _GROUP,
    _PAYLOAD,
    _TMP,
    CONFIG_FILE,
    EMA_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PENDING_FILE,
    RUN_FORMAT,
    STATE_FILE,
    RunDirError,
)
from .lock import run_lock
from .weights import _first_line, _load_state_dict, load_tensors


def save_checkpoint(
    run_dir: str | os.PathLike,
    files: Mapping[str, bytes],
    config: Mapping | None = None,
    step: int | None = None,
) -> None:
    """Commit ``files`` into ``run_dir`` as one atomic group, with ``config`` and the manifest.

    ``files`` maps ``name -> content``, names from model/ema/state; ``config`` defaults to the saved
    ``config.json``.

    See the module docstring: temporaries, then the journal (commit point), then the renames.
    Takes the directory's lock (re-entrant: callers normally hold it already).
    """
    run_dir = Path(run_dir)
    bad = sorted(set(files) - _PAYLOAD)
    if bad:
        raise ValueError(f"bad checkpoint file name(s) {bad}: allowed {sorted(_PAYLOAD)}")
    with run_lock(run_dir):
        recover_checkpoint(run_dir)
        config = _normalise(dict(config)) if config is not None else read_config(run_dir)
        log = run_dir / METRICS_FILE
        log_bytes = log.read_bytes() if log.is_file() else b""
        group = {name: bytes(data) for name, data in files.items()}
        group[CONFIG_FILE] = _json_bytes(config)
        manifest = {
            "format": RUN_FORMAT,
            "step": step,
            "config_sha256": config_fingerprint(config),
            "files": {
                n: {"sha256": _sha256(d), "bytes": len(d)}
                for n, d in sorted(group.items())
                if n != CONFIG_FILE
            },
            "metrics": {"sha256": _sha256(log_bytes), "bytes": len(log_bytes)},
        }
        group[MANIFEST_FILE] = _json_bytes(manifest)
        names = sorted(group)
        for name in names:
            _write_temporary(run_dir / (name + _TMP), lambda fh, data=group[name]: fh.write(data))
        _fsync_dir(run_dir)
        atomic_write_json(run_dir / PENDING_FILE, {"files": names})  # commit point
        _roll_forward(run_dir, names)


def _roll_forward(run_dir: Path, names: list[str]) -> None:
    for name in names:
        tmp = run_dir / (name + _TMP)
        if tmp.exists():
            os.replace(tmp, run_dir / name)
    _fsync_dir(run_dir)
    (run_dir / PENDING_FILE).unlink(missing_ok=True)
    _fsync_dir(run_dir)


def _read_pending(run_dir: Path) -> list[str] | None:
    """The names of a committed, not yet renamed checkpoint (``None`` without a journal).

    A journal that is not a list of known checkpoint file names (``../../x``) is refused.
    """
    pending = run_dir / PENDING_FILE
    try:
        data = pending.read_bytes()
    except FileNotFoundError:
        return None
    obj = _parse_json_object(data, pending)
    names = obj.get("files")
    if not isinstance(names, list) or not all(isinstance(n, str) and n in _GROUP for n in names):
        raise RunDirError(
            f"{pending}: names files outside the checkpoint set {sorted(_GROUP)} "
            f"({names!r}): refusing to use it (remove it by hand if it is not yours)"
        )
    return names


def recover_checkpoint(run_dir: str | os.PathLike) -> None:
    """Finish a committed checkpoint interrupted mid-rename; delete uncommitted temporaries.

    The temporaries deleted are those of checkpoint files.  Only the writer runs it: it takes the
    directory's lock (re-entrant).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    with run_lock(run_dir):
        names = _read_pending(run_dir)
        if names is not None:
            _roll_forward(run_dir, names)
        for name in sorted(_GROUP):
            (run_dir / (name + _TMP)).unlink(missing_ok=True)


def has_checkpoint(run_dir: str | os.PathLike, names: Iterable[str] = (MODEL_FILE, STATE_FILE)) -> bool:
    """Whether ``run_dir`` holds every file of ``names`` (default: the model and state files)."""
    run_dir = Path(run_dir)
    return all((run_dir / n).is_file() for n in names)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read and verified against its manifest.

    ``blobs`` (file name -> bytes), ``manifest`` (``checkpoint.json``), ``config`` (``config.json``),
    ``step``.
    """

    run_dir: Path
    manifest: dict
    config: dict
    blobs: dict

    @property
    def step(self) -> int:
        """The manifest's ``step`` (-1 when it has no integer step)."""
        s = self.manifest.get("step")
        return int(s) if isinstance(s, int) else -1

    def tensors(self, name: str, device="cpu") -> dict[str, torch.Tensor]:
        """The tensors of weights file ``name``, read from the verified bytes, on ``device``."""
        return load_tensors(self.blobs[name], self.run_dir / name, device=device)

    def state(self, device="cpu") -> dict:
        """The training state (``state.pt``) loaded on ``device``.

        Raises :class:`RunDirError` unless it unpickles to a dict with an integer ``step``.
        """
        path = self.run_dir / STATE_FILE
        try:
            state = torch.load(io.BytesIO(self.blobs[STATE_FILE]), map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to unpickle is a bad file
            raise RunDirError(f"{path}: not a readable kaclib state file ({_first_line(e)})") from None
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise RunDirError(f"{path}: not a kaclib state file (no integer 'step')")
        return state

    def load_into(self, module: nn.Module, name: str) -> nn.Module:
        """Load weights file ``name`` into ``module`` (unwrapped, on its device)."""
        return _load_state_dict(module, self.tensors(name), self.run_dir / name)


def _snapshot(run_dir: Path) -> tuple:
    sig = []
    for name in sorted(_GROUP | {PENDING_FILE}):
        for n in (name, name + _TMP):
            try:
                st = os.stat(run_dir / n)
                sig.append((n, st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                pass
    return tuple(sig)


def _read_once(run_dir: Path, names: Iterable[str]) -> Checkpoint:
    pending = _read_pending(run_dir)

    def read(name: str) -> bytes:
        if pending is not None and name in pending:
            try:
                return (run_dir / (name + _TMP)).read_bytes()
            except FileNotFoundError:  # already renamed into place
                pass
        return (run_dir / name).read_bytes()

    mpath = run_dir / MANIFEST_FILE
    try:
        mbytes = read(MANIFEST_FILE)
    except FileNotFoundError:
        if has_checkpoint(run_dir, (MODEL_FILE,)) or has_checkpoint(run_dir, (EMA_FILE,)):
            raise RunDirError(
                f"{mpath} is missing: {run_dir} was written before run format {RUN_FORMAT} "
                "(no fingerprints; models of that time compute a different function) or damaged: "
                "train it again"
            ) from None
        raise FileNotFoundError(f"no checkpoint in {run_dir} (missing {MANIFEST_FILE})") from None
    manifest = _parse_json_object(mbytes, mpath)
    if manifest.get("format") != RUN_FORMAT:
        raise RunDirError(
            f"{mpath}: run format {manifest.get('format')!r}, this kaclib reads format {RUN_FORMAT}"
        )
    cpath = run_dir / CONFIG_FILE
    config = _parse_json_object(read(CONFIG_FILE), cpath)
    if config_fingerprint(config) != manifest.get("config_sha256"):
        raise RunDirError(
            f"{cpath} does not match the checkpoint's fingerprint in {MANIFEST_FILE} "
            "(edited, damaged, or the checkpoint of another run)"
        )
    files = manifest.get("files")
    blobs = {}
    for name in names:
        entry = files.get(name) if isinstance(files, dict) else None
        if not isinstance(entry, dict):
            raise RunDirError(f"{mpath} lists no {name}: damaged")
        data = read(name)
        if len(data) != entry.get("bytes") or _sha256(data) != entry.get("sha256"):
            raise RunDirError(
                f"{run_dir / name} does not match its fingerprint in {MANIFEST_FILE} "
                "(damaged, truncated, or from another run)"
            )
        blobs[name] = data
    return Checkpoint(run_dir=run_dir, manifest=manifest, config=config, blobs=blobs)


def read_checkpoint(
    run_dir: str | os.PathLike, names: Iterable[str] = (MODEL_FILE, EMA_FILE, STATE_FILE), attempts: int = 40
) -> Checkpoint:
    """Read and verify the checkpoint files ``names`` of ``run_dir`` (no lock, nothing written).

    Safe while a writer commits a new checkpoint: a failed verification while the directory's
    checkpoint files changed is retried (up to ``attempts`` times); one while nothing changed is a
    damaged file: :class:`RunDirError` naming it.
    """
    run_dir = Path(run_dir)
    names = tuple(names)
    for i in range(attempts):
        before = _snapshot(run_dir)
        try:
            return _read_once(run_dir, names)
        except (RunDirError, OSError):
            if i == attempts - 1 or _snapshot(run_dir) == before:
                raise
        time.sleep(0.05)
    raise AssertionError("unreachable")  # pragma: no cover


def rewind_metrics(run_dir: str | os.PathLike, checkpoint: Checkpoint | None) -> None:
    """Writer only: cut ``metrics.jsonl`` back to its length at ``checkpoint`` (empty without one).

    That part is first checked against the manifest's fingerprint (a damaged log is refused).
    """
    path = Path(run_dir) / METRICS_FILE
    data = path.read_bytes() if path.is_file() else b""
    if checkpoint is None:
        if data:
            atomic_write_bytes(path, b"")
        return
    rec = checkpoint.manifest.get("metrics") or {}
    n = rec.get("bytes")
    if not isinstance(n, int) or len(data) < n or _sha256(data[:n]) != rec.get("sha256"):
        raise RunDirError(
            f"{path} does not match the checkpoint's fingerprint in {MANIFEST_FILE} "
            f"(its first {n} bytes were edited, damaged or removed): restore it to resume"
        )
    if len(data) > n:
        atomic_write_bytes(path, data[:n])


def load_state(run_dir: str | os.PathLike, device="cpu") -> dict:
    """``state.pt`` of a run, verified against the manifest (read-only: nothing is recovered)."""
    return read_checkpoint(run_dir, names=(STATE_FILE,)).state(device)
