"""Schema of the results database: table specs (documented column by column) and migrations.

Two things live here and a test keeps them in step:

* ``TABLES``: the *current* schema, one :class:`TableSpec` per table, with the type, nullability
  and meaning of every column and the key that makes writes idempotent. The writer uses it to
  validate and cast incoming frames; the docs become DuckDB column comments
  (``SELECT table_name, column_name, comment FROM duckdb_columns()``) and ``storage/README.md``.
* ``MIGRATIONS``: ordered, frozen DDL. Migration *n* turns a version *n-1* file into version *n*.
  Never edit a released migration; append a new one and update ``TABLES`` to match.

The version of a file is ``max(version)`` of its ``schema_version`` table (0 for a new file).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eval.errors import ExpectedError
from storage import names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Column:
    """One column: DuckDB type, whether NULL is allowed, and what it means."""

    name: str
    sql_type: str
    doc: str
    nullable: bool = False


@dataclass(frozen=True)
class TableSpec:
    """One table of the current schema and the columns that identify a row."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}; columns: {', '.join(self.column_names)}")


_WRITTEN_AT = Column("written_at", "TIMESTAMP", "UTC time the writer stored (or last replaced) this row.")

TABLES: dict[str, TableSpec] = {
    names.TABLE_RUNS: TableSpec(
        name=names.TABLE_RUNS,
        doc="One row per run cell of a sweep (model x method x dataset x batch size x n_edits x seed).",
        key=("run_id",),
        columns=(
            Column("run_id", "VARCHAR", "Id of the run cell, chosen by the sweep; stable across reruns of the same cell."),
            Column("sweep_id", "VARCHAR", "Id of the sweep that first registered the run."),
            Column("model", "VARCHAR", "Model as named in the config: HF model id, local path or toy model name."),
            Column("method", "VARCHAR", "Editing method, e.g. alphaedit, memit, fastmemit."),
            Column("dataset", "VARCHAR", "Dataset whose facts are edited, e.g. counterfact, zsre."),
            Column("batch_size", "INTEGER", "Edits applied per batch (one closed-form solve per batch)."),
            Column("n_edits", "INTEGER", "Total number of edits the run applies (its final edits_done)."),
            Column("seed", "INTEGER", "Random seed of the run (sampling of the edited facts and so on)."),
            Column("config", "JSON", "The resolved config of the run cell, as JSON."),
            Column("config_hash", "VARCHAR", "sha256 hex of the canonical JSON of config (storage.hashing.config_hash)."),
            Column("git_sha", "VARCHAR", "Git commit of the code that registered the run; NULL if unknown.", nullable=True),
            Column("status", "VARCHAR", "pending | running | finished | failed | interrupted (storage.names.RunStatus)."),
            Column("error", "VARCHAR", "Why the run failed (status = failed); NULL otherwise.", nullable=True),
            Column("attempts", "INTEGER", "How many times the run was registered: 1, plus one per resume or replace."),
            Column("created_at", "TIMESTAMP", "UTC time the run was first registered (reset by a replace)."),
            Column("started_at", "TIMESTAMP", "UTC time the run last went to running; NULL before.", nullable=True),
            Column("finished_at", "TIMESTAMP", "UTC time the run last finished or failed; NULL before.", nullable=True),
            Column("updated_at", "TIMESTAMP", "UTC time of the last change to this row."),
        ),
    ),
    names.TABLE_METRICS: TableSpec(
        name=names.TABLE_METRICS,
        doc="Rewrite metrics in long format: one value per (run, edits done, dataset, metric).",
        key=("run_id", "edits_done", "dataset", "metric"),
        columns=(
            Column("run_id", "VARCHAR", "The run (runs.run_id)."),
            Column("edits_done", "INTEGER", "Edits applied when measured; 0 = the unedited model."),
            Column("dataset", "VARCHAR", "Dataset the metric was computed on, e.g. counterfact, zsre."),
            Column("metric", "VARCHAR", "Metric name (storage.names.METRIC_*), e.g. efficacy, fluency."),
            Column("value", "DOUBLE", "The value, scaled like the paper (percentages x100; fluency as in the paper)."),
            Column("n_cases", "INTEGER", "Number of cases averaged into value; NULL if not known.", nullable=True),
            _WRITTEN_AT,
        ),
    ),
    names.TABLE_PROBES: TableSpec(
        name=names.TABLE_PROBES,
        doc="General-capability probes (lm-eval tasks) in long format.",
        key=("run_id", "edits_done", "task", "metric"),
        columns=(
            Column("run_id", "VARCHAR", "The run (runs.run_id)."),
            Column("edits_done", "INTEGER", "Edits applied when probed; 0 = the unedited model."),
            Column("task", "VARCHAR", "Probe task, e.g. toy_knowledge, toy_acceptability, sst2, mmlu."),
            Column("metric", "VARCHAR", "Probe metric, e.g. acc (lm-eval's name without the ',none' filter suffix)."),
            Column("value", "DOUBLE", "The value as lm-eval reports it (a fraction for acc)."),
            _WRITTEN_AT,
        ),
    ),
    names.TABLE_TIMINGS: TableSpec(
        name=names.TABLE_TIMINGS,
        doc="Wall-clock seconds spent per stage of a run.",
        key=("run_id", "stage", "step"),
        columns=(
            Column("run_id", "VARCHAR", "The run that did (and is charged for) the work (runs.run_id)."),
            Column("stage", "VARCHAR", "Stage name (storage.names.STAGE_*), e.g. key_stats, edit_batch, probe."),
            Column("step", "INTEGER", "Which occurrence of the stage in the run, e.g. the batch index; 0 for one-off stages."),
            Column("seconds", "DOUBLE", "Wall-clock seconds."),
            Column("items", "BIGINT", "Units of work done (edits, tokens, cases); NULL if not meaningful.", nullable=True),
            _WRITTEN_AT,
        ),
    ),
    names.TABLE_ARTIFACTS: TableSpec(
        name=names.TABLE_ARTIFACTS,
        doc="Expensive artifacts (key statistics, projectors, checkpoints) held by the artifact store.",
        key=("kind", "key"),
        columns=(
            Column("kind", "VARCHAR", "Artifact kind, e.g. key_stats, projector, checkpoint."),
            Column("key", "VARCHAR", "sha256 hex of the canonical JSON of the artifact key (see spec)."),
            Column("spec", "JSON", "The artifact key itself: every field that changes the content."),
            Column("path", "VARCHAR", "Where the data file lies: a local path or an fsspec URL."),
            Column("format", "VARCHAR", "Encoding of the data file: arrays (safetensors), npy, json or bytes."),
            Column("sha256", "VARCHAR", "sha256 hex of the data file; verified on every read."),
            Column("bytes", "BIGINT", "Size of the data file in bytes."),
            Column("created_at", "TIMESTAMP", "UTC time the artifact was stored."),
        ),
    ),
    names.TABLE_SWEEP_TAGS: TableSpec(
        name=names.TABLE_SWEEP_TAGS,
        doc="Labels on sweeps (e.g. nightly): which sweeps belong together, for filtering and baselines.",
        key=("sweep_id", "tag"),
        columns=(
            Column("sweep_id", "VARCHAR", "The tagged sweep (runs.sweep_id)."),
            Column("tag", "VARCHAR", "The label, e.g. nightly."),
            Column("created_at", "TIMESTAMP", "UTC time the tag was (last) set."),
        ),
    ),
    names.TABLE_NIGHTLY_VERDICTS: TableSpec(
        name=names.TABLE_NIGHTLY_VERDICTS,
        doc="One row per nightly regression run (jobs/nightly.py): its verdict and what it was compared with.",
        key=("sweep_id",),
        columns=(
            Column("sweep_id", "VARCHAR", "The nightly sweep, nightly-<date> by default (runs.sweep_id)."),
            Column("tag", "VARCHAR", "Suite of nightlies this one belongs to; baselines come from the same tag."),
            Column("night", "DATE", "The date the nightly stands for (its --date)."),
            Column("status", "VARCHAR", "pass | fail (storage.names.NightlyStatus)."),
            Column("baseline_sweep_id", "VARCHAR", "Sweep compared with (the last passing nightly of the tag); "
                   "NULL when the thresholds file gave every baseline.", nullable=True),
            Column("thresholds", "VARCHAR", "Path of the thresholds file (tolerances, and baselines when the "
                   "database has none)."),
            Column("n_checks", "INTEGER", "Metrics compared."),
            Column("n_failed", "INTEGER", "Metrics that failed (regression or missing)."),
            Column("sweep_exit_code", "INTEGER", "Exit code of the sweep (0 = every cell finished)."),
            Column("message", "VARCHAR", "Why the night failed, in one line; NULL when it passed.", nullable=True),
            Column("config_hash", "VARCHAR", "Hash of the nightly sweep config (cluster.config.SweepConfig.hash)."),
            Column("git_sha", "VARCHAR", "Git commit of the code that ran; NULL if unknown.", nullable=True),
            Column("checked_at", "TIMESTAMP", "UTC time of the comparison (reset by a rerun of the night)."),
        ),
    ),
    names.TABLE_NIGHTLY_CHECKS: TableSpec(
        name=names.TABLE_NIGHTLY_CHECKS,
        doc="The regression table of each nightly: one row per (sweep, cell, method, metric).",
        key=("sweep_id", "cell", "method", "metric"),
        columns=(
            Column("sweep_id", "VARCHAR", "The nightly sweep (nightly_verdicts.sweep_id)."),
            Column("cell", "VARCHAR", "model/dataset/b<batch_size>/n<n_edits> of the runs compared."),
            Column("method", "VARCHAR", "Editing method (runs.method)."),
            Column("metric", "VARCHAR", "Rewrite metric (efficacy, ...), probe as <task>.<metric>, or "
                   "seconds_per_edit; measured at the run's final edits_done."),
            Column("baseline", "DOUBLE", "Baseline value; NULL when there is none.", nullable=True),
            Column("baseline_source", "VARCHAR", "Where baseline came from: a sweep_id or 'thresholds'; NULL "
                   "without a baseline.", nullable=True),
            Column("value", "DOUBLE", "Tonight's value; NULL when missing.", nullable=True),
            Column("delta", "DOUBLE", "value - baseline; NULL when either is missing.", nullable=True),
            Column("direction", "VARCHAR", "Which way is better: higher | lower | both (any change is bad)."),
            Column("tolerance", "DOUBLE", "Allowed change in the bad direction, in the metric's units "
                   "(a relative tolerance already multiplied by |baseline|); NULL without a baseline.",
                   nullable=True),
            Column("status", "VARCHAR", "ok | improved | regression | missing | new | info "
                   "(storage.names.CheckStatus); regression and missing fail the night."),
        ),
    ),
    names.TABLE_DRIFT_POINTS: TableSpec(
        name=names.TABLE_DRIFT_POINTS,
        doc="2-D PCA points of the preserved documents' hidden states (the paper's Fig. 5; eval.drift): one row "
            "per (run, edits done, document), on the unedited model's first two principal axes.",
        key=("run_id", "edits_done", "doc"),
        columns=(
            Column("run_id", "VARCHAR", "The run (runs.run_id)."),
            Column("edits_done", "INTEGER", "Edits applied when measured; 0 = the unedited model."),
            Column("doc", "INTEGER", "Index of the preserved document (the order of the drift documents)."),
            Column("x", "DOUBLE", "Coordinate on the unedited states' first principal axis (centred on their mean)."),
            Column("y", "DOUBLE", "Coordinate on their second principal axis."),
            _WRITTEN_AT,
        ),
    ),
}


