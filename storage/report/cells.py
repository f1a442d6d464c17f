"""Run cells of a report: which runs are seeds of one cell, which cells form a study, and the seed bands.

A *cell* is (model, method, dataset, batch size, hyper-parameters): its runs differ only in the seed.
The hyper-parameters come from ``runs.config`` (``config["hparams"]``, as the sweep writes them), so cells
that differ only in ``hparams_overrides`` (the threshold study, FastMEMIT's key budget) are drawn apart,
never averaged together. Pure functions over polars frames; nothing here reads the file or draws.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from storage import names

#: Fields of ``config["hparams"]`` the threshold study varies.
THRESHOLD_FIELDS: tuple[str, ...] = ("nullspace_threshold", "threshold_mode")
#: The field FastMEMIT's key-budget study varies (None: the full corpus).
BUDGET_FIELDS: tuple[str, ...] = ("key_budget_multiplier",)

_CELL = ["model", "method", "dataset", "batch_size"]


def _hparams(config: str | None) -> dict[str, Any]:
    cfg = json.loads(config) if config else {}
    hp = cfg.get("hparams") if isinstance(cfg, Mapping) else None
    return dict(hp) if isinstance(hp, Mapping) else {}


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def natural_key(label: str) -> tuple[Any, ...]:
    """Sort key for variant labels with numbers in numeric order ('m=2' before 'm=10'), 'full' after them."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?|full)", label)
    return tuple((1, math.inf if p == "full" else float(p), "") if i % 2 else (0, 0.0, p)
                 for i, p in enumerate(parts))


def _fmt(value: Any) -> str:
    return "full" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def variant_labels(hparams: Mapping[str, Mapping[str, Any]], groups: Mapping[str, tuple]) -> dict[str, str]:
    """{run_id: label} naming the hyper-parameters in which a run differs from the other runs of its
    group (``groups``: run_id -> (model, method, dataset, batch size)), e.g. ``nullspace_threshold=0.01``;
    "" when every run of the group has the same ones."""
    by_group: dict[tuple, list[str]] = {}
    for rid, g in groups.items():
        by_group.setdefault(g, []).append(rid)
    out: dict[str, str] = {}
    for rids in by_group.values():
        keys = sorted({k for r in rids for k in hparams[r]})
        varying = [k for k in keys if len({_canon(hparams[r].get(k)) for r in rids}) > 1]
        for r in rids:
            out[r] = ", ".join(f"{k}={_fmt(hparams[r].get(k))}" for k in varying)
    return out


