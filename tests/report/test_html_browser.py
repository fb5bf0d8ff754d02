"""report.html in a real browser: headless Chromium (no host resolvable; the page's CSP allows
no script and no fetch but data: images) renders the baseline page from file:// to a screenshot
that is not blank. Skips, saying why, without a Chromium (``tools/get_chromium.sh`` fetches one;
``.ci/run`` calls it).

``CNNCODES_KEEP_SCREENSHOT=PATH`` keeps a small copy of the screenshot (how docs/ gets its PNG;
for the demo's own report: ``python -m tests.report.browser data/demo/baseline/report.html
docs/report.png``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .browser import find_chromium, screenshot, shrink
from .html_fixtures import baseline_run, hostile_tree  # noqa: F401 - session fixtures

BROWSER, WHY = find_chromium()
needs_browser = pytest.mark.skipif(BROWSER is None, reason=WHY)


def blank(png: Path) -> tuple[bool, float, int]:
    """``(blank, share of pixels off the dominant colour, distinct colours)`` of a screenshot."""
    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(a, axis=0, return_counts=True)
    off = 1.0 - counts.max() / counts.sum()
    return bool(off < 0.05 or len(colours) < 50), float(off), int(len(colours))


@needs_browser
def test_an_empty_page_counts_as_blank(tmp_path):
    """The check below can fail: a page with nothing on it is blank."""
    page = tmp_path / "empty.html"
    page.write_text("<!DOCTYPE html><html><body style='background:#fff'></body></html>")
    assert blank(screenshot(page, tmp_path / "empty.png", width=600, height=400))[0]


@needs_browser
def test_baseline_page_renders_offline(baseline_run, tmp_path):  # noqa: F811
    shot = screenshot(baseline_run.report / "report.html", tmp_path / "shot.png", width=1100,
                      height=1600)
    with Image.open(shot) as im:
        assert im.size == (1100, 1600)
    is_blank, off, colours = blank(shot)
    assert not is_blank, (off, colours)
    assert colours > 500, colours  # text alone has fewer: the inlined plots and thumbnails
    keep = os.environ.get("CNNCODES_KEEP_SCREENSHOT")
    if keep:
        shrink(shot, Path(keep))
