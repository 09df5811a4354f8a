"""``python -m kaclib``: the command line (:mod:`kaclib.cli`)."""

from .cli import main

raise SystemExit(main())
