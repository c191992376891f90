"""The report: Altair chart specs (`charts`) and the self-contained HTML/PNG/summary.json page (`html`)."""

from qscope_eval.report.html import ReportFiles, render_report, report_html, write_summary_json

__all__ = ["ReportFiles", "render_report", "report_html", "write_summary_json"]
