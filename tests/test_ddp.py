"""Two CPU processes (gloo): DistributedDataParallel training keeps the ranks bit-identical, each
rank reads different data, only rank 0 writes the run directory; the CLI runs under torchrun."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from smoke_runs import assert_one_line_error, cli, tree_hash

from kaclib import runs
from kaclib.models import MLPVelocity
from kaclib.paths import KacPath
from kaclib.train import fit

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 2, generator=g)
        y = torch.arange(64) % 2
        torch.manual_seed(100 + rank)  # different initialisations: DDP must broadcast rank 0's
        model = MLPVelocity(dim=2, hidden=16, depth=2, num_classes=2)
        res = fit(
            model,
            KacPath(),
            x,
            y,
            2,
            steps=5,
            batch_size=16,
            lr=1e-2,
            seed=1,
            progress=False,
            run_dir=Path(out_dir) / "run",
            checkpoint_every=2,
            log_every=1,
        )
        torch.save(
            {"model": res.model.state_dict(), "ema": res.ema.state_dict(), "losses": res.losses},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_end_bit_identical(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for part in ("model", "ema"):
        assert r0[part].keys() == r1[part].keys()
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), (part, k)
    # the weights moved, and the ranks trained on different batches / noise
    assert r0["model"]["out.weight"].abs().sum() > 0
    assert not torch.equal(r0["losses"], r1["losses"])
    # rank 0 wrote one consistent checkpoint equal to the final weights
    run = tmp_path / "run"
    assert runs.load_state(run)["step"] == 5 and runs.load_state(run)["world_size"] == 2
    saved = runs.read_weights(run / runs.MODEL_FILE)
    for k, v in r0["model"].items():
        assert torch.equal(saved[k], v)
    assert [r["step"] for r in runs.read_jsonl(run / runs.METRICS_FILE)] == [1, 2, 3, 4, 5]


def test_cli_under_torchrun(tmp_path, capsys):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "kaclib",
        "train",
        "--profile",
        "smoke",
        "--run-dir",
        str(run),
        "--no-progress",
        "--device",
        "cpu",
        "--preset",
        "smoke",
        "--steps",
        "2",
        "--set",
        "batch_size=8",
        "--set",
        "checkpoint_every=1",
    ]
    env = dict(
        os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1"
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(str(run)) == 1  # only rank 0 reports (one summary table)
    state = runs.load_state(run)
    assert state["step"] == 2 and state["world_size"] == 2
    cfg = json.loads((run / runs.CONFIG_FILE).read_text())
    assert cfg["model"]["base_channels"] == 8 and cfg["batch_size"] == 8
    # resuming the 2-process run in one process would not continue it bit for bit: refused
    before = tree_hash(run)
    argv = cmd[cmd.index("train") :] + ["--resume"]
    argv[argv.index("--steps") + 1] = "3"
    rc, _, err = cli(capsys, *argv)
    assert_one_line_error(rc, err, "2 process(es)", "this run has 1")
    assert tree_hash(run) == before
