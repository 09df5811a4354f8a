"""Run directories never lose data or give a silent wrong answer (issue 14).

Each row of the issue is a case here, run through the command line in-process
(``kaclib.cli.main``, smoke profile): a bad command or a damaged artifact gives ONE
``kaclib: error:`` line naming the file or field, a non-zero exit, and leaves the run directory as
it was; a reader never writes; one writer at a time; every checkpoint is fingerprinted; training
that turns non-finite stops and keeps the last good checkpoint.  A property test (hypothesis)
corrupts random bytes of each artifact: the result is refused or bit-identical, never wrong.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smoke_runs import (
    TRAIN,
    assert_one_line_error,
    cli,
    distill_argv,
    evaluate_argv,
    sample_argv,
    train_argv,
    tree_hash,
)

from kaclib import runs
from kaclib.cli import main
from kaclib.train import load_run

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def train_cli(run_dir, *extra, steps=4):
    """Exit code of :func:`~smoke_runs.train_argv` run in-process."""
    return main(["--threads", "1", *train_argv(run_dir, *extra, steps=steps)])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 4-step smoke run (checkpoints at 2 and 4)."""
    d = tmp_path_factory.mktemp("base") / "run"
    assert train_cli(d) == 0
    return d


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A run of the same architecture on another path (Gaussian)."""
    d = tmp_path_factory.mktemp("other") / "run"
    assert train_cli(d, "--path", "gaussian") == 0
    return d


@pytest.fixture
def run(base, tmp_path):
    """A private copy of the base run."""
    d = tmp_path / "run"
    shutil.copytree(base, d)
    return d


def resume(run_dir, steps=6):
    return train_cli(run_dir, "--resume", steps=steps)


def flip(path: Path, at: float = 0.5):
    data = bytearray(path.read_bytes())
    i = min(int(at * len(data)), len(data) - 1)
    data[i] ^= 0x55
    path.write_bytes(bytes(data))


# ===================================================================================== data loss


@pytest.mark.parametrize(
    "target",
    ["config.json", "metrics.jsonl", "model.safetensors", "state.pt", "sub/results.json", "../notes.txt"],
)
def test_evaluate_out_never_overwrites_an_input(run, capsys, target):
    (run.parent / "notes.txt").write_text("my notes\n")
    before, notes = tree_hash(run), (run.parent / "notes.txt").read_bytes()
    rc, out, err = cli(capsys, *evaluate_argv(run, run / target))
    assert_one_line_error(rc, err, "--out")
    assert tree_hash(run) == before and (run.parent / "notes.txt").read_bytes() == notes
    assert load_run(run).step == 4


def test_sample_out_never_overwrites_an_input(run, capsys, tmp_path):
    before = tree_hash(run)
    rc, out, err = cli(capsys, *sample_argv(run, run / "config"))
    assert_one_line_error(rc, err, "--out", "inside the run directory")
    (tmp_path / "x.npz").write_bytes(b"not an npz")
    rc, out, err = cli(capsys, *sample_argv(run, tmp_path / "x"))
    assert_one_line_error(rc, err, "x.npz", "not a kaclib sample file")
    assert tree_hash(run) == before and (tmp_path / "x.npz").read_bytes() == b"not an npz"


def test_results_file_shared_by_runs_keeps_every_runs_rows(base, other, tmp_path, capsys):
    out = tmp_path / "results.json"
    for d in (base, other, base):
        rc, _, err = cli(capsys, *evaluate_argv(d, out, "--method", "euler", "--w", "1", n=16))
        assert rc == 0, err
    rows = json.loads(out.read_text())["rows"]
    assert sorted(r["run"] for r in rows) == sorted(
        [os.path.relpath(base, tmp_path), os.path.relpath(other, tmp_path)]
    )


@pytest.mark.parametrize(
    "content", [{"notes.tmp": b"x"}, {"model.safetensors": b"mine"}, {"metrics.jsonl": b"{}\n"}]
)
def test_train_refuses_a_foreign_directory(tmp_path, capsys, content):
    d = tmp_path / "foreign"
    d.mkdir()
    for name, data in content.items():
        (d / name).write_bytes(data)
    before = tree_hash(d)
    rc, out, err = cli(capsys, *TRAIN, "--run-dir", str(d), "--steps", "2")
    assert_one_line_error(rc, err, str(d), "holds no run")
    assert tree_hash(d) == before


@pytest.mark.parametrize(
    "argv",
    [
        [*TRAIN, "--run-dir", ""],
        ["sample", "--run-dir", ""],
        ["evaluate", "--run-dir", "  "],
        ["distill", "--teacher", "", "--run-dir", "x"],
    ],
)
def test_an_empty_run_dir_is_refused(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, *argv)
    assert_one_line_error(rc, err, "non-empty path")
    assert list(tmp_path.iterdir()) == []


def _second_checkpoint(run: Path, tmp_path: Path) -> Path:
    """The files of the step-6 checkpoint that follows ``run``'s step-4 one."""
    later = tmp_path / "later"
    shutil.copytree(run, later)
    assert resume(later) == 0
    return later


