"""Write the figures of a run's HTML report as PNG files (the README's figures come from here).

    python analysis/report_figures.py RUN OUT_DIR

Builds ``RUN/report.html`` with `datamodels.report.build_report` and writes every inline image
to ``OUT_DIR/<alt text>.png`` (spaces as underscores), so the files are exactly what the report
shows.
"""

from __future__ import annotations

import base64
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

from datamodels.report import build_report


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append((attrs.get("alt", "figure"), attrs.get("src", "")))


def main(run: str, out_dir: str) -> list[Path]:
    page = _Images()
    page.feed(build_report(run).read_text(encoding="utf-8"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for alt, src in page.images:
        path = out / (re.sub(r"[^A-Za-z0-9]+", "_", alt).strip("_").lower() + ".png")
        path.write_bytes(base64.b64decode(src.split(",", 1)[1]))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main(*sys.argv[1:3]):
        print(path)
