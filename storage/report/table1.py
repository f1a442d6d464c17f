"""The paper's Table 1 layout for our runs: one table per dataset, the paper's numbers beside ours.

Rows, per model: our unedited model (``edits_done = 0``), the paper's "Pre-edited" row, then
one row per cell (method, batch size, n_edits, hyper-parameter variant: cells that differ only in
``hparams_overrides`` are rows of their own, labelled with what differs) at each run's final step
(mean over seeds), followed by the paper's row for that method when the paper has one. A cell without a number says why: ``failed`` (a run of the row failed),
``pending``/``running``/``interrupted`` (not there yet) or ``missing`` (the metric was not computed); never 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from storage import names
from storage.names import RunStatus
from storage.report import paper
from storage.report.cells import natural_key
from storage.report.data import ReportData

_TABLE1_METRICS: tuple[str, ...] = tuple(names.TABLE1_HEADERS)
_COLUMNS_BY_DATASET: dict[str, tuple[str, ...]] = {
    names.DATASET_COUNTERFACT: _TABLE1_METRICS,
    names.DATASET_ZSRE: (names.METRIC_EFFICACY, names.METRIC_GENERALIZATION, names.METRIC_SPECIFICITY),
}
_DATASET_TITLES = {names.DATASET_COUNTERFACT: "CounterFact", names.DATASET_ZSRE: "ZsRE"}


class CellKind(StrEnum):
    """What a table cell holds; the HTML styles each kind (CSS class of the same name)."""

    VALUE = "value"
    FAILED = "failed"
    PENDING = "pending"
    MISSING = "missing"


class RowKind(StrEnum):
    OURS = "ours"
    UNEDITED = "unedited"
    PAPER = "paper"


@dataclass(frozen=True)
class Cell:
    kind: CellKind
    text: str
    title: str = ""  # tooltip: why a number is absent


@dataclass(frozen=True)
class TableRow:
    kind: RowKind
    model: str
    method: str
    batch_size: int | None
    n_edits: int | None
    runs: str  # e.g. "2 finished, 1 failed", or the paper citation
    any_failed: bool
    cells: tuple[Cell, ...]  # one per column of the table
    note: str = ""
    variant: str = ""  # the hyper-parameters this row's cell differs in (storage.report.cells.variant_labels)


@dataclass(frozen=True)
class DatasetTable:
    dataset: str
    title: str
    metrics: tuple[str, ...]
    rows: tuple[TableRow, ...]

    @property
    def headers(self) -> tuple[str, ...]:
        return tuple(names.TABLE1_HEADERS[m] for m in self.metrics)


def format_value(value: float) -> str:
    """A metric value as the paper prints it (two decimals)."""
    return f"{value:.2f}"


def _columns(dataset: str, final: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    if dataset in _COLUMNS_BY_DATASET:
        return _COLUMNS_BY_DATASET[dataset]
    present = [m for m in _TABLE1_METRICS if any(r.get(names.TABLE1_HEADERS[m]) is not None for r in final)]
    return tuple(present) or _TABLE1_METRICS


def _absent_cell(statuses: Sequence[str], what: str) -> Cell:
    """The cell for a metric without a value, from the statuses of the row's runs."""
    if RunStatus.FAILED in statuses:
        return Cell(CellKind.FAILED, "failed", f"{what}: a run of this row failed before measuring it")
    unfinished = [s for s in statuses if s in (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.INTERRUPTED)]
    if unfinished:
        return Cell(CellKind.PENDING, unfinished[0], f"{what}: not measured yet (run {unfinished[0]})")
    return Cell(CellKind.MISSING, "missing", f"{what}: not computed")


def _value_cells(values: Mapping[str, float | None], metrics: Sequence[str], statuses: Sequence[str],
                 what: str) -> tuple[Cell, ...]:
    cells = []
    for m in metrics:
        v = values.get(m)
        cells.append(Cell(CellKind.VALUE, format_value(v)) if v is not None else _absent_cell(statuses, f"{m} {what}"))
    return tuple(cells)


def _status_summary(statuses: Sequence[str]) -> str:
    counts = Counter(statuses)
    order = [s.value for s in RunStatus]
    return ", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: order.index(s) if s in order else 99))


def _paper_row(model_key: str | None, model: str, dataset: str, method: str, metrics: Sequence[str],
               note: str) -> TableRow | None:
    numbers = paper.paper_row(model_key, dataset, method)
    if numbers is None:
        return None
    cells = tuple(
        Cell(CellKind.VALUE, format_value(numbers[m])) if m in numbers else Cell(CellKind.MISSING, "missing")
        for m in metrics
    )
    return TableRow(RowKind.PAPER, model, method, paper.PAPER_BATCH_SIZE, paper.PAPER_N_EDITS,
                    f"paper ({model_key})", False, cells, note)


