"""Report: clustering metrics, the run's JSON summary and HTML gallery.

Verification maths (LFW's 10-fold protocol, ROC AUC, TAR at FAR) are in
:mod:`components.report.verification`: training scores its models with them, and
the benchmarks report them.
"""

from components.report.metrics import bcubed_prf, clustering_summary, pairwise_prf, silhouette_cosine
from components.report.summary import build_summary, render_html, write_report

__version__ = "1.0.0"

__all__ = ["bcubed_prf", "build_summary", "clustering_summary", "pairwise_prf", "render_html", "silhouette_cosine", "write_report"]