def run_cells(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per run: run_id, model, method, dataset, batch_size, seed, status, ``variant`` (the label of
    :func:`variant_labels`), ``hparams`` (canonical JSON), ``threshold``, ``threshold_mode`` and
    ``key_budget`` (the multiplier; null: the full corpus) from ``runs.config``."""
    rows = runs.select("run_id", *_CELL, "seed", "status", "config").to_dicts() if runs.height else []
    hp = {r["run_id"]: _hparams(r["config"]) for r in rows}
    labels = variant_labels(hp, {r["run_id"]: tuple(r[c] for c in _CELL) for r in rows})
    schema = {"run_id": pl.String, "model": pl.String, "method": pl.String, "dataset": pl.String,
              "batch_size": pl.Int64, "seed": pl.Int64, "status": pl.String, "variant": pl.String,
              "hparams": pl.String, "threshold": pl.Float64, "threshold_mode": pl.String, "key_budget": pl.Float64}
    return pl.DataFrame([{
        **{c: r[c] for c in ("run_id", *_CELL, "seed", "status")},
        "variant": labels[r["run_id"]], "hparams": _canon(hp[r["run_id"]]),
        "threshold": hp[r["run_id"]].get("nullspace_threshold"),
        "threshold_mode": hp[r["run_id"]].get("threshold_mode"),
        "key_budget": hp[r["run_id"]].get("key_budget_multiplier"),
    } for r in rows], schema=schema)


def seed_curves(run_metrics: pl.DataFrame, cells: pl.DataFrame) -> pl.DataFrame:
    """Per cell (model, method, batch_size, variant), dataset measured, metric and edits_done: the mean over
    its runs (``value``), the min–max band (``lo``, ``hi``), the sample std (null for one run) and ``n_runs``.

    ``run_metrics``: run_id, dataset, edits_done, metric, value (the ``metrics`` rows); ``cells``: from
    :func:`run_cells`. ``dataset`` is the dataset the metric was measured on (``metrics.dataset``)."""
    keys = ["model", "method", "batch_size", "variant", "dataset", "metric", "edits_done"]
    joined = run_metrics.join(cells.select("run_id", "model", "method", "batch_size", "variant"), on="run_id")
    return (joined.group_by(keys)
            .agg(pl.col("value").mean().alias("value"), pl.col("value").min().alias("lo"),
                 pl.col("value").max().alias("hi"), pl.col("value").std().alias("std"),
                 pl.col("run_id").n_unique().alias("n_runs"))
            .sort(keys))


@dataclass(frozen=True)
class Study:
    """Cells of one (model, method, dataset, batch size) that differ only in ``fields`` of their hparams."""

    model: str
    method: str
    dataset: str
    batch_size: int
    cells: pl.DataFrame  # the rows of run_cells of its runs (every seed)

    @property
    def title(self) -> str:
        return f"{self.model} · {self.method} · {self.dataset} · b={self.batch_size}"


def studies(cells: pl.DataFrame, fields: Iterable[str], measured: Collection[str] | None = None) -> list[Study]:
    """Groups of cells that differ only in ``fields`` (at least two distinct settings of them), e.g. the
    threshold study (:data:`THRESHOLD_FIELDS`) or the key budget (:data:`BUDGET_FIELDS`). A failed run
    counts only when it is in ``measured`` (run ids with rows, e.g. the kept fraction of a threshold that
    then made every update 0: a finding of the study); other failed runs have nothing to show."""
    fields = tuple(fields)
    keep = set(measured or ())
    cells = cells.filter((pl.col("status") != names.RunStatus.FAILED.value) | pl.col("run_id").is_in(list(keep))) \
        if cells.height else cells
    if cells.height == 0:
        return []

    def rest(hp: str) -> str:
        return _canon({k: v for k, v in json.loads(hp).items() if k not in fields})

    def setting(hp: str) -> str:
        return _canon([json.loads(hp).get(k) for k in fields])

    tagged = cells.with_columns(pl.col("hparams").map_elements(rest, return_dtype=pl.String).alias("_rest"),
                                pl.col("hparams").map_elements(setting, return_dtype=pl.String).alias("_setting"))
    out = []
    for (model, method, dataset, bs, _), group in tagged.group_by([*_CELL, "_rest"], maintain_order=True):
        if group["_setting"].n_unique() >= 2:
            out.append(Study(model, method, dataset, int(bs), group.drop("_rest", "_setting")))
    return sorted(out, key=lambda s: (s.model, s.method, s.dataset, s.batch_size))


def final_values(study: Study, run_metrics: pl.DataFrame, run_probes: pl.DataFrame) -> pl.DataFrame:
    """One row per (run, quantity) of a study: run_id, ``quantity`` and ``value``, where a quantity is a
    rewrite metric of the edited dataset at the run's last evaluation point after edits (none for a run
    that failed before one), a probe (``Δ task.metric``, change from the run's unedited value) there, or a projector row (``kept_fraction.layer<l>``,
    ``projector_distance.layer<l>``, at edits_done 0)."""
    rids = study.cells.select("run_id", pl.col("dataset").alias("run_dataset"))
    m = run_metrics.join(rids, on="run_id")
    edited = m.filter(pl.col("dataset") == pl.col("run_dataset"))
    # the last *edited* point: a run that failed before its first evaluation has no rewrite or probe value
    last = (edited.filter(pl.col("edits_done") > names.UNEDITED_EDITS_DONE)
            .group_by("run_id").agg(pl.col("edits_done").max().alias("last")))
    rewrite = (edited.join(last, on="run_id").filter(pl.col("edits_done") == pl.col("last"))
               .select("run_id", pl.col("metric").alias("quantity"), "value"))
    proj = (m.filter((pl.col("dataset") == names.DATASET_PROJECTOR) & (pl.col("edits_done") == names.UNEDITED_EDITS_DONE))
            .select("run_id", pl.col("metric").alias("quantity"), "value"))
    p = run_probes.join(rids.select("run_id"), on="run_id")
    base = p.filter(pl.col("edits_done") == names.UNEDITED_EDITS_DONE).select("run_id", "task", "metric",
                                                                               pl.col("value").alias("base"))
    plast = p.join(last, on="run_id").filter(pl.col("edits_done") == pl.col("last"))
    probes = (plast.join(base, on=["run_id", "task", "metric"])
              .select("run_id", (pl.lit("Δ ") + pl.col("task") + "." + pl.col("metric")).alias("quantity"),
                      (pl.col("value") - pl.col("base")).alias("value")))
    return pl.concat([rewrite, proj, probes], how="vertical_relaxed")
