"""Accelerator switches: mixed precision, channels-last, ``torch.compile``, fused Adam, TF32.

One frozen :class:`AccelConfig` holds the switches that training (:mod:`kaclib.train`),
distillation (:mod:`kaclib.distill`) and sampling (:func:`kaclib.evaluation.generate`) read:

* ``amp_dtype``: ``"bf16"`` runs the network's forward pass under ``torch.autocast`` in bfloat16
  (losses, ODE states and optimizer state stay float32); ``"fp32"`` is plain float32; ``"auto"``
  is ``"bf16"`` on CUDA and ``"fp32"`` on the CPU.
* ``channels_last``: parameters and 4-D inputs in NHWC layout (the fast layout of cuDNN's
  convolutions on tensor cores); ``"auto"`` is on for CUDA, off on the CPU.
* ``compile``: ``torch.compile`` of the velocity network (off by default: it costs a compile per
  new input shape).  Where it cannot work (no C++ compiler for the CPU backend, no Triton for
  CUDA) it is skipped with a warning that says why.  ``$KACLIB_COMPILE_BACKEND`` picks the
  backend (default ``inductor``).
* ``fused_adam``: ``torch.optim.Adam(fused=True)`` (one kernel for the whole update); ``"auto"``
  is on for CUDA only.
* ``tf32``: whether float32 matrix products and convolutions outside autocast may use TF32 tensor
  cores (``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``); set
  on CUDA only, for the duration of a training or sampling call (:func:`tf32_policy`), and a
  no-op on the CPU.

:meth:`AccelConfig.resolve` turns ``"auto"`` into concrete values for a device.  A run directory's
``config.json`` records the resolved switches under ``accel`` unless they are plain fp32
(:data:`OFF`): a ``config.json`` without ``accel`` ran in fp32, as every run before this module
did (:func:`saved_accel`).  ``amp_dtype``, ``tf32`` and ``fused_adam`` set the arithmetic of a
run and are fixed for its life (:data:`FIXED_ON_RESUME`: an fp32 run resumes only in fp32);
``channels_last`` and ``compile`` change memory layout and kernels only and may differ when a run
is resumed (:func:`resume_config`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

__all__ = [
    "AccelConfig",
    "OFF",
    "AMP_DTYPES",
    "FIXED_ON_RESUME",
    "MUTABLE_ON_RESUME",
    "autocast",
    "tf32_policy",
    "prepare_model",
    "compile_model",
    "compile_unavailable_reason",
    "make_optimizer",
    "to_device",
    "format_input",
    "velocity_fn",
    "saved_accel",
    "check_resume",
    "resume_config",
]

AMP_DTYPES = ("auto", "bf16", "fp32")
FIXED_ON_RESUME = ("amp_dtype", "tf32", "fused_adam")
MUTABLE_ON_RESUME = ("channels_last", "compile")


def _auto_or_bool(name: str, value):
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f"{name} must be true, false or 'auto', got {value!r}")


def _device(device) -> torch.device:
    return (
        device if isinstance(device, torch.device) else torch.device(device if device is not None else "cpu")
    )


@dataclass(frozen=True)
class AccelConfig:
    """The accelerator switches (see the module docstring).

    ``AccelConfig()`` is the default policy:
    bf16 + channels-last + fused Adam + TF32 on CUDA, plain fp32 on the CPU, no compile.
    """

    amp_dtype: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False
    fused_adam: bool | str = "auto"
    tf32: bool = True

    def __post_init__(self):
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {AMP_DTYPES}, got {self.amp_dtype!r}")
        _auto_or_bool("channels_last", self.channels_last)
        _auto_or_bool("fused_adam", self.fused_adam)
        for name in ("compile", "tf32"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def resolve(self, device) -> "AccelConfig":
        """The concrete switches on ``device``: every ``"auto"`` decided, ``tf32`` false off CUDA."""
        cuda = _device(device).type == "cuda"
        pick = lambda v: cuda if v == "auto" else v  # noqa: E731
        amp = ("bf16" if cuda else "fp32") if self.amp_dtype == "auto" else self.amp_dtype
        return AccelConfig(
            amp_dtype=amp,
            channels_last=pick(self.channels_last),
            compile=self.compile,
            fused_adam=pick(self.fused_adam),
            tf32=self.tf32 and cuda,
        )

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (``None`` for fp32; ``"auto"`` must be resolved first)."""
        if self.amp_dtype == "auto":
            raise ValueError("amp_dtype 'auto' must be resolved for a device first (AccelConfig.resolve)")
        return torch.bfloat16 if self.amp_dtype == "bf16" else None

    def to_dict(self) -> dict:
        """The switches as a plain dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "AccelConfig":
        """From a dict (unknown keys raise), an AccelConfig (returned as is) or ``None`` (default)."""
        if d is None:
            return cls()
        if isinstance(d, AccelConfig):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(
                f"accel must be a dict of {[f.name for f in dataclasses.fields(cls)]}, got {d!r}"
            )
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown AccelConfig field(s): {', '.join(unknown)}")
        return cls(**d)


OFF = AccelConfig(amp_dtype="fp32", channels_last=False, compile=False, fused_adam=False, tf32=False)
"""Plain float32, contiguous, eager, ``foreach`` Adam: every run before this module existed."""


def _resolved(cfg: AccelConfig | None, device) -> AccelConfig:
    return (cfg if cfg is not None else OFF).resolve(device)


# ----------------------------------------------------------------------------- contexts


def autocast(device, cfg: AccelConfig | None):
    """``torch.autocast`` in bf16 when ``cfg`` (resolved on ``device``) asks for it, else a no-op."""
    device = _device(device)
    dtype = _resolved(cfg, device).dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def tf32_policy(device, cfg: AccelConfig | None):
    """Set TF32 for float32 matmuls and cuDNN convolutions to ``cfg.tf32`` on CUDA, restore after.

    A no-op on the CPU (TF32 is a CUDA tensor-core format).
    """
    device = _device(device)
    if device.type != "cuda":
        yield
        return
    allow = _resolved(cfg, device).tf32
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ----------------------------------------------------------------------------- models and data


def compile_unavailable_reason(device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here, or ``None`` when it can.

    Why ``torch.compile`` cannot run on ``device`` here, or ``None`` when it can (as far as a
    static check tells: a C++ compiler for the CPU backend, Triton for CUDA).
    """
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    backend = os.environ.get("KACLIB_COMPILE_BACKEND", "inductor")
    if backend != "inductor":
        return None
    if _device(device).type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "the inductor backend needs Triton on CUDA, which is not installed"
        return None
    cxx = os.environ.get("CXX")
    if not any(shutil.which(c) for c in ([cxx] if cxx else []) + ["g++", "c++", "clang++"]):
        return "the inductor backend needs a C++ compiler on the CPU (g++, c++ or clang++), none is on PATH"
    return None


