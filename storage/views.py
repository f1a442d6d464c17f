"""Views over the result tables for everyday analysis: run attributes joined in, short names, units.

The tables stay the stored truth (``storage.schema.TABLES``); the views are derived from them and
are re-created (``CREATE OR REPLACE VIEW``) by :func:`apply_views` each time a
:class:`~storage.writer.ResultWriter` opens a file, so new files and files written by older code
both get them (they are not a schema version: nothing stored changes). Every view repeats the run's
``model, method, dataset, batch_size, n_edits, seed`` as its first columns and ends with
``sweep_id, run_id``, so a query needs no join:

* ``metric_units`` / ``stage_units``: what each rewrite metric's value is measured in, and what
  each stage's ``timings.items`` counts (and which stage contains it).
* ``v_metrics``: ``metrics``, long, with ``unit`` (per-layer metrics such as ``kept_fraction.layer3`` take the
  unit of their ``kept_fraction.layer*`` entry in ``metric_units``).
* ``v_points``: one row per run x dataset x ``edits_done`` (an evaluation point) that has at least one
  rewrite metric, one column per rewrite metric (``dataset`` here and in ``v_metrics`` is the dataset
  measured, ``metrics.dataset``); the other metrics' datasets (``projector``: kept_fraction and
  projector_distance, ``preserved``: drift) and metrics (``skipped_records``) are in ``v_metrics`` only.
* ``v_probes``: ``probes``, long, with ``probe = task.metric``, the run's unedited value and the delta.
* ``v_probe_points``: one row per run x ``edits_done`` with every probe in one MAP column, ``probes``
  (``probes['real_knowledge.acc']``): the tasks are data, and a view cannot pivot on data in DuckDB.
* ``v_stage_times``: one row per run x stage: seconds and calls, ``part_of`` for the stages whose
  time another stage already contains (``targets`` and ``solve`` are inside ``edit_batch``), and
  ``items`` split into ``n_items`` (edits, records, layers) and ``bytes`` (checkpoints).
* ``v_run_times``: one row per run: wall-clock seconds beside the editor's and the evaluations'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage import names


@dataclass(frozen=True)
class MetricUnit:
    """How a rewrite metric's ``value`` reads: its unit, the factor applied to the raw quantity, and what it is."""

    unit: str
    scale: float
    meaning: str


_RATE = "percent"
_PROB = "probability x100"

#: Unit of every rewrite metric the project writes (``metrics.metric``).
METRIC_UNITS: dict[str, MetricUnit] = {
    names.METRIC_EFFICACY: MetricUnit(_RATE, 100.0, "share of rewrite prompts where the new target wins "
                                      "(CounterFact probability test; zsRE: token accuracy), x100"),
    names.METRIC_GENERALIZATION: MetricUnit(_RATE, 100.0, "the same over paraphrase prompts, x100"),
    names.METRIC_SPECIFICITY: MetricUnit(_RATE, 100.0, "share of neighborhood prompts where the true target "
                                         "still wins (zsRE: token accuracy on the loc question), x100"),
    names.METRIC_FLUENCY: MetricUnit("entropy x100", 100.0, "weighted bi-/tri-gram entropy (bits) of generated "
                                     "text, x100 (about 600 for fluent text)"),
    names.METRIC_CONSISTENCY: MetricUnit("cosine x100", 100.0, "TF-IDF cosine of generated text to the new "
                                         "target's reference snippets, x100"),
    names.METRIC_EFFICACY_MAGNITUDE: MetricUnit(_PROB, 100.0, "mean p(new) - p(true) after the rewrite "
                                                "prompt, x100"),
    names.METRIC_GENERALIZATION_MAGNITUDE: MetricUnit(_PROB, 100.0, "mean p(new) - p(true) after the "
                                                      "paraphrases, x100"),
    names.METRIC_SPECIFICITY_MAGNITUDE: MetricUnit(_PROB, 100.0, "mean p(true) - p(new) after the "
                                                   "neighborhood prompts, x100"),
    "skipped_records": MetricUnit("records", 1.0, "records a loader skipped as malformed (a count)"),
    names.METRIC_DRIFT_SHIFT: MetricUnit("ratio", 1.0, "distance of the preserved documents' mean hidden state "
                                         "(last edited block, last token) from the unedited one, over the "
                                         "unedited spread (eval.drift)"),
    names.METRIC_DRIFT_DISPLACEMENT: MetricUnit("ratio", 1.0, "mean per-document move of that hidden state, over "
                                                "the unedited spread"),
    names.METRIC_DRIFT_MMD: MetricUnit("MMD^2", 1.0, "RBF-kernel squared maximum mean discrepancy between the "
                                       "edited and unedited hidden states (0: same distribution)"),
    # Per-layer metrics: one entry per name prefix, ``<prefix>*`` (v_metrics matches ``<prefix><layer>``).
    names.METRIC_KEPT_FRACTION_PREFIX + "*": MetricUnit("fraction", 1.0, "rank of the layer's null-space "
                                                        "projector over d_k (dataset projector, edits_done 0)"),
    names.METRIC_PROJECTOR_DISTANCE_PREFIX + "*": MetricUnit("ratio", 1.0, "||P_budget - P_full||_F / ||P_full||_F: "
                                                             "the layer's projector from key statistics cut at a key "
                                                             "budget against the full corpus' at the same threshold "
                                                             "(dataset projector, edits_done 0)"),
}

