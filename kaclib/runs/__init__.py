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

Modules: :mod:`~kaclib.runs.layout` (file names, run format, errors), :mod:`~kaclib.runs.atomic`
(atomic files, metric logs), :mod:`~kaclib.runs.config` (configs, overrides),
:mod:`~kaclib.runs.lock` (the writer's lock), :mod:`~kaclib.runs.rundir` (opening a run directory),
:mod:`~kaclib.runs.checkpoint` (checkpoints), :mod:`~kaclib.runs.weights` (weights and state).
Every public name is available here, as ``kaclib.runs.<name>``.
"""

from __future__ import annotations

import os  # noqa: F401  (kaclib.runs.os: the crash tests patch runs.os.replace)

from .atomic import (
    _write_synced as _write_synced,  # called through this package: the crash tests replace it here
)
from .atomic import (
    append_jsonl,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    read_jsonl,
    truncate_jsonl,
)
from .checkpoint import (
    Checkpoint,
    has_checkpoint,
    load_state,
    read_checkpoint,
    recover_checkpoint,
    rewind_metrics,
    save_checkpoint,
)
from .config import apply_overrides, config_diff, config_fingerprint, read_config, read_json_object
from .layout import (
    CONFIG_FILE,
    EMA_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PENDING_FILE,
    RUN_FILES,
    RUN_FORMAT,
    STATE_FILE,
    ConfigMismatchError,
    NonFiniteError,
    RunBusyError,
    RunDirError,
)
from .lock import run_lock
from .rundir import check_run_path, find_run_root, prepare_run_dir, writer
from .weights import (
    check_finite,
    load_tensors,
    load_weights,
    read_weights,
    save_torch_bytes,
    weights_bytes,
)

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
    "apply_overrides",
]
