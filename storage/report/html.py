"""HTML of a report: one self-contained page (inline CSS, inline script, plots as data: URIs).

The page loads nothing from anywhere: no CDN, no fonts, no external images. A small inline
script records script errors and, once the page has loaded, checks that every image decoded;
it then sets ``<body data-rendered="ok">`` (or ``"error: ..."``), which the browser test reads.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any

import polars as pl

from storage.names import RunStatus
from storage.report import paper
from storage.report.data import ReportData
from storage.report.plots import BAND_NOTE, Plot
from storage.report.table1 import DatasetTable, RowKind

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #1a1a1a; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
.meta { color: #555; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num, td.value { text-align: right; font-variant-numeric: tabular-nums; }
td.failed, span.failed, tr.run-failed td.status { background: #fde7ea; color: #b00020; font-weight: 600; }
td.missing, span.missing { background: repeating-linear-gradient(45deg, #f6f6f6, #f6f6f6 6px, #ececec 6px, #ececec 12px);
  color: #8a5a00; font-style: italic; text-align: center; }
td.pending { background: #fff8e1; color: #8a5a00; font-style: italic; text-align: center; }
tr.paper td { color: #555; font-style: italic; background: #fafafa; }
tr.unedited td { background: #f3f7ff; }
td.error { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap; overflow-wrap: anywhere;
  color: #b00020; }
table.runs { width: 100%; } table.runs td.run-id { font-family: ui-monospace, monospace; font-size: 11px;
  overflow-wrap: anywhere; max-width: 360px; min-width: 180px; }
tr.run-error th.error-label { background: #fde7ea; color: #b00020; text-align: right; font-weight: 600; }
.table-wrap { overflow-x: auto; max-width: 100%; }
td.time { white-space: nowrap; }
.status-finished { color: #1b5e20; } .status-running, .status-pending { color: #8a5a00; }
.status-failed { color: #b00020; font-weight: 700; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 560px), 1fr)); gap: 16px;
  align-items: start; }
.plots figure.wide { grid-column: 1 / -1; }
figure { margin: 0; } figure img { width: 100%; height: auto; border: 1px solid #eee; box-sizing: border-box; }
figure.wide img { width: auto; max-width: 100%; }
figcaption { font-size: 13px; color: #555; }
.note { font-size: 12px; color: #666; }
.attention { border-left: 4px solid #b00020; background: #fff5f6; padding: 6px 12px; overflow-wrap: anywhere; }
.meta, .note { overflow-wrap: anywhere; }
"""

# Runs first (errors are recorded from the start), then checks every image on load.
_SCRIPT = """
(function () {
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message || "resource error")); }, true);
  window.addEventListener("load", function () {
    var imgs = document.images, broken = 0;
    for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++; }
    if (broken) errors.push(broken + " image(s) did not decode");
    document.body.dataset.images = String(imgs.length);
    document.body.dataset.rendered = errors.length ? "error: " + errors.join("; ") : "ok";
  });
})();
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


#: A figure at least this wide (pixels: three panels or more) takes a whole row of the plot grid; narrower ones
#: share rows, scaled to their column.
_WIDE_PX = 1100


def _png_width(png: bytes) -> int:
    """Width in pixels from a PNG's IHDR chunk (0 when ``png`` is not a PNG)."""
    return int.from_bytes(png[16:20], "big") if png[:8] == b"\x89PNG\r\n\x1a\n" else 0


def _img(plot: Plot) -> str:
    """A figure of the plot grid; its title is inside the image, so a caption only names missing data."""
    b64 = base64.b64encode(plot.png).decode("ascii")
    caption = ""
    if plot.missing:
        items = ", ".join(_e(m) for m in plot.missing)
        caption = f'<figcaption><span class="missing">missing data: {items}</span></figcaption>'
    width = _png_width(plot.png)
    cls = "plot wide" if width >= _WIDE_PX else "plot"
    size = f' style="max-width: {width}px"' if 0 < width < _WIDE_PX else ""  # scaled down to fit, never up
    return (f'<figure class="{cls}" id="plot-{_e(plot.plot_id)}" data-plot="{_e(plot.plot_id)}"{size}>'
            f'<img alt="{_e(plot.title)}" src="data:image/png;base64,{b64}">{caption}</figure>')


