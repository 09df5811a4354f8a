"""``python -m kaclib sample``: an image grid PNG and an ``.npz`` of images and labels from a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .. import runs
from ..tables import format_table
from .common import (
    _check_images,
    _device,
    _profile,
    _read_run,
    _refuse_inside_run,
    _w_tag,
)
from .parser import CLIError, _w_value


def _labels_arg(text: str | None, n: int, num_classes: int):
    import torch

    from ..evaluation import balanced_labels

    if num_classes == 0:
        if text is not None:
            raise CLIError("--labels: this model has no classes")
        return n
    if text is None:
        return balanced_labels(n, num_classes)
    try:
        base = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CLIError(f"--labels: expected comma-separated integers, got {text!r}") from None
    if not base or min(base) < 0 or max(base) >= num_classes:
        raise CLIError(f"--labels: labels must lie in [0, {num_classes}), got {text!r}")
    return torch.tensor([base[i % len(base)] for i in range(n)], dtype=torch.long)


def save_grid(images, path: Path, nrow: int, cell: int = 32) -> None:
    """Save ``images`` ``(N, C, H, W)`` in ``[-1, 1]`` as a PNG grid (nearest upscaling to ``cell`` px)."""
    import numpy as np
    from PIL import Image

    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to("cpu").numpy().astype(np.uint8)
    n, c, h, w = x.shape
    scale = max(1, cell // max(h, w))
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    pad = 2
    H, W = h * scale, w * scale
    grid = np.full((nrows * (H + pad) + pad, ncol * (W + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        img = x[i].transpose(1, 2, 0).repeat(scale, 0).repeat(scale, 1)
        grid[pad + r * (H + pad) : pad + r * (H + pad) + H, pad + k * (W + pad) : pad + k * (W + pad) + W] = (
            img
        )
    img = Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")
    img.save(path)


def cmd_sample(args) -> int:
    """Run ``sample``: generate images from a run, write ``OUT.png`` and ``OUT.npz``; returns 0."""
    from ..train import load_run, run_sampling_defaults

    prof = _profile(args.profile)
    device = _device(args.device)
    dflt = run_sampling_defaults(_read_run(args.run_dir), prof)
    steps = args.steps or dflt.steps
    method = args.method or dflt.method
    w = _w_value(args.w) if args.w is not None else dflt.w
    run = load_run(args.run_dir, device=device, recipe=prof)
    K = run.num_classes
    labels = _labels_arg(args.labels, args.n, K)
    if K == 0:
        w = None
    samples = Path(args.run_dir) / "samples"
    out = Path(args.out) if args.out else samples / f"{method}-{steps}steps-w{_w_tag(w)}-seed{args.seed}"
    if args.out:
        _refuse_inside_run(out, allowed=samples)
    _check_sample_out(out)
    gen = run.generate(
        labels,
        steps,
        method,
        w,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
    )
    _check_images(gen.images, f"sampling {args.run_dir}")
    png, npz = _write_samples(gen, out, args.nrow or (K if K > 1 else 10))
    _print_samples(gen.summary(), png, npz)
    return 0


def _write_samples(gen, out: Path, nrow: int) -> tuple[Path, Path]:
    """``OUT.png`` (the grid) and ``OUT.npz`` (images, labels, settings; written atomically)."""
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    png, npz = out.with_name(out.name + ".png"), out.with_name(out.name + ".npz")
    save_grid(gen.images, png, nrow)

    def write_npz(fh):
        np.savez_compressed(
            fh,
            images=gen.images.numpy(),
            labels=(gen.labels.numpy() if gen.labels is not None else np.zeros(0, np.int64)),
            settings=json.dumps(gen.summary()),
        )

    runs.atomic_write(npz, write_npz)
    return png, npz


def _print_samples(s: dict, png: Path, npz: Path) -> None:
    print(
        format_table(
            ["images", "steps", "method", "w", "NFE", "passes", "s/image", "png", "npz"],
            [
                [
                    s["n"],
                    s["steps"],
                    s["method"],
                    _w_tag(s["w"]),
                    s["nfe"],
                    s["network_passes"],
                    s["seconds_per_image"],
                    str(png),
                    str(npz),
                ]
            ],
        )
    )


def _check_sample_out(out: Path) -> None:
    """An existing ``OUT.npz`` must be a kaclib sample file, and an existing ``OUT.png`` needs one."""
    import numpy as np

    png, npz = out.with_name(out.name + ".png"), out.with_name(out.name + ".npz")
    ours = False
    if npz.exists():
        try:
            with np.load(npz, allow_pickle=False) as f:
                ours = {"images", "labels", "settings"} <= set(f.files)
        except Exception:  # not an npz at all
            ours = False
        if not ours:
            raise CLIError(
                f"--out {out}: {npz} exists and is not a kaclib sample file: refusing to overwrite it"
            )
    if png.exists() and not ours:
        raise CLIError(f"--out {out}: {png} exists without its kaclib .npz: refusing to overwrite it")
