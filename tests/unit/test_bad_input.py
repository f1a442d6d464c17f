"""Bad input is found before any work starts, all of it at once, one line each, exit 2 (issue 18).

Preflight (no model load, no Ray): every dataset record the cells edit, the results file and the
artifact store; config validation: a batch larger than its cell's n_edits. The CLI cases run the
real ``python -m ...`` processes and check the exit code and that stderr is one line, no traceback
(the single-input CLI faults, each with the results file and artifacts checked unchanged, are in
tests/faults/test_faults.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import REPO_ROOT, TOY_CONFIG_PATH, SweepConfigError, load_config
from cluster.preflight import preflight_problems

TOY_CF = REPO_ROOT / "eval" / "toyworld" / "artifacts" / "counterfact.json"
PY = sys.executable  # the test run's own interpreter (CI uses another venv than .venv)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "RAY_AUTH_MODE": "disabled"}


LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING) [\w.]+: ")


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", *args], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def one_line_error(out: subprocess.CompletedProcess[str], rc: int = 2, logged: bool = False) -> str:
    """The one stderr line of a failed CLI (``rc``), checked to be one line without a traceback
    (``logged``: log records, ``<time> INFO|WARNING <logger>: ...``, may come before it)."""
    assert out.returncode == rc, (out.returncode, out.stderr[-3000:])
    lines = [line for line in out.stderr.splitlines() if line.strip()
             and not (logged and LOG_RECORD.match(line))]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]


def bad_counterfact(tmp: Path, n: int = 30) -> Path:
    """The toy CounterFact file's first ``n`` records with records #1, #3 and #5 broken."""
    records = json.loads(TOY_CF.read_text())[:n]
    del records[1]["requested_rewrite"]
    rw = records[3]["requested_rewrite"]
    rw["target_new"] = dict(rw["target_true"])
    records[5] = "oops"
    path = tmp / "cf_bad.json"
    path.write_text(json.dumps(records))
    return path


def problems(*overrides: str) -> list[str]:
    return preflight_problems(load_config(TOY_CONFIG_PATH, list(overrides)))


# --- dataset records ------------------------------------------------------------------------

def test_every_bad_record_the_cells_edit_is_listed(tmp_path: Path) -> None:
    path = bad_counterfact(tmp_path)
    found = problems(f"models.0.counterfact={path}", "n_edits=[20]", "batch_sizes=[10]", f"results={tmp_path / 'r.duckdb'}")
    records = [p for p in found if "record #" in p]
    assert [p.split("record #")[1].split(" ")[0] for p in records] == ["1", "3", "5"], found
    assert "requested_rewrite.prompt: missing" in records[0] and "must differ" in records[1], records
    assert "must differ" not in records[0]  # a missing requested_rewrite is reported as missing only
    assert "must be an object" in records[2], records
    assert any("--on-bad-record skip" in p and "3 malformed record(s)" in p for p in found), found
    # records past the cells' n_edits are not read
    assert not problems(f"models.0.counterfact={path}", "n_edits=[1]", "batch_sizes=[1]")


def test_skip_mode_passes_and_still_needs_n_edits_valid_records(tmp_path: Path) -> None:
    path = bad_counterfact(tmp_path)
    assert not problems(f"models.0.counterfact={path}", "n_edits=[20]", "batch_sizes=[10]", "on_bad_record=skip")
    found = problems(f"models.0.counterfact={path}", "n_edits=[29]", "batch_sizes=[10]", "on_bad_record=skip")
    assert len(found) == 1 and "n_edits [29]" in found[0] and "27 records" in found[0], found


def test_skip_mode_edits_the_first_valid_records_and_counts_the_skipped(tmp_path: Path) -> None:
    from cluster.plan import cell_data
    from eval.datasets import DatasetFormatError

    path = bad_counterfact(tmp_path)
    cfg = load_config(TOY_CONFIG_PATH, [f"models.0.counterfact={path}", "n_edits=[20]", "batch_sizes=[10]",
                                        "methods=[memit]"])
    cell = next(cfg.cells())
    with pytest.raises(DatasetFormatError, match="--on-bad-record skip"):
        cell_data(cell)
    data = cell_data(cell, "skip")
    good = [r for i, r in enumerate(json.loads(path.read_text())) if i not in (1, 3, 5)][:20]
    assert data.edit_records == good and (data.skipped, data.read) == (3, 23)
    assert load_config(TOY_CONFIG_PATH).hash != load_config(TOY_CONFIG_PATH, ["on_bad_record=skip"]).hash
    assert load_config(TOY_CONFIG_PATH).hash == load_config(TOY_CONFIG_PATH, ["on_bad_record=fail"]).hash


