"""Drive the workbench in a real JupyterLab in headless Chromium and take screenshots.

What a user does with notebook 01: open it, run every cell, press Start in the Train tab, watch
the live curve while another cell runs, press Stop. The script checks that the panel really
updates while the kernel is busy elsewhere (the progress text changes between two looks taken
during a ``time.sleep`` cell) and that Stop leaves the run stopped, and saves a screenshot of
each stage (and of every other tab) into ``--out``; the Workbench's Inspector tab must show
the Inspector panel (its message line and five views). Then notebook 03 (with ``QUICK = True``):
a screenshot of every inspector view, and a mouse click on the attention map that must move
the query.

``--docs`` saves the screenshots the docs show into ``docs/img`` under their names
(``DOCS_NAMES``), and for them lets the notebook's three runs finish (their Runs and
Rate-accuracy tabs have points; the Stop check is then the Start/Stop one), runs the Ablation
tab's default grid (4 runs) until its Fig. 5 view is drawn, runs notebook 03
with its own parameters (200 steps: predictions that look like the labels) and adds
``demo-report.png``: ``report.html`` of ``icm demo`` (default settings unless ``--demo-steps``;
an existing ``--demo-out``/report.html is reused) in the same Chromium.

Needs Debian's ``chromium`` (``apt install chromium``) and playwright (``pip install -e
".[ui]"``); playwright's own browser download is not needed: the system Chromium is driven.

    .venv/bin/python scripts/ui_check.py --out ui_shots
    .venv/bin/python scripts/ui_check.py --out ui_shots --docs --demo-out demo_out
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSPECT_NOTEBOOK = "03_inspect.ipynb"
INSPECTOR_VIEWS = ("Predictions", "Bits", "Latents", "Attention", "DoRA")  # widgets.inspector.VIEWS
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
VIEWPORT = {"width": 1280, "height": 800}  # docs-sized: the PNGs stay small and readable
# time limits (s); generous: the check also runs on a busy, shared CPU
RUN_STARTS_S = 300  # notebook 01: its first run is training (the Stop button shows)
RUNS_FINISH_S = 1800  # --docs: notebook 01's three runs end and Rate-accuracy opens
CELLS_RUN_S = 1200  # notebook 03: every cell ran (training included)
STALL_S = 60  # notebook 03: the kernel idle this long with cells not run: stopped at an error
GRID_S = 1800  # --docs: the Ablation tab's default grid (4 runs) trains and is drawn
DEMO_S = 1800  # --docs: icm demo writes report.html
DOCS_IMG = ROOT / "docs" / "img"
DOCS_MAX_BYTES = 300_000  # a larger PNG is re-saved optimized, then with a 256-colour palette
# the docs' screenshot names (docs/index.md, docs/workbench.md, docs/method/) <- the stages
DOCS_NAMES = {"tab-setup": "workbench-setup", "notebook-training": "workbench-train",
              "tab-runs": "workbench-runs", "tab-rate-accuracy": "workbench-rate-accuracy",
              "tab-ablation": "workbench-ablation", "demo-report": "demo-report",
              **{f"inspector-{v.lower()}": f"inspector-{v.lower()}" for v in INSPECTOR_VIEWS}}


def find_chromium() -> str | None:
    env = os.environ.get("ICM_CHROMIUM")
    if env and Path(env).is_file():
        return env
    return next((c for c in CHROMIUM_CANDIDATES if Path(c).is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout:.0f} s")


def start_lab(root: Path, port: int, token: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", JUPYTER_PLATFORM_DIRS="1")
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
           # a fresh workspace: one restored from an earlier check reopens its notebooks
           f"--LabApp.workspaces_dir={root / '.workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers: Jupyter refuses root otherwise
        cmd.append("--allow-root")
    with open(root / "jupyter-server.log", "wb") as logf:  # the server keeps its own handle
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=logf, stderr=subprocess.STDOUT)
    _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", 90)
    return proc


def _texts(page, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def _contents(page, selector: str) -> list[str]:
    """Text content, rendered or not: SVG text (plotly titles) and cells scrolled out of view
    (JupyterLab skips rendering them: content-visibility) have no rendered text."""
    return [(t or "").strip() for t in page.locator(selector).all_text_contents()]


def _progress(page) -> str:
    """The Train panel's progress readout (steps, steps/s, ETA)."""
    texts = _texts(page, ".widget-html, .widget-label, .widget-readout, .progress-bar, .widget-text")
    return " | ".join(t for t in texts if "step" in t.lower())


