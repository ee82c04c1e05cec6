"""The sampling widget, in a real browser, in a real JupyterLab.

The test starts JupyterLab on a free local port (tiny mode: GPT2_TINY=1, which the kernel inherits), opens
the sampling notebook in Debian's chromium driven by Playwright, runs all its cells from the Run menu, and
then uses the widget as a learner would: it edits the "max new tokens" slider, types a prompt, presses
Generate, and checks that the generated text streams into the output area and that the status reads
"done: N tokens" with N the slider's new value (which proves the slider's value reached the kernel).
A screenshot of the widget is saved to $GPT2_ARTIFACTS_DIR (or to the test's tmp_path).

Nothing is written into the repository: JupyterLab's user settings, workspaces, runtime files and the
notebook's checkpoint all go to tmp_path, and autosave is off, so the executed notebook is never saved.

Needs Debian's chromium (apt-get install chromium) and the playwright package (pip install playwright;
it is in the `test` extra). Never run `playwright install`: the test uses /usr/bin/chromium.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/10_sampling.ipynb"  # relative to the repository root (the server's root_dir)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic",
                 "--no-proxy-server"]  # the server is local: never route it through a proxy from the environment

PROMPT = "To be, or not"         # typed into the widget's prompt box
SERVER_TIMEOUT = 90              # seconds for JupyterLab to answer /api/status
KERNEL_TIMEOUT = 120             # seconds for the notebook's kernel to start and report "Idle"
RUN_ALL_TIMEOUT = 240            # seconds for Run All Cells to reach the widget (tiny mode trains 20 steps)
GENERATE_TIMEOUT = 120           # seconds for Generate to finish
UI_TIMEOUT_MS = 30_000           # default for every other browser action and expectation

# JupyterLab user settings (in JUPYTERLAB_SETTINGS_DIR, so nothing is written into the venv):
SETTINGS = {
    # no "Would you like to get notified about official Jupyter news?" toast over the page
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"checkForUpdates": False,
                                                                       "fetchNews": "false"},
    # never save the executed notebook (with its outputs) over the repository's copy
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    # every cell in the DOM, whatever the scroll position
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def require_browser():
    """Skip (fail under CI) when chromium or playwright is missing, saying what to install."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright, or pip install -e '.[test]'; "
                       "no `playwright install`: the test uses Debian's chromium)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# ------------------------------------------------------------------------------------------------