@pytest.mark.usefixtures("one_torch_thread_per_test")
def test_skipped_records_are_counted_in_the_database(tmp_path: Path) -> None:
    from cluster.executor import LocalExecutor
    from cluster.pipeline import run_sweep, start_writer
    from storage.artifacts import ArtifactStore

    path = bad_counterfact(tmp_path)
    cfg = load_config(TOY_CONFIG_PATH, [
        f"models.0.counterfact={path}", "n_edits=[10]", "batch_sizes=[10]", "eval_every=10", "methods=[memit]",
        "probes.tasks=[]", "metrics.generation_records=0", "metrics.max_records=2", "stats_shards=1",
        "hparams_overrides=[{mom2_n_samples: 60, v_num_grad_steps: 2}]", "on_bad_record=skip"])
    ex = LocalExecutor()
    writer = start_writer(str(tmp_path / "r.duckdb"), ex)
    try:
        statuses = run_sweep(cfg, "s", writer, ArtifactStore(tmp_path / "art"), None, executor=ex, parallel=False)
        rows = ex.get(ex.call(writer, "query", "SELECT edits_done, dataset, value, n_cases FROM metrics "
                                               "WHERE metric = 'skipped_records'"))
    finally:
        ex.get(ex.call(writer, "close"))
    assert list(statuses.values()) == ["finished"]
    assert rows.rows() == [(0, "counterfact", 3.0, 13)]


# --- outputs ----------------------------------------------------------------------------------

