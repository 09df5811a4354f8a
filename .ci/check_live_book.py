#!/usr/bin/env python3
"""Read the book live, as a reader does: JupyterLab in headless Chromium, every chapter run, every slider moved.

    python .ci/check_live_book.py [--book book] [--only 03_*] [--out _build/live_check] [--timeout 900]

What it does:

1. copies the chapters (``book/NN_*.ipynb`` with their paired ``.md``) into a throw-away folder
   beside links to ``kaclib`` and ``benchmarks`` (so nothing a session writes, such as an autosave,
   touches the repository), and starts JupyterLab there on ``127.0.0.1`` (a free port, a random
   token, ``--no-browser``, autosave off) with ``KACLIB_PROFILE=smoke``;
2. drives Debian's Chromium through Playwright (``executable_path``; no browser is downloaded),
   with every request that does not go to the local server refused and reported;
3. for each chapter: opens the notebook, clicks *Run > Run All Cells*, waits for the kernel, and
   fails when a cell raised (an ``error`` output) or did not run;
4. drags every ipywidgets slider of the chapter (ipywidgets 8 draws them with noUiSlider) to
   another value and checks that the widget's output (plotly figure data, text, images) changed
   and that the new figure drew;
5. fails on any browser console error or uncaught page exception.

A screenshot of each chapter's first widget (after its slider moved) goes to ``--out`` for a
person to look at.  Exit status 0 when every chapter passes, 1 otherwise, 2 when JupyterLab,
Playwright or Chromium cannot be started.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-default-browser-check",
    "--hide-scrollbars",
]
# JupyterLab settings for the session: no autosave (the copies stay as they are), every cell in the
# DOM (no windowing), no news/update checks (they would go to the internet)
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

# ------------------------------------------------------------------------------ page-side helpers
# the notebook panel of the current tab, through the app object (``expose_app_in_browser``)
JS_STATE = r"""
() => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) { return {ready: false}; }
  const sc = panel.sessionContext;
  const kernel = sc.session && sc.session.kernel;
  const cells = [];
  const model = panel.content.model;
  for (let i = 0; i < model.cells.length; i++) {
    const c = model.cells.get(i);
    if (c.type !== 'code') { continue; }
    const errs = [];
    for (let k = 0; k < c.outputs.length; k++) {
      const o = c.outputs.get(k).toJSON();
      if (o.output_type === 'error') {
        const tb = (o.traceback || []).join('\n').replace(/\u001b\[[0-9;]*m/g, '').split('\n')
                     .filter(l => /^\s*(File |\S+\.py:\d+|Cell In)/.test(l)).slice(-2).map(l => l.trim());
        errs.push(o.ename + ': ' + String(o.evalue).slice(0, 300) + (tb.length ? ' [' + tb.join(' <- ') + ']' : ''));
      }
    }
    cells.push({index: i, count: c.executionCount, errors: errs, source: c.sharedModel.getSource().slice(0, 80)});
  }
  return {ready: true, status: kernel ? kernel.status : 'none', kernel: kernel ? kernel.id : null,
          path: panel.context.path, id: panel.id, cells: cells};
}
"""

# a signature of what a widget shows: the output area's figures (data and title), text and images;
# the slider readouts are outside the output area, so a moved slider alone does not count
JS_SIGNATURE = r"""
(box) => {
  const out = box.querySelector('.widget-output') || box;
  let s = out.innerText || '';
  out.querySelectorAll('.js-plotly-plot').forEach(gd => {
    s += JSON.stringify((gd.data || []).map(t => [t.x, t.y, t.z, t.text, t.visible]));
    s += JSON.stringify(gd.layout && gd.layout.title);
  });
  out.querySelectorAll('img').forEach(img => { s += img.src.length + img.src.slice(-64); });
  let h = 0;
  for (let i = 0; i < s.length; i++) { h = (Math.imul(31, h) + s.charCodeAt(i)) | 0; }
  const drawn = out.querySelectorAll('.js-plotly-plot svg.main-svg').length;
  return {hash: h, length: s.length, figures: out.querySelectorAll('.js-plotly-plot').length, drawn: drawn};
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chapters(book: Path, only: list[str]) -> list[Path]:
    out = []
    for p in sorted(book.glob("[0-9][0-9]_*.ipynb")):
        if only and not any(fnmatch.fnmatch(p.name, pat) for pat in only):
            continue
        out.append(p)
    return out


def make_tree(tmp: Path, book: Path, notebooks: list[Path]) -> Path:
    """The served folder: ``book/`` copies of the chosen notebooks (and their paired ``.md``), links
    to the library and the committed results (the chapters look for them upwards)."""
    root = tmp / "root"
    (root / "book").mkdir(parents=True)
    for name in ("kaclib", "benchmarks"):
        if (ROOT / name).exists():
            (root / name).symlink_to(ROOT / name)
    for nb in notebooks:
        for p in (nb, nb.with_suffix(".md")):
            if p.exists():
                shutil.copy2(p, root / "book" / p.name)
    settings = tmp / "settings"
    for rel, value in LAB_SETTINGS.items():
        f = settings / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    return root


class Lab:
    """JupyterLab on 127.0.0.1 in a subprocess."""

    def __init__(self, root: Path, tmp: Path, profile: str, log: Path):
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            KACLIB_PROFILE=profile,
            JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
            JUPYTER_CONFIG_DIR=str(tmp / "config"),
            PYTHONUNBUFFERED="1",
        )
        env.pop("KACLIB_BOOK_BUILD", None)  # live widgets, not the static book's notes
        args = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            "--allow-root",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.user_settings_dir={tmp / 'settings'}",
            f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--ServerApp.terminals_enabled=False",
        ]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(args, cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, method: str, path: str):
        req = urllib.request.Request(
            f"{self.base}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with status {self.proc.returncode}")
            try:
                self.api("GET", "/api/status")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer within {timeout:g} s")

    def shutdown_kernels(self, wait: bool = True) -> None:
        """Stop every running kernel (``wait=False``: in a background thread)."""
        ids = [k["id"] for k in self.api("GET", "/api/kernels") or []]

        def stop():
            for kid in ids:
                try:
                    self.api("DELETE", f"/api/kernels/{kid}")
                except OSError:
                    pass

        if wait:
            stop()
        else:
            threading.Thread(target=stop, daemon=True).start()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------ one chapter


