"""Counter-based, per-image reproducible latents, drawn for a whole batch at once.

Image ``i``'s latent ``x_T`` is a function of ``(seed, i)`` only, not of the batch size, the number
of images or their order: its uniforms are read from the splitmix64 stream keyed by
``key_i = step_seed(seed, i)`` (:func:`kaclib.train.step_seed`), word ``n >= 1`` being

    ``mix64(key_i + n * 0x9E3779B97F4A7C15)``  (mod 2^64; ``mix64`` is splitmix64's finaliser),

computed for every image and coordinate at once with int64 tensor operations (two's-complement
wrap-around, logical shifts by masking).  Each 64-bit word gives two uniforms
``(m + 2^31 + 1/2) / 2^32``, ``m`` its low or high 32 bits read as a signed integer (low half
first), exact in float64 and strictly inside ``(0, 1)``: uniform
``j`` of coordinate ``p`` comes from word ``1 + p ceil(k/2) + j // 2`` (``k`` uniforms per coordinate).

A path turns the uniforms into its latent with ``path.latent_from_uniforms(u, dtype)``, ``u`` of
shape ``(path.latent_uniforms, n, *image_shape)``: the Kac path by the exact sampler
(:meth:`kaclib.kac.KacProcess.sample_from_uniforms`, four uniforms per coordinate), the Gaussian
and diffusion paths by Box-Muller (two).  On the CPU the result is bit-identical whatever the batch.
"""

from __future__ import annotations

import math
import operator
import sys

import torch

__all__ = ["GOLDEN_GAMMA", "image_keys", "counter_words", "counter_uniforms", "box_muller", "image_latents"]

_MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
"""splitmix64's increment (the odd integer closest to 2^64 / phi)."""
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(v: int) -> int:
    """The int64 with the bits of the unsigned 64-bit ``v``."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def _shr(x: torch.Tensor, r: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (x >> r) & ((1 << (64 - r)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (read as unsigned 64-bit words); ``x`` is consumed."""
    x ^= _shr(x, 30)
    x *= _signed(_C1)
    x ^= _shr(x, 27)
    x *= _signed(_C2)
    x ^= _shr(x, 31)
    return x


def image_keys(seed: int, index: torch.Tensor) -> torch.Tensor:
    """``step_seed(seed, i)`` for every ``i`` in the int64 tensor ``index``, vectorised."""
    h0 = _mix64(torch.tensor([_signed(int(seed) + GOLDEN_GAMMA)], dtype=torch.int64))  # splitmix64(0 ^ seed)
    h = _mix64((index.to(torch.int64) ^ h0) + _signed(GOLDEN_GAMMA))
    return _shr(h, 1)


def counter_words(keys: torch.Tensor, count: int) -> torch.Tensor:
    """Words ``1 .. count`` of the splitmix64 stream of every key: ``(n, count)`` int64."""
    n = torch.arange(1, count + 1, dtype=torch.int64, device=keys.device) * _signed(GOLDEN_GAMMA)
    return _mix64(keys.reshape(-1, 1) + n)


def counter_uniforms(keys: torch.Tensor, coords: int, k: int) -> torch.Tensor:
    """``k`` uniforms for each of ``coords`` coordinates per key: float64 ``(k, n, coords)`` in ``(0, 1)``.

    Uniform ``j`` of coordinate ``p`` is ``(m + 2^31 + 1/2) / 2^32`` with ``m`` the low (``j`` even) or
    high (``j`` odd) 32 bits, read as a signed integer, of word ``1 + p ceil(k/2) + j // 2`` of the
    key's stream.
    """
    words = (k + 1) // 2
    w = counter_words(keys, words * coords)  # (n, coords * words)
    if sys.byteorder == "little":  # the two halves of every word, low first, without a pass
        halves = w.view(torch.int32).view(-1, coords, 2 * words)
    else:
        halves = torch.stack([(w << 32) >> 32, w >> 32], -1).view(-1, coords, 2 * words)
    u = torch.empty((2 * words,) + halves.shape[:2], dtype=torch.float64, device=keys.device)
    u.copy_(halves.permute(2, 0, 1))
    offset = torch.tensor(0.5 + 2.0**-33, dtype=torch.float64, device=keys.device)
    return torch.add(offset, u, alpha=2.0**-32, out=u)[:k]  # (m + 2^31 + 1/2) / 2^32, exact, one pass


def box_muller(u: torch.Tensor, dtype=None) -> torch.Tensor:
    """Standard normals from uniforms ``u`` ``(2, *shape)`` in (0, 1]: sqrt(-2 log u[0]) cos(2 pi u[1])."""
    u = u.to(dtype or u.dtype)
    return torch.sqrt(torch.log(u[0]).mul_(-2.0)).mul_(torch.cos(u[1] * (2 * math.pi)))


def _check_count(name: str, value, minimum: int) -> int:
    try:
        v = operator.index(value)  # ints and integer scalars of numpy / torch, not floats or bools
    except TypeError:
        v = None
    if v is None or isinstance(value, bool) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


def _per_image_generators(path, n: int, image_shape, seed: int, start: int, dtype) -> torch.Tensor:
    """The slow fallback for a path without ``latent_from_uniforms``.

    The slow fallback for a path without ``latent_from_uniforms``: one ``torch.Generator``
    seeded with ``step_seed(seed, i)`` per image, ``path.sample_latent`` (about 1 ms per image).
    """
    from .train import step_seed

    if not hasattr(path, "sample_latent"):
        raise TypeError(f"{type(path).__name__} has neither latent_from_uniforms nor sample_latent")
    out = [
        path.sample_latent(
            (1, *image_shape), generator=torch.Generator().manual_seed(step_seed(seed, i)), dtype=dtype
        )
        for i in range(start, start + n)
    ]
    return torch.cat(out) if out else torch.empty((0, *image_shape), dtype=dtype)


def image_latents(
    path, n: int, image_shape, seed: int = 0, start: int = 0, dtype=torch.float32
) -> torch.Tensor:
    """Latents ``x_T`` of images ``start .. start + n - 1`` on ``path`` (CPU, ``dtype``).

    Latents ``x_T`` of images ``start .. start + n - 1`` on ``path`` (CPU, ``dtype``): image ``i``'s
    depends only on ``(seed, i)`` (see the module docstring).  A path without the
    ``latent_uniforms`` / ``latent_from_uniforms`` hook falls back to one ``torch.Generator`` per image
    (``step_seed(seed, i)``, ``path.sample_latent``): also per image, but slow.
    """
    n, seed, start = _check_count("n", n, 0), _check_count("seed", seed, 0), _check_count("start", start, 0)
    image_shape = tuple(int(d) for d in image_shape)
    if any(d < 1 for d in image_shape):
        raise ValueError(f"image_shape must have positive sizes, got {image_shape}")
    k = getattr(path, "latent_uniforms", None)
    if k is None:
        return _per_image_generators(path, n, image_shape, seed, start, dtype)
    coords = 1
    for d in image_shape:
        coords *= d
    keys = image_keys(seed, torch.arange(start, start + n, dtype=torch.int64))
    u = counter_uniforms(keys, coords, k).reshape(k, n, *image_shape)
    return path.latent_from_uniforms(u, dtype=dtype)
