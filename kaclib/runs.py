"""Run directories: configs, atomic fingerprinted checkpoints, weights and metric logs.

A run directory holds::

    config.json        the full, resolved configuration (compared on every restart)
    model.safetensors  the trained weights           }
    ema.safetensors    the EMA weights               } one checkpoint, committed together
    state.pt           optimizer state, step, ...    }
    checkpoint.json    the manifest: run format, step, SHA-256 of every file above and of the
                       config, length and SHA-256 of the log up to the checkpoint
    metrics.jsonl      one JSON record per logged step
    lock               the writer's advisory lock (pid and host while held, empty otherwise)

One writer.  A process that writes a run directory holds ``fcntl.flock`` on its ``lock`` file
(:func:`run_lock`, non-blocking): a second writer is refused with a message naming the holder.
Readers (:func:`read_checkpoint`, :func:`load_state`, :func:`kaclib.train.load_run`) take no lock
and never delete, rename or write anything.

Atomicity.  Every file is written to a temporary name in the same folder, flushed, fsync'ed and
moved into place with ``os.replace``.  A checkpoint spans several files, so :func:`save_checkpoint`
commits them as a group with a tiny journal: all temporaries are written first (the config and the
manifest among them), then ``checkpoint.pending.json`` (listing them) is put in place atomically —
the commit point — then each temporary is renamed over its target and the journal removed.  A crash
before the commit point leaves the previous checkpoint untouched; a crash after it is rolled
forward by :func:`recover_checkpoint`, which only the writer (holding the lock) runs.  A reader that
meets a journal reads the committed checkpoint through it (each file from its temporary while that
still exists); a reader that meets files of two checkpoints (a writer renamed them while it read)
sees the fingerprints disagree and reads again.

Fingerprints.  The manifest ties every file to one checkpoint of one config: weights of another
run, flipped bytes, an edited config and a directory written before the run format existed are all
refused with :class:`RunDirError`, one line naming the file.

These helpers know nothing about training; :mod:`kaclib.train` and :mod:`kaclib.distill` build on
them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

try:  # POSIX advisory locks; elsewhere a run directory is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "EMA_FILE",
    "STATE_FILE",
    "METRICS_FILE",
    "PENDING_FILE",
    "MANIFEST_FILE",
    "LOCK_FILE",
    "RUN_FORMAT",
    "RUN_FILES",
    "ConfigMismatchError",
    "RunDirError",
    "RunBusyError",
    "NonFiniteError",
    "Checkpoint",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "config_diff",
    "config_fingerprint",
    "check_run_path",
    "find_run_root",
    "run_lock",
    "writer",
    "prepare_run_dir",
    "read_config",
    "read_json_object",
    "save_checkpoint",
    "recover_checkpoint",
    "has_checkpoint",
    "read_checkpoint",
    "rewind_metrics",
    "weights_bytes",
    "load_weights",
    "load_tensors",
    "read_weights",
    "check_finite",
    "save_torch_bytes",
    "load_state",
    "append_jsonl",
    "read_jsonl",
    "truncate_jsonl",
]

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
PENDING_FILE = "checkpoint.pending.json"
MANIFEST_FILE = "checkpoint.json"
LOCK_FILE = "lock"
_TMP = ".tmp"

#: Version of the run-directory layout.  2: fingerprinted checkpoints (``checkpoint.json``); run
#: directories without one were written before it (and before the GroupNorm fix of the models).
RUN_FORMAT = 2

_PAYLOAD = frozenset({MODEL_FILE, EMA_FILE, STATE_FILE})  # what a caller may put in a checkpoint
_GROUP = _PAYLOAD | {CONFIG_FILE, MANIFEST_FILE}  # what a journal may name
RUN_FILES = _GROUP | {METRICS_FILE, PENDING_FILE, LOCK_FILE}


class ConfigMismatchError(ValueError):
    """A run directory already holds a different configuration; ``diff`` lists ``(key, saved, new)``."""

    def __init__(self, run_dir, diff: list[tuple[str, object, object]]):
        self.run_dir, self.diff = Path(run_dir), diff
        lines = "\n".join(f"  {k}: saved {a!r} != new {b!r}" for k, a, b in diff)
        super().__init__(
            f"{run_dir} holds a run with a different config ({len(diff)} field(s) differ):\n{lines}\n"
            "Use another run directory (the existing run is left untouched)."
        )


class RunDirError(ValueError):
    """A run directory or one of its files cannot be used as it is (the message names the file)."""


class RunBusyError(RunDirError):
    """Another process holds the run directory's lock."""


