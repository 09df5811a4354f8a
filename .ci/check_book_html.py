#!/usr/bin/env python3
"""Open every page of the built book in headless Chromium, offline, and check what a reader sees.

    python .ci/check_book_html.py _build/html [--screenshots DIR] [--only PATTERN] [--timeout S]

For each ``*.html`` page under the build folder (``_static``/``_sources``/``_images`` excluded) the
page is loaded from disk (``file://``) with the network emulated offline, and the check fails when

* a plotly figure did not draw: every ``.plotly-graph-div`` of the page must have become a plotly
  plot with its ``svg.main-svg`` and at least one trace;
* the page requested anything that is not a local file (``http(s)://`` etc.) or a request failed;
* the page logged a console error or threw an uncaught exception;
* an ``<img>`` did not load, or MathJax reported an error;
* a plotly slider (``c``, ``xi``, ``w``, time, ...) does not work: every slider of every figure is
  clicked, with real mouse events, at the end of its rail away from its current step, and the
  slider must move and the figure's data (trace data, visibility or title) must change
  (``--no-sliders`` skips this).

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``;
standard library only).  Flags as measured in the project's toolchain notes: ``--headless
--no-sandbox --disable-gpu --disable-background-networking --disable-component-update
--no-first-run`` and a throw-away profile.  ``--screenshots DIR`` also saves a full-page PNG of each
page (1280 px wide) for a human look.  Exit status 0 when every page passes, 1 otherwise (with a
list of the problems), 2 when Chromium cannot be started.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome-error:")
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads", ".doctrees", "_panels_static"}

PROBE_JS = r"""
(async () => {
  const out = {graphs: 0, drawn: 0, undrawn: [], images_bad: [], mathjax_errors: 0, mathjax: 'none'};
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; out.mathjax = 'ok'; } catch (e) { out.mathjax = 'error: ' + e; }
  }
  out.mathjax_errors = document.querySelectorAll('mjx-merror, .MathJax_Error, [data-mjx-error]').length;
  const divs = Array.from(document.querySelectorAll('div.plotly-graph-div'));
  out.graphs = divs.length;
  divs.forEach((d, i) => {
    const ok = d.classList.contains('js-plotly-plot') && d.querySelector('svg.main-svg') !== null
               && Array.isArray(d.data) && d.data.length > 0;
    if (ok) { out.drawn += 1; } else { out.undrawn.push(d.id || ('#' + i)); }
  });
  document.querySelectorAll('img').forEach(img => {
    if (!(img.complete && img.naturalWidth > 0)) { out.images_bad.push(img.getAttribute('src')); }
  });
  out.height = Math.max(document.body.scrollHeight, document.documentElement.scrollHeight);
  return JSON.stringify(out);
})()
"""


class Chromium:
    """Minimal DevTools-protocol client over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str, timeout: float):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="kacbook-chromium-")
        to_chrome_r, self._to_chrome_w = os.pipe()
        self._from_chrome_r, from_chrome_w = os.pipe()

        def child_fds():  # runs in the child before exec: put the pipe ends on fds 3 and 4
            import fcntl

            r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)  # dup2 leaves the new descriptors inheritable
            os.dup2(w, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-sync",
            "--disable-extensions",
            "--mute-audio",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args, close_fds=False, preexec_fn=child_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self._to_chrome_w, self._from_chrome_r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read_message(self, deadline: float) -> dict | None:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._from_chrome_r], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._from_chrome_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict:
        self._id += 1
        mid = self._id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            m = self._read_message(deadline)
            if m is None:
                raise TimeoutError(f"no answer to {method} within {timeout or self.timeout} s")
            if m.get("id") == mid:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def pump(self, seconds: float) -> None:
        """Collect events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            m = self._read_message(deadline)
            if m is None:
                return
            self.events.append(m)

    def wait_event(self, method: str, session: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        start = len(self.events)
        for e in self.events[start:]:
            if e.get("method") == method and e.get("sessionId") == session:
                return True
        while True:
            m = self._read_message(deadline)
            if m is None:
                return False
            self.events.append(m)
            if m.get("method") == method and m.get("sessionId") == session:
                return True


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def pages_of(root: Path, only: list[str]) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*.html")):
        rel = p.relative_to(root)
        if rel.parts[0] in SKIP_DIRS:
            continue
        if only and not any(fnmatch.fnmatch(str(rel), pat) for pat in only):
            continue
        out.append(p)
    return out


def static_problems(page: Path) -> list[str]:
    """References to remote scripts/styles in the HTML itself (they would be fetched)."""
    import re

    text = page.read_text(errors="replace")
    probs = []
    for m in re.finditer(r"<(script|link)\b[^>]*?(?:src|href)=[\"']((?:https?:)?//[^\"']+)[\"'][^>]*>", text):
        tag, url = m.group(1), m.group(2)
        if tag == "link" and not re.search(r"rel=[\"'](?:stylesheet|preload|modulepreload)[\"']", m.group(0)):
            continue
        probs.append(f"remote {tag} in the HTML: {url}")
    return probs


# the sliders of the page's figures, and for one of them: where to click and what the figure shows
SLIDERS_JS = r"""
(() => {
  window.__kacSig = function (gd) {
    let s = JSON.stringify((gd.data || []).map(t => [t.visible, t.x, t.y, t.z, t.text]));
    s += JSON.stringify(gd.layout && gd.layout.title && gd.layout.title.text);
    let h = 0;
    for (let i = 0; i < s.length; i++) { h = (Math.imul(31, h) + s.charCodeAt(i)) | 0; }
    return h;
  };
  window.__kacSlider = function (i, k, scroll) {
    const gd = document.querySelectorAll('div.plotly-graph-div')[i];
    const opts = gd.layout.sliders[k];
    const n = opts.steps.length, active = opts.active || 0;
    // plotly draws only the visible sliders, in order
    const drawnIndex = gd.layout.sliders.slice(0, k).filter(s => s.visible !== false).length;
    const group = gd.querySelectorAll('.slider-group')[drawnIndex];
    if (scroll) {
      for (let e = gd; e; e = e.parentElement) { if (e.tagName === 'DETAILS') { e.open = true; } }  // folded away
      (group ? group.querySelector('.slider-rail-rect') : gd).scrollIntoView({block: 'center'});
    }
    const out = {id: gd.id, n: n, active: active, sig: window.__kacSig(gd),
                 label: (opts.currentvalue && opts.currentvalue.prefix) || ('slider ' + k)};
    if (!group) { return JSON.stringify(out); }
    const touch = group.querySelector('.slider-rail-touch-rect').getBoundingClientRect();
    const rail = group.querySelector('.slider-rail-rect').getBoundingClientRect();
    if (touch.width < 4 || rail.height <= 0) { return JSON.stringify(out); }
    out.target = active < n - 1 ? n - 1 : 0;
    out.x = out.target === 0 ? touch.left + 2 : touch.right - 2;
    out.y = rail.top + rail.height / 2;
    const hit = document.elementFromPoint(out.x, out.y);  // what a reader's click would land on
    out.covered = !(hit && gd.contains(hit));
    return JSON.stringify(out);
  };
  const list = [];
  document.querySelectorAll('div.plotly-graph-div').forEach((gd, i) => {
    const sl = (gd.layout && gd.layout.sliders) || [];
    sl.forEach((s, k) => { if ((s.steps || []).length > 1 && s.visible !== false) { list.push([i, k]); } });
  });
  return JSON.stringify(list);
})()
"""


def _js(ch: Chromium, session: str, expr: str, timeout: float):
    res = ch.send(
        "Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=session, timeout=timeout
    )
    if "exceptionDetails" in res:
        raise RuntimeError(
            res["exceptionDetails"].get("exception", {}).get("description")
            or res["exceptionDetails"].get("text")
        )
    value = res.get("result", {}).get("value")
    return json.loads(value) if isinstance(value, str) else value


def _click(ch: Chromium, session: str, x: float, y: float) -> None:
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        ch.send(
            "Input.dispatchMouseEvent",
            {
                "type": kind,
                "x": x,
                "y": y,
                "button": "left" if kind != "mouseMoved" else "none",
                "buttons": 1 if kind == "mousePressed" else 0,
                "clickCount": 1,
            },
            session=session,
        )


def click_sliders(ch: Chromium, session: str, timeout: float) -> tuple[list[str], int]:
    """Click every plotly slider of the page away from its step; the slider must move and the
    figure's data change.  Returns (problems, sliders clicked)."""
    problems, done = [], 0
    for i, k in _js(ch, session, SLIDERS_JS, timeout) or []:
        before = _js(ch, session, f"window.__kacSlider({i}, {k}, true)", timeout)
        name = f"figure {before['id'] or '#' + str(i)}, slider '{before['label'].strip()}'"
        ch.pump(0.3)  # the scroll settles
        before = _js(ch, session, f"window.__kacSlider({i}, {k}, false)", timeout)
        if "x" not in before:
            problems.append(f"{name}: not drawn or not visible, so it cannot be clicked")
            continue
        if before.get("covered"):
            problems.append(
                f"{name}: another element covers the slider at ({before['x']:.0f}, {before['y']:.0f})"
            )
            continue
        _click(ch, session, before["x"], before["y"])
        deadline = time.monotonic() + 5.0
        while True:
            ch.pump(0.1)
            after = _js(ch, session, f"window.__kacSlider({i}, {k}, false)", timeout)
            moved, changed = after["active"] != before["active"], after["sig"] != before["sig"]
            if (moved and changed) or time.monotonic() > deadline:
                break
        done += 1
        if not moved:
            problems.append(
                f"{name}: a click on the rail did not move it (step {before['active']} of {before['n']})"
            )
        elif not changed:
            problems.append(f"{name}: moved to step {after['active']} but the figure's data did not change")
    return problems, done


