"""Nightly regression logic on hand-made rows: rules, baseline choice, verdict, tables, storage."""

from __future__ import annotations

import fnmatch
import math
import re
from datetime import date, datetime
from pathlib import Path

import duckdb
import pytest

from storage import names
from storage import nightly as nl
from storage.names import CheckStatus, NightlyStatus
from storage.schema import MIGRATIONS, SCHEMA_VERSION, current_version, migrate
from storage.writer import ResultWriter, RunSpec

REPO = Path(__file__).resolve().parents[2]
CELL = "toy-gpt2/counterfact/b50/n200"

RULES = nl.parse_thresholds({
    "default": {"direction": "higher", "tolerance": 1.0},
    "metrics": {
        "efficacy": {"tolerance": 3.0},
        "*_magnitude": {"tolerance": 5.0},
        "efficacy_magnitude": {"tolerance": 7.0},
        "seconds_per_edit": {"direction": "lower", "tolerance": 1.0, "relative": True},
        "drift": {"direction": "both", "tolerance": 0.5},
        "noise": {"check": False},
    },
    "baseline": {"alphaedit": {"efficacy": 90.0, "specificity": 80.0}, "memit": {"efficacy": 5.0}},
})


def obs(metric: str, value: float, method: str = "alphaedit", cell: str = CELL) -> nl.Observation:
    return nl.Observation(cell, method, metric, value)


# --- rules -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("metric", "value", "baseline", "status"), [
    ("efficacy", 87.5, 90.0, CheckStatus.OK),  # drop within tolerance 3
    ("efficacy", 86.9, 90.0, CheckStatus.REGRESSION),  # drop beyond it
    ("efficacy", 93.5, 90.0, CheckStatus.IMPROVED),  # rise beyond it: good for higher-is-better
    ("seconds_per_edit", 1.9, 1.0, CheckStatus.OK),  # lower is better, relative 100%
    ("seconds_per_edit", 2.1, 1.0, CheckStatus.REGRESSION),  # more than 2x slower
    ("seconds_per_edit", 0.4, 1.0, CheckStatus.OK),  # faster by 60% < tolerance 100%: ok
    ("drift", 10.6, 10.0, CheckStatus.REGRESSION),  # both: any change beyond tolerance
    ("drift", 9.4, 10.0, CheckStatus.REGRESSION),
    ("drift", 10.4, 10.0, CheckStatus.OK),
    ("noise", -1e9, 10.0, CheckStatus.INFO),  # reported only
    ("efficacy", math.nan, 90.0, CheckStatus.REGRESSION),  # non-finite is always a regression
])
def test_judge_is_direction_aware(metric, value, baseline, status):
    got, delta, tol = nl.judge(value, baseline, RULES.rule_for(metric))
    assert got is status
    if math.isfinite(value):
        assert delta == pytest.approx(value - baseline)


def test_lower_is_better_reports_a_large_speedup_as_improved():
    rule = nl.Rule(direction="lower", tolerance=0.2, relative=True)
    assert nl.judge(0.5, 1.0, rule)[0] is CheckStatus.IMPROVED
    assert nl.judge(1.3, 1.0, rule)[0] is CheckStatus.REGRESSION
    assert nl.judge(1.3, 1.0, rule)[2] == pytest.approx(0.2)


def test_rule_lookup_exact_name_then_first_pattern_then_default():
    assert RULES.rule_for("efficacy_magnitude").tolerance == 7.0  # exact beats the earlier pattern
    assert RULES.rule_for("specificity_magnitude").tolerance == 5.0
    assert RULES.rule_for("fluency") == RULES.default
    assert RULES.rule_for("efficacy").direction == "higher"  # unset keys inherit the default