@pytest.mark.parametrize("renamed", [0, 2, 4])
def test_readers_read_a_committed_checkpoint_without_touching_anything(run, tmp_path, capsys, renamed):
    """A writer killed after the commit point (the journal is in place) with ``renamed`` of its
    files renamed: readers see the new checkpoint whole and change nothing; the writer rolls it
    forward when it resumes."""
    later = _second_checkpoint(run, tmp_path)
    names = sorted([runs.CONFIG_FILE, runs.MANIFEST_FILE, runs.MODEL_FILE, runs.EMA_FILE, runs.STATE_FILE])
    for i, name in enumerate(names):
        target = run / name if i < renamed else run / (name + ".tmp")
        shutil.copyfile(later / name, target)
    shutil.copyfile(later / runs.METRICS_FILE, run / runs.METRICS_FILE)  # appended before the checkpoint
    (run / runs.PENDING_FILE).write_text(json.dumps({"files": names}))
    (run / "notes.tmp").write_text("a user's file")
    before = tree_hash(run)
    assert load_run(run).step == 6 and runs.load_state(run)["step"] == 6
    rc, out, err = cli(capsys, *sample_argv(run, tmp_path / "s", "--steps", "1"))
    assert rc == 0, err
    assert tree_hash(run) == before  # nothing deleted, renamed or written
    assert resume(run, steps=8) == 0  # the writer rolls forward, then continues
    assert not (run / runs.PENDING_FILE).exists() and (run / "notes.tmp").read_text() == "a user's file"
    assert runs.load_state(run)["step"] == 8


@pytest.mark.parametrize(
    "journal",
    [
        {"files": ["../x"]},
        {"files": ["model.safetensors", "../x"]},
        {"files": "model.safetensors"},
        ["x"],
        "not json",
    ],
)
def test_a_crafted_journal_is_refused(run, tmp_path, capsys, journal):
    """A journal naming ``../x`` would rename ``../x.tmp`` over ``../x``, outside the run."""
    victim = run.parent / "x.tmp"
    victim.write_text("outside")
    (run / runs.PENDING_FILE).write_text(journal if isinstance(journal, str) else json.dumps(journal))
    for argv in (
        ["sample", "--profile", "smoke", "--run-dir", str(run), "--n", "2", "--out", str(tmp_path / "s")],
        [
            *TRAIN,
            "--run-dir",
            str(run),
            "--steps",
            "6",
            "--set",
            "checkpoint_every=2",
            "--set",
            "log_every=1",
            "--resume",
        ],
    ):
        rc, out, err = cli(capsys, *argv, "--no-progress") if argv[0] == "sample" else cli(capsys, *argv)
        assert_one_line_error(rc, err, runs.PENDING_FILE)
    assert victim.read_text() == "outside" and not (run.parent / "x").exists()


