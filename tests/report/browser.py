"""Headless Chromium for the report.html tests: find it (PATH, ``$CNNCODES_CHROMIUM`` or the
prefix ``tools/get_chromium.sh`` unpacks into) and take a screenshot of a file:// page with every
host unresolvable (the page's own Content-Security-Policy forbids scripts and any fetch but
``data:`` images; ``--blink-settings=scriptEnabled=false`` would be the other way, but headless
Chromium 150 then writes no screenshot).

    python -m tests.report.browser REPORT.html OUT.png [--width 800]   # e.g. docs/report.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PREFIX = Path(os.environ.get("CNNCODES_CHROMIUM_PREFIX",
                             Path.home() / ".cache" / "cnncodes-test-chromium"))


def find_chromium() -> tuple[str | None, str]:
    """``(path, "")`` of a Chromium that starts, or ``(None, why not)``."""
    tried = []
    explicit = os.environ.get("CNNCODES_CHROMIUM")
    cands = ([explicit] if explicit else []) + [shutil.which(n) for n in NAMES] + \
        [str(PREFIX / "bin" / "chromium")]
    for c in cands:
        if not c or not os.access(c, os.X_OK):
            continue
        tried.append(c)
        try:
            r = subprocess.run([c, "--headless", "--no-sandbox", "--version"],
                               capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            tried[-1] += f" ({type(e).__name__})"
            continue
        if r.returncode == 0:
            return c, ""
        tried[-1] += f" (exit {r.returncode}: {r.stderr.strip()[-200:]})"
    found = f"; tried {', '.join(tried)}" if tried else ""
    return None, (f"no headless Chromium ({', '.join(NAMES)} on PATH, $CNNCODES_CHROMIUM or "
                  f"{PREFIX}/bin/chromium){found}; run tools/get_chromium.sh")


def screenshot(html: Path, png: Path, *, width: int = 1100, height: int = 1400,
               browser: str | None = None, timeout: float = 180) -> Path:
    """``html`` rendered (no host resolvable) into ``png`` (width x height)."""
    browser = browser or find_chromium()[0]
    if browser is None:
        raise RuntimeError(find_chromium()[1])
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions",
               "--disable-background-networking", "--disable-component-update", "--mute-audio",
               "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png}", Path(html).resolve().as_uri()]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium failed ({r.returncode}): {r.stderr[-2000:]}")
    return png


def shrink(png: Path, out: Path, *, width: int = 800, colours: int = 128) -> Path:
    """A small copy of a screenshot (``width`` px wide, palette PNG) for the README."""
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGB")
        h = round(im.height * width / im.width)
        small = im.resize((width, h), Image.Resampling.LANCZOS)
    small.quantize(colours, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--width", type=int, default=800, help="width of the kept PNG")
    p.add_argument("--height", type=int, default=1400, help="browser window height")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        shot = screenshot(a.html, Path(d) / "shot.png", height=a.height)
        shrink(shot, a.out, width=a.width)
    print(a.out)


if __name__ == "__main__":
    main()