def test_bad_thresholds_report_every_problem_at_once():
    with pytest.raises(nl.ThresholdsError) as err:
        nl.parse_thresholds({
            "metrics": {"a": {"direction": "up"}, "b": {"tolerance": -1}, "c": {"relative": "yes", "tol": 1}},
            "baseline": {"alphaedit": {"efficacy": "high"}}, "extra": 1,
        }, "t.yaml")
    msg = str(err.value)
    for part in ("t.yaml", "metrics.a.direction", "metrics.b.tolerance", "metrics.c.relative", "'tol'",
                 "baseline.alphaedit.efficacy", "extra"):
        assert part in msg


def test_pinned_thresholds_file_is_valid_and_covers_the_nightly_metrics():
    t = nl.load_thresholds(REPO / "jobs" / "configs" / "nightly_thresholds.yaml")
    for metric in (*names.COUNTERFACT_METRICS, "real_knowledge.acc", "real_grammar.acc", "real_arithmetic.acc",
                   "seconds_per_edit"):
        assert any(fnmatch.fnmatchcase(metric, pattern) for pattern, _ in t.rules), f"no rule for {metric}"
    assert t.rule_for("seconds_per_edit").direction == "lower"
    assert all(t.rule_for(m).direction == "higher" for m in names.COUNTERFACT_METRICS)
    for (method, metric), value in t.baseline.items():
        assert method in ("alphaedit", "memit") and math.isfinite(value), (method, metric)
    assert {m for m, _ in t.baseline} == {"alphaedit", "memit"}, "pin a baseline for both nightly methods"
    assert ("alphaedit", "efficacy") in t.baseline and ("memit", "specificity") in t.baseline


# --- comparison --------------------------------------------------------------------------------
def test_database_baseline_wins_and_thresholds_fill_the_gaps():
    current = [obs("efficacy", 95.0), obs("specificity", 70.0), obs("fluency", 600.0)]
    db = [obs("efficacy", 94.0)]
    checks = {c.metric: c for c in nl.compare(current, [(CELL, "alphaedit")], RULES, db, "nightly-2026-11-20")}
    assert checks["efficacy"].baseline == 94.0 and checks["efficacy"].baseline_source == "nightly-2026-11-20"
    assert checks["efficacy"].status is CheckStatus.OK
    assert checks["specificity"].baseline_source == nl.THRESHOLDS_SOURCE
    assert checks["specificity"].status is CheckStatus.REGRESSION  # 70 vs pinned 80, tolerance 1
    assert checks["fluency"].status is CheckStatus.NEW and checks["fluency"].baseline is None


def test_missing_metric_and_failed_cell_fail_but_absent_methods_do_not():
    # memit ran (it is in cells) but wrote nothing: its pinned efficacy is missing.
    current = [obs("efficacy", 91.0)]
    checks = nl.compare(current, [(CELL, "alphaedit"), (CELL, "memit")], RULES)
    by = {(c.method, c.metric): c for c in checks}
    assert by[("memit", "efficacy")].status is CheckStatus.MISSING
    assert by[("alphaedit", "specificity")].status is CheckStatus.MISSING
    # A method that is not part of tonight's sweep is not compared at all.
    only_alpha = nl.compare(current, [(CELL, "alphaedit")], RULES)
    assert {c.method for c in only_alpha} == {"alphaedit"}


def test_baseline_of_another_cell_is_not_used():
    other = "toy-gpt2/counterfact/b10/n20"
    checks = nl.compare([obs("fluency", 1.0)], [(CELL, "alphaedit")], RULES, [obs("fluency", 900.0, cell=other)],
                        "nightly-x")
    assert [c.status for c in checks if c.metric == "fluency"] == [CheckStatus.NEW]


def test_verdict_passes_only_without_failures_and_with_a_clean_sweep():
    ok = nl.compare([obs("efficacy", 90.0), obs("specificity", 80.0)], [(CELL, "alphaedit")], RULES)
    assert nl.verdict(ok).status is NightlyStatus.PASS and nl.verdict(ok).message is None
    v = nl.verdict(ok, sweep_exit_code=1)
    assert v.status is NightlyStatus.FAIL and "exited with code 1" in v.message
    bad = nl.compare([obs("efficacy", 10.0), obs("specificity", 80.0)], [(CELL, "alphaedit")], RULES)
    v = nl.verdict(bad)
    assert v.status is NightlyStatus.FAIL and v.n_failed == 1 and "alphaedit efficacy (regression)" in v.message