#: lm-eval metrics that are fractions in [0, 1]; other probe metrics read "as lm-eval reports".
PROBE_FRACTION_METRICS: tuple[str, ...] = ("acc", "acc_norm", "exact_match", "mcc", "f1")


@dataclass(frozen=True)
class StageUnit:
    """What a stage's ``timings.items`` counts, and the stage whose seconds already contain it (if any)."""

    item_unit: str | None
    part_of: str | None
    meaning: str


#: The conventional stages (``storage.names.STAGE_*``); other stages get NULL unit and part_of.
STAGE_UNITS: dict[str, StageUnit] = {
    names.STAGE_KEY_STATS: StageUnit(None, None, "key statistics E[k kT] of the edited layers (charged to "
                                     "the run that computed them; before the run starts)"),
    names.STAGE_PROJECTOR: StageUnit("layers", None, "null-space projectors computed"),
    names.STAGE_EDIT_BATCH: StageUnit("edits", None, "one batch of edits, end to end (targets, keys, solve, "
                                      "the running key sum)"),
    names.STAGE_TARGETS: StageUnit("edits", names.STAGE_EDIT_BATCH, "target values z of a batch"),
    names.STAGE_SOLVE: StageUnit("edits", names.STAGE_EDIT_BATCH, "closed-form solves of a batch"),
    names.STAGE_CHECKPOINT: StageUnit("bytes", None, "writing (or, on resume, reading) a checkpoint"),
    names.STAGE_REWRITE_EVAL: StageUnit("records", None, "rewrite metrics at an evaluation point (runs beside "
                                        "the editing; at step 0, the unedited evaluation, charged to the run that "
                                        "computed it: ~0 in the runs that reused it)"),
    names.STAGE_PROBE: StageUnit(None, None, "lm-eval probes at an evaluation point (runs beside the editing; "
                                 "step 0 as rewrite_eval)"),
}

_RUN_COLUMNS = "r.model, r.method, r.dataset, r.batch_size, r.n_edits, r.seed"
_RUN_IDS = "r.sweep_id, r.run_id"
_EDITOR_STAGES = (names.STAGE_EDIT_BATCH, names.STAGE_CHECKPOINT)
_EVAL_STAGES = (names.STAGE_REWRITE_EVAL, names.STAGE_PROBE)
_SETUP_STAGES = (names.STAGE_KEY_STATS, names.STAGE_PROJECTOR)


@dataclass(frozen=True)
class ViewSpec:
    """One view: its name, what a row is, and its SELECT."""

    name: str
    doc: str
    sql: str


def _lit(value: Any) -> str:
    """A SQL literal of ``value`` (NULL, number or quoted string)."""
    if value is None:
        return "NULL"
    if isinstance(value, (int, float)):
        return repr(float(value))
    return "'" + str(value).replace("'", "''") + "'"


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(_lit(v) for v in values) + ")"