@dataclass(frozen=True)
class Migration:
    """DDL that turns a schema version ``version - 1`` file into version ``version``."""

    version: int
    description: str
    statements: tuple[str, ...]


_V1 = (
    """CREATE TABLE schema_version (
        version INTEGER PRIMARY KEY,
        description VARCHAR NOT NULL,
        applied_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,
        sweep_id VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        batch_size INTEGER NOT NULL,
        n_edits INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        config JSON NOT NULL,
        config_hash VARCHAR NOT NULL,
        git_sha VARCHAR,
        status VARCHAR NOT NULL CHECK (status IN ('pending', 'running', 'finished', 'failed')),
        error VARCHAR,
        attempts INTEGER NOT NULL,
        created_at TIMESTAMP NOT NULL,
        started_at TIMESTAMP,
        finished_at TIMESTAMP,
        updated_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE metrics (
        run_id VARCHAR NOT NULL,
        edits_done INTEGER NOT NULL,
        dataset VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        value DOUBLE NOT NULL,
        n_cases INTEGER,
        written_at TIMESTAMP NOT NULL,
        PRIMARY KEY (run_id, edits_done, dataset, metric)
    )""",
    """CREATE TABLE probes (
        run_id VARCHAR NOT NULL,
        edits_done INTEGER NOT NULL,
        task VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        value DOUBLE NOT NULL,
        written_at TIMESTAMP NOT NULL,
        PRIMARY KEY (run_id, edits_done, task, metric)
    )""",
    """CREATE TABLE timings (
        run_id VARCHAR NOT NULL,
        stage VARCHAR NOT NULL,
        step INTEGER NOT NULL,
        seconds DOUBLE NOT NULL,
        items BIGINT,
        written_at TIMESTAMP NOT NULL,
        PRIMARY KEY (run_id, stage, step)
    )""",
    """CREATE TABLE artifacts (
        kind VARCHAR NOT NULL,
        key VARCHAR NOT NULL,
        spec JSON NOT NULL,
        path VARCHAR NOT NULL,
        format VARCHAR NOT NULL,
        sha256 VARCHAR NOT NULL,
        bytes BIGINT NOT NULL,
        created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (kind, key)
    )""",
)

