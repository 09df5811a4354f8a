"""Run directories: configs, atomic checkpoints, weights and metric logs.

A run directory holds::

    config.json        the full, resolved configuration (written once, compared on every restart)
    model.safetensors  the trained weights           } one checkpoint, committed together
    ema.safetensors    the EMA weights               }
    state.pt           optimizer state, step, ...    }
    metrics.jsonl      one JSON record per logged step

Atomicity.  Every file is written to a temporary name in the same folder, flushed, fsync'ed and
moved into place with ``os.replace`` (atomic on POSIX and Windows).  A checkpoint spans several
files, so :func:`save_checkpoint` commits them as a group with a tiny journal: all temporaries are
written first, then ``checkpoint.pending.json`` (listing them) is put in place atomically — the
commit point — then each temporary is renamed over its target and the journal removed.  A crash
before the commit point leaves the previous checkpoint untouched (stale temporaries are deleted);
a crash after it is rolled forward by :func:`recover_checkpoint` (called by every reader), since
every temporary is complete by then.  So killing the process at any moment leaves the last
complete checkpoint loadable.

These helpers know nothing about training; :mod:`kaclib.train` and the distillation module build
on them.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "EMA_FILE",
    "STATE_FILE",
    "METRICS_FILE",
    "PENDING_FILE",
    "ConfigMismatchError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "config_diff",
    "prepare_run_dir",
    "read_config",
    "save_checkpoint",
    "recover_checkpoint",
    "has_checkpoint",
    "weights_bytes",
    "load_weights",
    "read_weights",
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
_TMP = ".tmp"


class ConfigMismatchError(ValueError):
    """A run directory already holds a different configuration; ``diff`` lists ``(key, saved, new)``."""

    def __init__(self, run_dir, diff: list[tuple[str, object, object]]):
        self.run_dir, self.diff = Path(run_dir), diff
        lines = "\n".join(f"  {k}: saved {a!r} != new {b!r}" for k, a, b in diff)
        super().__init__(
            f"{run_dir} holds a run with a different config ({len(diff)} field(s) differ):\n{lines}\n"
            "Use another run directory (the existing run is left untouched)."
        )


# ----------------------------------------------------------------------------- atomic files

def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` into ``<path>.tmp``, fsync, ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + _TMP)
    _write_synced(tmp, write)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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
        if key in ignore or key.split(".")[0] in ignore:
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            diff.append((key, va, vb))
    return diff


def read_config(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {run_dir}: not a run directory")
    return json.loads(path.read_text())


def prepare_run_dir(
    run_dir: str | os.PathLike,
    config: Mapping,
    resume: bool = False,
    mutable: Iterable[str] = (),
    write: bool = True,
) -> bool:
    """Create or re-open a run directory for ``config``; returns whether a checkpoint exists.

    * new or empty directory: writes ``config.json`` (when ``write``);
    * existing ``config.json`` that differs from ``config`` outside the ``mutable`` fields:
      :class:`ConfigMismatchError` listing the differences, nothing is written;
    * same config with a checkpoint but ``resume=False``: ``FileExistsError`` (a finished or
      interrupted run is never overwritten silently);
    * otherwise (``mutable`` fields such as ``steps`` may change on resume) the config is rewritten.

    ``write=False`` performs the same checks without touching the disk (non-zero ranks).
    """
    run_dir = Path(run_dir)
    config = _normalise(dict(config))
    path = run_dir / CONFIG_FILE
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
        if write and saved != config:
            atomic_write_json(path, config)
        return exists
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, config)
    return False


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir: str | os.PathLike, files: Mapping[str, bytes]) -> None:
    """Commit several files (``name -> content``) into ``run_dir`` as one atomic group.

    See the module docstring: temporaries, then the journal (commit point), then the renames.
    """
    run_dir = Path(run_dir)
    recover_checkpoint(run_dir)
    names = sorted(files)
    for name in names:
        if "/" in name or name in (PENDING_FILE, CONFIG_FILE):
            raise ValueError(f"bad checkpoint file name {name!r}")
        _write_synced(run_dir / (name + _TMP), lambda fh, data=files[name]: fh.write(data))
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


def recover_checkpoint(run_dir: str | os.PathLike) -> None:
    """Finish a committed checkpoint interrupted mid-rename; delete uncommitted temporaries."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    pending = run_dir / PENDING_FILE
    if pending.is_file():
        try:
            names = json.loads(pending.read_text())["files"]
        except (json.JSONDecodeError, KeyError):  # cannot happen with atomic writes; be safe
            names = []
        _roll_forward(run_dir, names)
    for tmp in run_dir.glob("*" + _TMP):
        tmp.unlink(missing_ok=True)


def has_checkpoint(run_dir: str | os.PathLike, names: Iterable[str] = (MODEL_FILE, STATE_FILE)) -> bool:
    run_dir = Path(run_dir)
    return all((run_dir / n).is_file() for n in names)


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


def read_weights(path: str | os.PathLike, device="cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


def load_weights(module: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load safetensors weights into ``module`` (unwrapped), on the module's device."""
    target = _unwrap(module)
    ref = next(iter(target.state_dict().values()), None)
    device = ref.device if ref is not None else "cpu"
    target.load_state_dict(read_weights(path, device=device), strict=strict)
    return module


def save_torch_bytes(obj) -> bytes:
    """``torch.save`` into bytes (for ``state.pt``: optimizer state and counters)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_state(run_dir: str | os.PathLike, device="cpu") -> dict:
    """``state.pt`` of a run (after recovering an interrupted checkpoint)."""
    if os.access(run_dir, os.W_OK):
        recover_checkpoint(run_dir)
    return torch.load(Path(run_dir) / STATE_FILE, map_location=device, weights_only=True)


# ----------------------------------------------------------------------------- metrics

def append_jsonl(path: str | os.PathLike, record: Mapping) -> None:
    """Append one JSON line (flushed) to ``path``."""
    with open(path, "a") as fh:
        fh.write(json.dumps(dict(record), sort_keys=True) + "\n")
        fh.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete records of a JSONL file (a torn last line from a crash is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def truncate_jsonl(path: str | os.PathLike, max_step: int, key: str = "step") -> None:
    """Keep the records with ``record[key] <= max_step`` (used when resuming from a checkpoint)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [r for r in read_jsonl(path) if r.get(key, -1) <= max_step]
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