def _hold_lock(run: Path):
    code = (
        "import fcntl, json, os, sys, time\n"
        f"fd = os.open({str(run / runs.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.ftruncate(fd, 0); os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'elsewhere', 'since': 'now'}).encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_one_writer_at_a_time_readers_welcome(run, tmp_path, capsys):
    holder = _hold_lock(run)
    try:
        before = tree_hash(run)
        rc, out, err = cli(capsys, *train_argv(run, "--resume", steps=6))
        assert_one_line_error(rc, err, "another process", f"pid {holder.pid}", "elsewhere")
        assert tree_hash(run) == before
        rc, out, err = cli(capsys, *sample_argv(run, tmp_path / "s", "--steps", "1"))
        assert rc == 0, err  # a reader needs no lock
    finally:
        holder.kill()
        holder.wait()
    assert resume(run) == 0  # a killed holder's lock is gone with it


def test_a_reader_beside_a_training_job_neither_fails_nor_breaks_it(base, tmp_path):
    """``load_run`` in a loop while another process trains the run: every read gives a whole
    checkpoint (the step of its weights is one the trainer wrote), and the trainer finishes."""
    run = tmp_path / "run"
    shutil.copytree(base, run)
    cmd = [
        sys.executable,
        "-m",
        "kaclib",
        "--threads",
        "1",
        *TRAIN,
        "--run-dir",
        str(run),
        "--steps",
        "14",
        "--set",
        "checkpoint_every=1",
        "--set",
        "log_every=1",
        "--resume",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    steps = set()
    try:
        while proc.poll() is None:
            loaded = load_run(run)
            state = runs.load_state(run)
            assert loaded.step >= 4 and state["step"] >= 4
            steps.add(loaded.step)
            time.sleep(0.01)
    finally:
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert load_run(run).step == 14 and len(steps) > 1


# ===================================================================================== fingerprints


def _swap_weights(run, other):
    for name in (runs.EMA_FILE, runs.MODEL_FILE):
        shutil.copyfile(other / name, run / name)


def _other_manifest(run, other):
    _swap_weights(run, other)
    shutil.copyfile(other / runs.MANIFEST_FILE, run / runs.MANIFEST_FILE)


def _flip_ema(run, other):
    flip(run / runs.EMA_FILE, 0.9)


def _pre_format(run, other):
    (run / runs.MANIFEST_FILE).unlink()


def _edit_config(run, other):
    cfg = json.loads((run / runs.CONFIG_FILE).read_text())
    cfg["path"]["c"] = 3.5
    (run / runs.CONFIG_FILE).write_text(json.dumps(cfg))


DAMAGE = {
    "weights of another run": (_swap_weights, ".safetensors"),
    "weights and manifest of another run": (_other_manifest, runs.CONFIG_FILE),
    "flipped bytes in ema": (_flip_ema, runs.EMA_FILE),
    "a run written before the format": (_pre_format, runs.MANIFEST_FILE),
    "an edited config": (_edit_config, "config"),  # config.json, or the field path.c
}
COMMANDS = {
    "sample": lambda run, tmp: sample_argv(run, tmp / "s", "--steps", "1"),
    "evaluate": lambda run, tmp: evaluate_argv(run, tmp / "e.json"),
    "resume": lambda run, tmp: train_argv(run, "--resume", steps=6),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_checkpoint_that_does_not_match_its_fingerprint_is_refused(
    run, other, tmp_path, capsys, damage, command
):
    make, named = DAMAGE[damage]
    make(run, other)
    before = tree_hash(run)
    rc, out, err = cli(capsys, *COMMANDS[command](run, tmp_path))
    assert_one_line_error(rc, err, named)
    assert tree_hash(run) == before
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "e.json").exists()


# ===================================================================================== non-finite


@pytest.mark.parametrize("setting", ["lr=100", "path.c=1e20"])
def test_absurd_but_finite_settings_stop_with_one_line(tmp_path, capsys, setting):
    d = tmp_path / "nan"
    rc, out, err = cli(capsys, *TRAIN, "--run-dir", str(d), "--steps", "6", "--set", setting)
    assert_one_line_error(rc, err, "non-finite", "at step", "no checkpoint was written")
    assert not d.exists()  # nothing half-made


def test_a_non_finite_step_keeps_the_last_good_checkpoint(tmp_path):
    from kaclib.models import MLPVelocity
    from kaclib.paths import KacPath
    from kaclib.train import fit

    def poison(step, info):
        if step == 3:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    torch.manual_seed(0)
    model = MLPVelocity(dim=2, hidden=16, depth=2)
    x = torch.randn(64, 2)
    with pytest.raises(runs.NonFiniteError, match=r"at step 4: .*last good checkpoint \(step 2\)"):
        fit(
            model,
            KacPath(),
            x,
            steps=6,
            batch_size=16,
            run_dir=tmp_path / "r",
            checkpoint_every=2,
            log_every=1,
            progress=False,
            callback=poison,
        )
    assert runs.load_state(tmp_path / "r")["step"] == 2
    ckpt = runs.read_checkpoint(tmp_path / "r")
    for name in (runs.MODEL_FILE, runs.EMA_FILE):
        runs.check_finite(ckpt.tensors(name), name)


def _nan_checkpoint(run):
    """A non-finite model that a writer committed properly (fingerprints match)."""
    ckpt = runs.read_checkpoint(run)
    files = {}
    for name in (runs.MODEL_FILE, runs.EMA_FILE):
        t = ckpt.tensors(name)
        next(iter(t.values())).fill_(float("nan"))
        from safetensors.torch import save

        files[name] = save(t, metadata={"step": "4"})
    files[runs.STATE_FILE] = ckpt.blobs[runs.STATE_FILE]
    runs.save_checkpoint(run, files, step=4)


def test_sample_and_distill_refuse_a_non_finite_model(run, tmp_path, capsys):
    _nan_checkpoint(run)
    rc, out, err = cli(capsys, *sample_argv(run, tmp_path / "s"))
    assert_one_line_error(rc, err, "non-finite", runs.EMA_FILE)
    assert not (tmp_path / "s.npz").exists()
    rc, out, err = cli(capsys, *distill_argv(run, tmp_path / "l", "--set", "iters=2"))
    assert_one_line_error(rc, err, "non-finite")
    assert not (tmp_path / "l").exists()


def test_distill_with_an_absurd_guidance_weight_stops_with_one_line(base, tmp_path, capsys):
    rc, out, err = cli(capsys, *distill_argv(base, tmp_path / "l", "--set", "iters=2", "--set", "w=1e30"))
    assert_one_line_error(rc, err, "non-finite", "stage 1")
    assert not list((tmp_path / "l").rglob("*.safetensors"))


@pytest.mark.parametrize("g", ["t", "t2"])
def test_diffusion_path_target_is_finite_at_t_zero(g):
    from kaclib.paths import DiffusionPath

    p = DiffusionPath(D=0.7, g=g)
    x0 = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.75], dtype=torch.float64)
    ps = p.sample(x0, t, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(ps.target).all()
    # t = 0: the state is the data and the target its conditional mean f'(0) x0
    assert torch.equal(ps.x_t[0], x0[0])
    torch.testing.assert_close(ps.target[0], p.df(torch.tensor(0.0, dtype=torch.float64)) * x0[0])
    # t > 0: the closed form, unchanged
    tt = t[1:].reshape(-1, 1, 1, 1)
    expect = p.df(tt) * x0[1:] + p.dg(tt) * (ps.x_t[1:] - p.f(tt) * x0[1:]) / (2 * p.g(tt))
    torch.testing.assert_close(ps.target[1:], expect)


# ===================================================================================== CIFAR-10


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _cifar_folder(tmp_path, batch_1: bytes):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(good)
    (folder / "data_batch_1").write_bytes(batch_1)
    return folder


@pytest.mark.parametrize("what", ["os.system", "garbage", "empty", "a list", "wrong labels"])
def test_cifar_batches_are_read_without_running_code(tmp_path, capsys, what):
    from kaclib.data import load_dataset

    marker = tmp_path / "pwned"
    batch = {
        "os.system": pickle.dumps({"data": _Evil(marker), "labels": [1]}, protocol=2),
        "garbage": os.urandom(200),
        "empty": b"",
        "a list": pickle.dumps([1, 2, 3]),
        "wrong labels": pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 99]}),
    }[what]
    _cifar_folder(tmp_path, batch)
    with pytest.raises(ValueError, match="data_batch_1"):
        load_dataset("cifar10", "train", root=tmp_path)
    assert not marker.exists()
    rc, out, err = cli(
        capsys,
        *TRAIN,
        "--run-dir",
        str(tmp_path / "r"),
        "--dataset",
        "cifar10",
        "--preset",
        "cifar10-paper",
        "--data-root",
        str(tmp_path),
        "--steps",
        "1",
    )
    assert_one_line_error(rc, err, "data_batch_1")
    assert not marker.exists() and not (tmp_path / "r").exists()