def compile_model(model: nn.Module, device) -> nn.Module:
    """``torch.compile(model)``, or ``model`` itself when compiling cannot work here.

    ``torch.compile(model)`` (backend ``$KACLIB_COMPILE_BACKEND``, default inductor), or
    ``model`` itself with a warning naming the reason when compiling cannot work here.
    """
    reason = compile_unavailable_reason(device)
    if reason is not None:
        warnings.warn(f"kaclib: torch.compile skipped: {reason}", RuntimeWarning, stacklevel=2)
        return model
    return torch.compile(model, backend=os.environ.get("KACLIB_COMPILE_BACKEND", "inductor"))


def prepare_model(model: nn.Module, cfg: AccelConfig | None, device=None) -> nn.Module:
    """Prepare ``model`` for ``device`` and return the module to call.

    Move ``model`` to ``device`` (default: where it is) and to channels-last when asked, IN
    PLACE; return the module to call: ``torch.compile(model)`` when ``cfg.compile``, else
    ``model``.  Train, checkpoint and average the bare ``model``; call the returned one.
    """
    if device is not None:
        model.to(device)
    params = list(model.parameters())
    device = _device(device if device is not None else (params[0].device if params else "cpu"))
    acc = _resolved(cfg, device)
    if acc.channels_last:
        model.to(memory_format=torch.channels_last)
    return compile_model(model, device) if acc.compile else model


