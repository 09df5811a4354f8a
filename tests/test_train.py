"""Training loop, run directories and checkpoints: EMA, label dropout, determinism, exact resume,
crash-safe checkpoints, config checks, load_run."""

import json
import os

import pytest
import torch
from torch import nn

from kaclib import runs
from kaclib.models import MLPVelocity
from kaclib.paths import GaussianPath, KacPath
from kaclib.train import TrainConfig, _EpochOrder, batch_indices, fit, load_run, step_seed, train

torch.set_num_threads(1)


def toy_data(n=64, seed=0):
    """Two classes of 2D points: class 0 near (-0.5, 0), class 1 near (0.5, 0)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = 0.1 * torch.randn(n, 2, generator=g)
    x[:, 0] += torch.where(labels == 0, -0.5, 0.5)
    return x, labels


class DropoutMLP(nn.Module):
    """MLPVelocity behind a dropout layer: its training draws from the global RNG."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.mlp = MLPVelocity(dim=2, hidden=16, depth=2, num_classes=2)
        self.out = self.mlp.out

    def forward(self, x, t, y):
        return self.mlp(self.drop(x), t, y)


def toy_model(seed=0, num_classes=2, dropout=False):
    torch.manual_seed(seed)
    return DropoutMLP() if dropout else MLPVelocity(dim=2, hidden=16, depth=2, num_classes=num_classes)


def _fit(run_dir=None, steps=6, model_seed=0, dropout=False, **kw):
    x, y = toy_data()
    args = dict(steps=steps, batch_size=8, lr=1e-2, seed=3, progress=False, checkpoint_every=3, log_every=2)
    args.update(kw)
    return fit(toy_model(model_seed, dropout=dropout), KacPath(9.0, 3.0), x, y, 2, run_dir=run_dir, **args)


def _assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ------------------------------------------------------------------------------------ config


def test_config_json_round_trip_and_resolution():
    cfg = TrainConfig(dataset="digits", model={"preset": "smoke", "base_channels": 16}, steps=10, lr=1e-3)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_dict(d) == cfg
    r = cfg.resolved()
    assert r.model["base_channels"] == 16 and r.model["num_classes"] == 10 and "preset" not in r.model
    assert r.path.to_dict() == {"kind": "kac", "a": 9.0, "c": 3.0, "f": "linear", "g": "t", "T": 1.0}
    assert TrainConfig.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.resolved() == r  # idempotent
    assert TrainConfig(path={"kind": "gaussian"}).resolved().path.to_dict() == {"kind": "gaussian", "T": 1.0}


