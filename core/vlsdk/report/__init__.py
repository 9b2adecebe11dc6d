"""Self-contained HTML reports: ``Report(title)`` -> ``report.html`` + ``metrics.json`` + PNGs.

Used by ``vlsdk demo``, ``vlsdk routing`` and the training reports.

Example:
    >>> from vlsdk.report import Report
    >>> report = Report("My run").section("Metrics").add_metrics({"loss": 0.12})
    >>> report.write("out")  # doctest: +SKIP
    PosixPath('out/report.html')
"""

from __future__ import annotations

from vlsdk.report.html import METRICS_NAME, REPORT_NAME, Report, Section

__all__ = ["Report", "Section", "REPORT_NAME", "METRICS_NAME"]