class NonFiniteError(ValueError):
    """Training produced a non-finite loss or non-finite weights (or a model holds them)."""


# ----------------------------------------------------------------------------- atomic files


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` into ``<path>.tmp``, fsync, ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + _TMP)
    try:
        _write_synced(tmp, write)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_bytes(path, _json_bytes(obj))


def _write_synced(path: Path, write: Callable) -> None:
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


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


# ----------------------------------------------------------------------------- configs


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _normalise(obj):
    """JSON round trip, so tuples and lists (and int/float keys) compare as saved."""
    return json.loads(json.dumps(obj))


def config_diff(saved: Mapping, new: Mapping, ignore: Iterable[str] = ()) -> list[tuple[str, object, object]]:
    """Differing fields of two (nested) config dicts as ``(dotted.key, saved, new)``, sorted.

    Keys under ``ignore`` (top-level or dotted) are skipped.  Missing keys show as ``<missing>``.
    """
    a, b = _flatten(_normalise(saved)), _flatten(_normalise(new))
    ignore = set(ignore)
    missing = "<missing>"
    diff = []
    for key in sorted(set(a) | set(b)):
        parts = key.split(".")
        if any(".".join(parts[:i]) in ignore for i in range(1, len(parts) + 1)):
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            diff.append((key, va, vb))
    return diff


def config_fingerprint(config: Mapping) -> str:
    """SHA-256 of a config's canonical JSON (key order and formatting do not matter)."""
    blob = json.dumps(_normalise(dict(config)), sort_keys=True, separators=(",", ":"))
    return _sha256(blob.encode())


def _parse_json_object(data: bytes, path: Path) -> dict:
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: not a text file (not UTF-8): damaged or not a kaclib file") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path}: expected a JSON object, got a JSON {type(obj).__name__}")
    return obj


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file holding an object; anything else is a :class:`RunDirError` naming the file."""
    path = Path(path)
    return _parse_json_object(path.read_bytes(), path)


def read_config(run_dir: str | os.PathLike) -> dict:
    """``config.json`` of a run directory (a dict; any other content is a :class:`RunDirError`)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {run_dir}: not a run directory")
    return _parse_json_object(path.read_bytes(), path)


# ----------------------------------------------------------------------------- the writer


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
    """Open ``run_dir`` for writing: refuse an empty name, a file, or a non-empty directory that is
    not a run; create it; hold its lock (:func:`run_lock`).  On failure, a directory this call
    created and that holds no checkpoint is removed again (nothing half-made is left behind)."""
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


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    run_dir: str | os.PathLike,
    files: Mapping[str, bytes],
    config: Mapping | None = None,
    step: int | None = None,
) -> None:
    """Commit ``files`` (``name -> content``, names from model/ema/state) into ``run_dir`` as one
    atomic group, together with ``config`` (default: the saved ``config.json``) and the manifest.

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
            _write_synced(run_dir / (name + _TMP), lambda fh, data=group[name]: fh.write(data))
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

    A journal that is not a list of known checkpoint file names (``../../x``) is refused."""
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
    """Finish a committed checkpoint interrupted mid-rename; delete the uncommitted temporaries of
    checkpoint files.  Only the writer runs it: it takes the directory's lock (re-entrant)."""
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
    run_dir = Path(run_dir)
    return all((run_dir / n).is_file() for n in names)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read and verified against its manifest: ``blobs`` (file name -> bytes),
    ``manifest`` (``checkpoint.json``), ``config`` (``config.json``), ``step``."""

    run_dir: Path
    manifest: dict
    config: dict
    blobs: dict

    @property
    def step(self) -> int:
        s = self.manifest.get("step")
        return int(s) if isinstance(s, int) else -1

    def tensors(self, name: str, device="cpu") -> dict[str, torch.Tensor]:
        return load_tensors(self.blobs[name], self.run_dir / name, device=device)

    def state(self, device="cpu") -> dict:
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


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return (type(e).__name__ + ": " + "; ".join(lines[:2]))[:300] if lines else type(e).__name__


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
    """Writer only: cut ``metrics.jsonl`` back to its length at ``checkpoint`` (empty without one),
    after checking that part against the manifest's fingerprint (a damaged log is refused)."""
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


# ----------------------------------------------------------------------------- weights / state


def _unwrap(module: nn.Module) -> nn.Module:
    """The bare module inside DDP / ``AveragedModel`` / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(module, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def weights_bytes(module: nn.Module, metadata: Mapping[str, str] | None = None) -> bytes:
    """The module's ``state_dict`` (parameters and buffers, unwrapped) as safetensors bytes.

    Tensors are moved to the CPU and made contiguous; tensors sharing storage are cloned (the
    safetensors format refuses shared storage).
    """
    from safetensors.torch import save

    sd = _unwrap(module).state_dict()
    seen, tensors = set(), {}
    for k, v in sd.items():
        v = v.detach().to("cpu").contiguous()
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        if key in seen:
            v = v.clone()
        seen.add(key)
        tensors[k] = v
    return save(tensors, metadata=dict(metadata or {}))


def load_tensors(data: bytes, source: str | os.PathLike, device="cpu") -> dict[str, torch.Tensor]:
    """safetensors bytes -> tensors; anything unreadable is a :class:`RunDirError` naming ``source``."""
    from safetensors.torch import load

    try:
        tensors = load(bytes(data))
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends
        raise RunDirError(f"{source}: not a readable safetensors file ({_first_line(e)})") from None
    return {k: v.to(device) for k, v in tensors.items()} if str(device) != "cpu" else tensors


def read_weights(path: str | os.PathLike, device="cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (no fingerprint check: see :func:`read_checkpoint`)."""
    return load_tensors(Path(path).read_bytes(), path, device=device)


def _load_state_dict(
    module: nn.Module, tensors: Mapping[str, torch.Tensor], source, strict: bool = True
) -> nn.Module:
    target = _unwrap(module)
    ref = next(iter(target.state_dict().values()), None)
    device = ref.device if ref is not None else "cpu"
    try:
        target.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=strict)
    except RuntimeError as e:
        raise RunDirError(
            f"{source}: the weights do not fit this model ({_first_line(e)}): "
            "a checkpoint of another model or preset?"
        ) from None
    return module


def load_weights(module: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load safetensors weights into ``module`` (unwrapped, on the module's device)."""
    return _load_state_dict(module, read_weights(path), path, strict=strict)


def check_finite(tensors: Mapping[str, torch.Tensor] | nn.Module, what: str) -> None:
    """:class:`NonFiniteError` naming ``what`` and the first tensors holding NaN or inf."""
    if isinstance(tensors, nn.Module):
        tensors = _unwrap(tensors).state_dict()
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise NonFiniteError(f"{what} holds non-finite weights (NaN or inf) in {len(bad)} tensor(s): {shown}")


def save_torch_bytes(obj) -> bytes:
    """``torch.save`` into bytes (for ``state.pt``: optimizer state and counters)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_state(run_dir: str | os.PathLike, device="cpu") -> dict:
    """``state.pt`` of a run, verified against the manifest (read-only: nothing is recovered)."""
    return read_checkpoint(run_dir, names=(STATE_FILE,)).state(device)


# ----------------------------------------------------------------------------- metrics


def append_jsonl(path: str | os.PathLike, record: Mapping) -> None:
    """Append one JSON line (flushed) to ``path``."""
    with open(path, "a") as fh:
        fh.write(json.dumps(dict(record), sort_keys=True) + "\n")
        fh.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete records (JSON objects) of a JSONL file; a torn last line from a crash, or any
    line that is not a JSON object, is skipped."""
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


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(d: Mapping, items: Iterable[str]) -> dict:
    """``KEY=VALUE`` overrides (``model.base_channels=32`` for nested fields) on a copy of a config
    dict; values are parsed as JSON when possible (``steps=10`` is an int, ``f=exp`` a string)."""
    d = json.loads(json.dumps(d))
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            if not isinstance(node.get(p, {}), dict):
                raise ValueError(f"--set {item}: {p!r} is not a nested field")
            node = node.setdefault(p, {})
        node[leaf] = _parse_value(value)
    return d
