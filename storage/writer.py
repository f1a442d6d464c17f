"""The single writer of a results database.

One :class:`ResultWriter` owns one DuckDB file (on a cluster it lives inside one Ray actor; tasks
never open the file). Every write is one transaction, so a crash leaves only whole writes.

Idempotency and reruns (also in ``storage/README.md``):

* Measurement rows (``metrics``, ``probes``, ``timings``) and ``artifacts`` rows have a key
  (``schema.TABLES[t].key``). Writing a row whose key exists **replaces** it (last write wins),
  so re-sending the same rows never duplicates them, and a resumed run that re-measures a
  checkpoint overwrites its earlier value. Within one batch, the last row of a key wins.
* Runs are keyed by ``run_id``. :meth:`ResultWriter.register_runs` decides per run:

  ====================  ==================  ===========================================
  existing row          on_existing=resume  on_existing=replace
  ====================  ==================  ===========================================
  none                  NEW                 NEW
  same config, finished SKIP (do nothing)   REPLACED: its measurement rows deleted
  same config, other    RESUME (keep rows)  REPLACED
  different config      RunConflictError    REPLACED
  ====================  ==================  ===========================================
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import polars as pl

from storage import names
from storage import sql as sqlh
from storage.hashing import canonical_json, config_hash
from storage.names import RunStatus
from storage.schema import MIGRATIONS, TABLES, Migration, apply_comments, migrate, utc_now
from storage.views import apply_views

log = logging.getLogger(__name__)

Rows = pl.DataFrame | Sequence[Mapping[str, Any]]

_POLARS_TYPES: dict[str, pl.DataType] = {
    "VARCHAR": pl.String(),
    "JSON": pl.String(),
    "INTEGER": pl.Int32(),
    "BIGINT": pl.Int64(),
    "DOUBLE": pl.Float64(),
    "TIMESTAMP": pl.Datetime("us"),
}
_MEASUREMENT_TABLES = (names.TABLE_METRICS, names.TABLE_PROBES, names.TABLE_TIMINGS, names.TABLE_DRIFT_POINTS)
_WRITER_MANAGED = ("written_at",)


class OnExisting(StrEnum):
    """What :meth:`ResultWriter.register_runs` does with a run_id that is already registered."""

    RESUME = "resume"
    REPLACE = "replace"


class RunDecision(StrEnum):
    """What :meth:`ResultWriter.register_runs` did with one run; the sweep acts on it."""

    NEW = "new"  # first registration: run it
    RESUME = "resume"  # unfinished earlier attempt, same config: run it, resuming from its checkpoint
    SKIP = "skip"  # finished earlier with the same config: nothing to do
    REPLACED = "replaced"  # old rows deleted: run it from scratch


class RunConflictError(ValueError):
    """A run_id is already registered with a different config."""


class UnknownRunError(ValueError):
    """Rows refer to a run_id that is not in ``runs``."""


class RowValidationError(ValueError):
    """Rows handed to the writer do not fit the table's schema."""