def night(sweep_id: str, day: int, status: str = "pass", tag: str = "nightly", hour: int = 3) -> nl.NightRecord:
    return nl.NightRecord(sweep_id, tag, date(2026, 11, day), status, datetime(2026, 11, day, hour))


def test_baseline_is_the_last_passing_night_of_the_tag_not_later_than_tonight():
    hist = [night("n18", 18), night("n19", 19, "fail"), night("n17", 17), night("w20", 20, tag="weekly"),
            night("n22", 22), night("n20", 20)]
    pick = nl.select_baseline(hist, tag="nightly", night=date(2026, 11, 21), exclude="n21")
    assert pick.sweep_id == "n20"
    # The failed n19 is never a baseline; tonight's own earlier verdict is excluded.
    assert nl.select_baseline(hist, tag="nightly", night=date(2026, 11, 20), exclude="n20").sweep_id == "n18"
    assert nl.select_baseline(hist, tag="weekly", night=date(2026, 11, 21), exclude="x").sweep_id == "w20"
    assert nl.select_baseline(hist, tag="nightly", night=date(2026, 11, 16), exclude="x") is None
    twice = [night("a", 20, hour=1), night("b", 20, hour=5)]
    assert nl.select_baseline(twice, tag="nightly", night=date(2026, 11, 21), exclude="x").sweep_id == "b"


def test_table_is_readable_and_marks_failures():
    checks = nl.compare([obs("efficacy", 10.0), obs("specificity", 80.5), obs("seconds_per_edit", 0.2)],
                        [(CELL, "alphaedit")], RULES, [obs("seconds_per_edit", 0.25)], "nightly-2026-11-20")
    text = nl.format_table(checks)
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "method", "baseline", "value", "delta", "tolerance", "status"]
    eff = next(line for line in lines if line.startswith("efficacy"))
    assert eff.split() == ["efficacy", "alphaedit", "90.00", "10.00", "-80.00", "-3.00", "REGRESSION"]
    spe = next(line for line in lines if line.startswith("specificity"))
    assert spe.split()[-1] == "ok" and "+0.500" in spe
    sec = next(line for line in lines if line.startswith("seconds_per_edit"))
    assert sec.split()[-2] == "+0.250"  # lower-is-better tolerance shown as an allowed rise
    assert nl._num(-1e-14, signed=True) == "0.000" and nl._num(616.1404, signed=True) == "+616.14"
    html = nl.format_html(checks, "nightly x: FAIL")
    assert html.count("<tr") == len(checks) + 1 and 'class="fail"' in html and "REGRESSION" in html
    two_cells = nl.compare([obs("efficacy", 90.0), obs("efficacy", 90.0, cell="m2/counterfact/b1/n1")],
                           [], RULES)
    assert nl.format_table(two_cells).splitlines()[0].split()[0] == "cell"


