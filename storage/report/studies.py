"""Plots of the open questions and of Fig. 5: the threshold study, FastMEMIT's key budget, the drift scatter.

* :func:`threshold_plots`: for cells that differ only in ``nullspace_threshold`` / ``threshold_mode``
  (``jobs/configs/smollm2_threshold.yaml``), kept fraction per layer, efficacy, specificity and the
  probes against the threshold (log x; the relative mode as its own marker).
* :func:`budget_plots`: for cells that differ only in ``key_budget_multiplier``
  (``jobs/configs/smollm2_fastmemit.yaml``), the projector's distance to the full-corpus one, the kept
  fraction, efficacy and specificity against the multiplier (the full corpus at the right).
* :func:`drift_scatter_plots`: the preserved documents' hidden states on the unedited model's first two
  principal axes, unedited vs. edited at each run's last checkpoint, one panel per method (the paper's
  Fig. 5; table ``drift_points``).

Several seeds of a setting: the mean, with min–max error bars.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from storage import names
from storage.report.cells import BUDGET_FIELDS, THRESHOLD_FIELDS, Study, final_values, natural_key, studies
from storage.report.plots import Plot, _figure_legend, _grid, _mark_missing, _png, method_colors

log = logging.getLogger(__name__)

_RELATIVE = "relative"
_FAILED_COLOR = "#b00020"
_EDIT_METRICS = (names.METRIC_EFFICACY, names.METRIC_SPECIFICITY)


def _per_layer(quantities: Sequence[str], prefix: str) -> list[tuple[int, str]]:
    found = [(names.layer_of_metric(q, prefix), q) for q in quantities]
    return sorted((layer, q) for layer, q in found if layer is not None)


def _setting_stats(values: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    """Mean and min–max of ``value`` over the runs (seeds) of each setting ``by`` x quantity."""
    return (values.group_by([*by, "quantity"])
            .agg(pl.col("value").mean().alias("mean"), pl.col("value").min().alias("lo"),
                 pl.col("value").max().alias("hi"), pl.len().alias("n"))
            .sort([*by, "quantity"]))


def _draw(ax, x: Sequence[float], stats: pl.DataFrame, color: str, marker: str, label: str, line: bool = True) -> None:
    y, lo, hi = stats["mean"].to_numpy(), stats["lo"].to_numpy(), stats["hi"].to_numpy()
    ax.plot(x, y, marker=marker, ms=5, lw=1 if line else 0, color=color, label=label)
    if (stats["n"] > 1).any():
        ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", ecolor=color, capsize=2, elinewidth=0.8)


def _panels(quantities: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(panel title, quantities drawn in it): per-layer projector rows, the edit metrics, the probes."""
    out = []
    for prefix, title in ((names.METRIC_PROJECTOR_DISTANCE_PREFIX, "projector distance to the full corpus"),
                          (names.METRIC_KEPT_FRACTION_PREFIX, "kept fraction (rank P / d_k)")):
        layers = _per_layer(quantities, prefix)
        if layers:
            out.append((title, [q for _, q in layers]))
    out += [(f"{m} ({names.TABLE1_HEADERS.get(m, m)})", [m]) for m in _EDIT_METRICS]
    probes = sorted(q for q in quantities if q.startswith("Δ "))
    if probes:
        out.append(("probes: change from the unedited model", probes))
    return out


def _layer_label(q: str) -> str:
    for prefix in (names.METRIC_KEPT_FRACTION_PREFIX, names.METRIC_PROJECTOR_DISTANCE_PREFIX):
        layer = names.layer_of_metric(q, prefix)
        if layer is not None:
            return f"layer {layer}"
    return q.removeprefix("Δ ")