@pytest.mark.parametrize(
    "field,value",
    [
        ("lr", float("nan")),
        ("lr", -1.0),
        ("steps", -1),
        ("batch_size", 0),
        ("p_uncond", 1.5),
        ("ema_decay", 1.0),
        ("grad_clip", float("inf")),
        ("log_every", 0),
        ("checkpoint_every", 2.5),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_config_unknown_field_and_model_mismatch():
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="in_channels"):
        TrainConfig(dataset="digits", model={"preset": "smoke", "in_channels": 3}).resolved()
    with pytest.raises(ValueError, match="unknown dataset"):
        TrainConfig(dataset="nope", model={"preset": "smoke"}).resolved()


# ------------------------------------------------------------------------------------ data order


def test_data_order_is_epoch_permutations_split_across_ranks():
    order = _EpochOrder(10, seed=5)
    seen = torch.cat([batch_indices(order, k, 4) for k in range(5)])  # 20 positions = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    # two ranks read disjoint halves of the same global batch
    r0, r1 = batch_indices(order, 3, 4, 0, 2), batch_indices(order, 3, 4, 1, 2)
    assert torch.equal(torch.cat([r0, r1]), batch_indices(order, 3, 4))
    assert step_seed(0, 0, 1) != step_seed(0, 1, 0) != step_seed(1, 0, 0)


# ------------------------------------------------------------------------------------ the loop


def test_loss_decreases_on_a_toy_problem():
    x, y = toy_data(256)
    res = fit(toy_model(), GaussianPath(), x, y, 2, steps=300, batch_size=64, lr=1e-2, progress=False)
    assert res.losses.shape == (300,) and torch.isfinite(res.losses).all()
    assert res.losses[-50:].mean() < 0.8 * res.losses[:20].mean()


def test_ema_follows_its_recursion():
    """ema_0 = theta_1, ema_k = d ema_{k-1} + (1 - d) theta_k (the AveragedModel EMA)."""
    d = 0.9
    thetas = []
    x, y = toy_data()
    model = toy_model()
    res = fit(
        model,
        KacPath(),
        x,
        y,
        2,
        steps=5,
        batch_size=8,
        lr=1e-2,
        ema_decay=d,
        progress=False,
        callback=lambda step, info: thetas.append([p.detach().clone() for p in model.parameters()]),
    )
    ema = thetas[0]
    for th in thetas[1:]:
        ema = [d * e + (1 - d) * p for e, p in zip(ema, th)]
    for e, p in zip(ema, res.ema.parameters()):
        torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-7)
    # and it differs from the raw weights
    assert any(not torch.allclose(p, q) for p, q in zip(res.ema.parameters(), res.model.parameters()))


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.ys, self.ts = [], []

    def forward(self, x, t, y):
        self.ys.append(None if y is None else y.clone())
        self.ts.append(t.clone())
        return self.lin(x)


@pytest.mark.parametrize("p,expect", [(0.0, "none"), (1.0, "all"), (0.5, "some")])
def test_label_dropout_to_the_null_class(p, expect):
    x, y = toy_data(64)
    rec = Recorder()
    fit(rec, KacPath(), x, y, 2, steps=4, batch_size=32, p_uncond=p, progress=False)
    ys = torch.cat(rec.ys)
    null = ys == 2
    assert {"none": not null.any(), "all": null.all(), "some": 0.3 < null.float().mean() < 0.7}[expect]
    ts = torch.cat(rec.ts)
    assert (ts >= 0).all() and (ts < 1).all() and ts.std() > 0.2  # t ~ U[0, T]


def test_unconditional_data_passes_y_none():
    x, _ = toy_data()
    rec = Recorder()
    fit(rec, GaussianPath(), x, None, None, steps=2, batch_size=8, progress=False)
    assert rec.ys == [None, None]


def test_grad_clipping_bounds_the_update():
    """The reported norm is the pre-clip one (> clip here); the gradient Adam sees has norm = clip."""
    x, y = toy_data()
    norms = []
    model = toy_model()

    def cb(step, info):
        g = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in model.parameters() if p.grad is not None))
        norms.append((float(info["grad_norm"]), float(g)))

    fit(model, KacPath(), x, y, 2, steps=3, batch_size=8, grad_clip=1e-3, progress=False, callback=cb)
    for pre, post in norms:
        assert pre > 1e-3 and post == pytest.approx(1e-3, rel=1e-3)


def test_fit_is_deterministic_and_seed_dependent():
    a, b = _fit(), _fit()
    _assert_same_state(a.model, b.model)
    _assert_same_state(a.ema, b.ema)
    c = _fit(seed=4)
    assert not torch.equal(a.model.out.weight, c.model.out.weight)