# ===================================================================================== one-line errors


def _truncate(name):
    def f(run):
        p = run / name
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])

    return f


def _empty(name):
    return lambda run: (run / name).write_bytes(b"")


def _forged(name, data_fn):
    """Replace ``name`` by ``data_fn(run)`` and re-commit the checkpoint (valid fingerprints):
    what a damaged file looks like when nothing but the file itself tells."""

    def f(run):
        ckpt = runs.read_checkpoint(run)
        files = dict(ckpt.blobs)
        files[name] = data_fn(run)
        runs.save_checkpoint(run, files, step=ckpt.step)

    return f


def _other_preset_weights(run):
    from kaclib.models import build_model, get_preset

    return runs.weights_bytes(build_model(get_preset("digits-tiny")))


def _hostile_state(run):
    import io

    buf = io.BytesIO()
    torch.save({"step": 4, "x": _Evil(run / "pwned")}, buf)
    return buf.getvalue()


ARTIFACTS = {
    "truncated safetensors": (_truncate(runs.EMA_FILE), runs.EMA_FILE),
    "empty safetensors": (_empty(runs.MODEL_FILE), runs.MODEL_FILE),
    "garbled safetensors (valid fingerprint)": (
        _forged(runs.EMA_FILE, lambda r: b"\x10" + os.urandom(300)),
        runs.EMA_FILE,
    ),
    "checkpoint of another preset (valid fingerprint)": (
        _forged(runs.EMA_FILE, _other_preset_weights),
        runs.EMA_FILE,
    ),
    "truncated state.pt": (_truncate(runs.STATE_FILE), runs.STATE_FILE),
    "truncated state.pt (valid fingerprint)": (
        _forged(runs.STATE_FILE, lambda r: (r / runs.STATE_FILE).read_bytes()[:999]),
        runs.STATE_FILE,
    ),
    "hostile state.pt (valid fingerprint)": (_forged(runs.STATE_FILE, _hostile_state), runs.STATE_FILE),
    "config.json is a JSON list": (lambda r: (r / runs.CONFIG_FILE).write_text("[1, 2]"), runs.CONFIG_FILE),
    "config.json cut short": (_truncate(runs.CONFIG_FILE), runs.CONFIG_FILE),
    "config.json binary": (lambda r: (r / runs.CONFIG_FILE).write_bytes(b"\xc5\x00\xff"), runs.CONFIG_FILE),
    "manifest is a JSON list": (lambda r: (r / runs.MANIFEST_FILE).write_text("[]"), runs.MANIFEST_FILE),
    "log line that is a JSON list": (
        lambda r: (r / runs.METRICS_FILE).write_text("[1]\n"),
        runs.METRICS_FILE,
    ),
    "log line edited": (lambda r: flip(r / runs.METRICS_FILE, 0.3), runs.METRICS_FILE),
}