def _status(page) -> str:
    """The Train panel's status line (run name, status, step)."""
    return next((t for t in _texts(page, ".widget-html") if " / " in t and "step" in t), "")


def _click_menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def _to_top(locator) -> None:
    """Scroll so that ``locator`` (a panel's tab bar) is at the top: the panel fills the shot."""
    locator.evaluate("e => e.scrollIntoView({block: 'start'})")


def _current_tab(page) -> list[str]:
    return _texts(page, ".lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel")


def _hide_left_sidebar(page) -> None:
    """Collapse JupyterLab's file browser (a click on its open sidebar tab): room for the panel."""
    current = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if current.count():
        current.first.click()
        page.wait_for_timeout(500)


def _quick_copy(src: Path, dst: Path) -> None:
    """Copy a notebook with ``QUICK = True`` in its ``parameters`` cell (what CI runs); the
    cell's other parameters (notebook 03's ``PHOTO``) stay."""
    nb = json.loads(src.read_text())
    done = 0
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            cell["source"], n = re.subn(r"^QUICK\s*=.*$", "QUICK = True", source, flags=re.M)
            done += n
    if not done:
        raise ValueError(f"{src.name}: no 'QUICK = ...' line in a cell tagged 'parameters'")
    dst.write_text(json.dumps(nb))


def _open_and_run_all(page, port: int, token: str, notebook: str) -> None:
    # reset: only this notebook open (a restored workspace reopens the others)
    page.goto(f"http://127.0.0.1:{port}/lab/tree/{notebook}?token={token}&reset")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    page.wait_for_timeout(3000)
    for label in ("Select", "No"):  # a kernel picker; the news question
        b = page.locator(".jp-Dialog button, .jp-toast-button", has_text=label)
        if b.count():
            b.first.click()
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=90_000, state="attached")
    _hide_left_sidebar(page)
    _click_menu(page, "Run", "Run All Cells")


def _wait_all_cells_ran(page, timeout_s: float) -> None:
    """Until every code cell shows an execution count: the kernel goes idle between cells. A
    kernel idle for ``STALL_S`` with cells not run means Run All stopped at an error: raised."""
    end, idle_since = time.time() + timeout_s, None
    while time.time() < end:
        prompts = _contents(page, ".jp-CodeCell .jp-InputArea-prompt")
        ran = [any(c.isdigit() for c in p) and "*" not in p for p in prompts]
        if prompts and all(ran):
            return
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        idle_since = (idle_since or time.time()) if idle else None
        if idle_since is not None and time.time() - idle_since > STALL_S:
            said = [t for t in _contents(page, ".jp-OutputArea-output[data-mime-type="
                                         "'application/vnd.jupyter.stderr']") if "Error" in t]
            why = said[-1].strip().splitlines()[-1] if said else "no error shown"
            raise RuntimeError(f"the notebook stopped before code cell {ran.index(False) + 1} "
                               f"of {len(ran)}: {why}")
        page.wait_for_timeout(1000)
    raise TimeoutError(f"the notebook's cells did not all run within {timeout_s:.0f} s")


def _query_text(page) -> str:
    return next((t for t in _texts(page, ".widget-html") if "query at" in t), "")


def _visible(page, selector: str, text: str) -> bool:
    found = page.locator(selector, has_text=text)
    return any(found.nth(k).is_visible() for k in range(found.count()))