_V2 = (
    """CREATE TABLE sweep_tags (
        sweep_id VARCHAR NOT NULL,
        tag VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (sweep_id, tag)
    )""",
    """CREATE TABLE nightly_verdicts (
        sweep_id VARCHAR PRIMARY KEY,
        tag VARCHAR NOT NULL,
        night DATE NOT NULL,
        status VARCHAR NOT NULL CHECK (status IN ('pass', 'fail')),
        baseline_sweep_id VARCHAR,
        thresholds VARCHAR NOT NULL,
        n_checks INTEGER NOT NULL,
        n_failed INTEGER NOT NULL,
        sweep_exit_code INTEGER NOT NULL,
        message VARCHAR,
        config_hash VARCHAR NOT NULL,
        git_sha VARCHAR,
        checked_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE nightly_checks (
        sweep_id VARCHAR NOT NULL,
        cell VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        baseline DOUBLE,
        baseline_source VARCHAR,
        value DOUBLE,
        delta DOUBLE,
        direction VARCHAR NOT NULL CHECK (direction IN ('higher', 'lower', 'both')),
        tolerance DOUBLE,
        status VARCHAR NOT NULL
            CHECK (status IN ('ok', 'improved', 'regression', 'missing', 'new', 'info')),
        PRIMARY KEY (sweep_id, cell, method, metric)
    )""",
)