@pytest.mark.parametrize("case", sorted(ARTIFACTS))
def test_a_damaged_artifact_gives_one_line_naming_it(run, tmp_path, capsys, case):
    damage, named = ARTIFACTS[case]
    damage(run)
    before = tree_hash(run)
    rc, out, err = cli(capsys, *COMMANDS["resume"](run, tmp_path))
    assert_one_line_error(rc, err, named)
    assert tree_hash(run) == before and not (run / "pwned").exists()
    if named in (runs.EMA_FILE, runs.CONFIG_FILE, runs.MANIFEST_FILE):  # what sample reads
        rc, out, err = cli(capsys, *COMMANDS["sample"](run, tmp_path))
        assert_one_line_error(rc, err, named)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--steps", "100000000000000000000"], "--steps"),
        (["--set", "steps=1e20"], "steps"),
        (["--set", "steps=100000000000000000000"], "steps"),
        (["--set", "batch_size=100000"], "batch_size"),
        (["--set", "batch_size=100000000000"], "batch_size"),
    ],
)
def test_absurd_sizes_are_refused_before_any_work(tmp_path, capsys, argv, needle):
    rc, out, err = cli(capsys, *TRAIN, "--run-dir", str(tmp_path / "r"), *argv)
    assert_one_line_error(rc, err, needle)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("setting", ["pool_size=1000000000", "batch_size=100000"])