def build_table1(data: ReportData) -> list[DatasetTable]:
    """Table 1 of our runs, one :class:`DatasetTable` per dataset edited (runs.dataset)."""
    variant = dict(zip(data.cells["run_id"].to_list(), data.cells["variant"].to_list(), strict=True)) \
        if data.cells.height else {}
    runs = [{**r, "variant": variant.get(r["run_id"], "")} for r in data.runs.to_dicts()]
    final = data.final.to_dicts()
    at_end = _final_means(data)
    unedited = data.unedited.to_dicts()
    tables = []
    for dataset in sorted({r["dataset"] for r in runs}):
        ds_runs = [r for r in runs if r["dataset"] == dataset]
        ds_final = [f for f in final if f["dataset"] == dataset]
        metrics = _columns(dataset, ds_final)
        rows: list[TableRow] = []
        for model in sorted({r["model"] for r in ds_runs}):
            m_runs = [r for r in ds_runs if r["model"] == model]
            key = paper.paper_model_key(model, m_runs[0].get("config"))
            rows.extend(_model_rows(model, key, dataset, metrics, m_runs, at_end, unedited))
        tables.append(DatasetTable(dataset, _DATASET_TITLES.get(dataset, dataset), metrics, tuple(rows)))
    return tables


def _final_means(data: ReportData) -> dict[tuple[str, ...], dict[str, float]]:
    """{run_id: {metric: value}} of every run at its final step (edits_done = n_edits) on the dataset it edits."""
    if data.run_metrics.height == 0:
        return {}
    ends = {r["run_id"]: (r["n_edits"], r["dataset"]) for r in data.runs.select("run_id", "n_edits", "dataset").to_dicts()}
    out: dict[tuple[str, ...], dict[str, float]] = {}
    for r in data.run_metrics.to_dicts():
        if ends.get(r["run_id"]) == (r["edits_done"], r["dataset"]):
            out.setdefault(r["run_id"], {})[r["metric"]] = r["value"]
    return out


def _model_rows(model: str, key: str | None, dataset: str, metrics: Sequence[str], runs: Sequence[dict],
                at_end: Mapping[str, Mapping[str, float]], unedited: Sequence[dict]) -> list[TableRow]:
    rows: list[TableRow] = []
    base = {u["metric"]: u["value"] for u in unedited if u["model"] == model and u["dataset"] == dataset}
    statuses = [r["status"] for r in runs]
    base_statuses = statuses if not base else []  # only "missing" once some run measured edits_done = 0
    rows.append(TableRow(RowKind.UNEDITED, model, "unedited", None, 0, "edits_done = 0, mean over runs",
                         False, _value_cells(base, metrics, base_statuses, "of the unedited model")))
    pre = _paper_row(key, model, dataset, paper.UNEDITED, metrics, "")
    if pre is not None:
        rows.append(pre)
    groups = sorted({(r["method"], r["batch_size"], r["n_edits"], r["variant"]) for r in runs},
                    key=lambda g: (g[0], g[1], g[2], natural_key(g[3] or "")))
    for i, (method, batch_size, n_edits, variant) in enumerate(groups):
        g_runs = [r for r in runs if (r["method"], r["batch_size"], r["n_edits"], r["variant"])
                  == (method, batch_size, n_edits, variant)]
        g_statuses = [r["status"] for r in g_runs]
        measured = [at_end[r["run_id"]] for r in g_runs if r["run_id"] in at_end]
        values = {m: sum(v[m] for v in measured if m in v) / n for m in metrics
                  if (n := sum(1 for v in measured if m in v))}
        n_measured = len(measured)
        summary = _status_summary(g_statuses) + (f"; mean of {n_measured}" if n_measured > 1 else "")
        rows.append(TableRow(RowKind.OURS, model, method, batch_size, n_edits, summary,
                             RunStatus.FAILED in g_statuses,
                             _value_cells(values, metrics, g_statuses, f"at {n_edits} edits"), variant=variant))
        if i + 1 < len(groups) and groups[i + 1][:3] == (method, batch_size, n_edits):
            continue  # the paper's row once, after the last variant of the cell
        differs = (n_edits, batch_size) != (paper.PAPER_N_EDITS, paper.PAPER_BATCH_SIZE)
        note = (f"paper protocol {paper.PAPER_N_EDITS} edits, batch {paper.PAPER_BATCH_SIZE}; "
                f"ours {n_edits} edits, batch {batch_size}") if differs else ""
        p = _paper_row(key, model, dataset, method, metrics, note)
        if p is not None:
            rows.append(p)
    return rows
