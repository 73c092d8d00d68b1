"""Render a report's HTML in headless Chromium and save a screenshot, to look at what users will see.

Usage: ``python bench/screenshot_report.py REPORT_DIR [-o shot.png] [--height 4000]``. Needs Debian's
``chromium`` (``apt-get install -y chromium``). The browser runs with networking features off, so the
page must be self-contained to render fully.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 2000) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("chromium is not installed; apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={png.resolve()}",
            f"--window-size={width},{height}",
            html.resolve().as_uri(),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", type=Path)
    parser.add_argument("-o", "--out", type=Path, help="PNG to write (default REPORT_DIR/screenshot.png)")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=2000)
    args = parser.parse_args(argv)
    out = args.out or args.report_dir / "screenshot.png"
    screenshot(args.report_dir / "report.html", out, args.width, args.height)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
