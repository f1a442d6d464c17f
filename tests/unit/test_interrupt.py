"""SIGINT/SIGTERM (issue 18b): the cells stop at a batch boundary, are marked ``interrupted``, and
``--resume`` continues them to the rows of an uninterrupted run (in-process executor; the Ray
driver's exit code and message are in tests/integration/test_signals_ray.py)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import duckdb
import pytest
import torch

from cluster.config import TOY_CONFIG_PATH, load_config
from cluster.events import BatchEdited
from cluster.executor import LocalExecutor
from cluster.pipeline import run_sweep, start_writer
from storage.artifacts import ArtifactStore
from storage.names import RunStatus
from storage.schema import MIGRATIONS, SCHEMA_VERSION
from storage.writer import ResultWriter, RunSpec

FAST = ["methods=[memit]", "n_edits=[30]", "batch_sizes=[10]", "eval_every=10", "probes.tasks=[toy_knowledge]",
        "probes.limit=4", "metrics.generation_records=0", "metrics.max_records=4", "stats_shards=1",
        "hparams_overrides=[{mom2_n_samples: 60, v_num_grad_steps: 2}]"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sweep(tmp: Path, db: str, sweep_id: str, stop_after: int | None = None):
    cfg = load_config(TOY_CONFIG_PATH, [*FAST, f"results={tmp / db}", f"artifact_root={tmp / 'art'}"])
    ex = LocalExecutor()
    writer = start_writer(str(tmp / db), ex)
    stop = threading.Event()

    def progress(event) -> None:
        if stop_after is not None and isinstance(event, BatchEdited) and event.edits_done >= stop_after:
            stop.set()  # what the driver's signal handler does

    try:
        statuses = run_sweep(cfg, sweep_id, writer, ArtifactStore(tmp / "art"), None, executor=ex,
                             on_progress=progress, stop=stop)
        q = lambda sql: ex.get(ex.call(writer, "query", sql))  # noqa: E731
        runs = q("SELECT status, error, attempts FROM runs").rows()
        metrics = q("SELECT edits_done, metric, value FROM metrics ORDER BY ALL")
    finally:
        ex.get(ex.call(writer, "close"))
    return statuses, runs, metrics


def test_stop_marks_the_cell_interrupted_and_resume_finishes_it_exactly(tmp_path: Path) -> None:
    statuses, runs, metrics = _sweep(tmp_path, "r.duckdb", "s", stop_after=10)
    assert list(statuses.values()) == [RunStatus.INTERRUPTED]
    assert runs == [("interrupted", None, 1)]
    assert sorted(set(metrics["edits_done"].to_list())) in ([0], [0, 10], [0, 10, 20])  # nothing past the stop
    statuses, runs, resumed = _sweep(tmp_path, "r.duckdb", "s")
    assert list(statuses.values()) == [RunStatus.FINISHED] and runs == [("finished", None, 2)]
    _, _, reference = _sweep(tmp_path, "ref.duckdb", "s")
    assert resumed.equals(reference), "a resumed interrupted run must end with the uninterrupted run's rows"


def test_cells_not_begun_when_the_stop_comes_are_interrupted_too(tmp_path: Path) -> None:
    cfg = load_config(TOY_CONFIG_PATH, [*FAST, "seeds=[0, 1]", f"results={tmp_path / 'r.duckdb'}"])
    ex = LocalExecutor()
    writer = start_writer(str(tmp_path / "r.duckdb"), ex)
    stop = threading.Event()
    stop.set()
    try:
        statuses = run_sweep(cfg, "s", writer, ArtifactStore(tmp_path / "art"), None, executor=ex, stop=stop)
        rows = ex.get(ex.call(writer, "query", "SELECT status FROM runs"))["status"].to_list()
    finally:
        ex.get(ex.call(writer, "close"))
    assert set(statuses.values()) == {RunStatus.INTERRUPTED} and rows == ["interrupted", "interrupted"]


def test_signals_set_the_stop_request_and_the_handlers_come_back() -> None:
    from jobs.sweep import resume_command, stop_on_signals

    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal to this process
        assert stop.wait(5) and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert resume_command(["--config", "a b.yaml", "--set", "n_edits=[20]", "--resume", "old"], "sweep-1") == \
        "python -m jobs.sweep --config 'a b.yaml' --set 'n_edits=[20]' --resume sweep-1"


def test_migration_3_lets_runs_be_interrupted_and_keeps_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "v2.duckdb"
    with ResultWriter(path, migrations=MIGRATIONS[:2]) as w:
        w.register_runs([RunSpec(run_id="a", sweep_id="s", model="m", method="memit", dataset="counterfact",
                                 batch_size=1, n_edits=1, seed=0)])
        w.write(metrics=[{"run_id": "a", "edits_done": 0, "dataset": "counterfact", "metric": "efficacy",
                          "value": 1.0}])
        with pytest.raises(duckdb.ConstraintException):  # version 2 refuses the new status
            w._con.execute("UPDATE runs SET status = 'interrupted'")
    with ResultWriter(path) as w:
        assert w.schema_version == SCHEMA_VERSION  # 3 and every later migration
        w.set_status("a", RunStatus.INTERRUPTED)
        assert w.query("SELECT status FROM runs")["status"].to_list() == ["interrupted"]
        assert w.query("SELECT count(*) AS n FROM metrics")["n"][0] == 1
        with pytest.raises(duckdb.ConstraintException):
            w._con.execute("UPDATE runs SET status = 'bogus'")
