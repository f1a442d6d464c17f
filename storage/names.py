"""Names shared by every layer that writes or reads the result tables.

Other layers import these constants instead of typing strings, so that a metric written by
``eval/`` is the metric that ``storage/queries/*.sql`` looks for. The canned queries use the
literal values below; ``tests/unit/test_storage_queries.py`` checks they stay in step.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

#: The default results file, relative to the repository root: the default config's ``results``
#: (``cluster.config.SweepConfig.results``), and ``--db``'s default in storage.query and jobs.report.
DEFAULT_RESULTS = "results/results.duckdb"


def default_results_path() -> Path:
    """:data:`DEFAULT_RESULTS` in this repository (where a sweep with the default config writes)."""
    return Path(__file__).resolve().parents[1] / DEFAULT_RESULTS


# --- tables -------------------------------------------------------------------------------
TABLE_RUNS = "runs"
TABLE_METRICS = "metrics"
TABLE_PROBES = "probes"
TABLE_TIMINGS = "timings"
TABLE_ARTIFACTS = "artifacts"
TABLE_SCHEMA_VERSION = "schema_version"
TABLE_SWEEP_TAGS = "sweep_tags"
TABLE_NIGHTLY_VERDICTS = "nightly_verdicts"
TABLE_NIGHTLY_CHECKS = "nightly_checks"
TABLE_DRIFT_POINTS = "drift_points"

#: Tables holding results, in export order (``schema_version`` is exported too, last).
RESULT_TABLES: tuple[str, ...] = (
    TABLE_RUNS, TABLE_METRICS, TABLE_PROBES, TABLE_TIMINGS, TABLE_ARTIFACTS,
    TABLE_SWEEP_TAGS, TABLE_NIGHTLY_VERDICTS, TABLE_NIGHTLY_CHECKS, TABLE_DRIFT_POINTS,
)


class NightlyStatus(StrEnum):
    """Verdict of a nightly regression run (``nightly_verdicts.status``)."""

    PASS = "pass"  # every checked metric within its tolerance of the baseline
    FAIL = "fail"  # a regression beyond tolerance, a missing metric, or failed run cells


class CheckStatus(StrEnum):
    """Outcome of one metric of a nightly run (``nightly_checks.status``)."""

    OK = "ok"  # within tolerance of the baseline
    IMPROVED = "improved"  # better than the baseline by more than the tolerance
    REGRESSION = "regression"  # worse than the baseline by more than the tolerance (fails the night)
    MISSING = "missing"  # the baseline has it, tonight does not (fails the night)
    NEW = "new"  # no baseline value to compare with
    INFO = "info"  # reported only (the rule says check: false)


class RunStatus(StrEnum):
    """Life cycle of a row in ``runs``: pending -> running -> finished | failed | interrupted
    (stopped by SIGINT/SIGTERM at a batch boundary; ``--resume`` continues it like any unfinished run)."""

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


# --- edited datasets (runs.dataset, metrics.dataset) ----------------------------------------
DATASET_COUNTERFACT = "counterfact"
DATASET_ZSRE = "zsre"

#: ``edits_done`` of the unedited (pre-edit) model: metrics and probes measured before any edit.
UNEDITED_EDITS_DONE = 0

# --- rewrite metrics (metrics.metric), values scaled like the paper (x100) -----------------
METRIC_EFFICACY = "efficacy"
METRIC_GENERALIZATION = "generalization"
METRIC_SPECIFICITY = "specificity"
METRIC_FLUENCY = "fluency"
METRIC_CONSISTENCY = "consistency"
METRIC_EFFICACY_MAGNITUDE = "efficacy_magnitude"
METRIC_GENERALIZATION_MAGNITUDE = "generalization_magnitude"
METRIC_SPECIFICITY_MAGNITUDE = "specificity_magnitude"

COUNTERFACT_METRICS: tuple[str, ...] = (
    METRIC_EFFICACY,
    METRIC_GENERALIZATION,
    METRIC_SPECIFICITY,
    METRIC_FLUENCY,
    METRIC_CONSISTENCY,
    METRIC_EFFICACY_MAGNITUDE,
    METRIC_GENERALIZATION_MAGNITUDE,
    METRIC_SPECIFICITY_MAGNITUDE,
)
ZSRE_METRICS: tuple[str, ...] = (METRIC_EFFICACY, METRIC_GENERALIZATION, METRIC_SPECIFICITY)

# Hidden-representation drift of preserved documents (the paper's Fig. 5; eval.drift), under DATASET_PRESERVED.
DATASET_PRESERVED = "preserved"
METRIC_DRIFT_SHIFT = "drift_shift"
METRIC_DRIFT_DISPLACEMENT = "drift_displacement"
METRIC_DRIFT_MMD = "drift_mmd"
DRIFT_METRICS: tuple[str, ...] = (METRIC_DRIFT_SHIFT, METRIC_DRIFT_DISPLACEMENT, METRIC_DRIFT_MMD)

# The null-space projector of a run (edits_done 0): rank P / d_k of each edited layer, under DATASET_PROJECTOR.
DATASET_PROJECTOR = "projector"
METRIC_KEPT_FRACTION_PREFIX = "kept_fraction.layer"
METRIC_PROJECTOR_DISTANCE_PREFIX = "projector_distance.layer"


def kept_fraction_metric(layer: int) -> str:
    """``kept_fraction.layer<l>``: the share of d_k the layer's projector keeps (its rank / d_k)."""
    return f"{METRIC_KEPT_FRACTION_PREFIX}{int(layer)}"


