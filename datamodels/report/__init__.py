"""The static HTML report of a run: `build_report(run, out)` (``datamodels report RUN``)."""

from datamodels.report.html import SECTIONS, build_report

__all__ = ["SECTIONS", "build_report"]