def workbench_inspector(page) -> dict:
    """The Workbench's Inspector tab, just opened: its panel (the message line and the five
    view tabs) must be shown, not the placeholder or a note that it failed to open."""
    views = [v for v in INSPECTOR_VIEWS if _visible(page, ".lm-TabBar-tabLabel", v)]
    message = _visible(page, ".widget-html", "open a run folder or a model")
    failed = _visible(page, ".widget-html", "failed to open")
    return {"message": message, "views": views, "failed": failed,
            "placeholder": _visible(page, ".widget-html", "opens when selected"),
            "shown": message and len(views) == len(INSPECTOR_VIEWS) and not failed}


def inspect_views(page, port: int, token: str, report: dict, shot) -> None:
    """Notebook 03: every inspector view, and a mouse click on the attention figure
    that must move the query (the text under the controls names the query pixel)."""
    _open_and_run_all(page, port, token, INSPECT_NOTEBOOK)
    _wait_all_cells_ran(page, CELLS_RUN_S)
    page.wait_for_timeout(3000)
    for view in INSPECTOR_VIEWS:
        tab = page.locator(".lm-TabBar-tabLabel", has_text=view).first
        tab.scroll_into_view_if_needed()
        tab.click()
        page.wait_for_timeout(3000)
        if view == "Attention":
            plots = page.locator(".js-plotly-plot")
            shown = [plots.nth(k) for k in range(plots.count()) if plots.nth(k).is_visible()]
            shown[-1].scroll_into_view_if_needed()
            box = shown[-1].locator(".nsewdrag").first.bounding_box()
            before = _query_text(page)
            x, y = box["x"] + 0.2 * box["width"], box["y"] + 0.25 * box["height"]
            page.mouse.move(x, y)
            page.wait_for_timeout(500)
            page.mouse.click(x, y)
            page.wait_for_timeout(4000)
            after = _query_text(page)
            report["attention_click"] = {"before": before, "after": after,
                                         "moved": bool(after) and after != before}
        _to_top(tab)
        page.wait_for_timeout(1000)
        shot(page, f"inspector-{view.lower()}")


def _wait_until(page, what: str, timeout_s: float, ok) -> None:
    end = time.time() + timeout_s
    while not ok():
        if time.time() > end:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        page.wait_for_timeout(2000)


def finish_runs(page, report: dict) -> None:
    """--docs: let the notebook's runs train to the end; ``compare_when_done`` then opens the
    Rate-accuracy tab, whose message counts the runs once their points are drawn."""
    _wait_until(page, "the notebook's runs ending (Rate-accuracy opening)", RUNS_FINISH_S,
                lambda: "Rate-accuracy" in _current_tab(page))
    _wait_until(page, "the Rate-accuracy points", RUNS_FINISH_S,
                lambda: _visible(page, ".widget-html", "run(s),"))
    report["notebook_finished"] = _status(page)


def run_grid(page, report: dict) -> None:
    """--docs: the Ablation tab (open) runs its default grid; the Fig. 5 view is drawn once
    every run has finished (its title counts them), scrolled to fill the shot."""
    page.locator("button", has_text="Run grid").first.click()

    def drawn() -> bool:
        titles = " ".join(_contents(page, ".gtitle"))
        return bool(re.search(r"\b(\d+) of \1 runs finished", titles))

    _wait_until(page, "the ablation grid's runs", GRID_S, drawn)
    page.wait_for_timeout(2000)
    report["ablation"] = next(t for t in _contents(page, ".gtitle") if "runs finished" in t)
    plots = page.locator(".js-plotly-plot")
    shown = [plots.nth(k) for k in range(plots.count()) if plots.nth(k).is_visible()]
    shown[-1].evaluate("e => e.scrollIntoView({block: 'end'})")