@dataclass(frozen=True)
class RunSpec:
    """One run cell as the sweep registers it (a row of ``runs`` before status and timestamps)."""

    run_id: str
    sweep_id: str
    model: str
    method: str
    dataset: str
    batch_size: int
    n_edits: int
    seed: int
    config: Mapping[str, Any] = field(default_factory=dict)
    git_sha: str | None = None

    def __post_init__(self) -> None:
        for name in ("run_id", "sweep_id", "model", "method", "dataset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"RunSpec.{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("batch_size", "n_edits"):
            if getattr(self, name) < 1:
                raise ValueError(f"RunSpec.{name} must be >= 1, got {getattr(self, name)!r} (run {self.run_id})")

    @property
    def config_json(self) -> str:
        return canonical_json(self.config)

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


class ResultWriter:
    """Owns a results DuckDB file: creates/migrates it and performs every write.

    Methods are safe to call from several threads (they serialize on one lock), so the class can
    run in a threaded Ray actor. Arguments and return values are plain data or polars frames.
    """

    def __init__(self, path: str | os.PathLike[str], *, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
        """Open (creating if needed) the results file at ``path`` and migrate it to the latest schema."""
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._con = sqlh.connect(self._path, read_only=False)
        try:
            self.schema_version = migrate(self._con, migrations)
            with self._transaction():
                apply_comments(self._con)
                apply_views(self._con)  # derived views, re-created on every open (storage/views.py)
        except BaseException:
            self._con.close()
            raise
        log.info("results database %s open for writing (schema version %d)", self._path, self.schema_version)

    # --- life cycle ------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Checkpoint and close the file; readers in other processes can open it afterwards."""
        with self._lock:
            if self._con is not None:
                self._con.execute("CHECKPOINT")
                self._con.close()
                self._con = None
                log.info("results database %s closed", self._path)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            if self._con is None:
                raise RuntimeError(f"ResultWriter for {self._path} is closed; create a new one to write")
            self._con.execute("BEGIN TRANSACTION")
            try:
                yield self._con
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise

    # --- runs ------------------------------------------------------------------------------
    def register_runs(
        self, runs: Iterable[RunSpec], on_existing: OnExisting | str = OnExisting.RESUME
    ) -> dict[str, RunDecision]:
        """Register run cells in one transaction; return the decision per run_id (see module doc).

        Raises :class:`RunConflictError` (and writes nothing) when a run_id exists with a
        different config and ``on_existing`` is ``resume``.
        """
        policy = OnExisting(on_existing)
        specs = list(runs)
        by_id: dict[str, RunSpec] = {}
        for s in specs:
            if s.run_id in by_id and by_id[s.run_id].config_hash != s.config_hash:
                raise RunConflictError(f"run_id {s.run_id!r} appears twice in one registration with different configs")
            by_id[s.run_id] = s
        if not by_id:
            return {}
        with self._transaction() as con:
            existing = {
                r[0]: (r[1], r[2], r[3])
                for r in con.execute(
                    "SELECT run_id, config_hash, status, attempts FROM runs WHERE list_contains(?, run_id)",
                    [list(by_id)],
                ).fetchall()
            }
            decisions: dict[str, RunDecision] = {}
            conflicts = []
            for run_id, s in by_id.items():
                if run_id not in existing:
                    decisions[run_id] = RunDecision.NEW
                    continue
                old_hash, old_status, _ = existing[run_id]
                if policy is OnExisting.REPLACE:
                    decisions[run_id] = RunDecision.REPLACED
                elif old_hash != s.config_hash:
                    conflicts.append(f"{run_id} (stored config {old_hash[:12]}, new {s.config_hash[:12]})")
                elif old_status == RunStatus.FINISHED:
                    decisions[run_id] = RunDecision.SKIP
                else:
                    decisions[run_id] = RunDecision.RESUME
            if conflicts:
                raise RunConflictError(
                    f"{self._path}: run_id(s) already registered with a different config: {'; '.join(conflicts)}. "
                    "Give the changed cells new run ids, or register with on_existing='replace' to delete "
                    "their rows and start them over."
                )
            now = utc_now()
            fresh = [
                {
                    "run_id": s.run_id,
                    "sweep_id": s.sweep_id,
                    "model": s.model,
                    "method": s.method,
                    "dataset": s.dataset,
                    "batch_size": s.batch_size,
                    "n_edits": s.n_edits,
                    "seed": s.seed,
                    "config": s.config_json,
                    "config_hash": s.config_hash,
                    "git_sha": s.git_sha,
                    "status": RunStatus.PENDING.value,
                    "error": None,
                    "attempts": existing[s.run_id][2] + 1 if s.run_id in existing else 1,
                    "created_at": now,
                    "started_at": None,
                    "finished_at": None,
                    "updated_at": now,
                }
                for s in by_id.values()
                if decisions[s.run_id] in (RunDecision.NEW, RunDecision.REPLACED)
            ]
            replaced = [r for r, d in decisions.items() if d is RunDecision.REPLACED]
            resumed = [r for r, d in decisions.items() if d is RunDecision.RESUME]
            for table in _MEASUREMENT_TABLES:
                if replaced:
                    con.execute(f"DELETE FROM {table} WHERE list_contains(?, run_id)", [replaced])
            if fresh:
                self._insert(con, names.TABLE_RUNS, self._frame(names.TABLE_RUNS, fresh))
            if resumed:
                con.execute(
                    "UPDATE runs SET status = ?, error = NULL, attempts = attempts + 1, updated_at = ? "
                    "WHERE list_contains(?, run_id)",
                    [RunStatus.PENDING.value, now, resumed],
                )
        counts = {d: sum(1 for x in decisions.values() if x is d) for d in RunDecision}
        log.info("registered %d run(s) in %s: %s", len(decisions), self._path, {str(k): v for k, v in counts.items() if v})
        return decisions

    def register_run(self, run: RunSpec, on_existing: OnExisting | str = OnExisting.RESUME) -> RunDecision:
        """Register one run; see :meth:`register_runs`."""
        return self.register_runs([run], on_existing)[run.run_id]

    def set_status(self, run_id: str, status: RunStatus | str, error: str | None = None) -> None:
        """Move run ``run_id`` to ``status``, stamping started_at / finished_at.

        ``error`` is stored with ``failed`` (and required there); other statuses clear it. A
        finished run is final: re-register it with ``on_existing='replace'`` to run it again.
        """
        new = RunStatus(status)
        if new is RunStatus.FAILED and not error:
            raise ValueError(f"set_status({run_id!r}, 'failed') needs an error message saying why the run failed")
        if new is not RunStatus.FAILED and error is not None:
            raise ValueError(f"an error message is only stored with status 'failed', not {new.value!r}")
        now = utc_now()
        with self._transaction() as con:
            rows = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()
            if not rows:
                raise UnknownRunError(f"{self._path}: no run {run_id!r}; register it with register_runs first")
            old = RunStatus(rows[0][0])
            if old is new is RunStatus.FINISHED:
                return
            if old is RunStatus.FINISHED:
                raise ValueError(
                    f"run {run_id!r} is finished and cannot become {new.value!r}; "
                    "register it again with on_existing='replace' to rerun it"
                )
            started = "?" if new is RunStatus.RUNNING else "started_at"
            finished = "?" if new in (RunStatus.FINISHED, RunStatus.FAILED) else "NULL"
            params: list[Any] = [new.value, error, now]
            params += [now] if new is RunStatus.RUNNING else []
            params += [now] if new in (RunStatus.FINISHED, RunStatus.FAILED) else []
            con.execute(
                f"UPDATE runs SET status = ?, error = ?, updated_at = ?, started_at = {started}, "
                f"finished_at = {finished} WHERE run_id = ?",
                [*params, run_id],
            )
        log.info("run %s: %s -> %s%s", run_id, old.value, new.value, f" ({error})" if error else "")

    # --- measurements ----------------------------------------------------------------------
    def write(
        self, *, metrics: Rows | None = None, probes: Rows | None = None, timings: Rows | None = None,
        drift_points: Rows | None = None,
    ) -> dict[str, int]:
        """Upsert rows into ``metrics``, ``probes``, ``timings`` and ``drift_points`` in **one** transaction.

        Rows are polars frames or sequences of dicts with the table's columns (``written_at``
        is set here; nullable columns may be left out). A row whose key exists replaces it.
        Every run_id must be registered. Returns the number of rows written per table.
        """
        frames = {
            t: self._frame(t, rows)
            for t, rows in ((names.TABLE_METRICS, metrics), (names.TABLE_PROBES, probes), (names.TABLE_TIMINGS, timings),
                            (names.TABLE_DRIFT_POINTS, drift_points))
            if rows is not None
        }
        frames = {t: f for t, f in frames.items() if f.height}
        if not frames:
            return {}
        with self._transaction() as con:
            run_ids = pl.concat([f.select("run_id") for f in frames.values()]).unique()
            con.register("_incoming_run_ids", run_ids)
            try:
                unknown = con.execute(
                    "SELECT run_id FROM _incoming_run_ids WHERE run_id NOT IN (SELECT run_id FROM runs) ORDER BY 1"
                ).fetchall()
            finally:
                con.unregister("_incoming_run_ids")
            if unknown:
                shown = ", ".join(repr(r[0]) for r in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise UnknownRunError(
                    f"{self._path}: rows refer to unregistered run_id(s) {shown}; "
                    "register runs with ResultWriter.register_runs before writing their rows"
                )
            for table, frame in frames.items():
                self._insert(con, table, frame)
        return {t: f.height for t, f in frames.items()}

    def write_metrics(self, rows: Rows) -> int:
        """Upsert rewrite metrics; see :meth:`write`."""
        return self.write(metrics=rows).get(names.TABLE_METRICS, 0)

    def write_probes(self, rows: Rows) -> int:
        """Upsert probe results; see :meth:`write`."""
        return self.write(probes=rows).get(names.TABLE_PROBES, 0)

    def write_timings(self, rows: Rows) -> int:
        """Upsert stage timings (``step`` defaults to 0); see :meth:`write`."""
        return self.write(timings=rows).get(names.TABLE_TIMINGS, 0)

    def record_artifacts(self, records: Iterable[Any]) -> int:
        """Upsert ``artifacts`` rows from :class:`storage.artifacts.ArtifactRecord` objects or dicts."""
        rows = [r.as_row() if hasattr(r, "as_row") else dict(r) for r in records]
        frame = self._frame(names.TABLE_ARTIFACTS, rows)
        if not frame.height:
            return 0
        with self._transaction() as con:
            self._insert(con, names.TABLE_ARTIFACTS, frame)
        return frame.height

    # --- reading through the owner ---------------------------------------------------------
    def query(self, sql: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
        """Run a read-only (SELECT) query on the live file and return a polars frame.

        The query runs in a transaction that is rolled back, on its own cursor.
        """
        with self._lock:
            if self._con is None:
                raise RuntimeError(f"ResultWriter for {self._path} is closed")
            cur = self._con.cursor()
            try:
                cur.execute("BEGIN TRANSACTION")
                try:
                    return sqlh.select(cur, sql, params)
                finally:
                    cur.execute("ROLLBACK")
            finally:
                cur.close()

    def canned(self, name: str, **params: Any) -> pl.DataFrame:
        """Run the canned query ``storage/queries/<name>.sql`` on the live file."""
        q = sqlh.canned_queries.load(name)
        bound = q.bind(params)
        return self.query(q.sql, bound if bound else None)

    def read_only_query(self, sql: str | None = None, params: dict[str, Any] | None = None, *,
                        canned: str | None = None) -> pl.DataFrame:
        """A query as :class:`storage.reader.ResultsReader` runs it, for a reader that cannot open
        the held file (``python -m storage.query`` on a running sweep, :mod:`storage.live`).

        ``sql`` (or the canned query ``canned``, with ``params``) runs on a consistent snapshot
        of the file, opened read-only with file access off: the same guard as a reader, so it can
        neither change the results nor read or write other files.
        """
        from storage.reader import ResultsReader

        if (sql is None) == (canned is None):
            raise ValueError("give exactly one of sql or canned")
        if sql is not None:
            sqlh.check_select_only(sql)
        with tempfile.TemporaryDirectory(prefix="alphaedit-live-") as tmp:
            snap = self.snapshot(Path(tmp) / "live.duckdb")
            with ResultsReader(snap) as reader:
                return reader.canned(canned, **(params or {})) if canned is not None else reader.sql(sql, params)

    def snapshot(self, dest: str | os.PathLike[str]) -> Path:
        """Write a consistent copy of the database to ``dest`` (which must not exist); return its path.

        Other processes can open the copy read-only while this writer keeps the original.
        """
        dest = Path(dest)
        if dest.exists():
            raise FileExistsError(f"snapshot target {dest} exists; remove it or pick another name")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex}")
        alias = f"snapshot_{uuid.uuid4().hex[:12]}"
        with self._lock:
            if self._con is None:
                raise RuntimeError(f"ResultWriter for {self._path} is closed")
            db = self._con.execute("SELECT current_database()").fetchall()[0][0]
            self._con.execute(f"ATTACH '{sqlh._sql_str(tmp)}' AS {alias}")
            try:
                self._con.execute(f'COPY FROM DATABASE "{db}" TO {alias}')
            finally:
                self._con.execute(f"DETACH {alias}")
        os.replace(tmp, dest)
        Path(f"{tmp}.wal").unlink(missing_ok=True)
        log.info("snapshot of %s written to %s", self._path, dest)
        return dest

    def merge_from(self, source: str | os.PathLike[str]) -> dict[str, int]:
        """Copy every row of the results file ``source`` into this one, in one transaction; return
        {table: rows copied}.

        For sweeps written to separate files (e.g. two methods run side by side, each with its own
        writer). ``source`` is opened read-only and must have this code's schema version (open it
        once with a ``ResultWriter`` to migrate it). A row whose key is already here with the same
        values, timestamps aside (e.g. the record of an artifact two sweeps share in one store), is skipped; rows whose
        key is here with other values are refused, all tables named at once, and nothing is copied;
        ``schema_version`` is not copied. The exception is ``artifacts``, a record of what the store holds
        under a key, not a result: where two sweeps stored one key in different files (two runs computing
        the same unedited evaluation at once, before :func:`cluster.workers.shared_form`), this file's row
        is kept and the count is logged.
        """
        src = Path(source)
        if not src.is_file():
            raise FileNotFoundError(f"merge: {src} does not exist")
        if src.resolve() == self._path.resolve():
            raise ValueError(f"merge: {src} is the file being written")
        probe = sqlh.connect(src, read_only=True)
        try:
            from storage.schema import check_version

            check_version(probe, str(src))
        finally:
            probe.close()
        alias = f"merge_{uuid.uuid4().hex[:12]}"
        tables = [t for t in TABLES if t != names.TABLE_SCHEMA_VERSION]
        copied: dict[str, int] = {}
        with self._lock:
            if self._con is None:
                raise RuntimeError(f"ResultWriter for {self._path} is closed")
            self._con.execute(f"ATTACH '{sqlh._sql_str(src)}' AS {alias} (READ_ONLY)")
            try:
                clashes, kept = [], 0
                for t in tables:
                    key = " AND ".join(f"a.{k} IS NOT DISTINCT FROM b.{k}" for k in TABLES[t].key)
                    differ = " OR ".join(f"a.{c.name} IS DISTINCT FROM b.{c.name}" for c in TABLES[t].columns
                                         if c.name not in TABLES[t].key and c.sql_type != "TIMESTAMP")
                    n = self._con.execute(f"SELECT count(*) FROM {t} a JOIN {alias}.{t} b ON {key} "
                                          f"WHERE {differ or 'false'}").fetchall()[0][0]
                    if n and t == names.TABLE_ARTIFACTS:
                        kept = n
                    elif n:
                        clashes.append(f"{t}: {n} row(s)")
                if clashes:
                    raise ValueError(f"merge: {src} has rows whose keys {self._path} already holds "
                                     f"({'; '.join(clashes)}); nothing was copied. Merge files of different "
                                     "sweeps (or rerun the sweep into one file).")
                with self._transaction() as con:
                    for t in tables:
                        cols = ", ".join(TABLES[t].column_names)
                        before = con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                        key = " AND ".join(f"a.{k} IS NOT DISTINCT FROM b.{k}" for k in TABLES[t].key)
                        con.execute(f"INSERT INTO {t} ({cols}) SELECT {cols} FROM {alias}.{t} b "
                                    f"WHERE NOT EXISTS (SELECT 1 FROM {t} a WHERE {key})")
                        copied[t] = con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] - before
            finally:
                self._con.execute(f"DETACH {alias}")
        if kept:
            log.warning("merge: %d artifact row(s) of %s name a key that %s records with another file; "
                        "kept %s's", kept, src, self._path, self._path.name)
        log.info("merged %s into %s: %s", src, self._path, copied)
        return copied

    def export_parquet(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write every table to ``out_dir/<table>.parquet``; see :func:`storage.sql.export_parquet`."""
        with self._lock:
            if self._con is None:
                raise RuntimeError(f"ResultWriter for {self._path} is closed")
            return sqlh.export_parquet(self._con, out_dir)

    # --- internals ---------------------------------------------------------------------------
    def _frame(self, table: str, rows: Rows) -> pl.DataFrame:
        """Validate ``rows`` against ``table``'s spec; return a frame with exactly its columns, cast."""
        spec = TABLES[table]
        if isinstance(rows, pl.DataFrame):
            df = rows
        else:
            rows = list(rows)
            df = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
        if df.height == 0:
            return pl.DataFrame(schema={c.name: _POLARS_TYPES[c.sql_type] for c in spec.columns})
        managed = _WRITER_MANAGED if table in _MEASUREMENT_TABLES else ()
        unknown = [c for c in df.columns if c not in spec.column_names or c in managed]
        if unknown:
            raise RowValidationError(
                f"{table}: unknown or writer-managed column(s) {unknown}; "
                f"allowed: {[c for c in spec.column_names if c not in managed]}"
            )
        if table == names.TABLE_TIMINGS:  # step defaults to 0 (one-off stages)
            step = pl.col("step").fill_null(0) if "step" in df.columns else pl.lit(0, dtype=pl.Int32)
            df = df.with_columns(step.alias("step"))
        if managed:
            df = df.with_columns(pl.lit(utc_now(), dtype=pl.Datetime("us")).alias("written_at"))
        missing = [c.name for c in spec.columns if c.name not in df.columns and not c.nullable]
        if missing:
            raise RowValidationError(f"{table}: rows lack required column(s) {missing}")
        exprs = []
        for c in spec.columns:
            col = pl.col(c.name) if c.name in df.columns else pl.lit(None)
            exprs.append(col.cast(_POLARS_TYPES[c.sql_type], strict=True).alias(c.name))
        try:
            df = df.select(exprs)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as e:
            raise RowValidationError(f"{table}: a column does not convert to its schema type: {e}") from e
        for c in spec.columns:
            if not c.nullable and df[c.name].null_count():
                raise RowValidationError(f"{table}: column {c.name!r} has {df[c.name].null_count()} null value(s)")
        return df.unique(subset=list(spec.key), keep="last", maintain_order=True)

    def _insert(self, con: Any, table: str, frame: pl.DataFrame) -> None:
        cols = ", ".join(frame.columns)
        con.register("_incoming_rows", frame)
        try:
            con.execute(f"INSERT OR REPLACE INTO {table} ({cols}) SELECT {cols} FROM _incoming_rows")
        finally:
            con.unregister("_incoming_rows")
