"""Progress bars of the command-line drivers (issue 20, item 4): key statistics, edit batches and
evaluations in ``jobs.edit``; the stages of an evaluation in ``jobs.evaluate``; all on stderr.

The runs are the toy world's, in process (the sweep's own code on the local executor), with the
bars' text read from the captured stderr.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.events import BatchEdited, PointEvaluated, ShardsComputed
from jobs import edit, evaluate
from jobs.progress import SweepBars

FAST = ["--set", "hparams_overrides.0.mom2_n_samples=100", "--set", "hparams_overrides.0.v_num_grad_steps=5",
        "--log-level", "WARNING"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """One torch thread for the module (tests/conftest.py)."""


def test_sweep_bars_count_shards_batches_and_points(capsys) -> None:
    from cluster.config import TOY_CONFIG_PATH, load_config

    cfg = load_config(TOY_CONFIG_PATH, ["methods=[memit]", "n_edits=[20]", "batch_sizes=[10]", "eval_every=10"])
    bars = SweepBars(list(cfg.cells()), cfg.checkpoint_every)
    for done in (0, 1, 3):
        bars(ShardsComputed("toy-gpt2", done, 3))
    bars(ShardsComputed("other", 0, 2))
    bars(BatchEdited("r", 10, 20))
    bars(PointEvaluated("r", 0))
    bars(PointEvaluated("r", 10))
    assert (bars.stats.n, bars.stats.total) == (3, 5)  # two models' shards: 3 of 3 and 0 of 2
    assert (bars.edits.n, bars.edits.total) == (1, 2)
    assert (bars.evals.n, bars.evals.total) == (2, 3)  # points 0, 10, 20
    bars.close()
    err = capsys.readouterr().err
    assert "key statistics" in err and "edit batches" in err and "evaluations (rewrite metrics + probes)" in err


def test_edit_and_evaluate_show_their_bars_on_stderr(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert edit.main(["--n-edits", "10", "--batch-size", "5", "--out", str(out), "--artifacts", str(tmp_path / "art"),
                      *FAST]) == 0
    err = capsys.readouterr().err
    assert "key statistics: 100%" in err and "1/1" in err, err[-3000:]  # computed: a fresh artifact store
    assert "edit batches: 100%" in err and "2/2" in err, err[-3000:]
    assert "evaluations (rewrite metrics + probes): 100%" in err, err[-3000:]  # before and after editing

    assert evaluate.main([str(out), "--probes", "toy_knowledge", "--probe-limit", "4", "--no-generation",
                          "--no-pre"]) == 0
    captured = capsys.readouterr()
    assert "evaluation (edited)" in captured.err and "rewrite metrics (10 records)" in captured.err, captured.err
    assert "probes" in captured.err and "2/2" in captured.err, captured.err
    assert "evaluation (" not in captured.out  # bars stay off stdout (the table goes there)
