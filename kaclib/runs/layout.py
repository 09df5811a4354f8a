"""The files of a run directory, the run format, and the errors of :mod:`kaclib.runs`."""

from __future__ import annotations

from pathlib import Path

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
