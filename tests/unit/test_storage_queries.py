"""Canned queries on a small hand-made results file, and the read-only query command."""

from __future__ import annotations

import hashlib
import re

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from storage import names, queries
from storage.query import main as query_main
from storage.reader import ResultsReader, read_canned
from storage.schema import SchemaVersionError
from storage.sql import QueryRejectedError
from storage.writer import ResultWriter, RunSpec

RUNS = [  # run_id, sweep, method, dataset, n_edits, seed
    ("cf-ae-0", "s1", "alphaedit", "counterfact", 20, 0),
    ("cf-ae-1", "s1", "alphaedit", "counterfact", 20, 1),
    ("cf-me-0", "s1", "memit", "counterfact", 20, 0),
    ("zs-ae-0", "s1", "alphaedit", "zsre", 20, 0),
    ("old-me-0", "s0", "memit", "counterfact", 10, 0),
]
CF = ("efficacy", "generalization", "specificity", "fluency", "consistency")
FINAL = {  # values at each run's final edits_done
    "cf-ae-0": dict(zip(CF, (98.0, 90.0, 80.0, 620.0, 30.0), strict=True)),
    "cf-ae-1": dict(zip(CF, (96.0, 88.0, 82.0, 610.0, 32.0), strict=True)),
    "cf-me-0": dict(zip(CF, (50.0, 40.0, 60.0, 500.0, 20.0), strict=True)),
    "zs-ae-0": {"efficacy": 94.0, "generalization": 86.0, "specificity": 30.0},
    "old-me-0": dict(zip(CF, (70.0, 60.0, 65.0, 550.0, 25.0), strict=True)),
}
EFFICACY_AT = {  # efficacy at edits_done 0 and 10 (before the final value)
    "cf-ae-0": (20.0, 99.0), "cf-ae-1": (22.0, 97.0), "cf-me-0": (20.0, 80.0), "zs-ae-0": (30.0, 95.0),
    "old-me-0": (21.0, None),
}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "results.duckdb"
    with ResultWriter(path) as w:
        w.register_runs(
            RunSpec(run_id=r, sweep_id=s, model="toy", method=m, dataset=d, batch_size=10, n_edits=n, seed=seed,
                    config={"run": r})
            for r, s, m, d, n, seed in RUNS
        )
        metrics = []
        for r, _, _, d, n, _ in RUNS:
            metrics += [dict(run_id=r, edits_done=n, dataset=d, metric=k, value=v) for k, v in FINAL[r].items()]
            e0, e10 = EFFICACY_AT[r]
            metrics.append(dict(run_id=r, edits_done=0, dataset=d, metric="efficacy", value=e0))
            if e10 is not None:
                metrics.append(dict(run_id=r, edits_done=10, dataset=d, metric="efficacy", value=e10))
        probes = [
            dict(run_id="cf-ae-0", edits_done=0, task="mmlu", metric="acc", value=0.50),
            dict(run_id="cf-me-0", edits_done=0, task="mmlu", metric="acc", value=0.52),
            dict(run_id="cf-ae-0", edits_done=20, task="mmlu", metric="acc", value=0.49),
            dict(run_id="cf-ae-1", edits_done=20, task="mmlu", metric="acc", value=0.47),
            dict(run_id="cf-me-0", edits_done=20, task="mmlu", metric="acc", value=0.30),
            dict(run_id="cf-ae-0", edits_done=20, task="sst2", metric="acc", value=0.60),  # no baseline
        ]
        timings = [
            dict(run_id="cf-ae-0", stage="solve", step=0, seconds=1.0, items=10),
            dict(run_id="cf-ae-0", stage="solve", step=1, seconds=2.0, items=10),
            dict(run_id="cf-ae-1", stage="solve", step=0, seconds=3.0, items=10),
            dict(run_id="cf-ae-0", stage="key_stats", seconds=5.0),
            dict(run_id="cf-me-0", stage="solve", step=0, seconds=0.5, items=10),
            dict(run_id="cf-me-0", stage="edit_batch", step=0, seconds=0.8, items=10),
            dict(run_id="cf-me-0", stage="checkpoint", step=0, seconds=0.25, items=82_584_240),
        ]
        w.write(metrics=metrics, probes=probes, timings=timings)
        w.set_status("cf-ae-0", "running")
        w.set_status("cf-ae-0", "failed", error="boom")
    return path


def frame(rows: list[tuple], columns: list[str]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=columns, orient="row")


