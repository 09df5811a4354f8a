"""The ``.ci/`` checker scripts, loaded as modules so that tests can call their functions."""

import importlib.util
import sys
from pathlib import Path

CI = Path(__file__).resolve().parents[1] / ".ci"


def load(name: str):
    """The module ``.ci/<name>.py`` (registered in ``sys.modules`` under ``name``)."""
    spec = importlib.util.spec_from_file_location(name, CI / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