def _study_figure(study: Study, values: pl.DataFrame, title: str, xlabel: str, xs: dict[str, float],
                  log_x: bool, xticks: dict[float, str] | None, markers: dict[str, str], plot_id: str,
                  failed: Sequence[str] = ()) -> Plot:
    """One figure of a study: a panel per quantity group, x = the setting's position ``xs[setting]``; settings
    whose marker is not the default one are drawn as separate points (e.g. the relative threshold mode)."""
    panels = _panels(values["quantity"].unique().to_list())
    fig, axes = _grid(len(panels), f"{title}: {study.title}")
    stats = _setting_stats(values, ["setting"])
    missing = []
    for ax, (ptitle, qs) in zip(axes, panels, strict=True):
        ax.set_title(ptitle, fontsize=9)
        drawn = False
        for i, q in enumerate(qs):
            color = f"C{i % 10}" if len(qs) > 1 else "C0"
            for marker in dict.fromkeys(markers.values()):
                sel = stats.filter((pl.col("quantity") == q)
                                   & pl.col("setting").is_in([s for s, m in markers.items() if m == marker]))
                if sel.height == 0:
                    continue
                sel = sel.with_columns(pl.col("setting").replace_strict(xs, return_dtype=pl.Float64).alias("_x")).sort("_x")
                default = marker == "o"
                label = _layer_label(q) if len(qs) > 1 else q
                _draw(ax, sel["_x"].to_list(), sel, color, marker, label if default else f"{label} ({_RELATIVE})",
                      line=default)
                drawn = True
        if not drawn:
            _mark_missing(ax, "not measured")
            missing.append(ptitle)
            continue
        if log_x:
            ax.set_xscale("log")
        if xticks:
            ax.set_xticks(list(xticks), list(xticks.values()))
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if len(qs) > 1:
            ax.legend(fontsize=7)
    if failed:  # settings whose runs failed: what they have (e.g. the kept fraction) is drawn, the rest is not
        fig.supxlabel(f"failed (see the runs table): {', '.join(failed)}", color=_FAILED_COLOR, fontsize=9)
    return Plot(plot_id, f"{title}: {study.title}", _png(fig), tuple(missing))


def _failed(study: Study, label: Callable[[dict[str, Any]], str]) -> list[str]:
    return sorted({label(c) for c in study.cells.to_dicts() if c["status"] == names.RunStatus.FAILED.value})


def _values(study: Study, run_metrics: pl.DataFrame, run_probes: pl.DataFrame,
            setting: Callable[[dict[str, Any]], str]) -> pl.DataFrame:
    """:func:`storage.report.cells.final_values` of the study with each run's ``setting`` (a label)."""
    vals = final_values(study, run_metrics, run_probes)
    tags = pl.DataFrame([{"run_id": r["run_id"], "setting": setting(r)} for r in study.cells.to_dicts()],
                        schema={"run_id": pl.String, "setting": pl.String})
    return vals.join(tags, on="run_id").select("run_id", "quantity", "value", "setting")


def _threshold_setting(cell: dict[str, Any]) -> str:
    return f"{cell['threshold_mode'] or 'absolute'}:{cell['threshold']!r}"


def _budget_setting(cell: dict[str, Any]) -> str:
    return "full" if cell["key_budget"] is None else repr(float(cell["key_budget"]))


def threshold_plots(cells: pl.DataFrame, run_metrics: pl.DataFrame, run_probes: pl.DataFrame) -> list[Plot]:
    """One figure per threshold study (cells differing only in the threshold and its mode); none without."""
    plots = []
    measured = set(run_metrics["run_id"].to_list()) if run_metrics.height else set()
    for k, study in enumerate(studies(cells, THRESHOLD_FIELDS, measured)):
        values = _values(study, run_metrics, run_probes, _threshold_setting)
        xs = {_threshold_setting(c): float(c["threshold"]) for c in study.cells.to_dicts()}
        markers = {s: ("D" if s.startswith(_RELATIVE + ":") else "o") for s in xs}
        plots.append(_study_figure(study, values, "Threshold sensitivity", "null-space threshold (log; relative: "
                                   "λ < t·λ_max, diamonds)", xs, True, None, markers, f"threshold-{k}",
                                   _failed(study, lambda c: f"{c['threshold']:g} ({c['threshold_mode']})")))
    return plots