#: ``interrupted`` (a sweep stopped by SIGINT/SIGTERM at a batch boundary; resumable) joins the run statuses.
#: DuckDB cannot alter a CHECK constraint, so ``runs`` is rebuilt with the same columns and rows.
_V3 = (
    """CREATE TABLE runs_v3 (
        run_id VARCHAR PRIMARY KEY,
        sweep_id VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        batch_size INTEGER NOT NULL,
        n_edits INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        config JSON NOT NULL,
        config_hash VARCHAR NOT NULL,
        git_sha VARCHAR,
        status VARCHAR NOT NULL CHECK (status IN ('pending', 'running', 'finished', 'failed', 'interrupted')),
        error VARCHAR,
        attempts INTEGER NOT NULL,
        created_at TIMESTAMP NOT NULL,
        started_at TIMESTAMP,
        finished_at TIMESTAMP,
        updated_at TIMESTAMP NOT NULL
    )""",
    "INSERT INTO runs_v3 SELECT * FROM runs",
    "DROP TABLE runs",
    "ALTER TABLE runs_v3 RENAME TO runs",
)

#: The Fig. 5 scatter: the preserved documents' hidden states as 2-D PCA points, per checkpoint.
_V4 = (
    """CREATE TABLE drift_points (
        run_id VARCHAR NOT NULL,
        edits_done INTEGER NOT NULL,
        doc INTEGER NOT NULL,
        x DOUBLE NOT NULL,
        y DOUBLE NOT NULL,
        written_at TIMESTAMP NOT NULL,
        PRIMARY KEY (run_id, edits_done, doc)
    )""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema: runs, metrics, probes, timings, artifacts", _V1),
    Migration(2, "nightly regression runs: sweep_tags, nightly_verdicts, nightly_checks", _V2),
    Migration(3, "runs.status may be 'interrupted' (stopped by a signal at a batch boundary; resumable)", _V3),
    Migration(4, "drift_points: 2-D PCA points of the preserved documents' hidden states (Fig. 5)", _V4),
)

#: The schema version this code writes and expects.
SCHEMA_VERSION: int = MIGRATIONS[-1].version


class SchemaVersionError(ExpectedError, RuntimeError):
    """The results file has a schema version this code cannot use."""


def utc_now() -> datetime:
    """Current UTC time as a naive datetime (how every TIMESTAMP column is stored)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _has_table(con: Any, table: str) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND database_name = current_database()",
        [table],
    ).fetchall()
    return bool(rows[0][0])


