"""kaclib.recipe and the layer it feeds: PathConfig from recipe to run JSON, the recipes' run
configs, the cache names they give, LoadedRun's sampling defaults and the evaluation entry point."""

import json
import math

import pytest
import torch

from kaclib.distill import DistillConfig
from kaclib.evaluation import (
    Evaluator,
    evaluate_grid,
    evaluate_run,
    generate,
    summarise_seeds,
    teacher_config,
    teacher_dir,
)
from kaclib.models import build_model, get_preset
from kaclib.paths import PATH_FIELDS, PathConfig, build_path
from kaclib.profiles import PROFILES, get_profile
from kaclib.recipe import RECIPES, SamplingConfig, get_recipe
from kaclib.stats import mean_ci
from kaclib.teachers import ladder_dirs
from kaclib.train import TrainConfig, load_run, run_sampling_defaults, train

torch.set_num_threads(1)

EXAMPLES = [
    {"kind": "kac", "a": 25, "c": 2, "g": "t2"},
    {"kind": "gaussian"},
    {"kind": "diffusion", "D": 0.08, "g": "t2"},
    {"kind": "gaussian-twin", "a": 25.0, "c": 2.0},
    {"kind": "flight", "a": 50.0, "c": 16.0},
]


# ---------------------------------------------------------------------------------- PathConfig


@pytest.mark.parametrize("d", EXAMPLES, ids=[d["kind"] for d in EXAMPLES])
def test_path_config_is_the_saved_form_of_its_path(d):
    cfg = PathConfig.from_dict(d)
    path = cfg.build()
    assert cfg.to_dict() == path.config()  # the dict saved beside every checkpoint
    assert list(cfg.to_dict()) == ["kind", *PATH_FIELDS[cfg.kind]]
    assert PathConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # JSON round trip
    assert PathConfig.from_dict(path.config()) == cfg and build_path(cfg).config() == path.config()


def test_path_config_refuses_what_its_kind_does_not_have():
    for bad, msg in [
        ({"kind": "heat"}, "path kind must be one of"),
        ({"kind": "kac", "D": 1.0}, "no parameter"),
        ({"kind": "gaussian", "a": 1.0}, "no parameter"),
        ({"kind": "kac", "a": -1.0}, "a must be >= 0"),
        ({"kind": "kac", "c": float("nan")}, "c must be"),
        ({"kind": "kac", "g": "t3"}, "g must be one of"),
        ({"a": 1.0}, "path must be"),
    ]:
        with pytest.raises(ValueError, match=msg):
            PathConfig.from_dict(bad)
    assert PathConfig().replace(a=4.0).a == 4.0  # the defaults are the official code's (9, 3, g = t)
    assert (PathConfig().a, PathConfig().c, PathConfig().g) == (9.0, 3.0, "t")


def test_train_config_keeps_one_path_config_and_saves_its_dict():
    cfg = TrainConfig(path={"kind": "kac", "a": 4, "c": 1.0})
    assert isinstance(cfg.path, PathConfig) and cfg.path.a == 4.0
    d = cfg.to_dict()
    assert d["path"] == cfg.path.build().config()
    assert TrainConfig.from_dict(json.loads(json.dumps(d))) == cfg


def test_cache_names_are_unchanged_by_the_path_config():
    # the names of cached teachers are hashes of their resolved configs: a change of the saved
    # form would orphan every cached teacher, so the names of the cpu profile's teachers are pinned
    assert teacher_dir(teacher_config("cpu")).name == "teacher-1d925a5e6fc2"
    assert teacher_dir(teacher_config("cpu", path="gaussian")).name == "teacher-a8fba950d3dc"


