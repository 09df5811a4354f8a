"""The command line: ``python -m kaclib <command> [options]``.

Commands
--------
``train``     train a (Kac or Gaussian-path) teacher into a run directory (resumable);
``sample``    draw images from a run: an image-grid PNG and an ``.npz`` of images and labels;
``evaluate``  FID-<dataset>, class accuracy, NFE, network passes and time per image of a run
              (one row per steps x method x w); prints a table and merges the rows into
              ``<run-dir>/evaluation.json``;
``distill``   the endpoint-only distillation ladder (:func:`kaclib.distill.run_ladder`).

Defaults come from a *profile* (``--profile smoke|cpu|gpu``, default: ``$KACLIB_PROFILE``, else
``gpu`` with CUDA, else ``cpu``; see :mod:`kaclib.profiles`).  ``sample``/``evaluate`` open any run
directory :func:`kaclib.train.load_run` opens; a distilled student (its ``config.json`` has a
``"distilled"`` section) defaults to its own step count, Euler and ``w = 1`` (guidance is baked in).

Bad input (an unknown preset or data set, a negative step count, ``w = nan``, a missing data
folder, a run directory holding another config, a damaged or foreign artifact, a run directory in
use by another process, training that turns non-finite...) exits with status 2 and ONE line on
stderr, ``kaclib: error: ...`` naming the file or field, and leaves any existing run directory as
it was.  Outputs are never written over inputs: ``--out`` refuses a path inside a run directory
(other than the default one) and an existing file that is not an output of the same kind.

Examples::

    python -m kaclib train --profile smoke --run-dir runs/smoke
    python -m kaclib evaluate --run-dir runs/smoke --steps 4,8 --method euler,ab2
    python -m kaclib sample --run-dir runs/smoke --n 40 --w 1.5
    python -m kaclib distill --teacher runs/teacher --run-dir runs/ladder --ladder 100,20,4,2,1

Modules: :mod:`~kaclib.cli.parser` (arguments and :class:`CLIError`), :mod:`~kaclib.cli.common`
(what the commands share), one module per command (:mod:`~kaclib.cli.train`,
:mod:`~kaclib.cli.sample`, :mod:`~kaclib.cli.evaluate`, :mod:`~kaclib.cli.distill`); :func:`main`
and :data:`COMMANDS` live here.
"""

from __future__ import annotations

import os
import sys

from .distill import cmd_distill, distill_config_from_args, ladder_gate
from .evaluate import cmd_evaluate
from .parser import EXIT_ERROR, PROG, CLIError, build_parser
from .sample import cmd_sample, save_grid
from .train import cmd_train, train_config_from_args

__all__ = [
    "main",
    "build_parser",
    "CLIError",
    "COMMANDS",
    "distill_config_from_args",
    "ladder_gate",
    "save_grid",
    "train_config_from_args",
]

COMMANDS = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "distill": cmd_distill}


def _one_line(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    if isinstance(e, KeyError):
        msg = f"missing key {msg}"
    parts = [p.strip() for p in msg.splitlines() if p.strip()]
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 after a one-line error on stderr)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            raise CLIError(
                "a command is required: train, sample, evaluate or distill (see python -m kaclib --help)"
            )
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        return COMMANDS[args.command](args)
    except CLIError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (the last checkpoint is kept; --resume continues)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        # Input problems surface as ValueError (RunDirError names the damaged file, NonFiniteError
        # the step), TypeError, KeyError or OSError (missing files, a run in use...); whatever else
        # a bad artifact raises deep inside a library is still one line, with its type.  The run
        # directory is left as the last checkpoint wrote it.  KACLIB_DEBUG=1 shows the traceback.
        if os.environ.get("KACLIB_DEBUG"):
            raise
        expected = isinstance(e, (ValueError, TypeError, KeyError, OSError))
        print(
            f"{PROG}: error: {_one_line(e) if expected else type(e).__name__ + ': ' + _one_line(e)}",
            file=sys.stderr,
        )
    return EXIT_ERROR