def current_version(con: Any) -> int:
    """Schema version of the database behind ``con``: 0 for a file without ``schema_version``."""
    if not _has_table(con, names.TABLE_SCHEMA_VERSION):
        return 0
    rows = con.execute(f"SELECT coalesce(max(version), 0) FROM {names.TABLE_SCHEMA_VERSION}").fetchall()
    return int(rows[0][0])


def check_version(con: Any, where: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Return the schema version of ``con``; raise :class:`SchemaVersionError` unless it is current.

    ``where`` names the file in the message.
    """
    latest = migrations[-1].version
    version = current_version(con)
    if version == 0:
        raise SchemaVersionError(
            f"{where} is not a results database (it has no schema_version table). "
            "Results files are created by storage.writer.ResultWriter; check the --db path."
        )
    if version > latest:
        raise SchemaVersionError(
            f"{where} has schema version {version}, newer than this code knows (up to {latest}). "
            "Update this checkout (git pull) to read it."
        )
    if version < latest:
        raise SchemaVersionError(
            f"{where} has schema version {version}; this code expects {latest}. "
            f"Open it once with storage.writer.ResultWriter({where!r}) to migrate it in place "
            "(keep a copy first if other checkouts still read it)."
        )
    return version


def migrate(con: Any, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Apply the pending ``migrations`` to ``con`` in order, one transaction each; return the version.

    Raises :class:`SchemaVersionError` when the file is newer than ``migrations``.
    """
    versions = [m.version for m in migrations]
    assert versions == list(range(1, len(migrations) + 1)), f"migrations must be numbered 1..n, got {versions}"
    version = current_version(con)
    if version > versions[-1]:
        raise SchemaVersionError(
            f"results file has schema version {version}, newer than this code knows (up to {versions[-1]}); "
            "update this checkout before writing to it."
        )
    for m in migrations[version:]:
        log.info("migrating results database to schema version %d: %s", m.version, m.description)
        con.execute("BEGIN TRANSACTION")
        try:
            for stmt in m.statements:
                con.execute(stmt)
            con.execute(
                f"INSERT INTO {names.TABLE_SCHEMA_VERSION} VALUES (?, ?, ?)", [m.version, m.description, utc_now()]
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        version = m.version
    return version


def apply_comments(con: Any, tables: dict[str, TableSpec] = TABLES) -> None:
    """Store the table and column docs of ``tables`` as DuckDB comments (idempotent); tables the file does
    not have (one opened with fewer migrations, as in a migration test) are left out."""

    def q(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    for spec in tables.values():
        if not _has_table(con, spec.name):
            continue
        con.execute(f"COMMENT ON TABLE {spec.name} IS {q(spec.doc)}")
        for c in spec.columns:
            con.execute(f"COMMENT ON COLUMN {spec.name}.{c.name} IS {q(c.doc)}")
