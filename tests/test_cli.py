"""The command line, run in-process (``kaclib.cli.main``) on the smoke profile: train, sample,
evaluate (teacher and distilled-student defaults), distill, one-line errors that leave run
directories untouched, and --help."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from smoke_runs import TRAIN, assert_one_line_error, cli, distill_argv, tree_hash

from kaclib.cli import build_parser, main
from kaclib.train import load_run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    # `evaluate` takes the feature net from the default cache ($KACLIB_CACHE_DIR or ~/.cache/kaclib),
    # where it is keyed by its training spec (trained there once when missing)
    d = tmp_path_factory.mktemp("runs") / "teacher"
    rc = main(
        [
            "--threads",
            "1",
            "train",
            "--profile",
            "smoke",
            "--run-dir",
            str(d),
            "--steps",
            "12",
            "--no-progress",
            "--set",
            "ema_decay=0.5",
        ]
    )
    assert rc == 0
    return d


def test_train_smoke(teacher, capsys):
    cfg = json.loads((teacher / "config.json").read_text())
    assert cfg["dataset"] == "digits" and cfg["steps"] == 12 and cfg["ema_decay"] == 0.5
    assert cfg["model"]["base_channels"] == 8  # the smoke preset, resolved
    assert cfg["path"]["kind"] == "kac"
    assert load_run(teacher).step == 12
    # resume continues to a larger step count in the same directory
    rc, out, err = cli(
        capsys,
        *TRAIN,
        "--run-dir",
        str(teacher),
        "--steps",
        "14",
        "--set",
        "ema_decay=0.5",
        "--resume",
    )
    assert rc == 0, err
    assert load_run(teacher).step == 14 and "14" in out


def test_train_overrides_and_gaussian(tmp_path, capsys):
    d = tmp_path / "g"
    rc, out, err = cli(
        capsys,
        *TRAIN,
        "--run-dir",
        str(d),
        "--path",
        "gaussian",
        "--steps",
        "2",
        "--seed",
        "3",
        "--set",
        "model.base_channels=16",
        "--set",
        "lr=0.001",
    )
    assert rc == 0, err
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["path"] == {"kind": "gaussian", "T": 1.0} or cfg["path"]["kind"] == "gaussian"
    assert (cfg["seed"], cfg["lr"], cfg["model"]["base_channels"]) == (3, 0.001, 16)


def test_train_from_a_runs_config(teacher, tmp_path, capsys):
    """``--config`` reruns a saved config.json: the same config but for what the options change."""
    d = tmp_path / "again"
    argv = [*TRAIN, "--run-dir", str(d), "--config", str(teacher / "config.json")]
    rc, out, err = cli(capsys, *argv, "--steps", "2", "--set", "lr=0.002")
    assert rc == 0, err
    saved = json.loads((teacher / "config.json").read_text())
    again = json.loads((d / "config.json").read_text())
    assert (again["steps"], again["lr"]) == (2, 0.002)
    assert {k: v for k, v in again.items() if k not in ("steps", "lr")} == {
        k: v for k, v in saved.items() if k not in ("steps", "lr")
    }
    assert saved["ema_decay"] == 0.5  # the file's value, not the profile's default
    # a missing file, a file that is not an object and --path beside --config: one line each
    (tmp_path / "list.json").write_text("[1, 2]")
    for config, extra, needles in [
        (tmp_path / "absent.json", [], ("--config", "cannot read")),
        (tmp_path / "list.json", [], ("--config", "expected a JSON object")),
        (teacher / "config.json", ["--path", "gaussian"], ("--path", '"path" field')),
    ]:
        rc, _, err = cli(capsys, *TRAIN, "--run-dir", str(tmp_path / "x"), "--config", str(config), *extra)
        assert_one_line_error(rc, err, *needles)
        assert not (tmp_path / "x").exists()


def evaluate_16(capsys, teacher, *settings):
    """``evaluate`` of ``teacher`` at ``settings``, 16 images per row (smoke profile)."""
    return cli(
        capsys, *"evaluate --profile smoke --n 16 --no-progress".split(), "--run-dir", str(teacher), *settings
    )


def test_evaluate_table_and_json(teacher, capsys):
    rc, out, err = evaluate_16(capsys, teacher, "--steps", "2,3", "--method", "euler,midpoint", "--w", "1,2")
    assert rc == 0, err
    assert "FID-digits" in out and "floor" in out
    rows = json.loads((teacher / "evaluation.json").read_text())["rows"]
    assert len(rows) == 8
    for r in rows:
        per_step = 2 if r["method"] == "midpoint" else 1
        assert r["nfe"] == per_step * r["steps"]
        assert r["network_passes"] == r["nfe"] * (2 if r["w"] == 2 else 1)
        assert r["metric_name"] == "FID-digits" and r["n"] == 16 and r["fid"] > 0 and r["floor"] > 0
        assert 0 <= r["accuracy"] <= 1 and r["seconds_per_image"] > 0
    # a second call merges (same keys are replaced, new ones added)
    rc, out, err = evaluate_16(capsys, teacher, "--steps", "2", "--method", "euler", "--w", "1,0,none")
    assert rc == 0, err
    rows = json.loads((teacher / "evaluation.json").read_text())["rows"]
    assert len(rows) == 10
    uncond = rows[-1]
    assert uncond["w"] is None and uncond["accuracy"] is None and uncond["network_passes"] == 2
    # profile defaults: smoke teacher_steps with AB-2
    rc, out, err = cli(
        capsys, "evaluate", "--profile", "smoke", "--run-dir", str(teacher), "--n", "8", "--no-progress"
    )
    assert rc == 0, err
    last = json.loads((teacher / "evaluation.json").read_text())["rows"][-1]
    assert (last["steps"], last["method"]) == (8, "ab2")


def test_sample_writes_png_and_npz(teacher, tmp_path, capsys):
    out = tmp_path / "grid"
    rc, o, err = cli(
        capsys,
        "sample",
        "--profile",
        "smoke",
        "--run-dir",
        str(teacher),
        "--n",
        "12",
        "--steps",
        "3",
        "--w",
        "1.5",
        "--labels",
        "3,5",
        "--out",
        str(out),
        "--no-progress",
    )
    assert rc == 0, err
    from PIL import Image

    img = Image.open(out.with_name("grid.png"))
    assert img.size[0] > 8 * 2 and img.mode == "L"
    z = np.load(out.with_name("grid.npz"))
    assert z["images"].shape == (12, 1, 8, 8) and list(z["labels"][:4]) == [3, 5, 3, 5]
    s = json.loads(str(z["settings"]))
    assert (s["steps"], s["w"], s["nfe"], s["network_passes"]) == (3, 1.5, 3, 6)
    # default output lives in the run directory
    rc, o, err = cli(
        capsys, "sample", "--profile", "smoke", "--run-dir", str(teacher), "--n", "4", "--no-progress"
    )
    assert rc == 0, err
    assert sorted(p.suffix for p in (teacher / "samples").iterdir()) == [".npz", ".png"]


def test_student_run_defaults(teacher, tmp_path, capsys):
    """A run whose config says it is a distilled student: its step count, Euler, w = 1."""
    student = tmp_path / "student"
    shutil.copytree(teacher, student)
    cfg = json.loads((student / "config.json").read_text())
    cfg["distilled"] = {"steps": 2, "sampler": "euler", "w": 1.5, "sample_w": 1.0}
    # a hand-edited config.json no longer matches the checkpoint's fingerprint: re-commit it as a writer would
    from kaclib import runs

    ckpt = runs.read_checkpoint(student)
    runs.save_checkpoint(student, ckpt.blobs, config=cfg, step=ckpt.step)
    (student / "evaluation.json").unlink(missing_ok=True)
    rc, out, err = cli(
        capsys, "evaluate", "--profile", "smoke", "--run-dir", str(student), "--n", "8", "--no-progress"
    )
    assert rc == 0, err
    r = json.loads((student / "evaluation.json").read_text())["rows"][0]
    assert (r["steps"], r["method"], r["w"], r["nfe"], r["network_passes"], r["student"]) == (
        2,
        "euler",
        1.0,
        2,
        2,
        True,
    )


BAD = [
    (["train", "--profile", "smoke", "--preset", "nope"], "unknown preset"),
    (["train", "--profile", "smoke", "--dataset", "svhn"], "unknown dataset"),
    (["train", "--profile", "smoke", "--steps", "-5"], "--steps"),
    (["train", "--profile", "smoke", "--set", "lr=-1"], "lr"),
    (["train", "--profile", "smoke", "--set", "nonsense=1"], "unknown TrainConfig field"),
    (["train", "--profile", "smoke", "--set", "ema_decay=0.5"], "already holds a checkpoint"),
    (["train", "--profile", "smoke", "--steps", "99", "--set", "lr=0.1"], "different config"),
    (
        [
            *TRAIN,
            "--dataset",
            "cifar10",
            "--preset",
            "cifar10-paper",
            "--data-root",
            "{missing}",
        ],
        "not found",
    ),
    (["sample", "--w", "nan"], "--w"),
    (["sample", "--steps", "0"], "--steps"),
    (["sample", "--labels", "3,11"], "--labels"),
    (["evaluate", "--steps", "4,-1"], "--steps"),
    (["evaluate", "--method", "rk4"], "--method"),
    (["evaluate", "--w", "1,inf"], "--w"),
    (["evaluate", "--dataset", "mnist5k", "--n", "4", "--steps", "1"], "shape"),
    (["evaluate", "--device", "nodevice"], "--device"),
    (["train", "--profile", "banana"], "--profile"),
]


@pytest.mark.parametrize("argv,match", BAD, ids=[" ".join(a[:3]) + f" [{m}]" for a, m in BAD])
def test_bad_input_one_line_and_run_dir_untouched(teacher, tmp_path, capsys, argv, match):
    argv = [a.replace("{missing}", str(tmp_path / "no-data")) for a in argv]
    before = tree_hash(teacher)
    rc, out, err = cli(capsys, *argv, "--run-dir", str(teacher), "--no-progress")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kaclib: error:") and match in lines[0]
    assert "Traceback" not in err
    assert tree_hash(teacher) == before


def test_missing_run_dir_and_no_command(tmp_path, capsys):
    rc, out, err = cli(capsys, "evaluate", "--run-dir", str(tmp_path / "nothing"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no such directory" in err
    rc, out, err = cli(capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "command is required" in err
    rc, out, err = cli(capsys, "bogus")
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_distill_without_module_is_a_clear_error(teacher, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaclib.distill", None)  # import fails
    rc, out, err = cli(capsys, "distill", "--teacher", str(teacher), "--run-dir", str(tmp_path / "ladder"))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "kaclib.distill could not be imported" in err
    assert not (tmp_path / "ladder").exists()


def test_distill_ladder(teacher, tmp_path, capsys):
    pytest.importorskip("kaclib.distill")
    d = tmp_path / "ladder"
    rc, out, err = cli(capsys, *distill_argv(teacher, d, "--set", "iters=2"))
    assert rc == 0, err
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["distill"]["ladder"] == [4, 2] and cfg["distill"]["iters"] == 2
    assert cfg["distill"]["batch_size"] == 32  # the smoke profile's (kaclib.distill.config_for_profile)
    stage = next(d.glob("stage-1-*"))
    assert json.loads((stage / "config.json").read_text())["distilled"]["steps"] == 2
    # the student evaluates with its own defaults (2 Euler steps, w = 1)
    rc, out, err = cli(
        capsys, "evaluate", "--profile", "smoke", "--run-dir", str(stage), "--n", "8", "--no-progress"
    )
    assert rc == 0, err
    r = json.loads((stage / "evaluation.json").read_text())["rows"][0]
    assert (r["steps"], r["method"], r["w"], r["network_passes"]) == (2, "euler", 1.0, 2)
    # an existing ladder is refused without --resume, and left as it was
    before = tree_hash(d)
    rc, out, err = cli(capsys, *distill_argv(teacher, d, "--set", "iters=2"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and tree_hash(d) == before


def test_help_documents_every_option(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    for cmd in ("train", "sample", "evaluate", "distill"):
        assert cmd in top
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        for action in p._actions:
            for opt in action.option_strings:
                assert opt in text
            assert action.help, f"{name} {action.option_strings} has no help"
    for opt in ("--run-dir", "--profile", "--device", "--no-progress"):
        assert all(
            opt in p.format_help() for n, p in sub.choices.items() if n != "distill" or opt != "--run-dir"
        )
