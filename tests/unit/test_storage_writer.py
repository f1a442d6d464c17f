"""ResultWriter: schema and migrations, idempotent upserts, the rerun rule, run status."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from storage import names
from storage.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    Migration,
    SchemaVersionError,
    current_version,
    migrate,
)
from storage.writer import (
    ResultWriter,
    RowValidationError,
    RunConflictError,
    RunDecision,
    RunSpec,
    UnknownRunError,
)

README = Path(__file__).resolve().parents[2] / "storage" / "README.md"


def spec(run_id: str = "r1", **over) -> RunSpec:
    fields = dict(
        run_id=run_id, sweep_id="s1", model="toy-gpt2", method="alphaedit", dataset="counterfact",
        batch_size=10, n_edits=30, seed=0, config={"lr": 0.5, "layers": [3, 4]}, git_sha="abc123",
    )
    fields.update(over)
    return RunSpec(**fields)


def metric_rows(run_id: str = "r1", value: float = 90.0) -> list[dict]:
    return [
        {"run_id": run_id, "edits_done": e, "dataset": "counterfact", "metric": m, "value": value - e}
        for e in (0, 10, 20)
        for m in ("efficacy", "specificity")
    ]


@pytest.fixture
def writer(tmp_path):
    w = ResultWriter(tmp_path / "results.duckdb")
    yield w
    w.close()


def count(w: ResultWriter, table: str, where: str = "true") -> int:
    return w.query(f"SELECT count(*) AS n FROM {table} WHERE {where}")["n"][0]


# --- schema ------------------------------------------------------------------------------------
def test_new_file_is_at_latest_version_and_matches_table_specs(writer):
    assert writer.schema_version == SCHEMA_VERSION
    for table, tspec in TABLES.items():
        got = writer.query(f"DESCRIBE {table}")
        assert got["column_name"].to_list() == list(tspec.column_names), table
        assert got["column_type"].to_list() == [c.sql_type for c in tspec.columns], table
        nullable = dict(zip(got["column_name"], got["null"], strict=True))
        for c in tspec.columns:
            assert (nullable[c.name] == "YES") == c.nullable, f"{table}.{c.name} nullability"


def test_status_check_constraint_lists_exactly_the_run_statuses():
    ddl = " ".join(s for m in MIGRATIONS for s in m.statements)
    runs = re.findall(r"CREATE TABLE runs\w* \(.*?status VARCHAR NOT NULL CHECK \(status IN \(([^)]*)\)", ddl, re.S)
    allowed = runs[-1]  # the latest definition of runs (migration 3 rebuilt it with 'interrupted')
    assert sorted(s.strip(" '") for s in allowed.split(",")) == sorted(s.value for s in names.RunStatus)


def test_readme_documents_every_column():
    text = README.read_text()
    for table, tspec in TABLES.items():
        section = text.split(f"### `{table}`", 1)
        assert len(section) == 2, f"README has no section for table {table}"
        body = section[1].split("\n### ", 1)[0]
        for c in tspec.key:
            assert c in body
        for c in tspec.column_names:
            assert f"`{c}`" in body, f"README does not document {table}.{c}"


def test_reopen_keeps_data_and_does_not_remigrate(tmp_path):
    path = tmp_path / "r.duckdb"
    with ResultWriter(path) as w:
        w.register_run(spec())
    with ResultWriter(path) as w:
        assert count(w, "runs") == 1
        assert count(w, "schema_version") == SCHEMA_VERSION


def test_migrations_apply_in_order_and_only_once(tmp_path):
    extra = Migration(SCHEMA_VERSION + 1, "add runs.note", ("ALTER TABLE runs ADD COLUMN note VARCHAR",))
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    assert current_version(con) == 0
    assert migrate(con) == SCHEMA_VERSION
    assert migrate(con, (*MIGRATIONS, extra)) == SCHEMA_VERSION + 1
    assert migrate(con, (*MIGRATIONS, extra)) == SCHEMA_VERSION + 1  # idempotent: nothing re-run
    cols = [r[0] for r in con.execute("DESCRIBE runs").fetchall()]
    assert cols[-1] == "note" and cols.count("note") == 1
    with pytest.raises(SchemaVersionError, match="newer than this code"):
        migrate(con)  # code that only knows the old migrations must refuse the newer file
    con.close()


def test_failed_migration_rolls_back(tmp_path):
    bad = Migration(SCHEMA_VERSION + 1, "broken", ("ALTER TABLE runs ADD COLUMN x INTEGER", "SELEC nonsense"))
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    migrate(con)
    with pytest.raises(duckdb.Error):
        migrate(con, (*MIGRATIONS, bad))
    assert current_version(con) == SCHEMA_VERSION
    assert "x" not in [r[0] for r in con.execute("DESCRIBE runs").fetchall()]
    con.close()


# --- idempotency -------------------------------------------------------------------------------
def test_same_rows_twice_give_one_copy(writer):
    writer.register_run(spec())
    rows = metric_rows()
    timings = [{"run_id": "r1", "stage": "solve", "step": i, "seconds": 0.5, "items": 10} for i in range(3)]
    probes = [{"run_id": "r1", "edits_done": 0, "task": "sst2", "metric": "acc", "value": 0.7}]
    for _ in range(2):
        writer.write(metrics=rows, probes=probes, timings=timings)
        writer.write_metrics(pl.DataFrame(rows))
    assert count(writer, "metrics") == len(rows)
    assert count(writer, "probes") == 1
    assert count(writer, "timings") == 3


def test_resent_key_replaces_value_last_write_wins(writer):
    writer.register_run(spec())
    writer.write_metrics(metric_rows(value=90.0))
    writer.write_metrics(metric_rows(value=50.0))
    got = writer.query("SELECT value FROM metrics WHERE edits_done = 10 AND metric = 'efficacy'")
    assert got["value"].to_list() == [40.0]
    # duplicates inside one batch: the last one wins, one row lands
    dup = [{"run_id": "r1", "edits_done": 30, "dataset": "zsre", "metric": "efficacy", "value": v} for v in (1.0, 2.0)]
    assert writer.write_metrics(dup) == 1
    assert writer.query("SELECT value FROM metrics WHERE edits_done = 30")["value"].to_list() == [2.0]


def test_rows_for_unregistered_run_are_refused_and_nothing_is_written(writer):
    writer.register_run(spec())
    rows = metric_rows("r1") + metric_rows("ghost")
    with pytest.raises(UnknownRunError, match="ghost"):
        writer.write(metrics=rows)
    assert count(writer, "metrics") == 0


@pytest.mark.parametrize(
    "row, match",
    [
        ({"run_id": "r1", "edits_done": 0, "dataset": "cf", "metric": "efficacy"}, "required"),
        ({"run_id": "r1", "edit_done": 0, "dataset": "cf", "metric": "efficacy", "value": 1.0}, "unknown"),
        ({"run_id": "r1", "edits_done": None, "dataset": "cf", "metric": "efficacy", "value": 1.0}, "null"),
        ({"run_id": "r1", "edits_done": "ten", "dataset": "cf", "metric": "efficacy", "value": 1.0}, "convert"),
    ],
)
def test_bad_rows_are_rejected_with_the_column_named(writer, row, match):
    writer.register_run(spec())
    with pytest.raises(RowValidationError, match=match):
        writer.write_metrics([row])


def test_artifact_records_upsert_by_kind_and_key(writer):
    from datetime import datetime

    rec = {"kind": "projector", "key": "ab" * 32, "spec": "{}", "path": "/x/data", "format": "npy",
           "sha256": "cd" * 32, "bytes": 10, "created_at": datetime(2026, 1, 1)}
    writer.record_artifacts([rec, rec])
    writer.record_artifacts([{**rec, "bytes": 20}])
    assert writer.query("SELECT bytes FROM artifacts")["bytes"].to_list() == [20]


# --- the rerun rule ----------------------------------------------------------------------------
def test_rerun_rule_resume_skip_conflict_replace(writer):
    a, b, c = spec("a"), spec("b"), spec("c")
    assert writer.register_runs([a, b, c]) == {"a": RunDecision.NEW, "b": RunDecision.NEW, "c": RunDecision.NEW}
    for r in "abc":
        writer.write_metrics(metric_rows(r))
    writer.set_status("a", "running")
    writer.set_status("a", "finished")
    writer.set_status("b", "running")
    writer.set_status("b", "failed", error="CUDA OOM")

    # same configs again: finished -> skip, unfinished -> resume; rows kept
    again = writer.register_runs([a, b, c])
    assert again == {"a": RunDecision.SKIP, "b": RunDecision.RESUME, "c": RunDecision.RESUME}
    runs = writer.query("SELECT run_id, status, error, attempts FROM runs ORDER BY run_id").rows()
    assert runs == [("a", "finished", None, 1), ("b", "pending", None, 2), ("c", "pending", None, 2)]
    assert count(writer, "metrics") == 3 * len(metric_rows())

    # a different config under an existing run_id is refused, and nothing changes
    changed = spec("b", config={"lr": 0.1})
    with pytest.raises(RunConflictError, match="on_existing='replace'"):
        writer.register_runs([spec("d"), changed])
    assert count(writer, "runs") == 3

    # replace: rows deleted, row reset with the new config
    assert writer.register_runs([changed, a], on_existing="replace") == {
        "b": RunDecision.REPLACED, "a": RunDecision.REPLACED,
    }
    assert count(writer, "metrics", "run_id IN ('a', 'b')") == 0
    assert count(writer, "metrics", "run_id = 'c'") == len(metric_rows())
    row = writer.query("SELECT status, attempts, config_hash, finished_at FROM runs WHERE run_id = 'b'").row(0)
    assert row == ("pending", 3, changed.config_hash, None)


def test_status_transitions_stamp_times_and_finished_is_final(writer):
    writer.register_run(spec())
    writer.set_status("r1", "running")
    started = writer.query("SELECT started_at FROM runs")["started_at"][0]
    assert started is not None
    writer.set_status("r1", "finished")
    row = writer.query("SELECT status, finished_at FROM runs").row(0)
    assert row[0] == "finished" and row[1] >= started
    writer.set_status("r1", "finished")  # idempotent
    with pytest.raises(ValueError, match="on_existing='replace'"):
        writer.set_status("r1", "running")
    with pytest.raises(ValueError, match="error message"):
        writer.set_status("r1", "failed")
    with pytest.raises(UnknownRunError):
        writer.set_status("nope", "running")


def test_snapshot_is_readable_while_writer_holds_the_file(writer, tmp_path):
    from storage.reader import ResultsReader

    writer.register_run(spec())
    writer.write_metrics(metric_rows())
    snap = writer.snapshot(tmp_path / "snap.duckdb")
    with ResultsReader(snap) as r:
        assert r.metrics().height == len(metric_rows())
        assert r.runs()["run_id"].to_list() == ["r1"]
    with pytest.raises(FileExistsError):
        writer.snapshot(snap)


def test_export_parquet_writes_every_table(writer, tmp_path):
    writer.register_run(spec())
    writer.write_metrics(metric_rows())
    out = writer.export_parquet(tmp_path / "pq")
    assert set(out) == {*names.RESULT_TABLES, names.TABLE_SCHEMA_VERSION}
    assert pl.read_parquet(out["metrics"]).height == len(metric_rows())
    assert not [p for p in (tmp_path / "pq").iterdir() if "tmp" in p.name]


def test_query_through_writer_refuses_writes(writer):
    from storage.sql import QueryRejectedError

    writer.register_run(spec())
    with pytest.raises(QueryRejectedError):
        writer.query("DELETE FROM runs")
    assert count(writer, "runs") == 1


def test_read_only_query_has_the_readers_guard(writer, tmp_path):
    """What a live query (storage.live) runs in the writer: the reader's answers, none of its powers."""
    import duckdb

    from storage.sql import QueryRejectedError

    writer.register_run(spec())
    writer.write_metrics(metric_rows())
    got = writer.read_only_query("SELECT metric, count(*) AS n FROM metrics GROUP BY 1 ORDER BY 1")
    assert got.to_dicts() == [{"metric": "efficacy", "n": 3}, {"metric": "specificity", "n": 3}]
    assert writer.read_only_query(canned="run_status", params={"sweep_id": "s1"})["run_id"].to_list() == ["r1"]
    assert writer.read_only_query("SELECT count(*) AS n FROM v_points")["n"][0] == 3  # the views come along
    with pytest.raises(QueryRejectedError):
        writer.read_only_query("DELETE FROM runs")
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    with pytest.raises(duckdb.PermissionException):  # file access off, as in ResultsReader
        writer.read_only_query(f"SELECT * FROM read_csv('{outside}')")
    assert writer.query(f"SELECT count(*) AS n FROM read_csv('{outside}')")["n"][0] == 1  # the writer's own cursor can
    assert count(writer, "runs") == 1


