"""Velocity networks: a DDPM-style UNet for images and a small MLP for 2D toys.

Both map ``(x, t, y)`` to a velocity of ``x``'s shape.  ``t`` is a time in ``[0, T]`` (shape
``(B,)`` or a scalar), embedded sinusoidally as ``time_scale * t``; ``y`` is an int64 label in
``[0, num_classes]`` where row ``num_classes`` of the class embedding is the *null* class used
for classifier-free guidance (``y=None`` means all null).

Heads
-----
``head="free"``: the network output is the velocity.

``head="bounded"``: the paper's finite-speed bound made to hold by construction for data in
``[-1, 1]``.  The Kac target is ``u = f'(t) x0 + g'(t) v`` with ``|x0| <= 1`` and ``|v| <= c`` per
coordinate, so the network emits ``2C`` channels ``(A, B)`` and returns::

    u = f'(t) tanh(A) + g'(t) c tanh(B),    |u| <= |f'(t)| + g'(t) c   (per coordinate).

This needs the path's ``f'``, ``g'`` and ``c``: build it with ``build_model(cfg, path)`` and a
:class:`~kaclib.paths.KacPath`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "UNetConfig",
    "UNet",
    "MLPVelocity",
    "BoundedHead",
    "PRESETS",
    "get_preset",
    "build_model",
    "count_parameters",
    "timestep_embedding",
]

HEADS = ("free", "bounded")


# ----------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class UNetConfig:
    """UNet hyper-parameters (JSON-serialisable with ``dataclasses.asdict``).

    ``attn_resolutions`` are feature-map sizes in pixels: ``(16,)`` puts self-attention after
    every residual block whose feature map is 16 x 16 (on the way down and up).  Each must be one
    of the UNet's resolutions ``image_size / 2**i``.  ``mid_block`` adds the usual bottleneck
    (residual block, attention if ``mid_attention``, residual block) at the lowest resolution.
    The class embedding has ``num_classes + 1`` rows; row ``num_classes`` is the null class.
    """

    in_channels: int = 1
    image_size: int = 8
    base_channels: int = 16
    channel_mult: tuple = (1, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple = ()
    dropout: float = 0.0
    num_classes: int = 10
    time_scale: float = 1000.0
    head: str = "free"
    mid_attention: bool = True
    mid_block: bool = True
    num_heads: int = 1
    norm_groups: int = 32

    def __post_init__(self):
        # JSON round trips turn tuples into lists: accept lists, store tuples
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        for name in (
            "in_channels",
            "image_size",
            "base_channels",
            "num_res_blocks",
            "num_heads",
            "norm_groups",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {self.num_classes!r}")
        if not self.channel_mult or not all(isinstance(m, int) and m >= 1 for m in self.channel_mult):
            raise ValueError(
                f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult!r}"
            )
        down = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % down:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**(len(channel_mult)-1) = {down}"
            )
        bad = [r for r in self.attn_resolutions if r not in self.resolutions]
        if bad:
            raise ValueError(
                f"attn_resolutions {bad} never occur: the UNet's resolutions are {self.resolutions}"
            )
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if not (
            isinstance(self.time_scale, (int, float))
            and math.isfinite(self.time_scale)
            and self.time_scale > 0
        ):
            raise ValueError(f"time_scale must be finite and > 0, got {self.time_scale!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")

    @property
    def resolutions(self) -> tuple:
        """Feature-map size at each level: ``image_size / 2**i``."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Inverse of ``dataclasses.asdict`` (after JSON: lists become tuples); unknown keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown UNetConfig fields {unknown}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """The fields as a plain dict (``dataclasses.asdict``), the inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)


PRESETS: dict[str, UNetConfig] = {
    # near the CPU prototype's 168k-parameter 16/32-channel UNet on 8x8 digits: 185k parameters
    # (the DDPM layout, 3 up blocks per level, no bottleneck block)
    "digits-tiny": UNetConfig(
        in_channels=1,
        image_size=8,
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=2,
        attn_resolutions=(),
        mid_block=False,
        num_classes=10,
    ),
    # 28 -> 14 -> 7, attention at 7x7
    "mnist-small": UNetConfig(
        in_channels=1,
        image_size=28,
        base_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(7,),
        dropout=0.1,
        num_classes=10,
    ),
    # the DDPM CIFAR-10 UNet (35.7M parameters in DDPM) with a class embedding
    "cifar10-paper": UNetConfig(
        in_channels=3,
        image_size=32,
        base_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(16,),
        dropout=0.1,
        num_classes=10,
    ),
    "celeba64-paper": UNetConfig(
        in_channels=3,
        image_size=64,
        base_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(16,),
        dropout=0.1,
        num_classes=1,
    ),
    # the smallest sensible UNet: for tests
    "smoke": UNetConfig(
        in_channels=1,
        image_size=8,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        num_classes=10,
        norm_groups=8,
    ),
}


