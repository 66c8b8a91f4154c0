"""Serve the figures of ``analysis/figures/`` at ``figures/<name>.png`` in the site.

The PNGs are made by ``analysis/report_figures.py`` and stay where the README points at them;
pages link to ``figures/<name>.png`` (relative to ``docs/``) and this hook adds each file to
the build, so the site never holds a stale copy.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

FIGURES = Path(__file__).resolve().parents[2] / "analysis" / "figures"


def on_files(files: Files, config) -> Files:
    for png in sorted(FIGURES.glob("*.png")):
        files.append(
            File(
                f"figures/{png.name}",
                src_dir=str(FIGURES.parent),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