# -------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_gives_valid_run_configs(name):
    recipe = RECIPES[name]
    cfg = recipe.teacher_config().resolved()  # checks the preset against the data set's images
    assert cfg.dataset == recipe.dataset and cfg.path == recipe.path
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.ema_decay) == (
        recipe.teacher.train_steps,
        recipe.teacher.batch_size,
        recipe.teacher.lr,
        recipe.teacher.ema_decay,
    )
    dc = recipe.distill_config()
    assert isinstance(dc, DistillConfig) and dc.ladder[0] == recipe.sampling.steps and dc.ladder[-1] == 1
    assert (dc.iters, dc.batch_size, dc.w) == (
        recipe.distill.iters,
        recipe.distill.batch_size,
        recipe.sampling.w,
    )
    flat = recipe.flat()
    assert flat["path.a"] == recipe.path.a and flat["teacher.train_steps"] == recipe.teacher.train_steps
    json.dumps(recipe.to_dict())  # JSON-ready


def test_profiles_are_the_book_recipes_and_old_names_say_where_they_went():
    assert list(PROFILES) == ["smoke", "cpu", "gpu"] and all(PROFILES[n] is RECIPES[n] for n in PROFILES)
    with pytest.raises(ValueError, match="profile must be one of"):
        get_profile("cifar10-paper")
    with pytest.raises(ValueError, match="recipe must be one of"):
        get_recipe("tiny")
    with pytest.raises(AttributeError, match=r"moved to Recipe\.path\.a"):
        get_profile("cpu").kac_a  # noqa: B018
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            get_recipe("gpu")
    paper = get_recipe("cifar10-paper", check_cuda=False)
    assert (paper.path.a, paper.path.c, paper.sampling.w) == (25.0, 2.0, 1.2)


def test_a_recipe_refuses_a_ladder_that_does_not_start_at_the_teacher():
    from dataclasses import replace

    cpu = RECIPES["cpu"]
    with pytest.raises(ValueError, match="the ladder starts at the teacher's sampling steps"):
        cpu.replace(distill=replace(cpu.distill, ladder=(50, 1)))
    with pytest.raises(ValueError, match="method must be one of"):
        SamplingConfig(method="rk4")


def test_ladder_dirs_name_the_teacher_and_its_ladder(tmp_path):
    a = ladder_dirs("smoke", root=tmp_path)
    assert a.teacher == teacher_dir(teacher_config("smoke"), root=tmp_path)
    assert a.ladder.parent == tmp_path and a.ladder.name.startswith("ladder-") and not a.complete
    assert ladder_dirs("smoke", path="gaussian", root=tmp_path).ladder != a.ladder
    assert ladder_dirs("smoke", seed=1, root=tmp_path).config.seed == 1


# ------------------------------------------------------------------------------------ LoadedRun