def get_preset(name: str, **overrides) -> UNetConfig:
    """A preset config, with fields replaced by ``overrides`` (validated again)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    names = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown UNetConfig fields {unknown}; known: {sorted(names)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# ----------------------------------------------------------------------------------- pieces


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t w_k), sin(t w_k)]``, ``w_k = max_period^(-k/(dim/2))``: ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _groups(channels: int, max_groups: int) -> int:
    """Largest group count ``<= max_groups`` dividing ``channels``.

    Each group gets at least 4 channels (2 if the channels are too few).

    A group of ONE channel is an instance norm: it subtracts each channel's own mean and so erases
    the per-channel time/class embedding that :class:`ResBlock` adds before ``norm2`` — the network
    would ignore ``t`` and ``y`` entirely (a bug found in this project's first teachers).
    """
    for per_group in (4, 2):
        ok = [g for g in range(1, min(max_groups, channels // per_group) + 1) if channels % g == 0]
        if ok:
            return max(ok)
    return 1


def _norm(channels: int, max_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels, max_groups), channels)


class ResBlock(nn.Module):
    """``h = conv(SiLU(GN(x))) + Linear(SiLU(emb)); h = conv(dropout(SiLU(GN(h)))); return skip(x) + h``."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.drop = _norm(cout, groups), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Residual multi-head self-attention over the ``H * W`` positions of a feature map."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide the channel count {channels}")
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.num_heads = num_heads

    def forward(self, x, emb=None):
        b, ch, hh, ww = x.shape
        q, k, v = (
            self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, ch // self.num_heads, hh * ww).unbind(1)
        )
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, ch, hh, ww))


class Downsample(nn.Module):
    """3x3 convolution with stride 2 (``n -> ceil(n/2)``)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, emb=None):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, emb=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """A residual block, optionally followed by attention, recording the feature-map resolution."""

    def __init__(self, res: ResBlock, attn: AttnBlock | None, resolution: int):
        super().__init__()
        self.res, self.attn, self.resolution = res, attn, resolution

    def forward(self, x, emb):
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


# ----------------------------------------------------------------------------------- heads


class BoundedHead(nn.Module):
    """``u = f'(t) tanh(A) + (g'(t) c) tanh(B)`` from a ``2C``-channel output ``(A, B)``.

    Per coordinate ``|u| <= |f'(t)| + g'(t) c``: the bound of the Kac target for data in [-1, 1].
    """

    def __init__(self, path):
        super().__init__()
        if getattr(path, "name", None) != "kac" or not hasattr(path, "dg"):
            raise ValueError(f"head='bounded' needs a KacPath (for f', g' and c), got {path!r}")
        self.path = path

    def forward(self, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The bounded velocity ``f'(t) tanh(A) + g'(t) c tanh(B)`` from the output ``(A, B)``."""
        a, b = out.chunk(2, dim=1)
        shape = (-1,) + (1,) * (out.ndim - 1)
        df = self.path.df(t).to(out.dtype).reshape(shape)
        dgc = (self.path.dg(t) * self.path.c).to(out.dtype).reshape(shape)
        return df * torch.tanh(a) + dgc * torch.tanh(b)


def _make_head(head: str, path) -> BoundedHead | None:
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head == "free":
        return None
    if path is None:
        raise ValueError("head='bounded' needs the path: pass path=KacPath(...)")
    return BoundedHead(path)


def _prepare_t(t, batch: int, device, dtype=torch.float32) -> torch.Tensor:
    """``t`` as a ``(B,)`` tensor: a scalar is broadcast; NaN or a wrong length raises."""
    t = torch.as_tensor(t, device=device, dtype=dtype)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    if torch.isnan(t).any():
        raise ValueError("t must not contain NaN")
    return t


def _prepare_y(y, batch: int, num_classes: int, device) -> torch.Tensor:
    """Labels as ``(B,)`` int64 in ``[0, num_classes]``; ``None`` means the null class everywhere."""
    if y is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    y = torch.as_tensor(y, device=device)
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")
    y = y.long()
    if y.ndim == 0:
        y = y.expand(batch)
    if y.shape != (batch,):
        raise ValueError(f"y must be None, a scalar or have shape ({batch},), got {tuple(y.shape)}")
    if batch and (y.min() < 0 or y.max() > num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}] ({num_classes} = null class), "
            f"got [{int(y.min())}, {int(y.max())}]"
        )
    return y


# ----------------------------------------------------------------------------------- UNet


