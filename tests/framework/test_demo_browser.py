"""The demo page in a real browser: headless Chromium (Debian's) driven by Playwright through one edit.

Serves `python -m framework demo` on the bundled toy model, picks the quickstart's pose edit from the
page's examples (its pose maps go through the page's map editors), runs it, and checks the edit image
the page shows against the CLI's edit.png of the same request, pixel for pixel; then the page's
one-line error for a missing input. A screenshot of the
page is saved in the test's folder (its path is printed).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import yaml
from PIL import Image

from framework.lightning.cli import main
from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
# As root and on a closed network: no sandbox, no GPU, no background connections (they are refused).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Both sides get this option (the page through `--`): the mask's 10 seeds are most of an edit's time.
FEWER_SEEDS = ["--model.mask.seeds", "2"]
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine: `apt-get install -y chromium` "
                                "(.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, out, log, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.Popen([sys.executable, "-m", "framework", "demo", "--port", str(port), "--out", str(out),
                             "--", *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(server: subprocess.Popen, port: int, log) -> None:
    """Until the page answers (at most 3 minutes on a loaded CPU)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the demo exited with status {server.returncode}: {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the demo did not serve within 180 s: {log.name}")


def _one_request(folder, request_id: str):
    """A manifest of one of the quickstart's requests, its paths made absolute."""
    examples = ROOT / "experiments" / "examples"
    row = next(r for r in yaml.safe_load((examples / "manifest.yaml").read_text())["requests"] if r["id"] == request_id)
    absolute = lambda value: str(examples / value)  # noqa: E731
    row = {**row, **{k: absolute(row[k]) for k in ("image", "target", "true_mask")},
           "source": {m: absolute(v) for m, v in row["source"].items()},
           "edit": {m: absolute(v) for m, v in row["edit"].items()}}
    (folder / "one.yaml").write_text(yaml.safe_dump({"requests": [row]}))
    return folder / "one.yaml"


def test_one_edit_through_the_page_matches_the_cli(tmp_path, one_thread):
    try:  # test dependencies (the `test` extra): missing, the test fails and says how to install them
        import gradio  # noqa: F401
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.fail(f"the browser test needs Gradio and Playwright ({err}): pip install -e '.[test]'")

    port = _free_port()
    with open(tmp_path / "demo.log", "w") as log:
        server = _start(port, tmp_path / "page", log, FEWER_SEEDS)
        try:
            # The CLI's edit of the same request while the page starts.
            main(["fit", "--config", str(ROOT / "experiments" / "quickstart.yaml"), "--data.manifest",
                  str(_one_request(tmp_path, "pose_000")), *FEWER_SEEDS, "--model.output_dir", str(tmp_path / "cli"),
                  "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
            _wait(server, port, log)
            expected = np.asarray(Image.open(tmp_path / "cli" / "pose_000" / "edit.png").convert("RGB"))
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("#run")
                page.click("#example input")
                page.get_by_role("option", name="pose_000", exact=True).click()
                page.wait_for_function("document.querySelector('#edit-prompt textarea').value.includes('triangle')")
                page.wait_for_selector("#edit-pose canvas")  # the example's edit pose map is in its editor
                page.click("#run")
                page.wait_for_selector("#out-edit img", timeout=300_000)
                assert "edited" in page.inner_text("#status")
                src = page.get_attribute("#out-edit img", "src")
                shown = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
                page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
                print(f"screenshot: {tmp_path / 'demo.png'}")
                assert shown.shape == expected.shape and np.array_equal(shown, expected)
                command = page.inner_text("#command")
                assert "python -m framework fit --config" in command and "--model.mask.threshold 0.5" in command

                page.click("#input-image button[aria-label='Remove Image']")  # no image: a one-line error
                page.click("#run")
                page.wait_for_function("document.querySelector('#status').innerText.includes('error')")
                assert "no input image: pick an example or upload an image" in page.inner_text("#status")
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
