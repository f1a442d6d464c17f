"""Editing hyper-parameters: one frozen dataclass, the reference code's published presets, a toy preset.

Every constant that changes a result is a field. Defaults follow the reference code
(jianghoucheng/AlphaEdit @ f5248d3, ``hparams/AlphaEdit/*.json``); where the paper differs, the
paper's variant is reachable through a field and the comment says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

Method = Literal["alphaedit", "memit"]
ThresholdMode = Literal["absolute", "relative"]
METHODS: tuple[str, ...] = ("alphaedit", "memit")


@dataclass(frozen=True)
class EditHparams:
    # --- where to edit -------------------------------------------------------------------------
    layers: tuple[int, ...]  # edited layers, ascending; z is optimized at the last one (L)
    # Token whose representation is edited: "subject_last" (paper and reference code) or "last"
    # (the prompt's last token; MEMIT's codebase names it, AlphaEdit's crashes on it).
    fact_token: Literal["subject_last", "last"] = "subject_last"
    # --- target values z (compute_z), reference defaults for gpt2-xl ---------------------------
    v_num_grad_steps: int = 20  # iterations; the last only evaluates, so at most steps-1 Adam updates
    v_lr: float = 0.5
    v_weight_decay: float = 0.5  # weight of ||δ|| / ||h0||² (plain norm over squared norm, as in the code)
    clamp_norm_factor: float = 0.75  # ||δ|| <= clamp_norm_factor * ||h0|| after each step
    kl_factor: float = 0.0625
    kl_prompt: str = "{} is a"  # KL-anchor prompt (essence), filled with the subject
    v_early_stop_loss: float = 0.05  # a request stops when its loss is below this
    # --- context templates (prefix augmentation) -----------------------------------------------
    template_prefixes: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You")
    template_samples_per_prefix: int = 1
    template_length: int = 10  # total tokens of a sampled prefix, prompt (and BOS) included
    template_top_k: int = 5
    template_seed: int = 0  # the reference sets no seed; we do, for reproducibility
    # --- null-space projector (AlphaEdit) -------------------------------------------------------
    nullspace_threshold: float = 2e-2  # on the *mean* second moment E[k kᵀ] (reference code)
    # "absolute": keep eigenvectors with λ < threshold (code). "relative": λ < threshold * λ_max.
    threshold_mode: ThresholdMode = "absolute"
    # --- closed-form solve -----------------------------------------------------------------------
    # AlphaEdit Eq. 14 ridge α. The code uses L2 = 10 for every model; the paper's main text writes
    # I (α = 1) and App. B.5 αI: set l2=1.0 for the paper's main-text variant.
    l2: float = 10.0
    # AlphaEdit accumulates Σ Kp Kpᵀ of previous batches (Eq. 14). MEMIT's reference code does not;
    # set memit_uses_prev_keys=True for the paper's Eq. 15 (which includes Kp Kpᵀ).
    memit_uses_prev_keys: bool = False
    mom2_update_weight: float = 20000.0  # MEMIT's λ on C0 = E[k kᵀ]; unused by AlphaEdit
    solve_dtype: Literal["float32", "float64"] = "float64"  # MEMIT's code solves in fp64, AlphaEdit's in fp32
    # --- key statistics --------------------------------------------------------------------------
    mom2_n_samples: int = 100_000  # number of corpus documents (the reference counts articles)
    mom2_max_length: int = 1024  # tokens per document (truncation); reference: model context
    mom2_batch_size: int = 16  # documents per forward pass
    key_budget_multiplier: float | None = None  # FastMEMIT: stop after multiplier * d_k keys
    # --- batching of the prompt forwards ---------------------------------------------------------
    prompt_batch_size: int = 512  # rows per forward when computing keys over template prompts

    def __post_init__(self) -> None:
        layers = tuple(int(x) for x in self.layers)
        if not layers:
            raise ValueError("EditHparams.layers: at least one edited layer is required")
        if list(layers) != sorted(set(layers)):
            raise ValueError(f"EditHparams.layers must be strictly ascending without repeats, got {layers}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "template_prefixes", tuple(self.template_prefixes))
        if self.threshold_mode not in ("absolute", "relative"):
            raise ValueError(f"EditHparams.threshold_mode must be 'absolute' or 'relative', got {self.threshold_mode!r}")
        if self.fact_token not in ("subject_last", "last"):
            raise ValueError(f"EditHparams.fact_token must be 'subject_last' or 'last', got {self.fact_token!r}")
        if self.solve_dtype not in ("float32", "float64"):
            raise ValueError(f"EditHparams.solve_dtype must be 'float32' or 'float64', got {self.solve_dtype!r}")
        if self.v_num_grad_steps < 1:
            raise ValueError("EditHparams.v_num_grad_steps must be >= 1")
        if self.key_budget_multiplier is not None and self.key_budget_multiplier <= 0:
            raise ValueError("EditHparams.key_budget_multiplier must be positive or None")

    def replace(self, **changes: Any) -> EditHparams:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EditHparams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EditHparams field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def digest(self) -> str:
        """Stable short hash of every field (for cache keys and run metadata)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Reference presets (hparams/AlphaEdit/*.json of the official repo; MEMIT's JSONs are identical
# apart from AlphaEdit's threshold and L2). The stats fields follow the reference: 100k articles
# truncated to the model context.
PRESETS: dict[str, EditHparams] = {
    "gpt2-xl": EditHparams(
        layers=(13, 14, 15, 16, 17), v_num_grad_steps=20, v_lr=0.5, mom2_update_weight=20000.0,
        mom2_max_length=1024,
    ),
    "gpt-j": EditHparams(
        layers=(3, 4, 5, 6, 7, 8), v_num_grad_steps=25, v_lr=0.5, mom2_update_weight=15000.0,
        mom2_max_length=2048,
    ),
    "llama3-8b": EditHparams(
        layers=(4, 5, 6, 7, 8), v_num_grad_steps=25, v_lr=0.1, mom2_update_weight=15000.0,
        mom2_max_length=4096,  # the reference uses 8192; 4096 avoids the known OOM (issue #3)
        mom2_batch_size=4,
    ),
    # The embedded toy world (4-layer GPT-2, d_model 128, d_k 512), tuned in this repo on the first
    # 200 CounterFact records (4 sequential batches of 50). Differences from the reference presets,
    # and why:
    # - fact_token="last": the toy model reads the subject's identity from its raw surname
    #   embedding in the first attention layer, so no shift of the subject's last-token residual
    #   (even unclamped, at block 0) moves the answer (z loss stays ~13); at the prompt's last token
    #   the z loss reaches ~0.2.
    # - layers (0, 1, 2) and l2 = 5: keys here have small norms (GELU outputs of a 128-wide model), so
    #   the reference L2 = 10 leaves efficacy < 0.5; l2 trades efficacy against specificity
    #   (l2 1: 0.955 / 0.923, l2 5: 0.95 / 0.939, l2 8: 0.86 / 0.954; efficacy / specificity).
    # - v_early_stop_loss 0 and 40 steps: targets converge fully, which the ridge then shrinks.
    # The whole toy wiki (2,500 biographies, ~130k keys) is the preservation corpus.
    "toy": EditHparams(
        layers=(0, 1, 2), fact_token="last", v_num_grad_steps=40, v_lr=0.5, v_weight_decay=0.5,
        clamp_norm_factor=4.0, kl_factor=0.0625, v_early_stop_loss=0.0, nullspace_threshold=2e-2, l2=5.0,
        mom2_update_weight=15000.0, mom2_n_samples=100_000, mom2_max_length=128, mom2_batch_size=64,
    ),
}


def preset(name: str, **overrides: Any) -> EditHparams:
    """A named preset, optionally with fields replaced."""
    if name not in PRESETS:
        raise KeyError(f"unknown hparams preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