def test_absurd_distill_sizes_are_refused(base, tmp_path, capsys, setting):
    rc, out, err = cli(capsys, *distill_argv(base, tmp_path / "l", "--set", setting))
    assert_one_line_error(rc, err, setting.split("=")[0], "GiB")
    assert not (tmp_path / "l").exists()


def test_a_bad_config_file_is_named(tmp_path, capsys):
    bad = tmp_path / "cfg.json"
    bad.write_text('{"steps": 3, "dataset": "dig')
    with pytest.raises(runs.RunDirError, match="cfg.json: not valid JSON"):
        runs.read_json_object(bad)
    d = tmp_path / "r"
    d.mkdir()
    (d / runs.CONFIG_FILE).write_text('{"model": {}, "path": {"kind": "kac", "a": 9, "c": 3, "f": "li')
    rc, out, err = cli(capsys, "sample", "--run-dir", str(d))
    assert_one_line_error(rc, err, str(d / runs.CONFIG_FILE), "line 1")


# ===================================================================================== state left behind


def test_a_failed_distill_writes_nothing_and_the_corrected_command_runs(base, tmp_path, capsys):
    ladder = tmp_path / "ladder"
    rc, out, err = cli(capsys, *distill_argv(base, ladder, "--set", "iters=2", "--dataset", "mnist5k"))
    assert rc != 0 and not ladder.exists()
    rc, out, err = cli(capsys, *distill_argv(base, ladder, "--set", "iters=2"))
    assert rc == 0, err


def test_a_failed_resume_leaves_config_json_as_it_was(run, tmp_path, capsys):
    flip(run / runs.METRICS_FILE, 0.5)  # resume is refused after the config check
    before = (run / runs.CONFIG_FILE).read_bytes()
    rc, out, err = cli(capsys, *train_argv(run, "--resume", steps=40))
    assert_one_line_error(rc, err, runs.METRICS_FILE)
    assert (run / runs.CONFIG_FILE).read_bytes() == before
    assert json.loads(before)["steps"] == 4


def test_a_moved_ladder_and_teacher_resume(base, tmp_path, capsys):
    work = tmp_path / "a"
    shutil.copytree(base, work / "teacher")
    rc, out, err = cli(
        capsys, *distill_argv(work / "teacher", work / "ladder", "--set", "iters=2", ladder="4,2,1")
    )
    assert rc == 0, err
    for cfg in (work / "ladder").rglob(runs.CONFIG_FILE):
        assert str(tmp_path) not in cfg.read_text()  # no absolute paths
    shutil.rmtree(work / "ladder" / "stage-2-1steps")  # as if interrupted before the last stage
    moved = tmp_path / "b"
    shutil.move(str(work), str(moved))
    rc, out, err = cli(
        capsys,
        *distill_argv(moved / "teacher", moved / "ladder", "--set", "iters=2", "--resume", ladder="4,2,1"),
    )
    assert rc == 0, err
    assert load_run(moved / "ladder" / "stage-2-1steps").step == 2
    # another teacher of the same configuration (another seed) is not taken for this one
    assert train_cli(tmp_path / "twin", "--set", "seed=1") == 0
    rc, out, err = cli(
        capsys,
        *distill_argv(tmp_path / "twin", moved / "ladder", "--set", "iters=2", "--resume", ladder="4,2,1"),
    )
    assert_one_line_error(rc, err, "teacher.ema_sha256")


