"""Report plots as PNG bytes, drawn with matplotlib's Agg renderer (no display, no pyplot state).

Figures are built with ``matplotlib.figure.Figure`` directly, so nothing here switches a global
backend or keeps figures alive between calls. A panel that should hold data but has none says
"missing" in red on the panel itself and is listed in :attr:`Plot.missing`, so a missing curve
never looks like a flat one.

Seed bands: where a cell (model, method, dataset, batch size, hyper-parameters) has several runs (seeds),
a curve is their mean with a shaded **min–max** band (the trade-off plot: min–max error bars on both
axes); a cell with one run is a plain line. :data:`BAND_NOTE` says so on the page.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl
from matplotlib.figure import Figure

from storage import names
from storage.names import RunStatus

log = logging.getLogger(__name__)

_PANEL_W, _PANEL_H, _MAX_COLS = 4.4, 3.2, 3
_DPI = 100
_MISSING_COLOR = "#b00020"
_STAGE_ORDER = (names.STAGE_KEY_STATS, names.STAGE_PROJECTOR, names.STAGE_TARGETS, names.STAGE_SOLVE,
                names.STAGE_EDIT_BATCH, names.STAGE_CHECKPOINT, names.STAGE_REWRITE_EVAL, names.STAGE_PROBE)
#: What the bands show (the report states it once, above the curves).
BAND_NOTE = ("Lines are the mean over a cell's runs (seeds); where a cell has several, the shaded band "
             "(trade-off plot: the error bars) spans their min–max.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
#: Datasets of per-run setup rows (projector rank, distance) that have plots of their own, not curves.
_NOT_CURVES = (names.DATASET_PROJECTOR,)
_EXPECTED_METRICS: dict[str, tuple[str, ...]] = {
    names.DATASET_COUNTERFACT: tuple(names.TABLE1_HEADERS),
    names.DATASET_ZSRE: names.ZSRE_METRICS,
}


@dataclass(frozen=True)
class Plot:
    """One figure of the report."""

    plot_id: str  # stable id, e.g. "metric-efficacy", "probe-toy_knowledge-acc", "timings"
    title: str
    png: bytes
    missing: tuple[str, ...] = ()  # panels that have no data, e.g. "toy-gpt2 · counterfact"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _grid(n: int, title: str) -> tuple[Figure, list]:
    cols = min(n, _MAX_COLS)
    rows = -(-n // cols)
    fig = Figure(figsize=(_PANEL_W * cols, _PANEL_H * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def _figure_legend(fig: Figure, axes: Sequence) -> None:
    """One legend for the whole figure, below its panels (never over a curve or a bar); each
    label once, in the order the lines were drawn."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:  # as many columns as the figure's width holds (about 15 characters per inch at 8 pt), at most 4
        width, height = fig.get_size_inches()
        ncols = max(1, min(len(seen), 4, int(width * 15 / (max(len(label) for label in seen) + 6))))
        fig.set_size_inches(width, height + 0.2 * -(-len(seen) // ncols))  # room for the legend's rows
        fig.legend(list(seen.values()), list(seen), fontsize=8, ncols=ncols, loc="outside lower center")


def _mark_missing(ax, why: str) -> None:
    ax.text(0.5, 0.5, f"missing\n{why}", ha="center", va="center", color=_MISSING_COLOR,
            fontsize=11, fontweight="bold", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(_MISSING_COLOR)
        spine.set_linestyle("--")


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """A fixed colour per method (same in every figure), from matplotlib's tab10 cycle."""
    palette = [f"C{i}" for i in range(10)]
    return {m: palette[i % len(palette)] for i, m in enumerate(sorted(set(methods)))}


def batch_styles(batch_sizes: Iterable[int]) -> dict[int, str]:
    """A fixed line style per batch size (solid, dashed, dotted, ...), so that two batch sizes of
    one method (one colour) stay apart."""
    styles = ["-", "--", ":", "-."]
    return {b: styles[i % len(styles)] for i, b in enumerate(sorted(set(batch_sizes)))}


def _line_label(method: str, batch_size: int, variant: str = "") -> str:
    return f"{method} (b={batch_size}{', ' + variant if variant else ''})"


def variant_markers(variants: Iterable[str]) -> dict[str, str]:
    """A fixed marker per hyper-parameter variant of a cell ("" = none: a circle)."""
    vs = sorted(set(variants) - {""})
    return {"": "o", **{v: _MARKERS[(i + 1) % len(_MARKERS)] for i, v in enumerate(vs)}}


def cell_curves(curves: pl.DataFrame) -> pl.DataFrame:
    """``curves`` with the columns of :func:`storage.report.cells.seed_curves` (``variant``, ``lo``, ``hi``,
    ``n_runs``), filled in for a frame of the ``degradation_curve`` query (one variant, no band); the
    projector's setup rows (edits_done 0 only) are left out."""
    fill = []
    if "variant" not in curves.columns:
        fill.append(pl.lit("").alias("variant"))
    if "lo" not in curves.columns:
        fill += [pl.col("value").alias("lo"), pl.col("value").alias("hi")]
    if "n_runs" not in curves.columns:
        fill.append(pl.lit(1).alias("n_runs"))
    return curves.with_columns(fill).filter(~pl.col("dataset").is_in(_NOT_CURVES))


def _failed_note(runs: pl.DataFrame, model: str, dataset: str | None = None) -> str:
    sel = runs.filter(pl.col("model") == model)
    if dataset is not None:
        sel = sel.filter(pl.col("dataset") == dataset)
    n_failed = sel.filter(pl.col("status") == RunStatus.FAILED).height
    return f" ({n_failed} run{'s' if n_failed > 1 else ''} failed)" if n_failed else ""


def _metric_order(metrics: Iterable[str]) -> list[str]:
    known = list(names.COUNTERFACT_METRICS)
    ms = set(metrics)
    return [m for m in known if m in ms] + sorted(ms - set(known))


def metric_plots(curves: pl.DataFrame, runs: pl.DataFrame) -> list[Plot]:
    """One figure per rewrite metric: value vs. edits done, a line per cell (method, batch size,
    hyper-parameter variant), one panel per (model, dataset); a min–max band over the cell's runs where
    it has several (``curves``: :func:`storage.report.cells.seed_curves`, or the degradation_curve query)."""
    curves = cell_curves(curves)
    markers = variant_markers(curves["variant"].to_list())
    colors = method_colors(runs["method"].to_list() + curves["method"].to_list())
    styles = batch_styles(runs["batch_size"].to_list() + curves["batch_size"].to_list())
    pairs = sorted({(r["model"], r["dataset"]) for r in runs.select("model", "dataset").to_dicts()}
                   | {(r["model"], r["dataset"]) for r in curves.select("model", "dataset").to_dicts()})
    wanted = {m for _, ds in pairs for m in _EXPECTED_METRICS.get(ds, ())} | set(curves["metric"].to_list())
    plots = []
    for metric in _metric_order(wanted):
        m_curves = curves.filter(pl.col("metric") == metric)
        panels = [(mo, ds) for mo, ds in pairs
                  if metric in _EXPECTED_METRICS.get(ds, ()) or m_curves.filter(
                      (pl.col("model") == mo) & (pl.col("dataset") == ds)).height]
        if not panels:
            continue
        header = names.TABLE1_HEADERS.get(metric)
        title = f"{metric} ({header})" if header else metric
        fig, axes = _grid(len(panels), f"{title} vs. edits done")
        missing = []
        for ax, (model, dataset) in zip(axes, panels, strict=True):
            ax.set_title(f"{model} · {dataset}{_failed_note(runs, model, dataset)}", fontsize=9)
            sel = m_curves.filter((pl.col("model") == model) & (pl.col("dataset") == dataset))
            if sel.height == 0:
                _mark_missing(ax, f"{metric} not computed")
                missing.append(f"{model} · {dataset}")
                continue
            for (method, bs, var), line in sel.sort("method", "batch_size", "variant", "edits_done").group_by(
                    ["method", "batch_size", "variant"], maintain_order=True):
                x, y = line["edits_done"].to_numpy(), line["value"].to_numpy()
                ax.plot(x, y, marker=markers[var], ms=3, color=colors[method], ls=styles[bs],
                        label=_line_label(method, bs, var))
                if (line["n_runs"] > 1).any():
                    ax.fill_between(x, line["lo"].to_numpy(), line["hi"].to_numpy(), color=colors[method], alpha=0.15,
                                    linewidth=0)
            ax.set_xlabel("edits done")
            ax.set_ylabel(header or metric)
            ax.grid(alpha=0.3)
        _figure_legend(fig, axes)
        plots.append(Plot(f"metric-{metric}", title, _png(fig), tuple(missing)))
    return plots


def probe_plots(probes: pl.DataFrame, runs: pl.DataFrame) -> list[Plot]:
    """One figure per (probe task, metric): value minus the unedited model's value vs. edits done,
    a line per (method, batch size), one panel per model."""
    colors = method_colors(runs["method"].to_list() + probes["method"].to_list())
    styles = batch_styles(runs["batch_size"].to_list() + probes["batch_size"].to_list())
    models = sorted(set(runs["model"].to_list()) | set(probes["model"].to_list()))
    plots = []
    for (task, metric), sel in probes.sort("task", "metric").group_by(["task", "metric"], maintain_order=True):
        fig, axes = _grid(len(models), f"{task} / {metric}: change from the unedited model")
        missing = []
        for ax, model in zip(axes, models, strict=True):
            ax.set_title(f"{model}{_failed_note(runs, model)}", fontsize=9)
            m_sel = sel.filter(pl.col("model") == model)
            if m_sel.height == 0:
                _mark_missing(ax, "not probed")
                missing.append(f"{model}: not probed")
                continue
            if m_sel["baseline"].is_null().all():
                _mark_missing(ax, "no unedited (edits_done = 0) probe")
                missing.append(f"{model}: no unedited baseline")
                continue
            for (method, bs), line in m_sel.sort("edits_done").group_by(["method", "batch_size"], maintain_order=True):
                ax.plot(line["edits_done"].to_numpy(), line["delta"].to_numpy(), marker="o", ms=3,
                        color=colors[method], ls=styles[bs], label=_line_label(method, bs))
            base = m_sel["baseline"].drop_nulls()[0]
            ax.axhline(0.0, color="grey", lw=0.8, ls=":")
            ax.set_xlabel("edits done")
            ax.set_ylabel(f"Δ {metric} (unedited = {base:.3g})")
            ax.grid(alpha=0.3)
        _figure_legend(fig, axes)
        plots.append(Plot(f"probe-{task}-{metric}", f"{task} / {metric}", _png(fig), tuple(missing)))
    return plots


def tradeoff_points(curves: pl.DataFrame, x_metric: str = names.METRIC_SPECIFICITY,
                    y_metric: str = names.METRIC_EFFICACY) -> pl.DataFrame:
    """One row per evaluation point (model, dataset, method, batch_size, variant, edits_done) with both
    ``x_metric`` and ``y_metric`` (mean over the cell's runs) as ``x`` and ``y``, their min–max as
    ``x_lo``, ``x_hi``, ``y_lo``, ``y_hi`` and the runs as ``n_runs``, in edits order."""
    curves = cell_curves(curves)
    keys = ["model", "dataset", "method", "batch_size", "variant", "edits_done"]
    cols = {"value": "", "lo": "_lo", "hi": "_hi"}
    sel = curves.filter(pl.col("metric").is_in([x_metric, y_metric]))
    both = sel.pivot(on="metric", index=keys, values=list(cols), aggregate_function="mean") if sel.height else sel
    # polars names pivoted columns <value>_<metric> when several values are pivoted
    if f"value_{x_metric}" not in both.columns or f"value_{y_metric}" not in both.columns:
        return pl.DataFrame(schema={**{k: curves.schema[k] for k in keys}, "x": pl.Float64, "y": pl.Float64,
                                    "x_lo": pl.Float64, "x_hi": pl.Float64, "y_lo": pl.Float64, "y_hi": pl.Float64,
                                    "n_runs": pl.Int64})
    runs = (sel.group_by(keys).agg(pl.col("n_runs").min().cast(pl.Int64)))
    ren = {f"{c}_{m}": f"{axis}{suffix}" for c, suffix in cols.items() for m, axis in ((x_metric, "x"), (y_metric, "y"))}
    return (both.rename(ren).join(runs, on=keys).select(*keys, "x", "y", "x_lo", "x_hi", "y_lo", "y_hi", "n_runs")
            .drop_nulls(["x", "y"]).sort(keys))


def tradeoff_plot(curves: pl.DataFrame, runs: pl.DataFrame) -> Plot | None:
    """Efficacy vs. specificity, one panel per (model, dataset): per method (and batch size) one
    point per evaluation point, joined in edits order and labelled with its edits done, so the
    path shows what each method trades as edits accumulate. None when no point has both."""
    points = tradeoff_points(curves)
    if points.height == 0:
        return None
    colors = method_colors(runs["method"].to_list() + points["method"].to_list())
    styles = batch_styles(runs["batch_size"].to_list() + points["batch_size"].to_list())
    markers = variant_markers(points["variant"].to_list())
    panels = sorted({(r["model"], r["dataset"]) for r in points.select("model", "dataset").to_dicts()})
    fig, axes = _grid(len(panels), "Efficacy vs. specificity over edits (one point per evaluation point)")
    for ax, (model, dataset) in zip(axes, panels, strict=True):
        sel = points.filter((pl.col("model") == model) & (pl.col("dataset") == dataset))
        for (method, bs, var), line in sel.group_by(["method", "batch_size", "variant"], maintain_order=True):
            x, y, e = line["x"].to_list(), line["y"].to_list(), line["edits_done"].to_list()
            ax.plot(x, y, marker=markers[var], ms=4, lw=1, color=colors[method], ls=styles[bs],
                    label=_line_label(method, bs, var))
            banded = line.filter(pl.col("n_runs") > 1)
            if banded.height:  # min–max over the cell's seeds, on both axes
                bx, by = banded["x"].to_numpy(), banded["y"].to_numpy()
                ax.errorbar(bx, by, xerr=[bx - banded["x_lo"].to_numpy(), banded["x_hi"].to_numpy() - bx],
                            yerr=[by - banded["y_lo"].to_numpy(), banded["y_hi"].to_numpy() - by],
                            fmt="none", ecolor=colors[method], elinewidth=0.8, capsize=2, alpha=0.6)
            ax.plot(x[-1:], y[-1:], marker="*", ms=11, color=colors[method], lw=0)  # the last point
            for xi, yi, ei in zip(x, y, e, strict=True):
                ax.annotate(str(ei), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=6,
                            color=colors[method])
        ax.set_title(f"{model} · {dataset}{_failed_note(runs, model, dataset)}", fontsize=9)
        ax.set_xlabel(f"specificity ({names.TABLE1_HEADERS.get(names.METRIC_SPECIFICITY, 'Spe.')})")
        ax.set_ylabel(f"efficacy ({names.TABLE1_HEADERS.get(names.METRIC_EFFICACY, 'Eff.')})")
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes)
    return Plot("tradeoff", "Efficacy vs. specificity", _png(fig))


def _stage_order(stages: Sequence[str]) -> list[str]:
    s = set(stages)
    return [x for x in _STAGE_ORDER if x in s] + sorted(s - set(_STAGE_ORDER))


def stage_segments(timings: pl.DataFrame) -> list[tuple[str, str, str | None]]:
    """The segments of the time-per-stage bar, in order: (label, stage, parent) where ``parent`` is
    the stage a part's seconds are inside (``stage_timings.part_of``) and ``stage`` is the stage to
    draw (for a parent with parts, its remainder is drawn as ``(<stage>: rest, <stage>, <stage>)``).

    Only stages with no ``part_of`` are added up; a parent's parts (targets and solve inside
    edit_batch) are drawn inside its span, so a bar never counts a second twice."""
    has_parent = "part_of" in timings.columns
    parent_of = {r["stage"]: (r["part_of"] if has_parent else None)
                 for r in timings.select("stage", *(["part_of"] if has_parent else [])).unique().to_dicts()}
    top = _stage_order([s for s, p in parent_of.items() if p is None])
    segments: list[tuple[str, str, str | None]] = []
    for stage in top:
        parts = _stage_order([s for s, p in parent_of.items() if p == stage])
        segments += [(f"{part} (in {stage})", part, stage) for part in parts]
        segments.append((f"{stage}: rest" if parts else stage, stage, stage if parts else None))
    return segments


def stage_bars(timings: pl.DataFrame) -> tuple[list[tuple[str, str, int]], list[str], list[list[float]]]:
    """(bars, segment labels, seconds[segment][bar]) of the time-per-stage plot: one bar per
    (model, method, batch size), the segments of :func:`stage_segments`; a parent's remainder is
    its seconds minus its drawn parts (never below 0), so each bar adds every second once."""
    keys = timings.select("model", "method", "batch_size").unique().sort("model", "method", "batch_size").rows()
    segments = stage_segments(timings)
    per = {(r["model"], r["method"], r["batch_size"], r["stage"]): float(r["seconds_per_run"] or 0.0)
           for r in timings.select("model", "method", "batch_size", "stage", "seconds_per_run").to_dicts()}
    widths = []
    for _, stage, parent in segments:
        row = []
        for key in keys:
            w = per.get((*key, stage), 0.0)
            if parent is not None and stage == parent:
                w = max(w - sum(per.get((*key, st), 0.0) for _, st, pa in segments if pa == parent and st != parent), 0.0)
            row.append(w)
        widths.append(row)
    return keys, [label for label, _, _ in segments], widths


def timing_plot(timings: pl.DataFrame) -> Plot | None:
    """Seconds per run by stage, one stacked bar per (model, method, batch size); None if no timings.

    Stages contained in another (``part_of``: targets and solve in edit_batch) split their parent's
    span instead of adding to it (:func:`stage_bars`); the evaluations (rewrite_eval, probe) run
    beside the editing, so a bar can be longer than the run's wall time."""
    if timings.height == 0:
        return None
    keys, labels, widths = stage_bars(timings)
    parts = {label for label, _, parent in stage_segments(timings) if parent is not None and not label.endswith(": rest")}
    fig = Figure(figsize=(11.0, 1.6 + 0.45 * len(keys)), layout="constrained")
    ax = fig.subplots()
    left = [0.0] * len(keys)
    for i, (label, row) in enumerate(zip(labels, widths, strict=True)):
        ax.barh(range(len(keys)), row, left=left, color=f"C{i % 10}", label=label,
                hatch="//" if label in parts else None, edgecolor="white", linewidth=0.5)
        left = [a + b for a, b in zip(left, row, strict=True)]
    ax.set_yticks(range(len(keys)), [f"{mo} · {_line_label(me, bs)}" for mo, me, bs in keys], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per run (mean over runs that recorded the stage; evaluations run beside the editing)")
    fig.legend(fontsize=7, ncols=min(len(labels), 5), loc="outside lower center")
    ax.grid(axis="x", alpha=0.3)
    return Plot("timings", "Time per stage", _png(fig))