class UNet(nn.Module):
    """DDPM-style UNet velocity model ``forward(x, t, y) -> u`` (``u`` has ``x``'s shape).

    Embedding ``e = MLP(sinusoid(time_scale t)) + Embed(y)`` (``num_classes + 1`` rows, the last
    is null).  Down path: per level ``num_res_blocks`` residual blocks (GroupNorm, SiLU, ``e``
    added), attention where the map size is in ``attn_resolutions``, then a stride-2 conv.
    Bottleneck (``mid_block``): res, attention (``mid_attention``), res.  Up path:
    ``num_res_blocks + 1`` residual blocks per level, each on the concatenation with a skip,
    attention as on the way down, then nearest upsampling.  The output conv is zero-initialised
    (the model starts at ``u = 0``).
    """

    def __init__(self, cfg: UNetConfig, path=None):
        super().__init__()
        if not isinstance(cfg, UNetConfig):
            raise ValueError(f"cfg must be a UNetConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.head = _make_head(cfg.head, path)
        ch, g = cfg.base_channels, cfg.norm_groups
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        def level(cin, cout, res):
            attn = AttnBlock(cout, cfg.num_heads, g) if res in cfg.attn_resolutions else None
            return _Level(ResBlock(cin, cout, emb_dim, cfg.dropout, g), attn, res)

        self.down = nn.ModuleList()
        skips, cur, res = [ch], ch, cfg.image_size
        for i, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(level(cur, ch * mult, res))
                cur = ch * mult
                skips.append(cur)
            if i < len(cfg.channel_mult) - 1:
                self.down.append(Downsample(cur))
                skips.append(cur)
                res //= 2
        self.mid = nn.ModuleList()
        if cfg.mid_block:
            self.mid.append(ResBlock(cur, cur, emb_dim, cfg.dropout, g))
            if cfg.mid_attention:
                self.mid.append(AttnBlock(cur, cfg.num_heads, g))
            self.mid.append(ResBlock(cur, cur, emb_dim, cfg.dropout, g))
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(level(cur + skips.pop(), ch * mult, res))
                cur = ch * mult
            if i > 0:
                self.up.append(Upsample(cur))
                res *= 2
        self.norm_out = _norm(cur, g)
        out_ch = cfg.in_channels * (2 if cfg.head == "bounded" else 1)
        self.conv_out = nn.Conv2d(cur, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def attention_resolutions(self) -> list[int]:
        """Map size of every attention layer of the down and up paths (bottleneck excluded)."""
        return [m.resolution for m in self.modules() if isinstance(m, _Level) and m.attn is not None]

    def _check_x(self, x: torch.Tensor) -> None:
        c = self.cfg
        if x.ndim != 4:
            raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != c.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels, the model expects in_channels={c.in_channels}")
        if x.shape[2:] != (c.image_size, c.image_size):
            raise ValueError(f"x is {tuple(x.shape[2:])}, the model expects image_size={c.image_size}")

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """The velocity ``u`` (``x``'s shape) at ``x``, times ``t``, labels ``y`` (``None``: null class)."""
        self._check_x(x)
        t = _prepare_t(t, x.shape[0], x.device)
        y = _prepare_y(y, x.shape[0], self.cfg.num_classes, x.device)
        emb = self.time_mlp(timestep_embedding(self.cfg.time_scale * t, self.cfg.base_channels).to(x.dtype))
        emb = emb + self.class_emb(y)
        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb)
        for m in self.up:
            h = m(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(m, _Level) else m(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out if self.head is None else self.head(out, t)


# ----------------------------------------------------------------------------------- MLP


class MLPVelocity(nn.Module):
    """Velocity MLP for low-dimensional toys: ``forward(x (B, dim), t, y=None) -> (B, dim)``.

    ``h = SiLU(W x + MLP(sinusoid(time_scale t)) + Embed(y))`` then ``depth - 1`` hidden SiLU layers
    and a zero-initialised linear output; ``head="bounded"`` as for the UNet (needs ``path``).
    ``num_classes = 0`` gives an unconditional model (only the null row).
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        num_classes: int = 0,
        time_scale: float = 1000.0,
        head: str = "free",
        path=None,
    ):
        super().__init__()
        for name, v, lo in (
            ("dim", dim, 1),
            ("hidden", hidden, 1),
            ("depth", depth, 1),
            ("num_classes", num_classes, 0),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if not (isinstance(time_scale, (int, float)) and math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be finite and > 0, got {time_scale!r}")
        self.dim, self.hidden, self.num_classes, self.time_scale = dim, hidden, num_classes, float(time_scale)
        self.head = _make_head(head, path)
        self.config = {
            "dim": dim,
            "hidden": hidden,
            "depth": depth,
            "num_classes": num_classes,
            "time_scale": float(time_scale),
            "head": head,
        }
        self.inp = nn.Linear(dim, hidden)
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_emb = nn.Embedding(num_classes + 1, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim * (2 if head == "bounded" else 1))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """The velocity ``(B, dim)`` at ``x``, times ``t``, labels ``y`` (``None``: null class)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        t = _prepare_t(t, x.shape[0], x.device)
        y = _prepare_y(y, x.shape[0], self.num_classes, x.device)
        emb = self.time_mlp(
            timestep_embedding(self.time_scale * t, self.hidden).to(x.dtype)
        ) + self.class_emb(y)
        h = F.silu(self.inp(x) + emb)
        for layer in self.layers:
            h = F.silu(layer(h))
        out = self.out(h)
        return out if self.head is None else self.head(out, t)


# ----------------------------------------------------------------------------------- helpers


def build_model(cfg: UNetConfig, path=None) -> nn.Module:
    """The UNet of ``cfg``; ``head="bounded"`` needs ``path`` to be a KacPath (else ``ValueError``)."""
    return UNet(cfg, path=path)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