def projector_distance_metric(layer: int) -> str:
    """``projector_distance.layer<l>``: ||P_budget - P_full||_F / ||P_full||_F of the layer's projector
    from key statistics cut at a key budget (FastMEMIT) against the full corpus' at the same threshold."""
    return f"{METRIC_PROJECTOR_DISTANCE_PREFIX}{int(layer)}"


def layer_of_metric(metric: str, prefix: str) -> int | None:
    """The layer ``l`` of a per-layer metric ``<prefix><l>`` (None when ``metric`` is not one)."""
    rest = metric.removeprefix(prefix)
    return int(rest) if rest != metric and rest.isdigit() else None


#: Column headers of the paper's Table 1, by metric name (``method_comparison`` query).
TABLE1_HEADERS: dict[str, str] = {
    METRIC_EFFICACY: "Eff.",
    METRIC_GENERALIZATION: "Gen.",
    METRIC_SPECIFICITY: "Spe.",
    METRIC_FLUENCY: "Flu.",
    METRIC_CONSISTENCY: "Consis.",
}

# --- general-capability probes (probes.task, probes.metric) --------------------------------
PROBE_TOY_KNOWLEDGE = "toy_knowledge"
PROBE_TOY_ACCEPTABILITY = "toy_acceptability"
PROBE_SST2 = "sst2"
PROBE_MMLU = "mmlu"
PROBE_METRIC_ACC = "acc"

# --- timed stages (timings.stage); free text, these are the conventional names -------------
STAGE_KEY_STATS = "key_stats"
STAGE_PROJECTOR = "projector"
STAGE_TARGETS = "targets"
STAGE_SOLVE = "solve"
STAGE_EDIT_BATCH = "edit_batch"
STAGE_CHECKPOINT = "checkpoint"
STAGE_REWRITE_EVAL = "rewrite_eval"
STAGE_PROBE = "probe"

# --- artifact kinds (artifacts.kind) --------------------------------------------------------
ARTIFACT_KEY_STATS = "key_stats"
ARTIFACT_PROJECTOR = "projector"
ARTIFACT_CHECKPOINT = "checkpoint"
ARTIFACT_UNEDITED_EVAL = "unedited_eval"  # the evaluation of the unedited model (shared by cells)