# JupyterLab in a subprocess
# ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(tmp: Path) -> dict:
    """The test's environment (TIKTOKEN_CACHE_DIR, GPT2_DATA_DIR, ... from conftest.py), plus tiny mode and
    private JupyterLab settings, workspaces and runtime directories."""
    settings = tmp / "lab-settings"
    for name, values in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    env = dict(os.environ, GPT2_TINY="1", JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "lab-workspaces"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    env.pop("MPLBACKEND", None)  # conftest.py sets Agg; in the browser the notebook's plots render inline
    return env


def status_ok(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: no proxy
    try:
        with opener.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def log_tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


def start_jupyterlab(tmp: Path, token: str, log: Path):
    """Start JupyterLab on a free port and wait until it answers; returns (process, base URL). A port
    taken between choosing it and binding it makes the server exit: then it is tried again."""
    env = server_env(tmp)
    for attempt in range(3):
        port = free_port()
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
               f"--ServerApp.token={token}", "--allow-root", f"--ServerApp.root_dir={ROOT}",
               "--ServerApp.port_retries=0",  # exactly this port, or exit (and we pick another)
               # checkpoints (made when a notebook is opened) go to tmp, not to notebooks/.ipynb_checkpoints
               f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}"]
        with open(log, "a") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if status_ok(f"{base}/api/status?token={token}"):
                return proc, base
            time.sleep(0.25)
        if proc.poll() is None:  # still running but not answering: give up
            stop(proc)
            pytest.fail(f"JupyterLab did not answer within {SERVER_TIMEOUT} s; its log:\n{log_tail(log)}")
    pytest.fail(f"JupyterLab exited at start, 3 times; its log:\n{log_tail(log)}")


def stop(proc: subprocess.Popen):
    """Stop the server by its process id: SIGTERM (it shuts its kernels down), SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


# ------------------------------------------------------------------------------------------------
# The browser side
# ------------------------------------------------------------------------------------------------
def button(scope, label: str):
    """A widget button by its label. (Not get_by_role(name=...): the accessible name also holds the
    Font Awesome icon's glyph.)"""
    return scope.locator(".widget-button", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))


def wait_for_widget(page, timeout: float):
    """After Run All Cells: wait until the widget's Generate button shows, failing at once (with the
    traceback) if a cell raised, instead of waiting out the timeout."""
    generate = button(page, "Generate")
    errors = page.locator(".jp-OutputArea-output", has_text="Traceback (most recent call last)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if generate.count() and generate.first.is_visible():
            return
        if errors.count():
            pytest.fail(f"a cell of {NOTEBOOK} raised:\n{errors.first.inner_text()[-3000:]}")
        page.wait_for_timeout(500)
    pytest.fail(f"no widget (a 'Generate' button) {timeout} s after Run All Cells")


def wait_for_done(status, timeout: float) -> str:
    """Wait until the widget's status reads "done: ..."; fail at once if it shows an error."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = status.inner_text().strip()
        if text.startswith("done:"):
            return text
        if re.match(r"\w+(Error|Exception)\b", text) or text.startswith("stopped:"):
            pytest.fail(f"the widget's status reads {text!r}")
        status.page.wait_for_timeout(250)
    pytest.fail(f"the widget's status still reads {text!r} after {timeout} s")


def use_the_widget(page, base: str, token: str, screenshot: Path):
    page.set_default_timeout(UI_TIMEOUT_MS)
    from playwright.sync_api import expect
    expect.set_options(timeout=UI_TIMEOUT_MS)

    page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", wait_until="domcontentloaded")

    # 1. The kernel: wait until the status bar says e.g. "Python 3 (ipykernel) | Idle" (started and
    #    connected). Run All sent before that can be lost.
    #    (Not any "Idle": a hidden "Kernel status: Idle" label exists before the kernel does.)
    expect(page.locator("#jp-main-statusbar")).to_contain_text(re.compile(r"Python[^|\n]*\|\s*Idle"),
                                                              timeout=KERNEL_TIMEOUT * 1000)
    cells = page.locator(".jp-Notebook .jp-Cell")
    n_cells = cells.count()

    # 2. Run > Run All Cells, through the menu bar. The item must be enabled (it is once the notebook is
    #    the current document); the label is matched from its start: the menu also has
    #    "Restart Kernel and Run All Cells…".
    page.locator(".lm-MenuBar-itemLabel").get_by_text("Run", exact=True).click()
    page.locator(".lm-Menu-item:not(.lm-mod-disabled)").filter(has_text=re.compile(r"^\s*Run All Cells")).click()
    wait_for_widget(page, RUN_ALL_TIMEOUT)

    # The widget: the VBox holding the Generate button (the notebook's last cell displays it).
    widget = page.locator(".widget-vbox").filter(has=button(page, "Generate")).last
    generate, stop_button = button(widget, "Generate"), button(widget, "Stop")
    status = widget.locator(".widget-html-content")
    output = widget.locator(".widget-output")
    textarea = widget.locator(".widget-textarea textarea")
    sliders = {name: widget.locator(".widget-slider").filter(has=page.get_by_text(name, exact=True))
               for name in ("max new tokens", "temperature", "top-k (0: off)", "top-p (1: off)")}
    for name, slider in sliders.items():
        expect(slider, f"slider {name!r}").to_have_count(1)
    expect(widget.locator(".widget-text").filter(has=page.get_by_text("seed", exact=True))).to_have_count(1)
    expect(widget.locator(".widget-textarea").filter(has=page.get_by_text("prompt", exact=True))).to_have_count(1)
    expect(output).to_have_count(1)
    expect(generate).to_be_enabled()
    expect(stop_button).to_be_disabled()  # nothing to stop yet
    widget.scroll_into_view_if_needed()

    # 3. The "max new tokens" slider: type a new value into its readout (ipywidgets 8 readouts are editable
    #    text; Enter commits), then one step with the keyboard on the slider's handle. The handle's
    #    aria-valuenow and the readout show the widget model's value after the change.
    slider = sliders["max new tokens"]
    handle, readout = slider.get_by_role("slider"), slider.locator(".widget-readout")
    old = round(float(handle.get_attribute("aria-valuenow")))
    new = 25 if old != 25 else 30
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(new - 1))
    page.keyboard.press("Enter")
    expect(readout).to_have_text(str(new - 1))
    handle.focus()
    page.keyboard.press("ArrowRight")
    expect(handle).to_have_attribute("aria-valuenow", re.compile(rf"^{new}(\.0+)?$"))
    expect(readout).to_have_text(str(new))

    # 4. The prompt: type it key by key, as a learner would (each keystroke syncs to the kernel).
    textarea.click()
    page.keyboard.press("Control+A")
    textarea.press_sequentially(PROMPT)
    expect(textarea).to_have_value(PROMPT)
    # (the keystrokes went to the widget, not to the notebook's command-mode shortcuts: "b" adds a cell)
    expect(cells).to_have_count(n_cells)

    # 5. Generate, and wait for the end: the status reads e.g. "done: 25 tokens, 523.6 tokens/s".
    generate.click()
    done = wait_for_done(status, GENERATE_TIMEOUT)
    n = int(re.match(r"done: (\d+) tokens", done).group(1))
    # the kernel generated what the slider said (fewer only if the model chose <|endoftext|>)
    assert n == new, f"status {done!r}: expected {new} tokens, the slider's new value"
    text = output.inner_text()
    assert text.startswith(PROMPT), f"the output area should start with the prompt; it shows {text!r}"
    assert len(text.rstrip()) > len(PROMPT), f"no generated text after the prompt: {text!r}"
    expect(generate).to_be_enabled()     # ready for the next run
    expect(stop_button).to_be_disabled()

    # 6. The evidence: the page, with the whole widget (its generated text and status) in the middle.
    widget.evaluate("node => node.scrollIntoView({block: 'center'})")
    page.screenshot(path=str(screenshot))


def test_sampling_widget_in_jupyterlab(tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    assert (ROOT / NOTEBOOK).is_file(), f"{NOTEBOOK} is missing"
    artifacts = Path(os.environ.get("GPT2_ARTIFACTS_DIR") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "sampling_widget.png"
    screenshot.unlink(missing_ok=True)
    token, log = secrets.token_hex(16), tmp_path / "jupyterlab.log"

    proc, base = start_jupyterlab(tmp_path, token, log)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                try:
                    use_the_widget(page, base, token, screenshot)
                except BaseException:
                    # keep what the page looked like, and show the server's log (pytest prints the
                    # captured output of a failed test)
                    failure = artifacts / "sampling_widget_failure.png"
                    try:
                        page.screenshot(path=str(failure))
                        print(f"screenshot of the page at the failure: {failure}")
                    except Exception as e:
                        print(f"no screenshot of the failure: {e}")
                    print(f"JupyterLab log ({log}), last lines:\n{log_tail(log)}")
                    raise
            finally:
                browser.close()
    finally:
        stop(proc)

    assert screenshot.is_file() and screenshot.stat().st_size > 0, f"no screenshot at {screenshot}"
    print(f"\nscreenshot of the sampling widget: {screenshot}")
