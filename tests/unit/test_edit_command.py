"""jobs/edit.py is a front over the sweep: the same config checks, the same one-cell run on the
in-process executor, the same artifact store; its folder is an export of the run's final state.

Each test is one defect of the former standalone tool (issue 19), which now fails with a clear
line (exit 2 before anything runs, exit 1 when the run fails) or is right.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import edit

FAST = ["--set", "hparams_overrides.0.mom2_n_samples=100", "--set", "hparams_overrides.0.v_num_grad_steps=5",
        "--log-level", "WARNING"]
N = 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """One torch thread for the module (tests/conftest.py)."""


def _run(out: Path, artifacts: Path, *extra: str) -> int:
    return edit.main(["--n-edits", str(N), "--batch-size", "5", "--out", str(out), "--artifacts", str(artifacts),
                      *FAST, *extra])


@pytest.mark.parametrize("argv,field", [
    (["--batch-size", "-5"], "batch_sizes.0: must be >= 1"),  # was: exit 0 with an empty edit
    (["--n-edits", "-1995"], "n_edits.0: must be >= 1"),  # was: edited 5
    (["--n-edits", "5000"], "n_edits [5000] larger than the counterfact dataset"),  # was: a short run
    (["--set", "probes.limit=abc"], "probes.limit: expected an integer or null"),
    (["--layers", "0,9"], "edited layer(s) [9] out of range"),
    (["--method", "rome2"], "methods.0: 'rome2' is not one of"),
    (["--set", "hparams_overrides.0.v_lr=.nan"], "v_lr: must be a finite number"),
    (["--model", "/nowhere"], "--preset: required with --model"),
])
def test_bad_input_is_one_line_and_exit_2_before_anything_runs(tmp_path, capsys, argv, field) -> None:
    out = tmp_path / "out"
    assert edit.main([*argv, "--out", str(out), "--artifacts", str(tmp_path / "art")]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err, err
    assert not out.exists() and not (tmp_path / "art").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no half-built folder either


def test_offset_is_not_an_option(tmp_path) -> None:
    """--offset 5000 wrote an empty checkpoint; a cell always edits the dataset's first n_edits records."""
    with pytest.raises(SystemExit) as exc:
        edit.main(["--offset", "5000", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """One run into a reused --out that held a stale metrics.json and another file."""
    tmp = tmp_path_factory.mktemp("edit")
    out = tmp / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"stale": true}')
    (out / "notes.txt").write_text("from an earlier run")
    assert _run(out, tmp / "art") == 0
    return tmp, out


def test_folder_is_the_run_exported(edited) -> None:
    from alphaedit.state import EditState
    from eval.edited import read_checkpoint

    tmp, out = edited
    assert sorted(p.name for p in out.iterdir()) == [
        "deltas.safetensors", "metrics.json", "requests.json", "results.duckdb", "run.json", "state.json",
        "state.safetensors", "timings.json"]  # the stale notes.txt is gone with the old folder
    state = EditState.load(out)
    assert state.n_edits == N and all(torch.isfinite(d).all() for d in state.deltas.values())
    ckpt = read_checkpoint(out)
    assert len(ckpt.requests) == N and ckpt.run["method"] == "alphaedit" and ckpt.run["n_edits"] == N
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"pre", "post"} and "stale" not in metrics
    assert metrics["post"]["efficacy"] > metrics["pre"]["efficacy"]
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_rows_are_the_sweeps(edited) -> None:
    import duckdb

    _, out = edited
    con = duckdb.connect(str(out / "results.duckdb"), read_only=True)
    try:
        assert con.sql("SELECT status FROM runs").fetchall() == [("finished",)]
        points = con.sql("SELECT DISTINCT edits_done FROM metrics ORDER BY 1").fetchall()
        assert points == [(0,), (N,)]
        assert con.sql("SELECT count(*) FROM timings WHERE stage = 'edit_batch'").fetchall() == [(2,)]
    finally:
        con.close()


def _key_stats_rows(out: Path) -> int:
    import duckdb

    con = duckdb.connect(str(out / "results.duckdb"), read_only=True)
    try:
        return con.sql("SELECT count(*) FROM timings WHERE stage = 'key_stats'").fetchall()[0][0]
    finally:
        con.close()


def test_statistics_of_another_corpus_are_not_used(edited, tmp_path) -> None:
    """The cache is keyed by the corpus: a second corpus computes its own, run.json names the one used."""
    from eval.toyworld import paths as toy

    tmp, first = edited
    assert _key_stats_rows(first) == 1
    art = tmp_path / "art"
    shutil.copytree(tmp / "art", art)
    again = tmp_path / "again"
    assert _run(again, art) == 0
    assert _key_stats_rows(again) == 0  # same key: from the store
    corpus = tmp_path / "wiki50.jsonl"
    corpus.write_text("".join(toy.WIKI.read_text().splitlines(keepends=True)[:50]))
    other = tmp_path / "other"
    assert _run(other, art, "--corpus", str(corpus)) == 0
    assert _key_stats_rows(other) == 1  # another key: computed
    run = json.loads((other / "run.json").read_text())
    assert str(corpus.resolve()) in run["corpus"] and run["model"]["corpus"] == str(corpus)
    assert json.loads((first / "run.json").read_text())["corpus"].startswith("toywiki")


def test_non_finite_cached_statistics_fail_the_run(edited, tmp_path, capsys) -> None:
    """Was: a NaN cache gave a layer a rank-0 projector and no edit. Now the run fails, --out is untouched."""
    from cluster.pipeline import cell_stats_keys
    from storage.artifacts import ArtifactStore

    tmp, _ = edited
    art = tmp_path / "art"
    shutil.copytree(tmp / "art", art)
    cfg = edit.cell_config(edit.parse_args(["--n-edits", str(N), "--batch-size", "5", "--artifacts", str(art),
                                            *FAST]), tmp_path / "unused")
    keys = cell_stats_keys(cfg.models[0], next(cfg.cells()))
    store = ArtifactStore(art)
    layer = min(keys)
    arrays, _ = store.get_valid(keys[layer])
    bad = np.array(arrays["sum_kkT"], copy=True)
    bad[0, 0] = np.nan
    store.put(keys[layer], {"sum_kkT": bad, "count": arrays["count"]})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous result")
    assert _run(out, art) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "key statistics" in err, err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # was: an empty or half-written --out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "out"]
