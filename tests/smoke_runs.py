"""Small runs the tests share: the command line on the smoke profile, run in-process (argument lists,
output, run-directory hashes), and a tiny teacher trained through the library.

``conftest.py`` puts this folder on the import path.
"""

import hashlib
from pathlib import Path

from kaclib.cli import main

TRAIN = ["train", "--profile", "smoke", "--no-progress"]


def cli(capsys, *argv):
    """``(rc, stdout, stderr)`` of ``python -m kaclib --threads 1 *argv``, run in this process."""
    rc = main(["--threads", "1", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    """The command failed with one ``kaclib: error:`` line, no traceback, containing every needle."""
    assert rc != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kaclib: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def tree_hash(folder) -> str:
    """Names and contents of every file under ``folder``."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def train_argv(run_dir, *extra, steps=4) -> list:
    """``train`` of the smoke profile into ``run_dir``: a checkpoint every 2 steps, a log line per step."""
    sets = ["--set", "checkpoint_every=2", "--set", "log_every=1"]
    return [*TRAIN, "--run-dir", str(run_dir), "--steps", str(steps), *sets, *extra]


def sample_argv(run_dir, out, *extra) -> list:
    """``sample`` of 2 images (smoke profile) from ``run_dir`` to the prefix ``out``."""
    fixed = "sample --profile smoke --n 2 --no-progress".split()
    return [*fixed, "--run-dir", str(run_dir), "--out", str(out), *extra]


def evaluate_argv(run_dir, out, *extra, n: int = 4) -> list:
    """``evaluate`` of ``n`` images at 1 step (smoke profile) of ``run_dir``, rows merged into ``out``."""
    fixed = "evaluate --profile smoke --steps 1 --no-progress".split()
    return [*fixed, "--run-dir", str(run_dir), "--out", str(out), "--n", str(n), *extra]


def distill_argv(teacher, run_dir, *extra, ladder: str = "4,2") -> list:
    """``distill`` of ``teacher`` down ``ladder`` into ``run_dir`` (smoke profile)."""
    fixed = "distill --profile smoke --no-progress".split()
    return [*fixed, "--teacher", str(teacher), "--run-dir", str(run_dir), "--ladder", ladder, *extra]


KAC_9_3 = {"kind": "kac", "a": 9.0, "c": 3.0, "f": "linear", "g": "t", "T": 1.0}


def train_tiny_teacher(run_dir, path=KAC_9_3) -> Path:
    """A 4-step smoke teacher on ``path`` (digits, batch 16, no checkpoints) trained into ``run_dir``."""
    from kaclib.train import TrainConfig, train

    cfg = TrainConfig(
        dataset="digits",
        model={"preset": "smoke"},
        path=path,
        steps=4,
        batch_size=16,
        checkpoint_every=0,
        log_every=10,
    )
    train(cfg, run_dir, progress=False)
    return Path(run_dir)
