"""JupyterLab in a real browser: JupyterLab serves a copy of a study notebook on 127.0.0.1, Debian's
headless Chromium (installed by scripts/browser.sh, as the SLURM test installs SLURM) opens it
through selenium and runs every cell on `smoke`; no cell may error, the figure must render and the
job's progress bar must show. The screenshot goes to output/browser/ (ignored by git)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "output" / "browser" / "02_mae.png"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def chromium():
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "browser.sh"), "install"], capture_output=True, text=True
    )
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"Chromium could not be installed:\n{result.stdout}\n{result.stderr}")
        pytest.skip(f"no Chromium here: {result.stderr.strip().splitlines()[-1:]}")
    pytest.importorskip("selenium")
    return shutil.which("chromium"), shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab over a folder holding a copy of notebooks/02_mae.ipynb; its kernels write run
    folders, tables and figures under tmp_path. Yields its URL and token; stopped (with its kernels)
    after."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "02_mae.ipynb", root)
    port, token = _free_port(), "studylib-browser-test"
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        **{
            f"STUDYLIB_{name}": str(tmp_path / name.lower())
            for name in ("RUNS", "RESULTS", "FIGURES")
        },
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "lab.log", "w"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (
                tmp_path / "lab.log"
            ).read_text()[-2000:]
            time.sleep(0.5)
    yield url, token
    server.terminate()
    server.wait(timeout=60)


def _wait(driver, script: str, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := driver.execute_script(script)):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.5)
    return value


def test_a_study_notebook_runs_in_jupyterlab_in_headless_chromium(chromium, lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium
    url, token = lab
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(f"{url}/lab/tree/02_mae.ipynb?token={token}")
        kernel = (
            "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;return w && "
            "w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel && "
            "w.sessionContext.session.kernel.status === 'idle' && "
            "w.sessionContext.session.kernel.name;"
        )
        assert _wait(driver, kernel, 120, "the notebook's kernel") == "studylib"
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
        prompts = (
            "return Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'))"
            ".map(e => e.textContent);"
        )
        # a widget bar
        bars = "return document.querySelectorAll('.jp-OutputArea [class*=\"progress\"]').length;"
        seen_bar, deadline = False, time.monotonic() + 300
        while True:
            seen_bar = seen_bar or driver.execute_script(bars) > 0
            shown = driver.execute_script(prompts)
            if shown and all(
                p.strip().startswith("[") and p.strip()[1:-2].isdigit() for p in shown
            ):
                break  # every code cell shows its execution count: all ran
            assert time.monotonic() < deadline, f"cells did not finish: {shown}"
            time.sleep(0.5)
        errors = driver.execute_script(
            "return Array.from(document.querySelectorAll("
            "'[data-mime-type=\"application/vnd.jupyter.error\"]'))"
            ".map(e => e.textContent.slice(0, 300));"
        )
        assert errors == []
        images = driver.execute_script(
            "return Array.from(document.querySelectorAll('.jp-RenderedImage img')).map(i => "
            "i.naturalWidth);"
        )
        assert images and min(images) > 100  # the loss curve, rendered
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOT)) and SCREENSHOT.stat().st_size > 10_000
        assert seen_bar or driver.execute_script(bars) > 0, (
            "no progress bar showed while the job ran"
        )
    finally:
        driver.quit()