def _values_view(rows: list[tuple[Any, ...]], columns: tuple[str, ...], types: tuple[str, ...]) -> str:
    body = ",\n    ".join("(" + ", ".join(_lit(v) for v in row) + ")" for row in rows)
    casts = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in zip(columns, types, strict=True))
    return f"SELECT {casts} FROM (VALUES\n    {body}\n) AS u({', '.join(columns)})"


def _metric_units_sql() -> str:
    rows = [(m, u.unit, u.scale, u.meaning) for m, u in METRIC_UNITS.items()]
    return _values_view(rows, ("metric", "unit", "scale", "meaning"), ("VARCHAR", "VARCHAR", "DOUBLE", "VARCHAR"))


def _stage_units_sql() -> str:
    rows = [(s, u.item_unit, u.part_of, u.meaning) for s, u in STAGE_UNITS.items()]
    return _values_view(rows, ("stage", "item_unit", "part_of", "meaning"), ("VARCHAR",) * 4)


def _points_sql() -> str:
    pivot = ",\n    ".join(f"max(m.value) FILTER (WHERE m.metric = {_lit(metric)}) AS {metric}"
                           for metric in names.COUNTERFACT_METRICS)
    return f"""SELECT r.model, r.method, m.dataset, r.batch_size, r.n_edits, r.seed, m.edits_done,
    {pivot},
    {_RUN_IDS}
FROM metrics AS m JOIN runs AS r ON r.run_id = m.run_id
WHERE m.metric IN {_in(names.COUNTERFACT_METRICS)}
GROUP BY ALL
ORDER BY r.model, r.method, m.dataset, r.batch_size, r.n_edits, r.seed, r.run_id, m.edits_done"""


_METRICS_SQL = f"""SELECT r.model, r.method, m.dataset, r.batch_size, r.n_edits, r.seed, m.edits_done, m.metric, m.value,
    u.unit, m.n_cases, {_RUN_IDS}
FROM metrics AS m JOIN runs AS r ON r.run_id = m.run_id
LEFT JOIN metric_units AS u ON u.metric = m.metric
    OR (ends_with(u.metric, '*') AND starts_with(m.metric, rtrim(u.metric, '*')))
ORDER BY r.model, r.method, m.dataset, r.batch_size, r.n_edits, r.seed, r.run_id, m.edits_done, m.metric"""

_PROBES_SQL = f"""SELECT {_RUN_COLUMNS}, p.edits_done, p.task, p.metric, p.task || '.' || p.metric AS probe, p.value,
    CASE WHEN p.metric IN {_in(PROBE_FRACTION_METRICS)} THEN 'fraction' ELSE 'as lm-eval reports' END AS unit,
    b.value AS unedited, p.value - b.value AS delta, {_RUN_IDS}
FROM probes AS p JOIN runs AS r ON r.run_id = p.run_id
LEFT JOIN probes AS b ON b.run_id = p.run_id AND b.task = p.task AND b.metric = p.metric
    AND b.edits_done = {names.UNEDITED_EDITS_DONE}
ORDER BY r.model, r.method, r.dataset, r.batch_size, r.n_edits, r.seed, r.run_id, p.edits_done, p.task, p.metric"""

_PROBE_POINTS_SQL = f"""SELECT {_RUN_COLUMNS}, p.edits_done,
    map(list(p.task || '.' || p.metric ORDER BY p.task, p.metric), list(p.value ORDER BY p.task, p.metric)) AS probes,
    {_RUN_IDS}
FROM probes AS p JOIN runs AS r ON r.run_id = p.run_id
GROUP BY ALL
ORDER BY r.model, r.method, r.dataset, r.batch_size, r.n_edits, r.seed, r.run_id, p.edits_done"""