@pytest.mark.parametrize(
    "bad", [dict(steps=-1), dict(batch_size=0), dict(lr=float("nan")), dict(p_uncond=2.0)]
)
def test_fit_validates_arguments(bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        _fit(**bad)


def test_fit_validates_data():
    x, y = toy_data()
    with pytest.raises(ValueError, match="labels"):
        fit(toy_model(), KacPath(), x, y[:-1], 2, steps=1, progress=False)
    with pytest.raises(ValueError, match="labels"):
        fit(toy_model(), KacPath(), x, y + 5, 2, steps=1, progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        fit(toy_model(), KacPath(), x, y, None, steps=1, progress=False)


# ------------------------------------------------------------------------------------ run dirs


def test_run_dir_layout_and_metrics(tmp_path):
    res = _fit(tmp_path / "run", steps=6)
    names = sorted(os.listdir(tmp_path / "run"))
    assert names == sorted(
        [
            runs.CONFIG_FILE,
            runs.MODEL_FILE,
            runs.EMA_FILE,
            runs.STATE_FILE,
            runs.METRICS_FILE,
            runs.MANIFEST_FILE,
            runs.LOCK_FILE,
        ]
    )
    assert (tmp_path / "run" / runs.LOCK_FILE).read_bytes() == b""  # released
    recs = runs.read_jsonl(tmp_path / "run" / runs.METRICS_FILE)
    assert [r["step"] for r in recs] == [2, 4, 6]
    assert all(r["loss"] > 0 for r in recs)
    state = runs.load_state(tmp_path / "run")
    assert state["step"] == 6
    m = toy_model(1)
    runs.load_weights(m, tmp_path / "run" / runs.EMA_FILE)
    _assert_same_state(m, res.ema)


class Stop(Exception):
    pass


def _stop_at(n):
    def cb(step, info):
        if step == n:
            raise Stop

    return cb


@pytest.mark.parametrize("dropout", [False, True])
def test_resume_gives_bit_identical_weights(tmp_path, dropout):
    straight = _fit(tmp_path / "a", steps=8, checkpoint_every=4, dropout=dropout)
    with pytest.raises(Stop):  # "killed" after logging step 6, two steps past the step-4 checkpoint
        _fit(tmp_path / "b", steps=8, checkpoint_every=4, callback=_stop_at(6), dropout=dropout)
    assert runs.load_state(tmp_path / "b")["step"] == 4
    torch.manual_seed(12345)  # the caller's global RNG state must not matter
    resumed = _fit(tmp_path / "b", steps=8, checkpoint_every=4, resume=True, dropout=dropout)
    assert resumed.start_step == 4 and resumed.step == 8
    _assert_same_state(straight.model, resumed.model)
    _assert_same_state(straight.ema, resumed.ema)
    sa, sb = runs.load_state(tmp_path / "a"), runs.load_state(tmp_path / "b")
    for pid, st in sa["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, sb["optimizer"]["state"][pid][k])
    # the log of the resumed run has every logged step exactly once
    assert [r["step"] for r in runs.read_jsonl(tmp_path / "b" / runs.METRICS_FILE)] == [2, 4, 6, 8]
    # extending a finished run: steps is a mutable field
    longer = _fit(tmp_path / "a", steps=10, checkpoint_every=4, resume=True, dropout=dropout)
    assert longer.start_step == 8 and longer.step == 10


def test_changed_config_is_refused_and_left_untouched(tmp_path):
    _fit(tmp_path / "r", steps=2)
    before = (tmp_path / "r" / runs.CONFIG_FILE).read_bytes()
    with pytest.raises(runs.ConfigMismatchError) as err:
        _fit(tmp_path / "r", steps=2, lr=3e-3, p_uncond=0.2, resume=True)
    msg = str(err.value)
    assert "fit.lr" in msg and "fit.p_uncond" in msg and "fit.seed" not in msg
    assert (tmp_path / "r" / runs.CONFIG_FILE).read_bytes() == before
    with pytest.raises(FileExistsError, match="resume"):
        _fit(tmp_path / "r", steps=2)


def test_config_diff_lists_nested_fields():
    diff = runs.config_diff({"a": 1, "m": {"x": [1, 2], "y": 2}}, {"a": 1, "m": {"x": (1, 3), "z": 0}})
    assert diff == [("m.x", [1, 2], [1, 3]), ("m.y", 2, "<missing>"), ("m.z", "<missing>", 0)]
    assert runs.config_diff({"steps": 1}, {"steps": 2}, ignore=["steps"]) == []


@pytest.mark.parametrize(
    "where,n", [("write", 1), ("write", 3), ("replace", 1), ("replace", 2), ("replace", 3), ("replace", 4)]
)
def test_a_crash_inside_a_checkpoint_leaves_a_loadable_checkpoint(tmp_path, monkeypatch, where, n):
    """Kill the writer inside the second checkpoint (while writing its n-th temporary file, or at
    its n-th rename: the journal first, then the three files): afterwards the run dir holds the
    step-2 or the step-4 checkpoint, whole (model, ema and state of the same step), and resuming
    reaches the uninterrupted result."""
    run = tmp_path / "run"
    straight = _fit(tmp_path / "ref", steps=6, checkpoint_every=2)

    calls = {"write": 0, "replace": 0}
    real = {"write": runs._write_synced, "replace": os.replace}
    per_checkpoint = {
        "write": 5,
        "replace": 5,
    }  # 4 temporaries + journal; journal + 4 renames (config not counted)

    def flaky(kind):
        def wrapped(a, b):
            if (
                str(a).startswith(str(run))
                and runs.METRICS_FILE not in str(a)
                and runs.CONFIG_FILE not in str(a)
            ):
                calls[kind] += 1
                if kind == where and calls[kind] == per_checkpoint[kind] + n:
                    raise Stop
            return real[kind](a, b)

        return wrapped

    monkeypatch.setattr(runs, "_write_synced", flaky("write"))
    monkeypatch.setattr(runs.os, "replace", flaky("replace"))
    with pytest.raises(Stop):
        _fit(run, steps=6, checkpoint_every=2)
    monkeypatch.setattr(runs, "_write_synced", real["write"])
    monkeypatch.setattr(runs.os, "replace", real["replace"])
    # the crash happened inside the step-4 checkpoint: before the journal is in place -> step 2,
    # after (the commit point) -> rolled forward to step 4
    committed = where == "replace" and n >= 2
    expected = 4 if committed else 2
    assert (run / runs.PENDING_FILE).exists() == committed

    runs.recover_checkpoint(run)
    step = runs.load_state(run)["step"]
    assert step == expected
    meta_steps = set()
    from safetensors import safe_open

    for f in (runs.MODEL_FILE, runs.EMA_FILE):
        with safe_open(str(run / f), framework="pt") as fh:
            meta_steps.add(int(fh.metadata()["step"]))
    assert meta_steps == {step}
    assert not list(run.glob("*.tmp")) and not (run / runs.PENDING_FILE).exists()
    resumed = _fit(run, steps=6, checkpoint_every=2, resume=True)
    _assert_same_state(straight.model, resumed.model)
    _assert_same_state(straight.ema, resumed.ema)


# ------------------------------------------------------------------------------------ train()


def test_train_and_load_run(tmp_path):
    cfg = TrainConfig(
        dataset="digits",
        model={"preset": "smoke"},
        steps=3,
        batch_size=16,
        checkpoint_every=2,
        log_every=1,
        lr=1e-3,
    )
    res = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert res.step == 3 and res.config.model["base_channels"] == 8
    saved = json.loads((tmp_path / "run" / runs.CONFIG_FILE).read_text())
    assert saved == res.config.to_dict() and "preset" not in saved["model"]
    loaded = load_run(tmp_path / "run", ema=True)
    assert loaded.step == 3 and loaded.config == res.config and not loaded.model.training
    _assert_same_state(loaded.model, res.ema)
    raw = load_run(tmp_path / "run", ema=False)
    _assert_same_state(raw.model, res.model)
    x = torch.randn(2, 1, 8, 8)
    t = torch.full((2,), 0.5)
    torch.testing.assert_close(
        loaded.model(x, t, torch.tensor([1, 10])), res.ema(x, t, torch.tensor([1, 10]))
    )
    # a different config in the same directory is refused, listing the field
    with pytest.raises(runs.ConfigMismatchError, match="batch_size"):
        train(cfg.replace(batch_size=8), tmp_path / "run", device="cpu", progress=False, resume=True)