def budget_plots(cells: pl.DataFrame, run_metrics: pl.DataFrame, run_probes: pl.DataFrame) -> list[Plot]:
    """One figure per key-budget study (cells differing only in ``key_budget_multiplier``); the x axis is
    the multiplier in order, the full corpus at the right; none without such cells."""
    plots = []
    measured = set(run_metrics["run_id"].to_list()) if run_metrics.height else set()
    for k, study in enumerate(studies(cells, BUDGET_FIELDS, measured)):
        values = _values(study, run_metrics, run_probes, _budget_setting)
        budgets = sorted({float(b) for b in study.cells["key_budget"].to_list() if b is not None})
        order = [repr(b) for b in budgets] + (["full"] if study.cells["key_budget"].is_null().any() else [])
        xs = {s: float(i) for i, s in enumerate(order)}
        ticks = {float(i): ("full corpus" if s == "full" else f"{float(s):g}×d_k") for i, s in enumerate(order)}
        # the full corpus is its own reference: distance 0 by definition
        full_runs = study.cells.filter(pl.col("key_budget").is_null())["run_id"].to_list()
        layers = {q for q in values["quantity"].to_list() if q.startswith(names.METRIC_PROJECTOR_DISTANCE_PREFIX)}
        zero = pl.DataFrame([{"run_id": r, "quantity": q, "value": 0.0, "setting": "full"}
                             for r in full_runs for q in sorted(layers)],
                            schema={"run_id": pl.String, "quantity": pl.String, "value": pl.Float64, "setting": pl.String})
        values = pl.concat([values, zero])
        plots.append(_study_figure(study, values, "Key budget (FastMEMIT)", "preserved keys per layer",
                                   xs, False, ticks, dict.fromkeys(xs, "o"), f"budget-{k}",
                                   _failed(study, lambda c: "full corpus" if c["key_budget"] is None
                                           else f"{c['key_budget']:g}×d_k")))
    return plots


def drift_scatter_plots(cells: pl.DataFrame, drift_points: pl.DataFrame) -> list[Plot]:
    """Fig. 5: per (model, dataset) one figure, a panel per cell (method, batch size, variant; its first
    run by seed): the unedited states (grey) and those at the run's last checkpoint (the method's colour)
    on the unedited states' PCA axes, the same axis limits in every panel. None without drift points."""
    if drift_points.height == 0:
        return []
    pts = drift_points.join(cells.select("run_id", "model", "method", "dataset", "batch_size", "variant", "seed"),
                            on="run_id")
    colors = method_colors(cells["method"].to_list())
    plots = []
    for (model, dataset), sel in pts.sort("model", "dataset").group_by(["model", "dataset"], maintain_order=True):
        first = (sel.select("method", "batch_size", "variant", "seed", "run_id").unique()
                 .sort("method", "batch_size", "variant", "seed", "run_id")
                 .group_by(["method", "batch_size", "variant"], maintain_order=True).first())
        first = pl.DataFrame(sorted(first.to_dicts(), key=lambda c: (c["method"], c["batch_size"],
                                                                      natural_key(c["variant"] or ""))),
                             schema=first.schema)
        fig, axes = _grid(first.height, f"Hidden states of preserved documents (Fig. 5): {model} · {dataset}")
        lim = [sel["x"].min(), sel["x"].max(), sel["y"].min(), sel["y"].max()]
        pad_x, pad_y = 0.05 * (lim[1] - lim[0] or 1.0), 0.05 * (lim[3] - lim[2] or 1.0)
        for ax, cell in zip(axes, first.to_dicts(), strict=True):
            run = sel.filter(pl.col("run_id") == cell["run_id"])
            last = int(run["edits_done"].max())
            before = run.filter(pl.col("edits_done") == names.UNEDITED_EDITS_DONE)
            after = run.filter(pl.col("edits_done") == last)
            ax.scatter(before["x"].to_numpy(), before["y"].to_numpy(), s=9, color="0.55", alpha=0.7, label="unedited")
            if last != names.UNEDITED_EDITS_DONE:
                ax.scatter(after["x"].to_numpy(), after["y"].to_numpy(), s=9, marker="^", color=colors[cell["method"]],
                           alpha=0.7, label=f"{cell['method']}: edited (last checkpoint)")
            head = f"{cell['method']} (b={cell['batch_size']}) · {last} edits"
            ax.set_title("\n".join([head, *textwrap.wrap(cell["variant"], 48)]), fontsize=8)
            ax.set_xlim(lim[0] - pad_x, lim[1] + pad_x)
            ax.set_ylim(lim[2] - pad_y, lim[3] + pad_y)
            ax.set_xlabel("PC 1 (unedited)")
            ax.set_ylabel("PC 2 (unedited)")
            ax.grid(alpha=0.3)
        _figure_legend(fig, axes)
        plots.append(Plot(f"drift-{model}-{dataset}", f"Fig. 5 drift scatter: {model} · {dataset}", _png(fig)))
    return plots
