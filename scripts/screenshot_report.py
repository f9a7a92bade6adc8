#!/usr/bin/env python3
"""Screenshot an HTML report in headless Chromium, to look at what a browser really shows.

    python scripts/screenshot_report.py runs/demo-X/report.html                 # report-screenshot.png beside it
    python scripts/screenshot_report.py REPORT.html --out shot.png --size 1280,2000
    python scripts/screenshot_report.py REPORT.html --full --tile 2000          # whole page, cut in tiles

``--full`` renders a very tall window, trims the blank space below the page and, with ``--tile``,
also writes ``<out>-1.png``, ``<out>-2.png``, ... (needs Pillow, which matplotlib installs).
Chromium is found on PATH (Debian: ``apt-get install -y chromium``) or given by ``$CHROMIUM``;
the network is switched off for it, so a page that needs a CDN shows it. Exit codes: 0 written,
1 Chromium wrote nothing, 2 bad arguments, 3 no Chromium.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FULL_HEIGHT = 16000
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(page: Path, out: Path, size: tuple[int, int], browser: str, timeout: float = 120) -> Path:
    """Render ``page`` at ``size`` (width, height) into ``out``; raises RuntimeError if nothing came out."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        # --no-sandbox: Chromium refuses its sandbox as root; the page is a local file we wrote.
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
               f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=5000",
               f"--screenshot={out.resolve()}", page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot to {out} (exit {proc.returncode}): {proc.stderr[-500:]}")
    return out


def trim_and_tile(out: Path, tile: int) -> list[Path]:
    """Cut the blank rows below the page; with ``tile`` > 0 also split it into tiles of that height."""
    from PIL import Image, ImageChops

    with Image.open(out) as im:
        rgb = im.convert("RGB")
    bbox = ImageChops.difference(rgb, Image.new("RGB", rgb.size, rgb.getpixel((rgb.width - 1, rgb.height - 1)))).getbbox()
    bottom = min(rgb.height, (bbox[3] if bbox else rgb.height) + 24)
    rgb = rgb.crop((0, 0, rgb.width, bottom))
    rgb.save(out)
    tiles = []
    if tile > 0:
        for i, top in enumerate(range(0, bottom, tile), 1):
            path = out.with_name(f"{out.stem}-{i}{out.suffix}")
            rgb.crop((0, top, rgb.width, min(bottom, top + tile))).save(path)
            tiles.append(path)
    return tiles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("page", type=Path, help="the report's HTML file")
    ap.add_argument("--out", type=Path, help="PNG to write (default: report-screenshot.png beside the page)")
    ap.add_argument("--size", default="1280,2000", help="window WIDTH,HEIGHT (default 1280,2000)")
    ap.add_argument("--full", action="store_true", help="the whole page (tall window, blank bottom trimmed)")
    ap.add_argument("--tile", type=int, default=0, help="with --full: also write tiles of this height")
    args = ap.parse_args(argv)
    if not args.page.is_file():
        print(f"error: no such page: {args.page}", file=sys.stderr)
        return 2
    try:
        width, height = (int(v) for v in args.size.split(","))
    except ValueError:
        print(f"error: --size: got {args.size!r}, expected WIDTH,HEIGHT", file=sys.stderr)
        return 2
    browser = find_browser()
    if browser is None:
        print("error: chromium not found (apt-get install -y chromium, or set CHROMIUM)", file=sys.stderr)
        return 3
    out = args.out or args.page.with_name("report-screenshot.png")
    try:
        screenshot(args.page, out, (width, FULL_HEIGHT if args.full else height), browser)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tiles = trim_and_tile(out, args.tile) if args.full else []
    print("\n".join(str(p) for p in [out, *tiles]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