def test_results_path_must_be_a_duckdb_file_or_creatable(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    binary = tmp_path / "blob.duckdb"
    binary.write_bytes(os.urandom(64))
    empty = tmp_path / "empty.duckdb"
    empty.touch()
    for path, needle in ((text, "not a DuckDB database"), (binary, "not a DuckDB database"),
                         (empty, "it is empty"), (tmp_path, "is a folder"),
                         (text / "r.duckdb", "is a file, not a folder"),
                         (Path("/proc/r.duckdb"), "cannot write in /proc")):
        found = problems(f"results={path}")
        assert len(found) == 1 and found[0].startswith("results: ") and needle in found[0], (path, found)
    assert not problems(f"results={tmp_path / 'new' / 'deeper' / 'r.duckdb'}")
    assert not (tmp_path / "new").exists()  # the check creates nothing


def test_artifact_root_must_be_a_writable_folder(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert problems(f"artifact_root={text}") == [f"artifact_root: {text} is a file, not a folder; give a folder path"]
    found = problems("artifact_root=/proc/artifacts")
    assert len(found) == 1 and "cannot write in /proc" in found[0], found
    assert not problems(f"artifact_root={tmp_path / 'a' / 'b'}")


def test_results_file_held_by_another_writer(tmp_path: Path) -> None:
    from storage.writer import ResultWriter

    db = tmp_path / "r.duckdb"
    ResultWriter(db).close()
    assert not problems(f"results={db}")
    holder = subprocess.Popen([PY, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('open', flush=True); time.sleep(120)", str(db)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        found = problems(f"results={db}")
        assert len(found) == 1 and "open for writing in another process" in found[0], found
    finally:
        holder.kill()
        holder.wait()


def test_batch_size_larger_than_n_edits_is_a_config_error() -> None:
    with pytest.raises(SweepConfigError) as err:
        load_config(TOY_CONFIG_PATH, ["batch_sizes=[10, 50]", "n_edits=[20, 100]"])
    assert err.value.problems == ["batch_sizes: 50 > n_edits 20; a batch cannot be larger than its cell's n_edits (it "
                                  "would run one batch of n_edits stored under the larger batch size). Lower "
                                  "batch_sizes or raise n_edits."]
    load_config(TOY_CONFIG_PATH, ["batch_sizes=[20]", "n_edits=[20, 100]"])


# --- the CLI: exit 2, one line, in seconds, no Ray ----------------------------------------------

def test_edit_takes_on_bad_record_like_the_sweep(tmp_path: Path) -> None:
    from jobs.edit import cell_config, parse_args

    path = bad_counterfact(tmp_path)
    base = ["--dataset", str(path), "--n-edits", "20", "--batch-size", "10", "--method", "memit"]
    with pytest.raises(SweepConfigError, match="--on-bad-record skip"):
        cell_config(parse_args(base), tmp_path / "out")
    assert cell_config(parse_args([*base, "--on-bad-record", "skip"]), tmp_path / "out").on_bad_record == "skip"
    out = cli("jobs.edit", *base, "--on-bad-record", "fail", "--out", str(tmp_path / "run"))
    assert out.returncode == 2 and "record #1" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_sweep_lists_every_bad_record_and_output_problem_at_once(tmp_path: Path) -> None:
    path = bad_counterfact(tmp_path)
    out = cli("jobs.sweep", "--config", str(TOY_CONFIG_PATH), "--set", f"models.0.counterfact={path}",
              "--set", "n_edits=[20]", "--set", "batch_sizes=[10]", "--set", f"results={tmp_path / 'r.duckdb'}",
              "--set", "artifact_root=/proc/art")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    listed = [line for line in out.stderr.splitlines() if line.startswith("  - ")]
    assert len(listed) == 5, out.stderr  # records #1, #3, #5, the hint, and the artifact root
    assert sum("record #" in line for line in listed) == 3 and any("artifact_root" in line for line in listed)
    assert not (tmp_path / "r.duckdb").exists()
    out = cli("jobs.sweep", "--config", str(TOY_CONFIG_PATH), "--set", f"models.0.counterfact={path}",
              "--set", "n_edits=[20]", "--set", "batch_sizes=[10]", "--set", f"results={tmp_path / 'r.duckdb'}",
              "--set", "artifact_root=/proc/art", "--on-bad-record", "skip")
    assert "artifact_root: cannot write in /proc" in one_line_error(out, logged=True)  # the records are skipped now
    assert "3 malformed record(s) skipped among the first 23" in out.stderr


# --- --resume (issue 18c): refused before Ray starts, creating nothing ----------------------------

def _registered(tmp: Path, *sets: str) -> list[str]:
    """A results file with the cells of the toy config + ``sets`` registered as sweep ``s1`` (real writer)."""
    from cluster.executor import LocalExecutor
    from cluster.pipeline import register_cells, start_writer

    base = [f"results={tmp / 'r.duckdb'}", f"artifact_root={tmp / 'art'}", "n_edits=[20]", "batch_sizes=[10]", *sets]
    ex = LocalExecutor()
    writer = start_writer(str(tmp / "r.duckdb"), ex)
    try:
        register_cells(load_config(TOY_CONFIG_PATH, base), "s1", writer, None, executor=ex)
    finally:
        ex.get(ex.call(writer, "close"))
    return base


def test_resume_with_a_changed_config_is_refused(tmp_path: Path) -> None:
    from jobs.sweep import resume_problem

    base = _registered(tmp_path)
    sets = [a for s in base for a in ("--set", s)]
    out = cli("jobs.sweep", "--config", str(TOY_CONFIG_PATH), *sets, "--set", "seeds=[0, 1]", "--resume", "s1")
    line = one_line_error(out, logged=True)
    assert "this config differs from the sweep's (2 new cell(s) (e.g. s1:toy-gpt2:alphaedit" in line, line
    assert line.endswith("or add --allow-new-cells to add the new cells to the sweep"), line
    out = cli("jobs.sweep", "--config", str(TOY_CONFIG_PATH), *sets, "--set", "eval_every=10", "--resume", "s1")
    line = one_line_error(out, logged=True)
    assert "2 changed cell(s)" in line and "--allow-new-cells" not in line, line
    out = cli("jobs.sweep", "--config", str(TOY_CONFIG_PATH), *sets, "--resume", "s2")
    assert "no runs of that sweep" in one_line_error(out, logged=True)

    assert resume_problem(load_config(TOY_CONFIG_PATH, base), "s1") is None  # the same cells: resumable
    more = load_config(TOY_CONFIG_PATH, [*base, "seeds=[0, 1]"])
    assert resume_problem(more, "s1", allow_new_cells=True) is None
    fewer = load_config(TOY_CONFIG_PATH, [*base, "methods=[memit]"])
    assert "1 cell(s) of the sweep not in this config" in resume_problem(fewer, "s1", allow_new_cells=True)


# --- one line, not a traceback (issue 18d; the CLI cases of tests/faults/test_faults.py are not repeated here) ----

def test_yaml_syntax_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n  name: x\n")
    line = one_line_error(cli("jobs.sweep", "--config", str(bad)))
    assert line.startswith(f"error: {bad}: not valid YAML: "), line
    line = one_line_error(cli("jobs.nightly", "--config", str(bad)))
    assert line.startswith(f"error: {bad}: not valid YAML: "), line
    line = one_line_error(cli("jobs.nightly", "--thresholds", str(bad)))
    assert line.startswith(f"error: thresholds file {bad} is not valid YAML: "), line


def _results_db(tmp: Path) -> Path:
    from storage.writer import ResultWriter

    db = tmp / "r.duckdb"
    ResultWriter(db).close()
    return db


def test_query_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    db = _results_db(tmp_path)
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {PY} -m storage.query --db {db} --sql "
                          "'SELECT * FROM range(200000)' | head -n 2"],
                         cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("shape: (200_000, 1)"), out.stdout
    assert out.stderr == "", out.stderr[-3000:]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