def make_optimizer(params, lr: float, cfg: AccelConfig | None, device) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr)``, fused (one kernel per step) when ``cfg.fused_adam``."""
    if _resolved(cfg, device).fused_adam:
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """``x`` on ``device`` (through pinned memory from the CPU to CUDA).

    ``x`` on ``device``; a CPU tensor bound for CUDA goes through pinned memory (asynchronous
    copy), anything else is a plain ``.to``.
    """
    device = _device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def format_input(x: torch.Tensor, cfg: AccelConfig | None) -> torch.Tensor:
    """A 4-D ``x`` in channels-last layout when ``cfg.channels_last`` (resolved on ``x``'s device)."""
    if x.ndim == 4 and _resolved(cfg, x.device).channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def velocity_fn(velocity, cfg: AccelConfig | None, device):
    """``velocity(x, t, y)`` run under :func:`autocast`, its output in ``x``'s dtype.

    ``velocity(x, t, y)`` run under :func:`autocast` with :func:`format_input`, its output cast
    back to ``x``'s dtype (the ODE state stays float32).  ``cfg=None``: ``velocity`` unchanged.
    """
    if cfg is None:
        return velocity
    acc = cfg.resolve(device)

    def run(x, t, y=None):
        with autocast(device, acc):
            out = velocity(format_input(x, acc), t, y)
        return out.to(x.dtype)

    run.passes_per_call = getattr(velocity, "passes_per_call", lambda t=None: 1)
    return run


# ----------------------------------------------------------------------------- run directories


def saved_accel(saved_config: Mapping | None) -> AccelConfig | None:
    """The switches a saved run config recorded.

    The switches a saved run config recorded: ``None`` for no config (a new run), :data:`OFF`
    for a config without ``accel`` (plain fp32: runs that used no switch, and every run written
    before the field existed).
    """
    if saved_config is None:
        return None
    return AccelConfig.from_dict(saved_config["accel"]) if "accel" in saved_config else OFF


def check_resume(saved: AccelConfig | None, new: AccelConfig, run_dir) -> None:
    """Refuse to resume a run whose arithmetic (:data:`FIXED_ON_RESUME`) would change.

    Raises :class:`kaclib.runs.ConfigMismatchError` listing the fields (an fp32 run resumes only
    in fp32: pass ``accel.amp_dtype=fp32`` and the saved ``tf32`` / ``fused_adam``).
    """
    from .runs import ConfigMismatchError

    if saved is None:
        return
    diff = [
        (f"accel.{k}", getattr(saved, k), getattr(new, k))
        for k in FIXED_ON_RESUME
        if getattr(saved, k) != getattr(new, k)
    ]
    if diff:
        raise ConfigMismatchError(run_dir, diff)


def resume_config(saved: Mapping | None, config: Mapping, acc: AccelConfig, run_dir) -> dict:
    """``config`` made comparable with the saved config of ``run_dir``.

    ``config`` (a run's new config dict; ``config["accel"]`` the switches it records, absent for
    plain fp32) made comparable with ``saved``, the same section of the ``config.json`` already in
    ``run_dir`` (``None``: a new run, ``config`` is returned as it is).

    The run's arithmetic must match what was recorded (:func:`check_resume` against
    :func:`saved_accel`, else :class:`kaclib.runs.ConfigMismatchError`); the recorded switches are
    then kept, with the layout switches (:data:`MUTABLE_ON_RESUME`) taken from ``acc``, so that
    only the rest of the config is compared.
    """
    config = dict(config)
    if saved is None or ("accel" not in saved and "accel" not in config):
        return config
    check_resume(saved_accel(saved), acc, run_dir)
    config.pop("accel", None)
    if "accel" in saved:
        config["accel"] = {**saved["accel"], **{k: getattr(acc, k) for k in MUTABLE_ON_RESUME}}
    return config
