"""``python -m kaclib.cli``: the same as ``python -m kaclib``."""

from . import main

raise SystemExit(main())