def test_writer_actor_name_is_per_results_file(tmp_path):
    from storage import live

    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    assert live.writer_actor_name(a) == live.writer_actor_name(tmp_path / "x" / ".." / "a.duckdb")
    assert live.writer_actor_name(a) != live.writer_actor_name(b)
    assert live.writer_actor_name(a).startswith("alphaedit-writer:")
    assert live.publish(a, "127.0.0.1:1", live.writer_actor_name(a)) == live.sidecar_path(a)
    assert live.published(a)["actor"] == live.writer_actor_name(a)
    live.unpublish(a)
    assert live.published(a) is None


# --- merging files -------------------------------------------------------------------------------

def _file_with(tmp_path, name: str, run_id: str, value: float):
    path = tmp_path / name
    with ResultWriter(path) as w:
        w.register_runs([spec(run_id, sweep_id=f"s-{run_id}")])
        w.write(metrics=metric_rows(run_id, value),
                timings=[{"run_id": run_id, "stage": "edit_batch", "seconds": 1.5, "items": 10, "step": 1}],
                drift_points=[{"run_id": run_id, "edits_done": e, "doc": d, "x": value + d, "y": -1.0 * d}
                              for e in (0, 10) for d in range(3)])
    return path


def test_merge_copies_every_row_and_refuses_clashes_whole(tmp_path):
    from storage.merge import main as merge_main

    a, b = _file_with(tmp_path, "a.duckdb", "ra", 90.0), _file_with(tmp_path, "b.duckdb", "rb", 80.0)
    dest = tmp_path / "all.duckdb"
    assert merge_main(["--into", str(dest), str(a), str(b)]) == 0
    with ResultWriter(dest) as w:
        assert count(w, "runs") == 2 and count(w, "metrics") == 12 and count(w, "timings") == 2
        assert count(w, "drift_points") == 12  # the Fig. 5 points travel with their runs
        assert w.query("SELECT value FROM metrics WHERE run_id = 'rb' AND edits_done = 10 "
                       "AND metric = 'efficacy'")["value"][0] == 70.0
        assert set(w.merge_from(a).values()) == {0}  # the same rows again (e.g. a shared artifact): skipped
        clash = _file_with(tmp_path, "a2.duckdb", "ra", 50.0)  # the same run with other values
        with pytest.raises(ValueError, match=r"metrics: 6 row\(s\).*drift_points: 6 row\(s\).*nothing was copied"):
            w.merge_from(clash)
        assert count(w, "runs") == 2 and count(w, "metrics") == 12  # nothing half-copied
        with pytest.raises(FileNotFoundError, match="does not exist"):
            w.merge_from(tmp_path / "missing.duckdb")
        with pytest.raises(ValueError, match="is the file being written"):
            w.merge_from(dest)
    not_results = tmp_path / "plain.duckdb"
    import duckdb

    duckdb.connect(str(not_results)).close()
    assert merge_main(["--into", str(dest), str(not_results)]) == 1