# --- storage -----------------------------------------------------------------------------------
def test_migration_2_adds_the_nightly_tables_to_an_existing_file(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    migrate(con, MIGRATIONS[:1])
    assert current_version(con) == 1
    con.close()
    with ResultWriter(path) as w:  # the writer migrates on open
        assert w.schema_version == SCHEMA_VERSION >= 2
    with nl.open_results(path) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert {names.TABLE_SWEEP_TAGS, names.TABLE_NIGHTLY_VERDICTS, names.TABLE_NIGHTLY_CHECKS} <= tables


def test_check_constraints_list_exactly_the_status_enums():
    ddl = " ".join(s for m in MIGRATIONS for s in m.statements)
    checks = re.search(r"CREATE TABLE nightly_checks.*?status VARCHAR NOT NULL\s+CHECK \(status IN \(([^)]*)\)",
                       ddl, re.S).group(1)
    assert sorted(s.strip(" '") for s in checks.split(",")) == sorted(s.value for s in CheckStatus)
    verdicts = re.search(r"CREATE TABLE nightly_verdicts.*?status IN \(([^)]*)\)", ddl, re.S).group(1)
    assert sorted(s.strip(" '") for s in verdicts.split(",")) == sorted(s.value for s in NightlyStatus)
    directions = re.search(r"direction IN \(([^)]*)\)", ddl).group(1)
    assert sorted(s.strip(" '") for s in directions.split(",")) == sorted(nl.DIRECTIONS)


def _nightly_specs(sweep_id: str, *overrides: str) -> dict[str, RunSpec]:
    """{method: RunSpec} of the runs the nightly config (with ``overrides``) makes as ``sweep_id``."""
    from cluster.config import load_config
    from jobs import nightly

    cfg = load_config(nightly.DEFAULT_CONFIG, [f"sweep_id={sweep_id}", *overrides])
    return {c.method: RunSpec(run_id=c.run_id(sweep_id), sweep_id=sweep_id, model=c.model.name, method=c.method,
                              dataset=c.dataset, batch_size=c.batch_size, n_edits=c.n_edits, seed=c.seed,
                              config=c.config()) for c in cfg.cells()}


def _sweep(w: ResultWriter, sweep_id: str, efficacy: float, seconds: float = 10.0,
           specs: dict[str, RunSpec] | None = None) -> None:
    """Two runs (alphaedit, memit) with final efficacy ``efficacy``: ad-hoc runs, or ``specs``' (a config's)."""
    for method in ("alphaedit", "memit"):
        spec = (specs or {}).get(method) or RunSpec(
            run_id=f"{sweep_id}:{method}", sweep_id=sweep_id, model="toy-gpt2", method=method,
            dataset="counterfact", batch_size=50, n_edits=200, seed=0, config={"m": method})
        rid, n, b = spec.run_id, spec.n_edits, spec.batch_size
        w.register_run(spec)
        w.write(  # seconds per edit: `seconds` per batch of 50 edits
            metrics=[{"run_id": rid, "edits_done": e, "dataset": "counterfact", "metric": "efficacy",
                      "value": v, "n_cases": n} for e, v in ((0, 0.0), (n // 2, 50.0), (n, efficacy))],
            probes=[{"run_id": rid, "edits_done": n, "task": "toy_knowledge", "metric": "acc", "value": 0.9}],
            timings=[{"run_id": rid, "stage": "edit_batch", "step": s, "seconds": seconds * b / 50, "items": b}
                     for s in range(-(-n // b))] + [{"run_id": rid, "stage": "key_stats", "seconds": 99.0}],
        )
        w.set_status(rid, "finished")


def test_observations_record_and_history_round_trip(tmp_path):
    path = tmp_path / "r.duckdb"
    with ResultWriter(path) as w:
        _sweep(w, "nightly-2026-11-20", 90.0)
        w.register_run(RunSpec(run_id="other", sweep_id="adhoc", model="toy-gpt2", method="alphaedit",
                               dataset="counterfact", batch_size=50, n_edits=200, seed=0))
    with nl.open_results(path) as con:
        got = {(o.method, o.metric): o.value for o in nl.observations(con, "nightly-2026-11-20")}
        assert got == {("alphaedit", "efficacy"): 90.0, ("memit", "efficacy"): 90.0,  # final edits_done only
                       ("alphaedit", "toy_knowledge.acc"): 0.9, ("memit", "toy_knowledge.acc"): 0.9,
                       ("alphaedit", "seconds_per_edit"): 0.2, ("memit", "seconds_per_edit"): 0.2}
        assert {o.cell for o in nl.observations(con, "nightly-2026-11-20")} == {CELL}
        assert nl.run_cells(con, "nightly-2026-11-20") == [(CELL, "alphaedit"), (CELL, "memit")]
        assert nl.observations(con, "nope") == [] and nl.run_cells(con, "nope") == []
        pinned = nl.parse_thresholds({"baseline": {"memit": {"efficacy": 5.0}}})
        checks = nl.compare(nl.observations(con, "nightly-2026-11-20"), nl.run_cells(con, "nightly-2026-11-20"),
                            pinned)
        rec = nl.NightlyRecord("nightly-2026-11-20", "nightly", date(2026, 11, 20), nl.verdict(checks), None,
                               "t.yaml", 0, "abc")
        nl.record(con, rec, checks)
        nl.record(con, rec, checks)  # a rerun of the night replaces, never duplicates
        assert con.execute("SELECT count(*) FROM nightly_verdicts").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM nightly_checks").fetchone()[0] == len(checks)
        assert con.execute("SELECT tag FROM sweep_tags WHERE sweep_id = 'nightly-2026-11-20'").fetchall() == [
            ("nightly",)]
        [h] = nl.history(con)
        assert (h.sweep_id, h.tag, h.night, h.status) == ("nightly-2026-11-20", "nightly", date(2026, 11, 20), "pass")
        stored = con.execute("SELECT metric, status, baseline_source FROM nightly_checks WHERE method = 'memit' "
                             "AND metric = 'efficacy'").fetchall()
        assert stored == [("efficacy", "improved", "thresholds")]  # 90 vs pinned 5


def test_record_is_atomic(tmp_path):
    path = tmp_path / "r.duckdb"
    ResultWriter(path).close()
    bad = nl.Check(CELL, "alphaedit", "efficacy", 1.0, "x", 1.0, 0.0, "sideways", 0.0, CheckStatus.OK)  # type: ignore[arg-type]
    rec = nl.NightlyRecord("n1", "nightly", date(2026, 11, 20), nl.verdict([]), None, "t.yaml", 0, "abc")
    with nl.open_results(path) as con:
        with pytest.raises(duckdb.Error):
            nl.record(con, rec, [bad])  # the CHECK constraint on direction rejects the row
        assert con.execute("SELECT count(*) FROM nightly_verdicts").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM sweep_tags").fetchone()[0] == 0


# --- the entry point without a sweep (--compare-only) ------------------------------------------
def test_compare_only_exit_codes_table_and_baseline_choice(tmp_path, capsys):
    from jobs import nightly

    db = tmp_path / "n.duckdb"
    thresholds = tmp_path / "t.yaml"
    thresholds.write_text("default: {direction: higher, tolerance: 2.0}\n"
                          "metrics: {seconds_per_edit: {direction: lower, tolerance: 1.0, relative: true}}\n"
                          "baseline: {alphaedit: {efficacy: 85.0}, memit: {efficacy: 85.0}}\n")
    with ResultWriter(db) as w:
        for night, eff, secs in (("19", 90.0, 10.0), ("20", 91.0, 10.0), ("21", 70.0, 30.0)):
            _sweep(w, f"nightly-2026-11-{night}", eff, secs, _nightly_specs(f"nightly-2026-11-{night}"))
    common = ["--compare-only", "--no-report", "--thresholds", str(thresholds), "--set", f"results={db}"]

    assert nightly.main([*common, "--date", "2026-11-19"]) == 0  # vs the pinned 85: pass
    out = capsys.readouterr().out
    assert "baseline: pinned values of" in out and "PASS" in out
    assert nightly.main([*common, "--date", "2026-11-20"]) == 0  # vs night 19 (passing): pass
    assert "last passing nightly nightly-2026-11-19" in capsys.readouterr().out
    assert nightly.main([*common, "--date", "2026-11-21"]) == 1  # efficacy 70 vs 91, 3x slower
    out = capsys.readouterr().out
    assert "last passing nightly nightly-2026-11-20" in out and "FAIL" in out
    rows = [line.split() for line in out.splitlines() if "REGRESSION" in line]
    assert {r[0] for r in rows} == {"efficacy", "seconds_per_edit"} and len(rows) == 4
    # The failed night is no baseline: re-judging night 22 against the database picks night 20.
    with ResultWriter(db) as w:
        _sweep(w, "nightly-2026-11-22", 91.0, specs=_nightly_specs("nightly-2026-11-22"))
    assert nightly.main([*common, "--date", "2026-11-22"]) == 0
    assert "last passing nightly nightly-2026-11-20" in capsys.readouterr().out
    with nl.open_results(db) as con:
        assert con.execute("SELECT sweep_id, status, baseline_sweep_id FROM nightly_verdicts ORDER BY 1").fetchall() == [
            ("nightly-2026-11-19", "pass", None), ("nightly-2026-11-20", "pass", "nightly-2026-11-19"),
            ("nightly-2026-11-21", "fail", "nightly-2026-11-20"), ("nightly-2026-11-22", "pass", "nightly-2026-11-20")]
    # Usage errors exit 2 with a message: no runs of that night, a broken thresholds file.
    assert nightly.main([*common, "--date", "2026-01-01"]) == 2
    assert "holds no runs of sweep nightly-2026-01-01" in capsys.readouterr().err
    thresholds.write_text("metrics: {efficacy: {direction: up}}\n")
    assert nightly.main([*common, "--date", "2026-11-20"]) == 2
    assert "metrics.efficacy.direction" in capsys.readouterr().err


def test_compare_only_refuses_a_sweep_that_is_not_a_nightly_of_the_config(tmp_path, capsys):
    """A normal sweep, or a nightly of another config, is neither judged nor tagged."""
    from jobs import nightly

    db = tmp_path / "n.duckdb"
    with ResultWriter(db) as w:
        _sweep(w, "sweep-abc", 90.0)  # a user's ordinary sweep
        _sweep(w, "nightly-2026-11-20", 90.0, specs=_nightly_specs("nightly-2026-11-20", "n_edits=[50]"))
        _sweep(w, "nightly-2026-11-21", 90.0, specs=_nightly_specs("nightly-2026-11-21"))
    common = ["--compare-only", "--no-report", "--set", f"results={db}"]
    assert nightly.main([*common, "--sweep-id", "sweep-abc"]) == 2
    err = capsys.readouterr().err
    assert "sweep sweep-abc" in err and "is not a nightly of" in err and "Nothing was recorded" in err
    assert "run sweep-abc:alphaedit is not a cell of the config" in err
    assert "the config's cell sweep-abc:smollm2-135m:memit" in err
    assert nightly.main([*common, "--date", "2026-11-20"]) == 2  # run with another n_edits
    assert "is not a cell of the config" in capsys.readouterr().err
    assert nightly.main([*common, "--date", "2026-11-20", "--set", "n_edits=[50]"]) in (0, 1)  # its own config
    assert nightly.main([*common, "--date", "2026-11-21"]) in (0, 1)
    with nl.open_results(db) as con:
        assert con.execute("SELECT sweep_id FROM sweep_tags ORDER BY 1").fetchall() == [
            ("nightly-2026-11-20",), ("nightly-2026-11-21",)]
        assert con.execute("SELECT sweep_id FROM nightly_verdicts ORDER BY 1").fetchall() == [
            ("nightly-2026-11-20",), ("nightly-2026-11-21",)]
        assert con.execute("SELECT count(*) FROM nightly_checks WHERE sweep_id = 'sweep-abc'").fetchone()[0] == 0


def test_nightly_config_hash_ignores_where_results_go():
    from cluster.config import load_config
    from jobs import nightly

    a = load_config(nightly.DEFAULT_CONFIG, ["sweep_id=nightly-2026-11-20", "results=/a/r.duckdb"])
    b = load_config(nightly.DEFAULT_CONFIG, ["sweep_id=nightly-2026-11-21", "artifact_root=/b"])
    c = load_config(nightly.DEFAULT_CONFIG, ["sweep_id=nightly-2026-11-21", "n_edits=[50]"])
    assert nightly.nightly_config_hash(a) == nightly.nightly_config_hash(b) != nightly.nightly_config_hash(c)
    assert a.sweep_id and load_config(nightly.DEFAULT_CONFIG).sweep_id is None  # nightly.py names the sweep
