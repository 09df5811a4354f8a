"""Weights (safetensors) and training state (``torch.save``) as bytes, loaded into modules."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .layout import NonFiniteError, RunDirError


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return (type(e).__name__ + ": " + "; ".join(lines[:2]))[:300] if lines else type(e).__name__


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
    """Safetensors bytes -> tensors; anything unreadable is a :class:`RunDirError` naming ``source``."""
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
