"""Fault injection (issue 18): bad input and broken files end in one line naming the thing and the fix,
the documented exit code, and no change to the results file's rows or to the artifact store.

Every case runs the real command line (``python -m ...``) against a module-scoped results file that
holds a registered toy sweep (and an artifact store with a file in it); each records its observation
for docs/faults.md (tests/faults/conftest.py). The signal cases (SIGINT/SIGTERM/SIGKILL, then
``--resume``) start a local Ray and are in test_kill.py and tests/integration/test_signals_ray.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.config import REPO_ROOT, TOY_CONFIG_PATH, load_config
from tests.faults.table import shown

pytestmark = pytest.mark.faults

PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "RAY_AUTH_MODE": "disabled"}
ENV.pop("RAY_ADDRESS", None)
TOY_CF = REPO_ROOT / "eval" / "toyworld" / "artifacts" / "counterfact.json"
FAST = ["methods=[memit]", "n_edits=[20]", "batch_sizes=[10]", "eval_every=10", "probes.tasks=[toy_knowledge]",
        "probes.limit=4", "metrics.generation_records=0", "metrics.max_records=4", "stats_shards=1"]
TABLES = ("runs", "metrics", "probes", "timings", "artifacts")
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) [\w.]+: ")


def first_line(stderr: str) -> str:
    """The first line of ``stderr`` that is not a log record (``<time> INFO|WARNING <logger>: ...``)."""
    return next((ln for ln in stderr.splitlines() if ln.strip() and not LOG_RECORD.match(ln)), "")


def headline(stderr: str) -> str:
    """The first line for the table; a list of problems (``...:`` then ``  - ...`` lines) with its first one."""
    lines = stderr.splitlines()
    first = first_line(stderr)
    at = lines.index(first) if first in lines else -1
    if first.endswith(":") and 0 <= at < len(lines) - 1 and lines[at + 1].startswith("  - "):
        n = sum(ln.startswith("  - ") for ln in lines[at + 1:])
        return f"{first} {lines[at + 1].strip()} (+{n - 1} more)" if n > 1 else f"{first} {lines[at + 1].strip()}"
    return first


def rows(db: Path) -> int | None:
    """runs + metrics + probes + timings + artifacts rows of ``db`` (None: not a readable results file)."""
    import duckdb

    try:
        con = duckdb.connect(str(db), read_only=True)
    except (duckdb.Error, OSError):
        return None
    try:
        return sum(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES)
    except duckdb.Error:
        return None
    finally:
        con.close()


def fingerprint(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (and whether each path exists): what a fault must not change."""
    out = {}
    for root in paths:
        if not root.exists():
            out[str(root)] = "absent"
        elif root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
        else:
            for f in sorted(root.rglob("*")):
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A results file holding the toy sweep ``f`` of FAST (its cells registered, a metric row) and an artifact
    store with one file: the state every fault below must leave exactly as it was."""
    from storage.writer import ResultWriter, RunSpec

    tmp = tmp_path_factory.mktemp("faults")
    db, art = tmp / "r.duckdb", tmp / "art"
    art.mkdir()
    (art / "keep.bin").write_bytes(b"\x00artifact")
    cfg = load_config(TOY_CONFIG_PATH, [*FAST, f"results={db}", f"artifact_root={art}"])
    with ResultWriter(db) as w:
        specs = [RunSpec(run_id=c.run_id("f"), sweep_id="f", model=c.model.name, method=c.method, dataset=c.dataset,
                         batch_size=c.batch_size, n_edits=c.n_edits, seed=c.seed, config=c.config())
                 for c in cfg.cells()]
        w.register_runs(specs)
        w.write(metrics=[{"run_id": specs[0].run_id, "edits_done": 0, "dataset": "counterfact",
                          "metric": "efficacy", "value": 1.0}])
    bad = json.loads(TOY_CF.read_text())[:30]
    del bad[1]["requested_rewrite"]
    bad[5] = "oops"
    (tmp / "cf_bad.json").write_text(json.dumps(bad))
    (tmp / "notes.txt").write_text("hello\n")
    (tmp / "garbage.duckdb").write_bytes(os.urandom(4096))
    (tmp / "folder.duckdb").mkdir()
    (tmp / "broken.yaml").write_text("models:\n  - name: toy\n    path: [unclosed\n")
    return {"tmp": tmp, "db": db, "art": art}


def sweep_args(w: dict[str, Path], *sets: str, results: Path | None = None) -> list[str]:
    sets = (*FAST, f"results={results or w['db']}", f"artifact_root={w['art']}", *sets)
    return ["jobs.sweep", "--config", str(TOY_CONFIG_PATH), *[a for s in sets for a in ("--set", s)]]


#: (case, what the user gives, command (a function of the world), exit code, a phrase of the first line)
CASES = [
    ("bad records (fail)", "models.0.counterfact=<records #1, #5 broken>",
     lambda w: sweep_args(w, f"models.0.counterfact={w['tmp'] / 'cf_bad.json'}"), 2, "record #1"),
    ("results path is a text file", "results=notes.txt",
     lambda w: sweep_args(w, results=w["tmp"] / "notes.txt"), 2, "is not a DuckDB database"),
    ("results path is a folder", "results=folder.duckdb/",
     lambda w: sweep_args(w, results=w["tmp"] / "folder.duckdb"), 2, "folder.duckdb"),
    ("results path is not DuckDB", "results=garbage.duckdb (random bytes)",
     lambda w: sweep_args(w, results=w["tmp"] / "garbage.duckdb"), 2, "garbage.duckdb"),
    ("--set type", "--set probes.limit=abc", lambda w: sweep_args(w, "probes.limit=abc"), 2,
     "probes.limit: expected an integer or null, got 'abc'"),
    ("--set nan", "--set hparams_overrides=[{v_lr: .nan}]",
     lambda w: sweep_args(w, "hparams_overrides=[{v_lr: .nan}]"), 2, "v_lr: must be a finite number"),
    ("--set 1e30 lr", "--set hparams_overrides=[{v_lr: 1e30}]",
     lambda w: sweep_args(w, "hparams_overrides=[{v_lr: 1e30}]"), 2, "v_lr: expected a number, got '1e30'"),
    ("malformed --set (YAML)", "--set 'n_edits=[20'", lambda w: sweep_args(w, "n_edits=[20"), 2,
     "is not valid YAML"),
    ("malformed --set (key)", "--set models.5.num_cpus=1", lambda w: sweep_args(w, "models.5.num_cpus=1"), 2,
     "does not name a config key"),
    ("YAML syntax error", "--config broken.yaml",
     lambda w: ["jobs.sweep", "--config", str(w["tmp"] / "broken.yaml")], 2, "broken.yaml"),
    ("batch > n_edits", "--set batch_sizes=[50] (n_edits 20)", lambda w: sweep_args(w, "batch_sizes=[50]"), 2,
     "batch"),
    ("--resume changed config", "--resume f --set n_edits=[30]",
     lambda w: [*sweep_args(w, "n_edits=[30]"), "--resume", "f"], 2, "this config differs from the sweep's"),
    ("--resume missing file", "--resume f --set results=missing.duckdb",
     lambda w: [*sweep_args(w, results=w["tmp"] / "missing.duckdb"), "--resume", "f"], 2, "does not exist"),
    ("storage.query --csv missing folder", "--csv nowhere/out.csv",
     lambda w: ["storage.query", "--db", str(w["db"]), "run_status", "--csv", str(w["tmp"] / "nowhere" / "o.csv")],
     2, "does not exist"),
    ("jobs.report on non-DuckDB", "--db notes.txt",
     lambda w: ["jobs.report", "--db", str(w["tmp"] / "notes.txt"), "--out", str(w["tmp"] / "rep")], 2,
     "notes.txt"),
    ("jobs.edit bad records (fail)", "--dataset <records #1, #5 broken> --on-bad-record fail",
     lambda w: ["jobs.edit", "--dataset", str(w["tmp"] / "cf_bad.json"), "--n-edits", "20", "--batch-size", "10",
                "--on-bad-record", "fail", "--out", str(w["tmp"] / "edit-out"), "--artifacts", str(w["art"])],
     2, "record #1"),
]


@pytest.mark.parametrize(("case", "given", "command", "code", "phrase"), CASES, ids=[c[0] for c in CASES])
def test_fault_is_one_line_and_changes_nothing(world, observations, case, given, command, code, phrase) -> None:
    watched = [world["db"], world["art"], world["tmp"] / "notes.txt", world["tmp"] / "garbage.duckdb",
               world["tmp"] / "folder.duckdb", world["tmp"] / "missing.duckdb", world["tmp"] / "edit-out",
               world["tmp"] / "rep"]
    before, n_before = fingerprint(*watched), rows(world["db"])
    t0 = time.monotonic()
    out = subprocess.run([PY, "-m", *command(world)], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True,
                         timeout=300)
    seconds = time.monotonic() - t0
    first = first_line(out.stderr)
    observations.append({"case": case, "input": given, "exit": out.returncode,
                         "first_line": shown(headline(out.stderr), world["tmp"]),
                         "rows_before": n_before, "rows_after": rows(world["db"]), "seconds": round(seconds, 1)})
    assert out.returncode == code, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert first.startswith("error: ") and phrase in out.stderr, out.stderr[-3000:]
    after = out.stderr.split(first, 1)[1].splitlines()
    assert all(ln.startswith("  - ") or LOG_RECORD.match(ln) for ln in after if ln.strip()), \
        "one error line (several problems: one '  - ' line each), nothing else after it"
    assert "ray" not in first.lower()
    assert fingerprint(*watched) == before, "a refused command must not change the results file or the artifacts"
    assert rows(world["db"]) == n_before


def test_locked_results_file_is_refused_and_kept(world, observations, tmp_path: Path) -> None:
    """Another writer holds the results file: refused before any work, its rows untouched."""
    from storage.writer import ResultWriter

    db = tmp_path / "held.duckdb"
    shutil.copy(world["db"], db)
    n_before = rows(db)
    holder = subprocess.Popen([PY, "-c", "import sys, time; from storage.writer import ResultWriter\n"
                               f"w = ResultWriter({str(db)!r}); print('held', flush=True); time.sleep(600)"],
                              cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = subprocess.run([PY, "-m", *sweep_args(world, results=db)], cwd=REPO_ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    first = first_line(out.stderr)
    observations.append({"case": "results file locked", "input": "results held by another writer process",
                         "exit": out.returncode, "first_line": shown(headline(out.stderr), tmp_path), "rows_before": n_before,
                         "rows_after": rows(db)})
    assert out.returncode == 2 and first.startswith("error: ") and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert rows(db) == n_before
    with ResultWriter(db) as w:  # usable again once the holder is gone
        assert w.query("SELECT count(*) AS n FROM runs")["n"][0] >= 1


@pytest.mark.usefixtures("one_torch_thread_per_test")
def test_a_huge_lr_fails_its_cell_with_a_reason(observations, tmp_path: Path) -> None:
    """``v_lr: 1.0e+30`` (a float; ``1e30`` is a YAML string, refused above) passes the config and runs: the
    cell ends ``failed`` with the reason in runs.error, its unedited evaluation kept (was: all-zero deltas and
    status ``finished``)."""
    from tests.toy_cells import run_tiny_toy_cell

    statuses, (status, error), points = run_tiny_toy_cell(tmp_path, "memit", "v_num_grad_steps: 3, v_lr: 1.0e+30")
    observations.append({"case": "--set 1.0e+30 lr (runs)", "input": "hparams_overrides=[{v_lr: 1.0e+30}]",
                         "exit": f"cell {status}", "first_line": shown(f"runs.error: {error}"), "rows_before": None,
                         "rows_after": None})
    assert list(statuses.values()) == ["failed"] and status == "failed", error
    assert error.startswith(("non-finite values in the batch of edits 0-10", "an update that changes nothing in the "
                             "batch of edits 0-10")), error
    assert points == [0], "the unedited evaluation is kept"


@pytest.mark.parametrize("config", ["toy.yaml", "default.yaml"])
def test_what_the_checks_add_to_a_sweeps_start(config: str, observations, tmp_path: Path) -> None:
    """The checks before Ray starts (config validation + preflight: every record the cells edit, the model
    config, probes, outputs), timed in-process on a valid config; recorded for docs/faults.md, not asserted."""
    from cluster.preflight import preflight_problems

    path = REPO_ROOT / "jobs" / "configs" / config
    t0 = time.perf_counter()
    try:
        cfg = load_config(path, [f"results={tmp_path / 'r.duckdb'}", f"artifact_root={tmp_path / 'art'}"])
        found = preflight_problems(cfg)
    except Exception as exc:  # e.g. the real model not installed: nothing to time
        pytest.skip(f"{config}: {exc}")
    seconds = time.perf_counter() - t0
    if found:
        pytest.skip(f"{config}: {found[0]}")
    observations.append({"case": f"(no fault) checks before Ray: {config}", "input": f"--config jobs/configs/{config}",
                         "exit": "-", "first_line": f"all checks pass in {seconds:.2f} s (imports not counted)",
                         "rows_before": None, "rows_after": None, "seconds": round(seconds, 2)})
    assert not (tmp_path / "r.duckdb").exists(), "the checks create no results file"