_STAGE_TIMES_SQL = f"""SELECT {_RUN_COLUMNS}, t.stage, any_value(s.part_of) AS part_of, count(*) AS n_calls,
    sum(t.seconds) AS seconds, any_value(s.item_unit) AS item_unit,
    CASE WHEN any_value(s.item_unit) = 'bytes' THEN NULL ELSE CAST(sum(t.items) AS BIGINT) END AS n_items,
    CASE WHEN any_value(s.item_unit) = 'bytes' THEN CAST(sum(t.items) AS BIGINT) END AS bytes,
    CASE WHEN any_value(s.item_unit) = 'bytes' THEN NULL ELSE sum(t.seconds) / nullif(sum(t.items), 0) END
        AS seconds_per_item,
    {_RUN_IDS}
FROM timings AS t JOIN runs AS r ON r.run_id = t.run_id
LEFT JOIN stage_units AS s ON s.stage = t.stage
GROUP BY ALL
ORDER BY r.model, r.method, r.dataset, r.batch_size, r.n_edits, r.seed, r.run_id, t.stage"""

_RUN_TIMES_SQL = f"""SELECT {_RUN_COLUMNS}, r.status,
    date_diff('millisecond', r.started_at, r.finished_at) / 1000.0 AS wall_seconds,
    coalesce(sum(t.seconds) FILTER (WHERE t.stage IN {_in(_EDITOR_STAGES)}), 0) AS edit_seconds,
    coalesce(sum(t.seconds) FILTER (WHERE t.stage IN {_in(_EVAL_STAGES)}), 0) AS eval_seconds,
    coalesce(sum(t.seconds) FILTER (WHERE t.stage IN {_in(_SETUP_STAGES)}), 0) AS setup_seconds,
    {_RUN_IDS}
FROM runs AS r LEFT JOIN timings AS t ON t.run_id = r.run_id
GROUP BY ALL
ORDER BY r.model, r.method, r.dataset, r.batch_size, r.n_edits, r.seed, r.run_id"""

#: Every view, in creation order (a view may use the ones before it).
VIEWS: tuple[ViewSpec, ...] = (
    ViewSpec("metric_units", "One row per rewrite metric: unit, scale (factor on the raw quantity) and meaning.",
             _metric_units_sql()),
    ViewSpec("stage_units", "One row per conventional stage: what timings.items counts (item_unit), the stage "
             "whose seconds already contain it (part_of) and meaning.", _stage_units_sql()),
    ViewSpec("v_metrics", "metrics joined with its run (model, method, batch_size, n_edits, seed) and its unit; "
             "one row per run x dataset x edits_done x metric.", _METRICS_SQL),
    ViewSpec("v_points", "One row per run x dataset x edits_done (an evaluation point) with at least one rewrite "
             "metric, one column per rewrite metric (units in metric_units; NULL where not measured). The "
             "projector and preserved (drift) datasets and skipped_records are in v_metrics only.", _points_sql()),
    ViewSpec("v_probes", "probes joined with its run; probe = task.metric, unit, the run's unedited value "
             "(edits_done 0) and delta = value - unedited.", _PROBES_SQL),
    ViewSpec("v_probe_points", "One row per run x edits_done with probes: probes is a MAP from task.metric to "
             "value (probes['real_knowledge.acc']); one key per probe measured there.", _PROBE_POINTS_SQL),
    ViewSpec("v_stage_times", "One row per run x stage: calls and seconds; part_of names the stage that "
             "already contains these seconds (do not add them to it); items as n_items (edits, records, "
             "layers) or bytes (checkpoints).", _STAGE_TIMES_SQL),
    ViewSpec("v_run_times", "One row per run: wall-clock seconds (started_at to finished_at), the editor's "
             "seconds (edit_batch + checkpoint), the evaluations' (rewrite_eval + probe, which run beside the "
             "editing, so the two can add up to more than the wall time) and setup (key_stats + projector, "
             "charged to the run that computed them, before it started).", _RUN_TIMES_SQL),
)


def apply_views(con: Any, views: tuple[ViewSpec, ...] = VIEWS) -> None:
    """Create or replace every view of ``views`` on ``con``, with its doc as the view's comment (idempotent)."""
    for view in views:
        con.execute(f"CREATE OR REPLACE VIEW {view.name} AS\n{view.sql}")
        con.execute(f"COMMENT ON VIEW {view.name} IS {_lit(view.doc)}")