def test_method_comparison_table1_layout_at_final_edits(db):
    got = read_canned(db, "method_comparison", sweep_id="s1")
    cols = ["model", "dataset", "method", "batch_size", "n_edits", "n_runs", "Eff.", "Gen.", "Spe.", "Flu.", "Consis."]
    want = frame(
        [
            ("toy", "counterfact", "alphaedit", 10, 20, 2, 97.0, 89.0, 81.0, 615.0, 31.0),
            ("toy", "counterfact", "memit", 10, 20, 1, 50.0, 40.0, 60.0, 500.0, 20.0),
            ("toy", "zsre", "alphaedit", 10, 20, 1, 94.0, 86.0, 30.0, None, None),
        ],
        cols,
    )
    assert_frame_equal(got, want, check_dtypes=False)
    assert list(names.TABLE1_HEADERS.values()) == cols[6:]


def test_method_comparison_at_given_n_and_all_sweeps(db):
    got = read_canned(db, "method_comparison", n_edits=10)
    assert got.select("dataset", "method", "n_edits", "n_runs", "Eff.").rows() == [
        ("counterfact", "alphaedit", 10, 2, 98.0),
        ("counterfact", "memit", 10, 2, 75.0),  # cf-me-0 (80) and old-me-0 (70, its final value)
        ("zsre", "alphaedit", 10, 1, 95.0),
    ]
    unedited = read_canned(db, "method_comparison", n_edits="0", sweep_id="s1")  # strings, as from the CLI
    assert unedited["Eff."].to_list() == [21.0, 20.0, 30.0]


def test_degradation_curve(db):
    got = read_canned(db, "degradation_curve", metric="efficacy", dataset="counterfact", sweep_id="s1")
    want = frame(
        [
            ("toy", "alphaedit", 10, "counterfact", "efficacy", 0, 21.0, 2**0.5, 2),
            ("toy", "alphaedit", 10, "counterfact", "efficacy", 10, 98.0, 2**0.5, 2),
            ("toy", "alphaedit", 10, "counterfact", "efficacy", 20, 97.0, 2**0.5, 2),
            ("toy", "memit", 10, "counterfact", "efficacy", 0, 20.0, None, 1),
            ("toy", "memit", 10, "counterfact", "efficacy", 10, 80.0, None, 1),
            ("toy", "memit", 10, "counterfact", "efficacy", 20, 50.0, None, 1),
        ],
        ["model", "method", "batch_size", "dataset", "metric", "edits_done", "value", "std", "n_runs"],
    )
    assert_frame_equal(got, want, check_dtypes=False)


def test_probe_deltas_against_unedited_model(db):
    got = read_canned(db, "probe_deltas", sweep_id="s1")
    want = frame(
        [
            ("toy", "alphaedit", 10, "mmlu", "acc", 0, 0.50, 0.51, -0.01, 1),
            ("toy", "alphaedit", 10, "mmlu", "acc", 20, 0.48, 0.51, -0.03, 2),
            ("toy", "alphaedit", 10, "sst2", "acc", 20, 0.60, None, None, 1),
            ("toy", "memit", 10, "mmlu", "acc", 0, 0.52, 0.51, 0.01, 1),
            ("toy", "memit", 10, "mmlu", "acc", 20, 0.30, 0.51, -0.21, 1),
        ],
        ["model", "method", "batch_size", "task", "metric", "edits_done", "value", "baseline", "delta", "n_runs"],
    )
    assert_frame_equal(got, want, check_dtypes=False, abs_tol=1e-9)
    assert read_canned(db, "probe_deltas", task="sst2").height == 1


def test_stage_timings(db):
    got = read_canned(db, "stage_timings")
    want = frame(
        [
            ("toy", "alphaedit", 10, "key_stats", 1, 1, 5.0, 5.0, None, None, None, None),
            ("toy", "alphaedit", 10, "solve", 2, 3, 6.0, 3.0, 30, 0.2, "edit_batch", None),
            ("toy", "memit", 10, "checkpoint", 1, 1, 0.25, 0.25, None, None, None, 82_584_240),
            ("toy", "memit", 10, "edit_batch", 1, 1, 0.8, 0.8, 10, 0.08, None, None),
            ("toy", "memit", 10, "solve", 1, 1, 0.5, 0.5, 10, 0.05, "edit_batch", None),
        ],
        ["model", "method", "batch_size", "stage", "n_runs", "n_calls", "total_seconds", "seconds_per_run",
         "items", "seconds_per_item", "part_of", "bytes"],
    )
    assert_frame_equal(got, want, check_dtypes=False, abs_tol=1e-9)


def test_run_status(db):
    got = read_canned(db, "run_status", status="failed")
    assert got.select("run_id", "status", "error", "attempts", "last_edits_done").rows() == [
        ("cf-ae-0", "failed", "boom", 1, 20)
    ]
    assert read_canned(db, "run_status", sweep_id="s0")["run_id"].to_list() == ["old-me-0"]


