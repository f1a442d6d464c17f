"""jobs/nightly.py end to end on local Ray: a night that passes, then a broken projector that is caught.

A scaled-down nightly on the toy world (``--config jobs/configs/toy.yaml``; the real nightly runs
the real model: AlphaEdit only, 20 edits in batches of 10, 500 preservation documents) so both
nights fit in about two minutes on 2 cores. The regression is a real config value:
``nullspace_threshold: 0`` leaves the null-space projector empty (P = 0), so AlphaEdit's updates
vanish and efficacy falls to the unedited model's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
PINNED = REPO / "jobs" / "configs" / "nightly_thresholds.yaml"
SMALL = ("methods=[alphaedit]", "n_edits=[20]", "batch_sizes=[10]", "eval_every=20", "probes.limit=20",
         "metrics.generation_records=2", "hparams_overrides.0.mom2_n_samples=500",
         "hparams_overrides.0.v_num_grad_steps=20")


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def nightly_env(tmp_path_factory):
    """Results and artifacts of both nights, and thresholds: the pinned rules with floors for 20 edits."""
    root = tmp_path_factory.mktemp("nightly")
    raw = yaml.safe_load(PINNED.read_text())
    # The pinned baseline is for 200 edits; at 20 edits a record is 5 points, so pin floors instead.
    raw["baseline"] = {"alphaedit": {"efficacy": 85.0, "generalization": 80.0, "specificity": 90.0}}
    thresholds = root / "thresholds.yaml"
    thresholds.write_text(yaml.safe_dump(raw))
    common = ["--config", str(REPO / "jobs" / "configs" / "toy.yaml"), "--thresholds", str(thresholds), "--address", "local",
              *sets(*SMALL, f"results={root / 'nightly.duckdb'}", f"artifact_root={root / 'artifacts'}")]
    return root, common


def verdicts(db: Path) -> list[tuple]:
    from storage.nightly import open_results

    with open_results(db) as con:
        return con.execute("SELECT sweep_id, status, baseline_sweep_id FROM nightly_verdicts ORDER BY night").fetchall()


def checks(db: Path, sweep_id: str) -> dict[str, tuple]:
    from storage.nightly import open_results

    with open_results(db) as con:
        rows = con.execute("SELECT metric, baseline, value, status, baseline_source FROM nightly_checks "
                           "WHERE sweep_id = ? AND method = 'alphaedit'", [sweep_id]).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_a_healthy_night_passes_against_the_pinned_baseline(nightly_env, capsys):
    from jobs import nightly

    root, common = nightly_env
    rc = nightly.main([*common, "--date", "2026-11-20", "--no-report"])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0, out
    assert "nightly nightly-2026-11-20 (tag nightly): PASS" in out
    db = root / "nightly.duckdb"
    assert verdicts(db) == [("nightly-2026-11-20", "pass", None)]
    got = checks(db, "nightly-2026-11-20")
    baseline, value, status, source = got["efficacy"]
    assert (baseline, source) == (85.0, "thresholds") and value >= 85.0 and status in ("ok", "improved")
    assert got["toy_knowledge.acc"][2] == "new" and got["seconds_per_edit"][2] == "new"


def test_a_broken_projector_fails_the_night_with_a_readable_table(nightly_env, capsys):
    from jobs import nightly

    root, common = nightly_env
    db = root / "nightly.duckdb"
    if not verdicts(db):
        pytest.skip("needs the passing night of the previous test as its baseline")
    rc = nightly.main([*common, "--date", "2026-11-21", *sets("hparams_overrides.0.nullspace_threshold=0.0")])
    out = capsys.readouterr().out
    print(out)
    assert rc == 1, out
    assert "nightly nightly-2026-11-21 (tag nightly): FAIL" in out
    assert "baseline: last passing nightly nightly-2026-11-20" in out
    table = [line.split() for line in out.splitlines()]
    header = next(r for r in table if r[:2] == ["metric", "method"])
    assert header == ["metric", "method", "baseline", "value", "delta", "tolerance", "status"]
    eff = next(r for r in table if r[:2] == ["efficacy", "alphaedit"])
    # A zero projector makes every update zero: the cell fails with that reason (NullUpdateError)
    # instead of finishing as an unedited model, so the night has no value to compare: MISSING.
    assert eff[-1] == "MISSING" and "1 cells failed" in out
    got = checks(db, "nightly-2026-11-21")
    assert got["efficacy"][3] == "nightly-2026-11-20" and got["efficacy"][2] == "missing"
    assert verdicts(db) == [("nightly-2026-11-20", "pass", None),
                            ("nightly-2026-11-21", "fail", "nightly-2026-11-20")]
    report = root / "reports" / "nightly-2026-11-21" / "index.html"
    try:
        import storage.report  # noqa: F401
    except ImportError:
        return
    assert report.is_file() and "MISSING" in report.read_text()
