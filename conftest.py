"""Top-level pytest configuration.

``pytest --nbval`` runs the chapter notebooks (book/*.ipynb) in the fast ``smoke`` profile; the
notebook kernels inherit this environment variable.  Set ``KACLIB_PROFILE`` yourself to run them
at another scale.
"""

import os

os.environ.setdefault("KACLIB_PROFILE", "smoke")
