"""One self-contained HTML page per result file (``depthflow report run.nc -o run.html``):
model, data and provenance, every group with its key numbers and intervals, and the
figures embedded as base64 PNG, in reading order. No script, no network, no server."""

from depthflow.reporting.html import SECTIONS, render_report, write_report

__all__ = ["SECTIONS", "render_report", "write_report"]
