"""The report: what a build measured and estimated, assembled once (`assemble.make_report` ->
``report.json``) and rendered (`render`: terminal and ``report.html``)."""

from .assemble import make_report, write_report
from .render import render_html, render_terminal

__all__ = ["make_report", "render_html", "render_terminal", "write_report"]