def test_sampling_defaults_of_teachers_and_students():
    smoke = RECIPES["smoke"]
    assert run_sampling_defaults({"model": {}, "path": {}}, smoke) == smoke.sampling
    student = {"distilled": {"steps": 2, "sampler": "euler", "sample_w": 1.0}}
    assert run_sampling_defaults(student, smoke) == SamplingConfig(steps=2, method="euler", w=1.0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "teacher"
    cfg = teacher_config("smoke", steps=2, checkpoint_every=0)
    train(cfg, run_dir, progress=False)
    return run_dir


def test_load_run_carries_classes_shape_and_sampling(tiny_run):
    run = load_run(tiny_run, recipe=RECIPES["smoke"])
    assert (run.num_classes, run.image_shape, run.dataset, run.is_student) == (10, (1, 8, 8), "digits", False)
    assert run.sampling == RECIPES["smoke"].sampling and run.run_dir == tiny_run
    g = run.generate(12, seed=3)  # the run's own defaults
    ref = generate(run.model, run.path, 12, run.sampling.steps, method="ab2", w=1.0, seed=3)
    assert g.steps == run.sampling.steps and torch.equal(g.images, ref.images)
    assert torch.equal(g.labels, ref.labels)


# ------------------------------------------------------------------------- the evaluation entry


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator("digits")


def test_evaluate_run_is_generate_then_score(tiny_run, evaluator):
    run = load_run(tiny_run, recipe=RECIPES["smoke"])
    r = evaluate_run(run, 3, "euler", 1.5, n=24, seed=5, evaluator=evaluator, return_images=True)
    g = generate(run.model, run.path, 24, 3, method="euler", w=1.5, seed=5)
    assert torch.equal(r["images"], g.images) and r["fid"] == evaluator.score(g.images, g.labels).fid
    assert (r["steps"], r["method"], r["w"], r["seed"], r["network_passes"]) == (3, "euler", 1.5, 5, 6)
    seen = []
    evaluate_run(tiny_run, 2, n=8, evaluator=evaluator, check=seen.append)  # a run directory
    assert len(seen) == 1 and seen[0].images.shape == (8, 1, 8, 8)


def test_evaluate_grid_and_summarise_seeds(tiny_run, evaluator):
    rows = evaluate_grid(
        tiny_run, steps=(1, 2), methods=("euler",), seeds=(0, 1, 2), n=8, evaluator=evaluator
    )
    assert [(r["steps"], r["seed"]) for r in rows] == [(s, k) for s in (1, 2) for k in (0, 1, 2)]
    summary = summarise_seeds(rows)
    assert [(s["steps"], s["seeds"], s["n_seeds"]) for s in summary] == [(1, [0, 1, 2], 3), (2, [0, 1, 2], 3)]
    by_hand = mean_ci([r["fid"] for r in rows if r["steps"] == 2])
    assert summary[1]["mean"] == pytest.approx(by_hand.mean) and summary[1]["lo"] == pytest.approx(by_hand.lo)
    # a pair has no saved config: its classes and shape are read from the model
    model = build_model(get_preset("smoke"), path=build_path({"kind": "gaussian"})).eval()
    one = evaluate_grid((model, build_path({"kind": "gaussian"})), steps=(1,), n=8, evaluator=evaluator)
    assert len(one) == 1 and math.isfinite(one[0]["fid"]) and one[0]["n"] == 8


# ------------------------------------------------------------------------------ paper commands


@pytest.mark.parametrize("name", ["cifar10-paper", "celeba64-paper"])
def test_paper_commands_build_the_recipe(name):
    from kaclib import paper_scale

    recipe = get_recipe(name, check_cuda=False)
    cmds = paper_scale.recipe_commands(recipe, gpus=4)
    assert all(paper_scale.check_command(cmd, recipe) for cmd in cmds.values())
    train_cmd = next(c for w, c in cmds.items() if w.startswith("one GPU"))
    with pytest.raises(ValueError, match="does not build the"):
        paper_scale.check_command(train_cmd.replace("--set lr=0.0002", "--set lr=0.0003"), recipe)
    from kaclib.cli import CLIError

    with pytest.raises(CLIError, match="bogus"):  # the command line's parser refuses an unknown option
        paper_scale.check_command(train_cmd + " --bogus 1")
    assert "\\\n" in paper_scale.bash_script(cmds)  # long commands are continued with a backslash


def test_planned_flops_count_passes():
    from kaclib import paper_scale

    recipe = get_recipe("cifar10-paper", check_cuda=False)
    jobs = paper_scale.planned_flops(recipe, 1.0)  # FLOPs in units of one forward pass
    t, d = recipe.teacher, recipe.distill
    assert jobs["teacher training"] == 3 * t.batch_size * t.train_steps
    n = recipe.evaluation.n
    assert list(jobs.values())[3] == n * recipe.sampling.steps * 2  # w = 1.2: two passes per step
    assert list(jobs.values())[4] == n
    # the ladder: per stage the teacher's substeps per sample (guided first stage) + 3 per student sample
    cfg = recipe.distill_config()
    want = sum(
        s.substeps * (2 if s.index == 1 else 1) * s.iters * d.batch_size + 3 * s.iters * d.batch_size
        for s in cfg.stages()
    )
    assert list(jobs.values())[1] == want
