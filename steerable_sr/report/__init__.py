"""Reports of results, as files a reader opens: the evaluation report of a trained network
(:mod:`~steerable_sr.report.evaluation`: metrics, spectra, slices, symmetry) and the Markdown of a
symmetry discovery (:mod:`~steerable_sr.report.discovery`)."""
from .discovery import discovery_markdown
from .evaluation import (REPORT_FILES, check_report_destination, evaluate_model, is_report, metrics_markdown,
                         plot_slice, slice_panels, write_report)

__all__ = ["REPORT_FILES", "check_report_destination", "discovery_markdown", "evaluate_model", "is_report",
           "metrics_markdown", "plot_slice", "slice_panels", "write_report"]