def test_canned_queries_are_documented_and_use_the_shared_names():
    assert set(queries.available()) >= {
        "method_comparison", "degradation_curve", "probe_deltas", "stage_timings", "run_status",
    }
    for name in queries.available():
        q = queries.load(name)
        assert q.description and all(q.params.values()), name
    sql = queries.load("method_comparison").sql
    for metric, header in names.TABLE1_HEADERS.items():
        assert f"metric = '{metric}'" in sql and f'"{header}"' in sql
    with pytest.raises(ValueError, match="no parameter"):
        queries.load("stage_timings").bind({"n_edit": 3})
    with pytest.raises(KeyError, match="available"):
        queries.load("nope")


# --- the read-only query command -----------------------------------------------------------------
def file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state(db) -> tuple[str, pl.DataFrame, pl.DataFrame]:
    with ResultsReader(db) as r:
        return file_digest(db), r.canned("run_status"), r.metrics()


WRITES = [
    "DELETE FROM metrics",
    "UPDATE metrics SET value = 0",
    "INSERT INTO runs SELECT * FROM runs",
    "DROP TABLE metrics",
    "CREATE TABLE x AS SELECT 1 AS a",
    "ALTER TABLE runs ADD COLUMN z INTEGER",
    "SELECT 1; DELETE FROM metrics",
    "CREATE OR REPLACE TABLE metrics AS SELECT * FROM metrics LIMIT 0",
]


@pytest.mark.parametrize("sql", [*WRITES, "COPY metrics TO 'stolen.csv'", "ATTACH 'other.duckdb' AS o", "CHECKPOINT",
                                 "SET enable_external_access = true", "INSTALL httpfs"])
def test_query_command_cannot_modify_the_database(db, sql, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = state(db)
    assert query_main(["--db", str(db), "--sql", sql]) == 1
    assert "error:" in capsys.readouterr().err
    after = state(db)
    assert before[0] == after[0]
    assert_frame_equal(before[1], after[1])
    assert_frame_equal(before[2], after[2])
    assert not list(tmp_path.iterdir())  # no file written next to it either


@pytest.mark.parametrize("sql", WRITES)
def test_read_only_connection_is_a_second_line_of_defence(db, sql):
    with ResultsReader(db) as r:
        with pytest.raises(QueryRejectedError):
            r.sql(sql)
        with pytest.raises(duckdb.Error, match="read-only"):  # bypassing the statement check
            r.connection.execute(sql)
    assert state(db)[2].height > 0


def test_query_command_prints_and_writes_csv_and_parquet(db, tmp_path, capsys):
    assert query_main(["--db", str(db), "method_comparison", "--param", "sweep_id=s1"]) == 0
    out = capsys.readouterr().out
    assert "Eff." in out and "alphaedit" in out and "615.0" in out
    csv, pq = tmp_path / "t.csv", tmp_path / "t.parquet"
    assert query_main(["--db", str(db), "--sql", "SELECT run_id FROM runs ORDER BY 1", "--csv", str(csv)]) == 0
    assert pl.read_csv(csv)["run_id"].to_list() == sorted(r[0] for r in RUNS)
    assert query_main(["--db", str(db), "degradation_curve", "--param", "metric=efficacy", "--parquet", str(pq)]) == 0
    assert set(pl.read_parquet(pq)["metric"]) == {"efficacy"}
    assert query_main(["--db", str(db), "degradation_curve", "--param", "metrc=efficacy"]) == 1
    assert "no parameter" in capsys.readouterr().err
    assert query_main(["--list"]) == 0
    assert "method_comparison" in capsys.readouterr().out


def test_export_command_writes_every_table(db, tmp_path, capsys):
    from storage.export import main as export_main

    assert export_main(["--db", str(db), "--out", str(tmp_path / "pq")]) == 0
    files = sorted(p.name for p in (tmp_path / "pq").iterdir())
    assert files == sorted(f"{t}.parquet" for t in (*names.RESULT_TABLES, names.TABLE_SCHEMA_VERSION))
    assert pl.read_parquet(tmp_path / "pq" / "runs.parquet").height == len(RUNS)


def test_reader_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ResultsReader(tmp_path / "missing.duckdb")
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).close()
    with pytest.raises(SchemaVersionError, match=re.escape(str(other)) + ".*not a results database"):
        ResultsReader(other)
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE schema_version (version INTEGER, description VARCHAR, applied_at TIMESTAMP)")
    con.execute("INSERT INTO schema_version VALUES (99, 'future', now())")
    con.close()
    with pytest.raises(SchemaVersionError, match="newer"):
        ResultsReader(other)