def _table1_html(table: DatasetTable) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in ("Model", "Method", "Batch", "Edits", "Runs", *table.headers))
    body = []
    for row in table.rows:
        cls = [row.kind.value] + (["run-failed"] if row.any_failed else [])
        method = _e(f"paper: {row.method}" if row.kind == RowKind.PAPER else row.method) + (
            f'<div class="note variant">{_e(row.variant)}</div>' if row.variant else "")
        runs = _e(row.runs) + (f'<div class="note">{_e(row.note)}</div>' if row.note else "")
        cells = "".join(
            f'<td class="{c.kind.value}" data-metric="{_e(m)}"'
            + (f' title="{_e(c.title)}"' if c.title else "") + f">{_e(c.text)}</td>"
            for m, c in zip(table.metrics, row.cells, strict=True)
        )
        runs_cls = ' class="failed"' if row.any_failed else ""
        body.append(
            f'<tr class="{" ".join(cls)}" data-model="{_e(row.model)}" data-method="{_e(row.method)}" '
            f'data-kind="{row.kind.value}"><td>{_e(row.model)}</td><td>{method}</td>'
            f'<td class="num">{_e(row.batch_size if row.batch_size is not None else "")}</td>'
            f'<td class="num">{_e(row.n_edits)}</td><td{runs_cls}>{runs}</td>{cells}</tr>'
        )
    return (f'<h3>{_e(table.title)}</h3><div class="table-wrap"><table class="table1" data-dataset="{_e(table.dataset)}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _frame_table(frame: pl.DataFrame, css_class: str, columns: Sequence[str]) -> str:
    """A plain table of ``columns`` of ``frame``; a null shows as "n/a" in the missing style."""
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    rows = []
    for r in frame.select(columns).to_dicts():
        tds = []
        for c in columns:
            v = r[c]
            if v is None:
                tds.append('<td class="missing">n/a</td>')
            elif isinstance(v, float):
                tds.append(f'<td class="num">{v:.3f}</td>')
            elif isinstance(v, int):
                tds.append(f'<td class="num">{v}</td>')
            else:
                tds.append(f"<td>{_e(v)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="table-wrap"><table class="{css_class}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _runs_html(runs: pl.DataFrame) -> str:
    """One row per run; a run's ``error`` goes in full, wrapped, on a row of its own below it
    (spanning the table), so no error is cut by the width of a column."""
    cols = ("run_id", "model", "method", "dataset", "batch_size", "n_edits", "seed", "status", "attempts",
            "last_edits_done", "started_at", "finished_at")
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    rows = []
    for r in runs.to_dicts():
        status = r["status"]
        tds = []
        for c in cols:
            v = r[c]
            if c == "run_id":
                tds.append(f'<td class="run-id">{_e(v)}</td>')
            elif c == "status":
                tds.append(f'<td class="status status-{_e(status)}">{_e(status)}</td>')
            elif c == "last_edits_done" and v is None:
                tds.append('<td class="missing">none</td>')
            elif isinstance(v, int):
                tds.append(f'<td class="num">{v}</td>')
            elif isinstance(v, datetime):
                tds.append(f'<td class="time">{v:%Y-%m-%d %H:%M:%S}</td>')
            else:
                tds.append(f"<td>{_e(v)}</td>")
        rows.append(f'<tr class="run-{_e(status)}" data-run-id="{_e(r["run_id"])}">{"".join(tds)}</tr>')
        if r.get("error"):
            rows.append(f'<tr class="run-error run-{_e(status)}" data-error-of="{_e(r["run_id"])}">'
                        f'<th class="error-label">error</th><td class="error" colspan="{len(cols) - 1}">{_e(r["error"])}</td></tr>')
    return (f'<div class="table-wrap"><table class="runs"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _attention_html(runs: pl.DataFrame) -> str:
    failed = runs.filter(pl.col("status") == RunStatus.FAILED)
    if failed.height == 0:
        return ""
    items = "".join(f"<li><code>{_e(r['run_id'])}</code>: <span class=\"failed\">failed</span> "
                    f"after {_e(r['last_edits_done'] if r['last_edits_done'] is not None else 'no')} measured edits: "
                    f"{_e(r['error'])}</li>" for r in failed.to_dicts())
    return f'<div class="attention" id="failed-runs"><strong>{failed.height} failed run(s)</strong><ul>{items}</ul></div>'


def _plots_html(plots: Sequence[Plot], empty: str) -> str:
    if not plots:
        return f'<p class="missing-section"><span class="missing">{_e(empty)}</span></p>'
    return '<div class="plots">' + "".join(_img(p) for p in plots) + "</div>"


def _study_section(anchor: str, title: str, plots: Sequence[Plot], note: str) -> str:
    """A section of plots with a note, or nothing when there are no plots (no such cells in the file)."""
    if not plots:
        return ""
    return f'<h2 id="{_e(anchor)}">{_e(title)}</h2>\n<p class="note">{_e(note)}</p>\n{_plots_html(plots, "")}'


def render_html(data: ReportData, tables: Sequence[DatasetTable], metric_plots: Sequence[Plot],
                probe_plots: Sequence[Plot], timing_plot: Plot | None, preface_html: str | None = None,
                tradeoff_plot: Plot | None = None, threshold_plots: Sequence[Plot] = (),
                budget_plots: Sequence[Plot] = (), drift_plots: Sequence[Plot] = ()) -> str:
    """The whole report page. ``preface_html`` is inserted verbatim at the top (trusted HTML). The
    threshold, key-budget and Fig. 5 sections appear only when they have plots."""
    counts = data.runs.group_by("status").len().sort("status").rows()
    status_line = ", ".join(f'<span class="status-{_e(s)}">{n} {_e(s)}</span>' for s, n in counts) or "no runs"
    scope = f"sweep <code>{_e(data.sweep_id)}</code>" if data.sweep_id else "all sweeps"
    tables_html = "".join(_table1_html(t) for t in tables) or '<p><span class="missing">no runs</span></p>'
    timing_cols = ("model", "method", "batch_size", "stage", "n_runs", "n_calls", "total_seconds",
                   "seconds_per_run", "items", "seconds_per_item", "part_of", "bytes")
    timings_html = (_plots_html([timing_plot], "") + _frame_table(data.timings, "timings", timing_cols)) if timing_plot else \
        '<p><span class="missing">no timings recorded</span></p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>AlphaEdit report: {_e(data.sweep_id or "all sweeps")}</title>
<style>{_CSS}</style>
<script>{_SCRIPT}</script>
</head><body>
<h1>Knowledge-editing report</h1>
<p class="meta">Results file <code>{_e(data.db_path)}</code> (schema v{data.schema_version}), {scope};
read {data.read_at:%Y-%m-%d %H:%M:%S} UTC. Runs: {status_line}.</p>
{preface_html or ""}
{_attention_html(data.runs)}
<h2 id="table1">Table 1 layout: final step of each run</h2>
<p class="note">Our rows: mean over seeds at each run's final step (edits_done = n_edits). Italic rows: the
paper's published numbers, {_e(paper.PAPER_CITATION)}, shown where model and dataset match. A cell
without a number says why (failed, pending, missing); absent values are never shown as 0.</p>
{tables_html}
<h2 id="metrics">Rewrite metrics vs. edits done</h2>
<p class="note">{_e(BAND_NOTE)}</p>
{_plots_html(metric_plots, "no rewrite metrics recorded")}
<h2 id="tradeoff">Efficacy vs. specificity: the trade-off over edits, per method</h2>
{_plots_html([tradeoff_plot] if tradeoff_plot else [], "no evaluation point with both efficacy and specificity")}
{_study_section("threshold", "Threshold sensitivity (open question 1)", threshold_plots,
                 "Cells that differ only in nullspace_threshold / threshold_mode: kept fraction per layer (at 0 "
                 "edits), and efficacy, specificity and the probes' change at each run's last evaluation point, "
                 "against the threshold. Error bars: min–max over seeds.")}
{_study_section("budget", "Key budget (FastMEMIT, open question 2)", budget_plots,
                 "Cells that differ only in key_budget_multiplier (keys per layer = multiplier x d_k; the full "
                 "corpus at the right): the projector's relative Frobenius distance to the full-corpus one "
                 "(||P_budget - P_full||_F / ||P_full||_F), kept fraction, efficacy, specificity and the probes.")}
{_study_section("drift", "Hidden-representation drift (the paper's Fig. 5)", drift_plots,
                 "Preserved documents' hidden states (output of the last edited layer, last token) on the unedited "
                 "model's first two principal axes: unedited (grey) vs. edited at the run's last checkpoint, one "
                 "panel per method, the same axes in every panel. The numbers are the drift_* rows.")}
<h2 id="probes">General-capability probes vs. edits done (relative to the unedited model)</h2>
{_plots_html(probe_plots, "no probes recorded")}
<h2 id="timings">Time per stage</h2>
{timings_html}
<h2 id="runs">Runs</h2>
{_runs_html(data.runs)}
</body></html>
"""