def check_page(
    ch: Chromium, page: Path, root: Path, shots: Path | None, timeout: float, sliders: bool = True
) -> tuple[list[str], dict]:
    url = page.resolve().as_uri()
    target = ch.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = ch.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    first_event = len(ch.events)
    for domain in ("Page", "Runtime", "Log", "Network"):
        ch.send(f"{domain}.enable", session=session)
    ch.send(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        session=session,
    )
    ch.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    mark = len(ch.events)
    ch.send("Page.navigate", {"url": url}, session=session)
    problems = []
    loaded = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not loaded:
        ch.pump(0.2)
        loaded = any(
            e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session
            for e in ch.events[mark:]
        )
    if not loaded:
        problems.append(f"page did not finish loading within {timeout:g} s")
    # let plotly and MathJax finish; the probe awaits MathJax and reports the figures
    info = {}
    probe_deadline = time.monotonic() + timeout
    while True:
        res = ch.send(
            "Runtime.evaluate",
            {"expression": PROBE_JS, "awaitPromise": True, "returnByValue": True},
            session=session,
            timeout=timeout,
        )
        value = res.get("result", {}).get("value")
        info = json.loads(value) if isinstance(value, str) else {}
        if info.get("drawn", 0) >= info.get("graphs", 0) or time.monotonic() > probe_deadline:
            break
        ch.pump(0.5)
    if sliders and info.get("drawn", 0) >= info.get("graphs", 0):
        try:
            slider_problems, info["sliders"] = click_sliders(ch, session, timeout)
        except (RuntimeError, TimeoutError) as exc:
            slider_problems, info["sliders"] = [f"slider check failed: {str(exc).splitlines()[0]}"], 0
        problems += slider_problems
        ch.send("Runtime.evaluate", {"expression": "window.scrollTo(0, 0)"}, session=session)
    ch.pump(0.5)  # late console messages
    if info.get("undrawn"):
        problems.append(
            f"{len(info['undrawn'])} of {info['graphs']} plotly figure(s) did not draw: {', '.join(info['undrawn'][:5])}"
        )
    if info.get("images_bad"):
        problems.append(f"image(s) not loaded: {', '.join(map(str, info['images_bad'][:5]))}")
    if info.get("mathjax_errors"):
        problems.append(f"{info['mathjax_errors']} MathJax error(s) in the page")
    if str(info.get("mathjax", "")).startswith("error"):
        problems.append(f"MathJax failed: {info['mathjax']}")

    urls = {}
    for e in ch.events[first_event:]:
        if e.get("sessionId") == session and e.get("method") == "Network.requestWillBeSent":
            urls[e["params"].get("requestId")] = e["params"].get("request", {}).get("url", "")
    for e in ch.events[first_event:]:
        if e.get("sessionId") != session:
            continue
        m, p = e.get("method"), e.get("params", {})
        if m == "Network.requestWillBeSent":
            u = p.get("request", {}).get("url", "")
            if not u.startswith(LOCAL_SCHEMES):
                problems.append(f"network request: {u}")
        elif m == "Network.loadingFailed":
            if not p.get("canceled"):
                problems.append(
                    f"failed request ({p.get('errorText')}): {urls.get(p.get('requestId'), p.get('requestId'))}"
                )
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            desc = d.get("exception", {}).get("description") or d.get("text")
            problems.append(f"uncaught exception: {str(desc).splitlines()[0]}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            problems.append(f"console.{p.get('type')}: {args[:300]}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            ent = p["entry"]
            problems.append(
                f"console error ({ent.get('source')}): {ent.get('text', '')[:300]} {ent.get('url', '')}"
            )

    if shots is not None:
        height = min(int(info.get("height") or 900), 16000)
        ch.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        ch.pump(0.5)
        try:  # a redirect page (index.html) has nothing to draw
            shot = ch.send(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True},
                session=session,
                timeout=60,
            )
            out = shots / (str(page.relative_to(root)).replace(os.sep, "__").removesuffix(".html") + ".png")
            out.write_bytes(base64.b64decode(shot["data"]))
        except RuntimeError:
            pass
    ch.send("Target.closeTarget", {"targetId": target})
    return problems, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "build", nargs="?", default="_build/html", help="the built HTML folder (default _build/html)"
    )
    ap.add_argument("--screenshots", help="save a full-page PNG of every page into this folder")
    ap.add_argument("--only", action="append", default=[], help="only pages matching this glob (repeatable)")
    ap.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per page to load and draw (default 60)"
    )
    ap.add_argument("--chromium", default=None, help="browser binary (default: chromium on PATH)")
    ap.add_argument("--no-sliders", action="store_true", help="do not click the plotly sliders")
    args = ap.parse_args(argv)

    root = Path(args.build)
    if not root.is_dir():
        print(f"check_book_html: no build folder {root}", file=sys.stderr)
        return 1
    pages = pages_of(root, args.only)
    if not pages:
        print(f"check_book_html: no pages under {root}", file=sys.stderr)
        return 1
    binary = args.chromium or find_chromium()
    if not binary:
        print("check_book_html: chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    shots = Path(args.screenshots) if args.screenshots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)

    try:
        ch = Chromium(binary, timeout=args.timeout)
        ch.send("Browser.getVersion", timeout=60)
    except Exception as exc:  # pragma: no cover - environment problem
        print(f"check_book_html: could not start {binary}: {exc}", file=sys.stderr)
        return 2
    failures: dict[str, list[str]] = {}
    total_figs = total_sliders = 0
    t0 = time.monotonic()
    try:
        for page in pages:
            rel = str(page.relative_to(root))
            probs = static_problems(page)
            try:
                p2, info = check_page(ch, page, root, shots, args.timeout, sliders=not args.no_sliders)
            except Exception as exc:
                p2, info = [f"checker error: {exc}"], {}
            probs += p2
            total_figs += int(info.get("drawn", 0))
            total_sliders += int(info.get("sliders", 0))
            status = "ok  " if not probs else "FAIL"
            print(
                f"[{status}] {rel}: {info.get('drawn', 0)}/{info.get('graphs', 0)} plotly figures drawn, "
                f"{info.get('sliders', 0)} sliders clicked, MathJax {info.get('mathjax', '?')}",
                flush=True,
            )
            if probs:
                failures[rel] = probs
    finally:
        ch.close()
    dt = time.monotonic() - t0
    print(
        f"checked {len(pages)} pages, {total_figs} figures drawn, {total_sliders} sliders clicked, in {dt:.1f} s"
    )
    if failures:
        print("\nProblems:")
        for rel, probs in failures.items():
            for p in probs:
                print(f"  {rel}: {p}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