# ===================================================================================== caches


def test_a_corrupt_cache_entry_heals_and_stale_temporaries_go(tmp_path):
    from kaclib.artifacts import load_or_compute

    calls = []

    def compute(d):
        calls.append(1)
        (d / "data.bin").write_bytes(b"payload")

    a = load_or_compute("thing", {"k": 1}, compute, root=tmp_path)
    assert load_or_compute("thing", {"k": 1}, compute, root=tmp_path) == a and len(calls) == 1
    (a / "data.bin").write_bytes(b"damaged")
    b = load_or_compute("thing", {"k": 1}, compute, root=tmp_path)
    assert b == a and (b / "data.bin").read_bytes() == b"payload" and len(calls) == 2
    # a computation killed with kill -9 leaves its temporary directory: the next call removes it
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    import socket

    stale = tmp_path / f".thing.tmp-{socket.gethostname()}-{proc.pid}-abc123"
    stale.mkdir()
    (stale / "partial").write_bytes(b"x")
    proc.kill()
    proc.wait()
    load_or_compute("thing", {"k": 2}, compute, root=tmp_path)
    assert not stale.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_feature_net_cache_files_are_not_private(tmp_path, monkeypatch):
    import kaclib.metrics as m

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 2)

        def config(self):
            return {}

    monkeypatch.setattr(m, "train_feature_net", lambda *a, **k: (Tiny(), 0.5))
    monkeypatch.setattr(m, "FeatureNet", lambda **k: Tiny())
    monkeypatch.setattr(m, "feature_training_data", lambda *a, **k: None)
    monkeypatch.setattr(m, "load_dataset", lambda *a, **k: None)
    old = os.umask(0o022)
    try:
        info = m.get_feature_net("digits", cache_dir=tmp_path)
    finally:
        os.umask(old)
    assert os.stat(info.path).st_mode & 0o777 == 0o644


# ===================================================================================== property


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """The result of resuming the undamaged base run to step 6."""
    d = tmp_path_factory.mktemp("ref") / "run"
    shutil.copytree(base, d)
    assert resume(d) == 0
    return _result(d)


def _result(run):
    weights = {n: (run / n).read_bytes() for n in (runs.MODEL_FILE, runs.EMA_FILE)}
    log = [(r["step"], r["loss"], r["grad_norm"]) for r in runs.read_jsonl(run / runs.METRICS_FILE)]
    return weights, log


CORRUPTIBLE = [
    runs.MODEL_FILE,
    runs.EMA_FILE,
    runs.STATE_FILE,
    runs.CONFIG_FILE,
    runs.METRICS_FILE,
    runs.MANIFEST_FILE,
]


@settings(
    max_examples=18, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(CORRUPTIBLE),
    kind=st.sampled_from(["flip", "truncate", "set"]),
    where=st.floats(0, 1),
    byte=st.integers(1, 255),
)
def test_random_corruption_is_refused_or_harmless(base, reference, tmp_path_factory, name, kind, where, byte):
    run = tmp_path_factory.mktemp("prop") / "run"
    shutil.copytree(base, run)
    p = run / name
    data = bytearray(p.read_bytes())
    i = min(int(where * len(data)), len(data) - 1)
    if kind == "flip":
        data[i] ^= byte
    elif kind == "truncate":
        data = data[:i]
    else:
        data[i] = byte
    p.write_bytes(bytes(data))
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = resume(run)
    if rc == 0:
        assert _result(run) == reference, (name, kind, i)
    else:
        assert_one_line_error(rc, err.getvalue())
    # a reader: refused, or the very weights of the undamaged run
    try:
        loaded = load_run(run)
    except (ValueError, OSError):
        return
    want = (
        runs.load_tensors(reference[0][runs.EMA_FILE], "ref")
        if rc == 0
        else runs.read_weights(base / runs.EMA_FILE)
    )
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, want[k]), k