def wait_for(page, predicate, timeout: float, poll: float = 0.5):
    """Poll ``predicate()`` until it returns a truthy value (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        page.wait_for_timeout(int(poll * 1000))


def run_all(page, path: str, timeout: float) -> tuple[list[str], dict]:
    """Click Run > Run All Cells and wait until every code cell ran (or one raised)."""
    t0 = time.monotonic()
    state = wait_for(
        page,
        lambda: (lambda s: s if s.get("ready") and s["path"] == path and s["status"] == "idle" else None)(
            page.evaluate(JS_STATE)
        ),
        120,
    )
    if state is None:
        return [f"{path} did not open with an idle kernel within 120 s"], {}
    info = {"open_s": time.monotonic() - t0, "panel": state["id"]}
    try:
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).first.click()
    except Exception:  # the menu moved: the same command
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

    def finished():
        s = page.evaluate(JS_STATE)
        if not s.get("ready"):
            return None
        if s["status"] == "dead":
            return s
        if any(c["errors"] for c in s["cells"]):
            return s if s["status"] == "idle" else None
        if s["status"] == "idle" and all(c["count"] for c in s["cells"]):
            return s
        return None

    t0 = time.monotonic()
    state = wait_for(page, finished, timeout, poll=1.0)
    info["run_s"] = time.monotonic() - t0
    if state is None:
        s = page.evaluate(JS_STATE)
        left = [
            c["source"].splitlines()[0] if c["source"] else "" for c in s.get("cells", []) if not c["count"]
        ]
        return [f"cells still not run after {timeout:g} s (first: {left[:1]})"], info
    problems = [f"cell {c['index']} raised {e}" for c in state["cells"] for e in c["errors"]]
    if state["status"] == "dead":
        problems.append("the kernel died")
    info["cells"] = len(state["cells"])
    return problems, info


def move_slider(page, slider, box, timeout: float) -> tuple[str | None, str]:
    """Drag ``slider`` (a ``.widget-slider``) away from its value; returns (problem or None, description)."""
    label = slider.locator(".widget-label").first.inner_text().strip() or "?"
    readout = slider.locator(".widget-readout").first
    before_value = readout.inner_text().strip()
    before = box.evaluate(JS_SIGNATURE)
    track = slider.locator(".noUi-target").first
    handle = slider.locator(".noUi-handle").first
    tb, hb = track.bounding_box(), handle.bounding_box()
    if not tb or not hb:
        return f"slider {label}: not visible", label
    hx, hy = hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2
    frac = (hx - tb["x"]) / max(tb["width"], 1)
    target = tb["x"] + tb["width"] * (0.8 if frac < 0.5 else 0.2)
    page.mouse.move(hx, hy)
    page.mouse.down()
    page.mouse.move(target, hy, steps=8)
    page.mouse.up()
    after_value = readout.inner_text().strip()
    desc = f"{label} {before_value} -> {after_value}"
    if after_value == before_value:
        return f"slider {label}: dragging did not change its value ({before_value})", desc

    def changed():
        sig = box.evaluate(JS_SIGNATURE)
        st = page.evaluate(JS_STATE)
        if sig["hash"] != before["hash"] and st.get("status") == "idle" and sig["drawn"] >= sig["figures"]:
            return sig
        return None

    t0 = time.monotonic()
    sig = wait_for(page, changed, timeout, poll=0.3)
    desc += f" ({time.monotonic() - t0:.1f} s)"
    if sig is None:
        return f"slider {desc}: the widget's output did not change within {timeout:g} s", desc
    if sig["figures"] == 0 and before["figures"] > 0:
        return f"slider {desc}: the figure disappeared", desc
    return None, desc


def open_lab(context, lab: Lab, console: list):
    """One JupyterLab page for the whole session (the app loads once)."""
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on(
        "console",
        lambda m: (
            console.append(f"console.{m.type}: {m.text[:300]}") if m.type in ("error", "assert") else None
        ),
    )
    page.on("pageerror", lambda e: console.append(f"uncaught exception: {str(e)[:300]}"))
    page.goto(
        f"{lab.base}/lab/workspaces/check/tree/book?reset&token={lab.token}", wait_until="domcontentloaded"
    )
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=120_000)
    page.evaluate("() => window.jupyterapp.restored")
    return page


def check_chapter(page, lab: Lab, nb: Path, out: Path, console: list, args) -> tuple[list[str], dict]:
    """Open one chapter in the running JupyterLab, run it, move its sliders, close it."""
    path = f"book/{nb.name}"
    first_console = len(console)
    page.evaluate(
        "async (p) => { await window.jupyterapp.commands.execute('docmanager:open', "
        "{path: p, factory: 'Notebook'}); return true; }",
        path,
    )
    problems, info = run_all(page, path, args.timeout)
    sliders_done = []
    t0 = time.monotonic()
    if not problems:
        boxes = page.locator(f"#{info['panel']} .jp-OutputArea-output .widget-vbox:has(.widget-slider)")
        n_boxes = boxes.count()
        info["widgets"] = n_boxes
        if n_boxes == 0 and not args.allow_no_widget:
            problems.append("no live slider (ipywidgets) in this chapter")
        shot = False
        for b in range(n_boxes):
            box = boxes.nth(b)
            if box.locator(".widget-vbox:has(.widget-slider)").count():  # only the innermost boxes
                continue
            box.scroll_into_view_if_needed()
            sliders = box.locator(".widget-slider")
            for k in range(sliders.count()):
                prob, desc = move_slider(page, sliders.nth(k), box, args.slider_timeout)
                sliders_done.append(desc)
                if prob:
                    problems.append(prob)
            if not shot:
                t1 = time.monotonic()
                box.screenshot(path=str(out / f"{nb.stem}.png"), animations="disabled")
                info["screenshot_s"] = time.monotonic() - t1
                shot = True
    info["sliders"] = sliders_done
    info["sliders_s"] = time.monotonic() - t0
    page.wait_for_timeout(300)  # late console messages
    problems += console[first_console:]
    # close without saving (the copy stays as it was) and stop the kernel
    t0 = time.monotonic()
    page.evaluate(
        "() => { const p = window.jupyterapp.shell.currentWidget; if (p && p.sessionContext) { p.dispose(); } }"
    )
    lab.shutdown_kernels(wait=False)  # the kernel stops while the next chapter opens
    info["close_s"] = time.monotonic() - t0
    return problems, info


def write_timings(path: Path, args, chapters: dict, wall: float) -> None:
    """What ran, where and how long (Run All per chapter, in the kernel's profile), with the load."""
    import platform

    record = {
        "command": "python .ci/check_live_book.py " + " ".join(sys.argv[1:]),
        "profile": args.profile,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "cache": os.environ.get("KACLIB_CACHE_DIR", "~/.cache/kaclib"),
        "wall_s": round(wall, 1),
        "chapters": chapters,
    }
    try:
        record["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    path.write_text(json.dumps(record, indent=1) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--book", default=str(ROOT / "book"), help="folder of the chapters (default book/)")
    ap.add_argument(
        "--only", action="append", default=[], help="only notebooks matching this glob (repeatable)"
    )
    ap.add_argument(
        "--out", default=str(ROOT / "_build" / "live_check"), help="screenshots and the server log"
    )
    ap.add_argument("--profile", default="smoke", help="KACLIB_PROFILE of the kernels (default smoke)")
    ap.add_argument(
        "--timeout", type=float, default=900.0, help="seconds for one chapter to run (default 900)"
    )
    ap.add_argument(
        "--slider-timeout", type=float, default=60.0, help="seconds for a widget to redraw (default 60)"
    )
    ap.add_argument("--chromium", default=None, help="browser binary (default: chromium on PATH)")
    ap.add_argument(
        "--allow-no-widget", action="store_true", help="do not fail a chapter without a live slider"
    )
    args = ap.parse_args(argv)

    notebooks = chapters(Path(args.book), args.only)
    if not notebooks:
        print(f"check_live_book: no chapter notebooks under {args.book}", file=sys.stderr)
        return 1
    binary = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        print("check_live_book: chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print(
            "check_live_book: the playwright package is missing (pip install -r requirements.txt)",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="kacbook-live-"))
    lab = None
    failures: dict[str, list[str]] = {}
    timings: dict[str, dict] = {}
    try:
        root = make_tree(tmp, Path(args.book), notebooks)
        lab = Lab(root, tmp, args.profile, out / "jupyterlab.log")
        try:
            lab.wait_ready(120)
        except RuntimeError as exc:
            print(f"check_live_book: {exc} (log: {out / 'jupyterlab.log'})", file=sys.stderr)
            return 2
        print(
            f"[live] JupyterLab up on 127.0.0.1:{lab.port} ({time.monotonic() - t_start:.1f} s), "
            f"profile {args.profile}"
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=binary, headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            offline: list[str] = []

            def route(r):
                if r.request.url.startswith((lab.base, "data:", "blob:", "about:")):
                    r.continue_()
                else:
                    offline.append(r.request.url)
                    r.abort()

            context.route("**/*", route)
            console: list[str] = []
            page = open_lab(context, lab, console)
            print(f"[live] JupyterLab loaded in Chromium ({time.monotonic() - t_start:.1f} s)", flush=True)
            for nb in notebooks:
                t0 = time.monotonic()
                try:
                    problems, info = check_chapter(page, lab, nb, out, console, args)
                except Exception as exc:  # a checker or browser error fails the chapter, the rest go on
                    problems, info = [f"checker error: {str(exc).splitlines()[0]}"], {}
                    lab.shutdown_kernels()
                    page.close()
                    page = open_lab(context, lab, console)
                problems += [f"request outside the local server: {u}" for u in offline]
                offline.clear()
                status = "ok  " if not problems else "FAIL"
                print(
                    f"[{status}] {nb.name}: opened in {info.get('open_s', 0):.1f} s, {info.get('cells', '?')} code cells "
                    f"ran in {info.get('run_s', 0):.1f} s; {info.get('widgets', 0)} widget(s), sliders moved in "
                    f"{info.get('sliders_s', 0):.1f} s: {', '.join(info.get('sliders', [])) or '-'} "
                    f"(total {time.monotonic() - t0:.1f} s)",
                    flush=True,
                )
                if problems:
                    failures[nb.name] = problems
                timings[nb.stem] = {
                    "ok": not problems,
                    "open_s": round(info.get("open_s", 0), 1),
                    "run_all_s": round(info.get("run_s", 0), 1),
                    "sliders_s": round(info.get("sliders_s", 0), 1),
                    "close_s": round(info.get("close_s", 0), 1),
                    "screenshot_s": round(info.get("screenshot_s", 0), 1),
                    "total_s": round(time.monotonic() - t0, 1),
                    "sliders": info.get("sliders", []),
                }
            browser.close()
    finally:
        if lab is not None:
            lab.close()
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.monotonic() - t_start
    print(f"[live] {len(notebooks)} chapter(s) in {wall:.1f} s; screenshots in {out}")
    write_timings(out / "timings.json", args, timings, wall)
    if failures:
        print("\ncheck_live_book: problems found:")
        for name, probs in failures.items():
            for p in probs:
                print(f"  {name}: {p}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
