"""An edit that changes nothing fails its cell with a reason, not ``finished`` (issue 18e).

A null-space projector that keeps no direction (``nullspace_threshold`` below every eigenvalue)
makes AlphaEdit's update exactly zero in every layer: the editor refuses it (nothing applied, the
state unchanged), and on the sweep's own path the cell ends ``failed`` with that reason in
``runs.error`` (its unedited evaluation kept).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_core_support import synthetic_texts, tiny_model, tiny_requests, tiny_tokenizer  # noqa: E402

from alphaedit import EditHparams, Editor, preservation_stats, projectors_from_stats  # noqa: E402
from alphaedit.editor import NullUpdateError, check_changes  # noqa: E402
from cluster.workers import describe_failure  # noqa: E402

HP = EditHparams(layers=(1, 2), mom2_max_length=64, mom2_batch_size=32, clamp_norm_factor=4.0, v_num_grad_steps=5,
                 mom2_update_weight=1000.0)


def test_a_projector_that_keeps_nothing_gives_a_refused_null_update() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok))
    stats = preservation_stats(model, tok, synthetic_texts(40), HP)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    keeps_nothing = {layer: torch.zeros_like(p) for layer, p in projectors_from_stats(stats, HP).items()}
    editor = Editor(model, tok, HP, "alphaedit", projectors=keeps_nothing)
    with pytest.raises(NullUpdateError, match="the update is zero in every edited layer") as err:
        editor.edit(tiny_requests(2))
    assert "nullspace_threshold" in str(err.value) and "nothing was applied" in str(err.value)
    assert editor.state.n_edits == 0
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters()), "nothing may be applied"
    # the same model and statistics with the default threshold do edit
    ok = Editor(model, tok, HP, "alphaedit", projectors=projectors_from_stats(stats, HP))
    ok.edit(tiny_requests(2))
    assert ok.state.n_edits == 2


def test_a_negative_nullspace_threshold_is_a_config_error() -> None:
    from alphaedit.hparams import HparamsError
    from cluster.config import TOY_CONFIG_PATH, SweepConfigError, load_config

    with pytest.raises(HparamsError, match="nullspace_threshold: must be >= 0"):
        HP.replace(nullspace_threshold=-1.0)
    with pytest.raises(SweepConfigError, match="hparams_overrides.0.nullspace_threshold: must be >= 0"):
        load_config(TOY_CONFIG_PATH, ["hparams_overrides=[{nullspace_threshold: -1.0}]"])


def test_check_changes_and_the_failure_line() -> None:
    check_changes({"a": torch.zeros(2, 2), "b": torch.tensor([[0.0, 1e-30]])}, "x")  # one layer moves: fine
    check_changes({}, "x")
    with pytest.raises(NullUpdateError):
        check_changes({"a": torch.zeros(2, 2), "b": torch.zeros(3)}, "x")
    line = describe_failure(NullUpdateError("boom"), "in the batch of edits 0-10 of r1")
    assert line == "an update that changes nothing in the batch of edits 0-10 of r1 (NullUpdateError: boom)"


@pytest.mark.usefixtures("one_torch_thread_per_test")
def test_the_cell_fails_with_the_reason_instead_of_finished(tmp_path: Path) -> None:
    from tests.toy_cells import run_tiny_toy_cell

    statuses, runs, points = run_tiny_toy_cell(tmp_path, "alphaedit", "v_num_grad_steps: 2, nullspace_threshold: 0.0")
    assert list(statuses.values()) == ["failed"]
    status, error = runs
    assert status == "failed" and error.startswith("an update that changes nothing in the batch of edits 0-10"), error
    assert points == [0], "the unedited evaluation is kept"


def test_a_target_loss_that_does_not_move_is_refused_naming_the_request_and_hparams() -> None:
    from alphaedit.targets import StuckTargetError

    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok))
    stats = preservation_stats(model, tok, synthetic_texts(40), HP)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stuck = HP.replace(v_lr=1e-30)
    editor = Editor(model, tok, stuck, "alphaedit", projectors=projectors_from_stats(stats, stuck))
    with pytest.raises(StuckTargetError) as err:
        editor.edit(tiny_requests(2))
    msg = str(err.value)
    assert "the target loss did not fall for 2 of 2 request(s): case_id=0" in msg and "case_id=1" in msg, msg
    assert "v_lr=1e-30" in msg and "v_num_grad_steps=5" in msg and "nothing was applied" in msg, msg
    assert editor.state.n_edits == 0
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters()), "nothing may be applied"
    line = describe_failure(err.value, "in the batch of edits 0-2 of r1")
    assert line.startswith("an update that changes nothing in the batch of edits 0-2 of r1 (StuckTargetError: ")


def test_a_request_already_at_its_target_is_not_stuck() -> None:
    from alphaedit.targets import TargetResult, stuck_requests

    def result(loss0: list[float], loss: list[float], steps: list[int]) -> TargetResult:
        z = torch.zeros(len(loss), 3)
        return TargetResult(z=z, h0=z, loss=torch.tensor(loss), nll=torch.tensor(loss), steps=torch.tensor(steps),
                            most_probable=torch.zeros(len(loss), dtype=torch.bool), initial_loss=torch.tensor(loss0))

    hp = HP.replace(v_early_stop_loss=0.05)
    # below the early-stop threshold at step 0 (no update), reached after updates, fell, one update-free run
    assert stuck_requests(result([0.01, 3.0, 3.0, 3.0], [0.01, 0.04, 2.0, 3.0], [0, 3, 4, 0]), hp) == []
    assert stuck_requests(result([3.0, 3.0, 3.0], [3.0, 3.5, float("nan")], [4, 4, 4]), hp) == [0, 1, 2]
    # a target the model already answers (every token the argmax) is reached, whatever its loss did
    mp = result([8e-7], [0.004], [5])
    mp = TargetResult(**{**mp.__dict__, "most_probable": torch.tensor([True])})
    assert stuck_requests(mp, hp.replace(v_early_stop_loss=0.0)) == []
