"""Tests for kaclib.models: shapes, validation, attention placement, parameter counts, bounded head."""

import dataclasses
import json

import pytest
import torch

from kaclib.models import (
    PRESETS,
    AttnBlock,
    MLPVelocity,
    UNet,
    UNetConfig,
    build_model,
    count_parameters,
    get_preset,
)
from kaclib.paths import DiffusionPath, GaussianPath, KacPath

torch.set_num_threads(1)


def _randomise_output(model, scale):
    """Replace the zero-initialised output layer by large random weights (a saturated network)."""
    last = model.conv_out if isinstance(model, UNet) else model.out
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        last.weight.copy_(scale * torch.randn(last.weight.shape, generator=g))
        last.bias.copy_(scale * torch.randn(last.bias.shape, generator=g))


def _inputs(cfg, batch=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.randint(0, cfg.num_classes + 1, (batch,), generator=g)
    return x, t, y


# ----------------------------------------------------------------------------- config


def test_config_json_round_trip_and_presets():
    for cfg in PRESETS.values():
        back = UNetConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg))))
        assert (
            back == cfg and isinstance(back.channel_mult, tuple) and isinstance(back.attn_resolutions, tuple)
        )
    assert get_preset("smoke", dropout=0.2).dropout == 0.2 and PRESETS["smoke"].dropout == 0.0
    with pytest.raises(ValueError, match="presets.*cifar10-paper"):
        get_preset("resnet")
    with pytest.raises(ValueError, match="unknown UNetConfig fields"):
        get_preset("smoke", widht=3)
    with pytest.raises(ValueError, match="unknown UNetConfig fields"):
        UNetConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"attn_resolutions": (15,)}, "attn_resolutions"),
        ({"image_size": 10, "channel_mult": (1, 2, 2)}, "divisible"),
        ({"dropout": float("nan")}, "dropout"),
        ({"base_channels": 0}, "base_channels"),
        ({"head": "clamped"}, "head"),
        ({"time_scale": -1.0}, "time_scale"),
        ({"num_classes": -1}, "num_classes"),
        ({"channel_mult": ()}, "channel_mult"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        get_preset("smoke", **kw)


# ----------------------------------------------------------------------------- UNet


def test_unet_shapes_zero_init_and_labels():
    cfg = PRESETS["smoke"]
    model = build_model(cfg)
    x, t, y = _inputs(cfg)
    out = model(x, t, y)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # zero-initialised output conv
    _randomise_output(model, 0.1)
    model.eval()
    out = model(x, t, y)
    assert torch.count_nonzero(out) > 0
    # scalar t broadcasts; y=None is the null class; labels change the output
    assert torch.equal(model(x, 0.3, y), model(x, torch.full((6,), 0.3), y))
    assert torch.equal(model(x, t, None), model(x, t, torch.full((6,), cfg.num_classes)))
    assert not torch.allclose(
        model(x, t, torch.zeros(6, dtype=torch.long)), model(x, t, torch.ones(6, dtype=torch.long))
    )
    assert not torch.allclose(model(x, t, y), model(x, t + 0.1, y))


def test_unet_learns_despite_zero_init():
    torch.manual_seed(0)
    model = build_model(PRESETS["smoke"])
    x, t, y = _inputs(model.cfg, batch=16)
    target = x.clamp(-1, 1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        loss = (model(x, t, y) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_unet_rejects_bad_inputs():
    cfg = PRESETS["smoke"]
    model = build_model(cfg)
    x, t, y = _inputs(cfg)
    with pytest.raises(ValueError, match="channels"):
        model(torch.zeros(2, 3, 8, 8), t[:2], y[:2])
    with pytest.raises(ValueError, match="image_size"):
        model(torch.zeros(2, 1, 16, 16), t[:2], y[:2])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        model(x, t, torch.full((6,), 11))
    with pytest.raises(ValueError, match="labels"):
        model(x, t, torch.full((6,), -1))
    with pytest.raises(ValueError, match="integer"):
        model(x, t, torch.zeros(6))
    with pytest.raises(ValueError, match="t must"):
        model(x, t[:3], y)
    with pytest.raises(ValueError, match="NaN"):
        model(x, torch.full((6,), float("nan")), y)


def test_paper_preset_attention_is_applied_at_16x16():
    cfg = PRESETS["cifar10-paper"]
    model = build_model(cfg)
    assert model.attention_resolutions() == [16] * 5  # 2 blocks down + 3 blocks up at 16x16
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
        for m in model.modules()
        if isinstance(m, AttnBlock)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32), torch.tensor([0.5]), torch.tensor([3]))
    for h in hooks:
        h.remove()
    assert sorted(seen) == [(4, 4)] + [(16, 16)] * 5  # plus the bottleneck's attention at 4x4
    # mnist-small: attention at 7x7 (28 -> 14 -> 7)
    assert build_model(PRESETS["mnist-small"]).attention_resolutions() == [7] * 5


def test_parameter_counts():
    n_tiny = count_parameters(build_model(PRESETS["digits-tiny"]))
    n_paper = count_parameters(build_model(PRESETS["cifar10-paper"]))
    assert n_tiny == 186_113  # the prototype's 16/32 UNet had 168k
    assert n_paper == 35_751_939  # DDPM's CIFAR-10 UNet: 35.7M
    assert count_parameters(build_model(PRESETS["smoke"])) < 50_000


# ----------------------------------------------------------------------------- bounded head


@pytest.mark.parametrize("g", ["t", "t2"])
def test_bounded_head_holds_the_finite_speed_bound(g):
    path = KacPath(a=9.0, c=3.0, g=g)
    cfg = get_preset("smoke", head="bounded")
    model = build_model(cfg, path).eval()
    _randomise_output(model, 50.0)  # saturate tanh
    x, t, y = _inputs(cfg, batch=32)
    t[:2] = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        u = model(x, t, y)
    bound = (path.df(t).abs() + path.dg(t) * path.c).view(-1, 1, 1, 1)
    assert torch.all(u.abs() <= bound)  # exactly, in floating point
    assert (u.abs() / bound).max() > 0.99  # and it is nearly attained: the test can fail

    free = build_model(get_preset("smoke"))
    _randomise_output(free, 50.0)
    with torch.no_grad():
        assert (free(x, t, y).abs() > bound).any()


def test_bounded_head_needs_a_kac_path():
    cfg = get_preset("smoke", head="bounded")
    with pytest.raises(ValueError, match="KacPath"):
        build_model(cfg)
    for path in (GaussianPath(), DiffusionPath()):
        with pytest.raises(ValueError, match="KacPath"):
            build_model(cfg, path)


# ----------------------------------------------------------------------------- MLP


def test_mlp_velocity_shapes_bound_and_errors():
    path = KacPath(a=25.0, c=2.0)
    g = torch.Generator().manual_seed(0)
    x, t = 5 * torch.randn(64, 2, generator=g), torch.rand(64, generator=g)
    m = MLPVelocity(dim=2, hidden=32, depth=3, num_classes=0)
    assert m(x, t).shape == (64, 2) and torch.count_nonzero(m(x, t)) == 0
    mb = MLPVelocity(dim=2, hidden=32, num_classes=4, head="bounded", path=path)
    _randomise_output(mb, 50.0)
    y = torch.randint(0, 5, (64,), generator=g)
    with torch.no_grad():
        u = mb(x, t, y)
    bound = (path.df(t).abs() + path.dg(t) * path.c)[:, None]
    assert torch.all(u.abs() <= bound) and (u.abs() / bound).max() > 0.99
    with pytest.raises(ValueError, match="shape"):
        m(torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        m(x, t, torch.ones(64, dtype=torch.long))  # num_classes=0: only the null label 0
    with pytest.raises(ValueError, match="KacPath"):
        MLPVelocity(head="bounded")
    with pytest.raises(ValueError, match="hidden"):
        MLPVelocity(hidden=0)


@pytest.mark.parametrize("name", ["smoke", "digits-tiny", "mnist-small"])
def test_output_depends_on_time_and_class(name):
    """The time/class embedding must reach the output. (Regression: with one channel per GroupNorm
    group the per-channel embedding added before the norm was erased and the network ignored t, y.)"""
    torch.manual_seed(0)
    model = build_model(get_preset(name))
    torch.nn.init.normal_(model.conv_out.weight)
    cfg = model.cfg
    x = torch.randn(4, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.full((4,), 0.5)
    base = model(x, t, torch.zeros(4, dtype=torch.long))
    other_class = model(x, t, torch.full((4,), 3))
    other_time = model(x, 0.5 * t, torch.zeros(4, dtype=torch.long))
    scale = base.abs().mean()
    assert (base - other_class).abs().mean() > 1e-2 * scale
    assert (base - other_time).abs().mean() > 1e-2 * scale
    for m in model.modules():
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_channels // m.num_groups >= 2