def demo_report(browser, demo_dir: Path, steps: int | None, report: dict, shot) -> None:
    """``icm demo`` (unless ``demo_dir`` has a report.html): its report.html, the whole page."""
    html = demo_dir / "report.html"
    if not html.is_file():
        cmd = [sys.executable, "-m", "icm_core.cli.main", "demo", "--out", str(demo_dir)]
        cmd += ["--steps", str(steps)] if steps else []
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                            os.environ.get("PYTHONPATH")])))
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=DEMO_S,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(html.resolve().as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
        page.wait_for_timeout(2000)
        report["demo"] = {"report": str(html), "plot": page.locator(".js-plotly-plot").count()}
        shot(page, "demo-report", full_page=True)
    finally:
        page.close()


def save_for_docs(shots: list[str], dest: Path = DOCS_IMG) -> dict:
    """Copy the screenshots the docs show to ``dest`` under their names (``DOCS_NAMES``); one
    over ``DOCS_MAX_BYTES`` is re-saved optimized, then as a 256-colour palette if still over."""
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    saved = {}
    for path in map(Path, shots):
        name = DOCS_NAMES.get(path.stem.split("-", 1)[1])
        if name is None:
            continue
        target = dest / f"{name}.png"
        shutil.copy(path, target)
        if target.stat().st_size > DOCS_MAX_BYTES:
            with Image.open(path) as im:
                im.convert("RGB").save(target, optimize=True)
                if target.stat().st_size > DOCS_MAX_BYTES:
                    im.convert("RGB").quantize(256).save(target, optimize=True)
        saved[name] = target.stat().st_size
    return saved


def run(out: Path, notebook: str, wait_s: float, chromium: str, docs: bool = False,
        demo_dir: Path | None = None, demo_steps: int | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="icm-ui-"))
    shutil.copy(ROOT / "notebooks" / notebook, work / notebook)
    if docs:  # its own parameters (QUICK = False): a trained model for the docs' pictures
        shutil.copy(ROOT / "notebooks" / INSPECT_NOTEBOOK, work / INSPECT_NOTEBOOK)
    else:
        _quick_copy(ROOT / "notebooks" / INSPECT_NOTEBOOK, work / INSPECT_NOTEBOOK)
    port, token = _free_port(), "icm-ui-check"
    lab = start_lab(work, port, token)
    report: dict = {"notebook": notebook, "docs": docs, "screenshots": []}

    def shot(page, name: str, full_page: bool = False) -> None:
        path = out / f"{len(report['screenshots']):02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        report["screenshots"].append(str(path))

    def busy(page) -> bool:
        return page.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']").count() > 0

    def watch(page, key: str) -> None:
        """Two looks at the Train panel ``wait_s`` apart while the kernel runs another cell."""
        page.wait_for_timeout(wait_s * 1000)
        first, was_busy = _progress(page), busy(page)
        page.wait_for_timeout(wait_s * 1000)
        second = _progress(page)
        report[key] = {"first": first, "second": second, "kernel_busy": was_busy and busy(page),
                       "live": bool(first) and first != second}

    def tab(page, title: str):
        return page.locator(".lm-TabBar-tabLabel", has_text=title)

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            try:
                # 1. run the notebook as a user would: it queues runs and waits on them
                _open_and_run_all(page, port, token, notebook)
                stop = page.locator("button", has_text="Stop").first
                stop.wait_for(timeout=RUN_STARTS_S * 1000)
                _to_top(tab(page, "Train").first)
                watch(page, "notebook_run")
                shot(page, "notebook-training")
                if docs:  # the runs' points for the Runs and Rate-accuracy tabs
                    finish_runs(page, report)
                else:
                    for _ in range(6):  # Stop the running job, then each queued one as it starts
                        if "running" not in _status(page):
                            break
                        stop.click()
                        page.wait_for_timeout(5000)
                        report.setdefault("stop_clicks", []).append(_status(page))
                    report["notebook_stopped"] = "running" not in _status(page)
                page.wait_for_timeout(3000)  # the notebook opens the Rate-accuracy tab when done
                shot(page, "notebook-done")
                tab(page, "Train").first.click()
                # 2. press Start, run another cell meanwhile, press Stop
                start = page.locator("button", has_text="Start").first
                start.scroll_into_view_if_needed()
                start.click()
                page.locator(".jp-Cell").last.click()
                page.keyboard.press("Escape")
                page.keyboard.press("b")  # a new cell below; y: code; Enter: edit it
                page.keyboard.press("y")
                page.keyboard.press("Enter")
                page.keyboard.type(f"import time; time.sleep({4 * wait_s:g}); print('slept')")
                page.keyboard.press("Shift+Enter")
                _to_top(tab(page, "Train").first)
                watch(page, "start_click")
                shot(page, "live-curve")
                stop.click()
                page.wait_for_timeout(4000)
                report["after_stop"] = _progress(page)
                report["stopped"] = "stopped" in report["after_stop"]
                shot(page, "stopped")
                for title in ("Runs", "Rate-accuracy", "Ablation", "Inspector", "Setup"):
                    t = tab(page, title)
                    if t.count():
                        t.first.click()
                        page.wait_for_timeout(2500)
                        _to_top(t.first)
                        page.wait_for_timeout(500)
                        if title == "Ablation" and docs:
                            run_grid(page, report)
                        if title == "Inspector":
                            report["workbench_inspector"] = workbench_inspector(page)
                        shot(page, f"tab-{title.lower()}")
                # 3. the inspector (notebook 03): every view, a click on the attention map
                page.close()  # one page per notebook: two pages saving one file conflict
                page = browser.new_page(viewport=VIEWPORT)
                inspect_views(page, port, token, report, shot)
                if docs:  # 4. the demo's report.html
                    demo_report(browser, demo_dir or work / "demo_out", demo_steps, report, shot)
            except Exception as e:  # keep what was seen; the caller reports the failure
                report["error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                if not page.is_closed():
                    shot(page, "error")
            finally:
                browser.close()
    finally:
        lab.terminate()
        try:
            lab.wait(10)
        except subprocess.TimeoutExpired:
            lab.kill()
        if (work / "jupyter-server.log").is_file():
            shutil.copy(work / "jupyter-server.log", out / "jupyter-server.log")
        shutil.rmtree(work, ignore_errors=True)
    return report


def passed(report: dict) -> bool:
    """Every check held: live updates, Stop, the Inspector tab, the attention click; with
    --docs the notebook's runs finished and every docs screenshot was taken."""
    docs = report.get("docs")
    ran = report.get("notebook_finished") and report.get("ablation") if docs \
        else report.get("notebook_stopped")
    taken = {Path(s).stem.split("-", 1)[1] for s in report["screenshots"]}
    return bool("error" not in report and report.get("stopped") and ran
                and report.get("notebook_run", {}).get("live")
                and report.get("start_click", {}).get("live")
                and report["start_click"]["kernel_busy"]
                and report.get("workbench_inspector", {}).get("shown")
                and report.get("attention_click", {}).get("moved")
                and (not docs or set(DOCS_NAMES) <= taken))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("ui_shots"))
    p.add_argument("--notebook", default="01_quickstart.ipynb")
    p.add_argument("--wait", type=float, default=8.0, help="seconds between two looks at the panel")
    p.add_argument("--docs", action="store_true",
                   help="also save the docs' screenshots into docs/img under their names")
    p.add_argument("--demo-out", type=Path, default=None,
                   help="--docs: icm demo's folder (its report.html is reused if there)")
    p.add_argument("--demo-steps", type=int, default=None,
                   help="--docs: icm demo --steps (default: the demo's own)")
    args = p.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("no Chromium found: apt install chromium (or set ICM_CHROMIUM)", file=sys.stderr)
        return 2
    report = run(args.out, args.notebook, args.wait, chromium, docs=args.docs,
                 demo_dir=args.demo_out, demo_steps=args.demo_steps)
    ok = passed(report)
    if args.docs and ok:  # only a complete, passing check replaces the committed pictures
        report["docs_img"] = save_for_docs(report["screenshots"])
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
