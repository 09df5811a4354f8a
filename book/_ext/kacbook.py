"""Sphinx glue for The Kac Flow Book (loaded through ``sphinx.local_extensions`` in ``_config.yml``).

* Offline assets, copied from installed packages at build time (nothing large lives in git):
  ``plotly.min.js`` from the ``plotly`` package (loaded in every page's ``<head>``, before the
  figures' inline scripts) and MathJax 3 from the ``sphinx-mathjax-offline`` package (SVG output,
  so no web fonts are fetched).  A page therefore makes no network request.
* ``KACLIB_BOOK_BUILD=1`` is set in the environment, which the notebook kernels inherit:
  :func:`kaclib.plots.in_book_build` uses it to emit static HTML figures and to skip live widgets.
* Every build re-reads every page (so, with ``execute_notebooks: force``, re-runs every notebook):
  each number on a page comes from code run in that build, even when only ``kaclib`` changed.
* Each page gets every script once (sphinx-thebe's inline configuration was included twice).
* The root document (``intro``) renders the claims table from the results the chapters record
  (:mod:`kaclib.claims`), so it is read (and executed) *last*.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from sphinx.util.fileutil import copy_asset

MATHJAX_ENTRY = "mathjax/tex-svg.js"


def plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def mathjax_dir() -> Path:
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("the book needs the 'sphinx-mathjax-offline' package (see requirements.txt)")
    return Path(spec.origin).parent / "static" / "mathjax"


def _config_inited(app, config):
    config.mathjax_path = MATHJAX_ENTRY
    # make sure the assets exist before the build starts, with a clear message
    if not plotly_js().is_file():
        raise RuntimeError(f"plotly.min.js not found at {plotly_js()}")
    mathjax_dir()


def _copy_assets(app, exc):
    if exc is not None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    static.mkdir(parents=True, exist_ok=True)
    shutil.copy2(plotly_js(), static / "plotly.min.js")
    copy_asset(str(mathjax_dir()), str(static / "mathjax"))


def _root_last(app, env, docnames):
    root = app.config.root_doc
    if root in docnames:
        docnames.remove(root)
        docnames.append(root)


def _all_outdated(app, env, added, changed, removed):
    # Every page is re-read, so every notebook re-runs (execute_notebooks: force): each number on
    # each page comes from code run in this build, whatever changed (a chapter, kaclib, a
    # profile).  Trained models are load-or-train artifacts, so re-running is cheap.
    return sorted(set(env.found_docs) - set(added) - set(changed))


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    # sphinx-thebe registers its inline configuration script once per read phase and Sphinx copies
    # the registry into the builder again when it writes, so pages got the inline
    # "const THEBE_JS_URL = ..." twice: a SyntaxError in every page's console.  Keep one of each.
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        # an inline script is registered with filename None or "" depending on the caller
        key = (
            str(getattr(js, "filename", js) or ""),
            tuple(sorted((getattr(js, "attributes", None) or {}).items())),
        )
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    context["script_files"] = unique


def setup(app):
    os.environ["KACLIB_BOOK_BUILD"] = "1"
    app.add_js_file("plotly.min.js", priority=200)
    app.connect("config-inited", _config_inited)
    app.connect("env-get-outdated", _all_outdated)
    app.connect("env-before-read-docs", _root_last)
    app.connect("html-page-context", _dedupe_scripts)
    app.connect("build-finished", _copy_assets)
    return {"version": "0.1", "parallel_read_safe": False, "parallel_write_safe": True}