def test_merge_keeps_its_own_artifact_row_where_two_sweeps_stored_one_key_in_different_files(tmp_path, caplog):
    """Table 1's two sweeps computed the shared unedited evaluation at once and each stored its own file
    under the one key: their results files name different files, which is no clash of results."""
    import logging

    def art(sha: str) -> dict:
        return {"kind": "unedited_eval", "key": "k1", "spec": "{}", "path": f"/store/k1/data-{sha}.json",
                "format": "json-rows", "sha256": sha, "bytes": 10, "created_at": datetime.now(UTC)}

    a, b = _file_with(tmp_path, "a.duckdb", "ra", 90.0), _file_with(tmp_path, "b.duckdb", "rb", 80.0)
    for path, sha in ((a, "aa"), (b, "bb")):
        with ResultWriter(path) as w:
            w.record_artifacts([art(sha)])
    dest = tmp_path / "all.duckdb"
    with ResultWriter(dest) as w, caplog.at_level(logging.WARNING, logger="storage.writer"):
        w.merge_from(a)
        copied = w.merge_from(b)
        assert copied["runs"] == 1 and copied["metrics"] == 6 and copied["artifacts"] == 0
        assert w.query("SELECT sha256 FROM artifacts")["sha256"].to_list() == ["aa"]  # the destination's
    assert any("1 artifact row(s)" in r.getMessage() for r in caplog.records), caplog.records
