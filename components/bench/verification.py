"""Verification protocol maths, kept importable here: they live in :mod:`components.report.verification`.

Training (a lower layer than the benchmarks) scores its models with the same maths,
so the maths sit in ``report``; the benchmarks import them from there.
"""

from components.report.verification import best_threshold, tar_at_far, ten_fold_accuracy, verification_report

__all__ = ["best_threshold", "tar_at_far", "ten_fold_accuracy", "verification_report"]
