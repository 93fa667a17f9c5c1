"""Drive the workbench in a real JupyterLab in headless Chromium and take screenshots.

What a user does with notebook 01: open it, run every cell, press Start in the Train tab, watch
the live curve while another cell runs, press Stop. The script checks that the panel really
updates while the kernel is busy elsewhere (the progress text changes between two looks taken
during a ``time.sleep`` cell) and that Stop leaves the run stopped, and saves a screenshot of
each stage (and of every other tab) into ``--out``; the Workbench's Inspector tab must show
the Inspector panel (its message line and five views). Then notebook 03 (with ``QUICK = True``):
a screenshot of every inspector view, and a mouse click on the attention map that must move
the query.

Needs Debian's ``chromium`` (``apt install chromium``) and playwright (``pip install -e
".[ui]"``); playwright's own browser download is not needed: the system Chromium is driven.

    .venv/bin/python scripts/ui_check.py --out ui_shots
"""

from __future__ import annotations

import argparse
import json
import os
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


def _quick_copy(src: Path, dst: Path) -> None:
    """Copy a notebook with ``QUICK = True`` in its ``parameters`` cell (what CI runs)."""
    nb = json.loads(src.read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            cell["source"] = "QUICK = True\n"
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
    _click_menu(page, "Run", "Run All Cells")


def _wait_all_cells_ran(page, timeout_s: float) -> None:
    """Until every code cell shows an execution count: the kernel goes idle between cells."""
    end = time.time() + timeout_s
    while time.time() < end:
        prompts = _texts(page, ".jp-CodeCell .jp-InputArea-prompt")
        if prompts and all(any(c.isdigit() for c in p) and "*" not in p for p in prompts):
            return
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
    """Notebook 03 (QUICK): every inspector view, and a mouse click on the attention figure
    that must move the query (the text under the controls names the query pixel)."""
    _open_and_run_all(page, port, token, INSPECT_NOTEBOOK)
    _wait_all_cells_ran(page, 300)
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
        shot(page, f"inspector-{view.lower()}")


def run(out: Path, notebook: str, wait_s: float, chromium: str) -> dict:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="icm-ui-"))
    shutil.copy(ROOT / "notebooks" / notebook, work / notebook)
    _quick_copy(ROOT / "notebooks" / INSPECT_NOTEBOOK, work / INSPECT_NOTEBOOK)
    port, token = _free_port(), "icm-ui-check"
    lab = start_lab(work, port, token)
    report: dict = {"notebook": notebook, "screenshots": []}

    def shot(page, name: str) -> None:
        path = out / f"{len(report['screenshots']):02d}-{name}.png"
        page.screenshot(path=str(path), full_page=False)
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

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            try:
                # 1. run the notebook as a user would: it queues runs and waits on them
                _open_and_run_all(page, port, token, notebook)
                stop = page.locator("button", has_text="Stop").first
                stop.wait_for(timeout=180_000)
                stop.scroll_into_view_if_needed()
                watch(page, "notebook_run")
                shot(page, "notebook-training")
                for _ in range(6):  # Stop the running job, then each queued one as it starts
                    if "running" not in _status(page):
                        break
                    stop.click()
                    page.wait_for_timeout(5000)
                    report.setdefault("stop_clicks", []).append(_status(page))
                report["notebook_stopped"] = "running" not in _status(page)
                page.wait_for_timeout(3000)  # the notebook opens the Rate-accuracy tab when done
                shot(page, "notebook-done")
                page.locator(".lm-TabBar-tabLabel", has_text="Train").first.click()
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
                stop.scroll_into_view_if_needed()
                watch(page, "start_click")
                shot(page, "live-curve")
                stop.click()
                page.wait_for_timeout(4000)
                report["after_stop"] = _progress(page)
                report["stopped"] = "stopped" in report["after_stop"]
                shot(page, "stopped")
                for tab in ("Runs", "Rate-accuracy", "Ablation", "Inspector", "Setup"):
                    t = page.locator(".lm-TabBar-tabLabel", has_text=tab)
                    if t.count():
                        t.first.click()
                        page.wait_for_timeout(2500)
                        t.first.scroll_into_view_if_needed()
                        if tab == "Inspector":
                            report["workbench_inspector"] = workbench_inspector(page)
                        shot(page, f"tab-{tab.lower()}")
                # 3. the inspector (notebook 03): every view, a click on the attention map
                page.close()  # one page per notebook: two pages saving one file conflict
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                inspect_views(page, port, token, report, shot)
            except Exception as e:  # keep what was seen; the caller reports the failure
                report["error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("ui_shots"))
    p.add_argument("--notebook", default="01_quickstart.ipynb")
    p.add_argument("--wait", type=float, default=8.0, help="seconds between two looks at the panel")
    args = p.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("no Chromium found: apt install chromium (or set ICM_CHROMIUM)", file=sys.stderr)
        return 2
    report = run(args.out, args.notebook, args.wait, chromium)
    print(json.dumps(report, indent=2))
    ok = ("error" not in report and report.get("stopped") and report.get("notebook_stopped")
          and report.get("notebook_run", {}).get("live")
          and report.get("start_click", {}).get("live")
          and report["start_click"]["kernel_busy"]
          and report.get("workbench_inspector", {}).get("shown")
          and report.get("attention_click", {}).get("moved"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
