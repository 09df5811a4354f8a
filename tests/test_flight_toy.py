"""kaclib.flight_toy: matched paths, shared latents, few-step convergence, config round trip."""

from __future__ import annotations

import math

import pytest
import torch

from kaclib import flight_toy as ft
from kaclib.kac import KacProcess
from kaclib.solvers import sample

TINY = dict(train_steps=40, batch_size=64, hidden=32, depth=2, n_eval=128, reference_steps=32, n_traj=8)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A throw-away artifact cache for the module's trained toy models."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KACLIB_CACHE_DIR", str(tmp_path_factory.mktemp("flight-toy-cache")))
    torch.set_num_threads(1)
    try:
        yield
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def tiny_run(tiny_cache):
    return ft.run(ft.FlightToyConfig(**TINY))


def test_flight_matches_the_kac_paths_second_moments():
    paths = ft.toy_paths(ft.FlightToyConfig())
    kac, flight = paths["kac"], paths["flight"]
    assert (flight.a, flight.c) == (2 * kac.a, pytest.approx(kac.c * math.sqrt(2)))
    s = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    per_coord = flight.flight(2).mean_square(s) / 2
    assert torch.allclose(per_coord, KacProcess(kac.a, kac.c).var(s).double(), rtol=1e-6)
    # and the latents show it: equal per-coordinate variance within sampling error, different shapes
    n = 40_000
    xk, xf = ft.latents(kac, n, seed=3), ft.latents(flight, n, seed=3)
    se = math.sqrt(2 / n) * float(per_coord[-1]) * 4  # 4 standard errors of a variance estimate
    assert abs(float(xk.var(0).mean() - xf.var(0).mean())) < se
    assert float(xf.norm(dim=1).max()) <= flight.c * (1 + 1e-6) < float(xk.norm(dim=1).max()) + 0.5
    assert float(xk.abs().max()) <= kac.c * (1 + 1e-6)


def test_latents_are_seeded_per_run_and_shared_by_every_path():
    paths = ft.toy_paths(ft.FlightToyConfig())
    for path in paths.values():
        a, b = ft.latents(path, 50, seed=1), ft.latents(path, 50, seed=1)
        assert a.shape == (50, 2) and torch.equal(a, b)
        assert not torch.equal(a, ft.latents(path, 50, seed=2))
    # the Gaussian latent is exactly a N(0, I) draw of the shared generator seed 1000 + seed
    g = torch.Generator().manual_seed(1001)
    assert torch.equal(ft.latents(paths["gaussian"], 50, seed=1), torch.randn(50, 2, generator=g))
    assert not torch.equal(ft.held_out(50, 1), ft.held_out(50, 2))


def test_run_measures_every_path_and_step(tiny_run):
    cfg = tiny_run.config
    assert list(tiny_run.paths) == list(ft.PATHS)
    assert tiny_run.floor > 0
    for name, r in tiny_run.paths.items():
        assert [s.steps for s in r.per_step] == list(cfg.steps)
        assert r.reference.rmse == 0 and 0 < r.straightness <= 1
        assert r.trajectory.shape == (cfg.traj_frames, cfg.n_traj, 2)
        assert r.times[0] == 1.0 and r.times[-1] == 0.0
        assert all(s.energy >= 0 and 0 <= s.near <= 1 and 0 <= s.modes <= 9 for s in r.per_step)
        assert tiny_run.metric(name, "rmse_1") == r.per_step[0].rmse
        assert r.to_dict()["path"] == r.path and "trajectory" in r.to_dict(with_trajectory=True)
    # the same latents: the reference trajectory of each path starts at its latents
    for name, path in ft.toy_paths(cfg).items():
        x_T = ft.latents(path, cfg.n_eval, cfg.seed)[: cfg.n_traj]
        assert torch.equal(tiny_run.paths[name].trajectory[0], x_T)


def test_enough_euler_steps_approach_the_reference(tiny_run):
    from kaclib import toy

    cfg = tiny_run.config
    fit = dict(
        steps=cfg.train_steps, batch_size=cfg.batch_size, hidden=cfg.hidden, depth=cfg.depth, lr=cfg.lr
    )
    for name, path in ft.toy_paths(cfg).items():
        model = toy.train_toy(path, **fit).model.double()  # tiny_run's models, from the module's cache
        x_T = ft.latents(path, 256, seed=0).double()  # float64: the float32 round-off is ~1e-5
        ref = sample(model, x_T, 256, method="ab2").x
        errs = [ft.rmse(sample(model, x_T, S).x, ref) for S in (1, 4, 16, 64)]
        assert errs[0] > 0 and max(errs[1:]) < errs[0], (name, errs)
        assert errs[-1] < errs[0] / 16, (name, errs)  # Euler is first order: 64 steps, ~1/64 of it
    # and on the trained run: 8 steps are closer to the reference than 1 step, for every path
    for r in tiny_run.paths.values():
        assert r.per_step[-1].rmse < r.per_step[0].rmse


def test_config_json_round_trip():
    cfg = ft.FlightToyConfig(a=4.0, c=2.0, steps=[1, 3], seed=5)
    assert cfg.steps == (1, 3)
    again = ft.FlightToyConfig.from_json(cfg.to_json())
    assert again == cfg and again.to_dict()["steps"] == [1, 3]


@pytest.mark.parametrize(
    "bad",
    [
        {"a": 0.0},
        {"c": float("nan")},
        {"train_steps": 0},
        {"seed": -1},
        {"steps": ()},
        {"steps": (1, 2.5)},
        {"steps": (1, 100)},
        {"n_traj": 5000},
        {"lr": True},
    ],
)
def test_bad_config_is_a_one_line_value_error(bad):
    with pytest.raises(ValueError) as e:
        ft.FlightToyConfig(**bad)
    assert "\n" not in str(e.value) and str(e.value)


def test_unknown_config_key_is_a_value_error():
    with pytest.raises(ValueError, match="unknown FlightToyConfig keys"):
        ft.FlightToyConfig.from_dict({"a": 1.0, "speed": 2.0})


def test_benchmark_pairs_every_metric_over_seeds(tiny_run):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "flight_toy_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "flight_toy.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = tiny_run.config
    rows = bench.collect([tiny_run, tiny_run], cfg)
    assert rows["flight"]["energy_1_values"] == [tiny_run.metric("flight", "energy_1")] * 2
    comps = bench.comparisons(rows, cfg)
    assert len(comps) == 2 * len(bench.metric_keys(cfg))
    assert {(c["a"], c["b"]) for c in comps} == {("flight", "kac"), ("kac", "gaussian")}
    for c in comps:  # paired per seed: a - b of the same run, twice
        d = tiny_run.metric(c["a"], c["metric"]) - tiny_run.metric(c["b"], c["metric"])
        assert c["diff_values"] == [d, d] and c["diff_mean"] == pytest.approx(d)
    assert {c["direction"] for c in comps if c["metric"].startswith(("near", "straight"))} == {">"}
    md, comp_md = bench.tables(rows, comps, cfg)
    assert md.count("\n") == 1 + len(ft.PATHS) * (len(cfg.steps) + 1)
    assert comp_md.count("\n") == 1 + len(comps)
