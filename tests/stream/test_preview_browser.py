"""The preview's camera page and index in a real headless Chromium (Debian's
``/usr/bin/chromium``, driven by playwright; never a downloaded browser), skipped with the
reason where there is none.

``SEGSTREAM_PREVIEW_SCREENSHOT=docs/img/preview.png`` makes the test write the README's
screenshot (of a CamVid clip when CamVid is at hand, else a test pattern)::

    SEGSTREAM_PREVIEW_SCREENSHOT=docs/img/preview.png \\
        .venv/bin/pytest tests/stream/test_preview_browser.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.spec import ModelSpec, sidecar_path
from tests.stream._preview import REPO, in_process_run, require_preview, run_cfg

CHROMIUM = os.environ.get("SEGSTREAM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _clip(tmp_path: Path) -> str:
    """A looping source: a CamVid val sequence when CamVid is at hand (what the README's
    screenshot shows), else GStreamer's moving ball."""
    from tests.conftest import camvid_root

    frames = sorted((camvid_root() / "val").glob("0016E5_*.png"))
    if len(frames) < 20:
        return "test://ball?width=480&height=360&fps=30"
    path = tmp_path / "camvid_0016E5.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (480, 360))
    for f in frames:
        writer.write(cv2.resize(cv2.imread(str(f)), (480, 360), interpolation=cv2.INTER_AREA))
    writer.release()
    return f"{path}?loop=1"


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set "
                    "SEGSTREAM_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright not installed: pip install -e '.[dev]'")
    user_data = tempfile.mkdtemp(prefix="segstream-chromium-")
    try:
        with sync_api.sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                user_data, executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
                viewport={"width": 1280, "height": 820},
                bypass_csp=True)  # playwright's wait_for_function evaluates strings
            try:
                yield ctx
            finally:
                ctx.close()
    finally:
        shutil.rmtree(user_data, ignore_errors=True)


def test_camera_page_in_headless_chromium(chromium, tmp_path):
    require_preview()
    from engines.zoo import resolve_model

    model = resolve_model(None)
    spec = ModelSpec.load(sidecar_path(model))
    with in_process_run(run_cfg(model, _clip(tmp_path))) as (url, _, _):
        page = chromium.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url + "camera/cam0")
        page.wait_for_function("/^\\d+$/.test(document.getElementById('seq').textContent)",
                               timeout=30_000)
        page.wait_for_function("document.getElementById('state').textContent === 'running'",
                               timeout=30_000)
        assert page.locator("#legend li .name").all_inner_texts() == [c.name for c in
                                                                         spec.classes]
        shares = page.locator("#legend li .share").all_inner_texts()
        assert all(s.endswith(" %") for s in shares)
        assert abs(sum(float(s.split()[0]) for s in shares) - 100) < 1.0

        view = page.locator("#view")
        first = view.screenshot()
        page.wait_for_function(f"Number(document.getElementById('seq').textContent) > "
                               f"{page.inner_text('#seq')}", timeout=30_000)
        page.wait_for_timeout(300)
        second = view.screenshot()
        a, b = (cv2.imdecode(np.frombuffer(x, np.uint8), cv2.IMREAD_COLOR)
                for x in (first, second))
        assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() > 0.5  # it moves

        # opacity 100 %: every pixel of the picture is a class colour (the mask is drawn
        # losslessly over the frame), and the stage table shows the pipeline's figures
        page.locator("#opacity").fill("100")
        colours = {tuple(c.color) for c in spec.classes}
        drawn = page.evaluate("""() => {
            const v = document.getElementById('view');
            const d = v.getContext('2d').getImageData(0, 0, v.width, v.height).data;
            const out = [];
            for (let i = 0; i < d.length; i += 4 * 97) out.push([d[i], d[i + 1], d[i + 2]]);
            return out; }""")
        assert sum(tuple(p) in colours for p in drawn) / len(drawn) > 0.99
        page.wait_for_function("document.querySelectorAll('#stages tbody tr').length >= 5")
        assert "infer" in page.inner_text("#stages")
        # the engine's mode and the hand-off's drops, as the status line says them
        assert page.inner_text("#engine").startswith("overlap on, ")
        assert page.inner_text("#handoff-dropped").isdigit()
        page.locator("#opacity").fill("50")
        page.wait_for_timeout(500)
        if target := os.environ.get("SEGSTREAM_PREVIEW_SCREENSHOT"):
            page.screenshot(path=str(REPO / target))

        page.goto(url)  # the index: the camera's card with its state and thumbnail
        page.wait_for_function("document.querySelector('.card .thumb').naturalWidth > 0",
                               timeout=30_000)
        assert page.inner_text(".card .state") == "running"
        assert not errors, errors
