"""Self-contained HTML reports of a results file: Table 1 next to the paper, curves, probes, timings.

    from storage.report import write_report, report_hint
    index = write_report("results/results.duckdb", "results/report", sweep_id="s1")

Modules: ``data`` (read-only loading through ``storage.reader``), ``table1`` (the paper's Table 1
layout), ``paper`` (the paper's published numbers), ``plots`` (matplotlib, Agg), ``html``.
matplotlib is imported only when a report is written, so ``report_hint`` stays cheap.
"""

from storage.report.core import INDEX_NAME, default_out_dir, report_hint, write_report

__all__ = ["INDEX_NAME", "default_out_dir", "report_hint", "write_report"]
