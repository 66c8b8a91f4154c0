"""Screenshot a run's HTML report in headless Chromium (the README's report screenshots).

    python analysis/report_screenshot.py RUN OUT.png [--section ID ...] [--height PX]

Builds ``RUN/report.html`` with `datamodels.report.build_report`, opens it in headless
Chromium (Debian's ``chromium``, ``chromium-browser`` or ``$CHROMIUM``) and saves a
1100-pixel-wide screenshot: the top of the page, or the title and chosen sections only
(``--section lds_curve --section alpha``; the ids are the keys of
`datamodels.report.SECTIONS`; the others are hidden by a style rule in a copy of the page).
Exits with a one-line error when no Chromium is installed or no screenshot is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from datamodels.report import SECTIONS, build_report

WIDTH = 1100


def chromium() -> str:
    """The Chromium binary: ``$CHROMIUM``, else ``chromium`` or ``chromium-browser`` on PATH."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    found = found or shutil.which("chromium-browser")
    if not found:
        sys.exit("error: no chromium on PATH (apt-get install chromium, or set $CHROMIUM)")
    return found


def screenshot(
    run: str, out: str, sections: list[str] | None = None, height: int = 1400
) -> Path:
    """Write the PNG ``out`` of ``run``'s report (only ``sections`` when given); return it."""
    unknown = sorted(set(sections or []) - set(dict(SECTIONS)))
    if unknown:
        sys.exit(f"error: --section {unknown[0]!r} is not one of {', '.join(dict(SECTIONS))}")
    page = build_report(run)
    if sections:
        shown = ", ".join(f"section#{key}" for key in sections)
        rule = f"<style>section {{ display: none; }} {shown} {{ display: block; }}</style>"
        text = page.read_text(encoding="utf-8").replace("</head>", rule + "</head>", 1)
        page = page.with_name(page.stem + ".sections.html")
        page.write_text(text, encoding="utf-8")
    url = page.resolve().as_uri()
    target = Path(out).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={WIDTH},{height}",
        f"--screenshot={target}",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if not target.is_file() or target.read_bytes()[:4] != b"\x89PNG":
        sys.exit(f"error: chromium wrote no screenshot to {target}: {done.stderr.strip()[-300:]}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("out")
    parser.add_argument(
        "--section", action="append", default=None, help="a section id, e.g. lds_curve (repeatable)"
    )
    parser.add_argument("--height", type=int, default=1400, help="window height in pixels")
    args = parser.parse_args()
    print(screenshot(args.run, args.out, args.section, args.height))


if __name__ == "__main__":
    main()
