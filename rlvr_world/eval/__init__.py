"""Evaluation of world models: reports (``report``: report.md, learning curves, sample grids)."""

from .report import Report, frame_grid, markdown_table, plot_curves

__all__ = ["Report", "frame_grid", "markdown_table", "plot_curves"]
