"""AlphaEdit (null-space-constrained knowledge editing), MEMIT, ROME, EMMET, PRUNE and RECT on one code path.

Pure numerics: imports torch, transformers, safetensors, numpy and the standard library only.
"""

from alphaedit.api import EditCase, EditResult, edit
from alphaedit.editor import (
    BatchDeltas,
    BatchReport,
    Editor,
    compute_deltas,
    preservation_stats,
    prev_keys_increment,
    projectors_from_stats,
)
from alphaedit.hparams import METHODS, PRESETS, EditHparams, hparams_for, preset
from alphaedit.methods import MethodSpec, method_name, method_spec, rect_mask, restrain_accumulated
from alphaedit.models import ModelSpec, known_model_types, register_spec, spec_for
from alphaedit.projector import kept_fraction, null_space_projector, projector_rank
from alphaedit.requests import EditRequest, InvalidRequestError, requests_from_counterfact
from alphaedit.scoring import TargetScores, score_targets
from alphaedit.solve import (
    SolveInputs,
    alphaedit_update,
    emmet_update,
    memit_update,
    rome_update,
    solve_update,
    spread_residual,
)
from alphaedit.state import (
    EditState,
    apply_deltas,
    load_deltas,
    restore_weights,
    save_deltas,
    snapshot_weights,
)
from alphaedit.stats import SecondMoment, compute_key_stats, load_stats, merge_stats, save_stats
from alphaedit.targets import compute_targets
from alphaedit.templates import sample_context_templates

__all__ = [
    "METHODS", "PRESETS", "BatchDeltas", "BatchReport", "EditCase", "EditHparams", "EditRequest", "EditResult",
    "EditState", "Editor", "edit",
    "InvalidRequestError", "MethodSpec", "ModelSpec", "SecondMoment", "SolveInputs", "TargetScores",
    "alphaedit_update", "apply_deltas", "compute_deltas", "compute_key_stats", "compute_targets", "emmet_update",
    "hparams_for", "kept_fraction", "known_model_types", "load_deltas", "load_stats", "memit_update",
    "merge_stats", "method_name", "method_spec", "null_space_projector", "preservation_stats", "preset",
    "prev_keys_increment", "projector_rank", "projectors_from_stats", "rect_mask", "register_spec",
    "requests_from_counterfact", "restore_weights", "restrain_accumulated", "rome_update",
    "sample_context_templates", "save_deltas", "save_stats", "score_targets", "snapshot_weights", "solve_update",
    "spec_for", "spread_residual",
]
