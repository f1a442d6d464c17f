"""Editing hyper-parameters: one frozen dataclass, the reference code's published presets, a toy preset.

Every constant that changes a result is a field. Defaults follow the reference code
(jianghoucheng/AlphaEdit @ f5248d3, ``hparams/AlphaEdit/*.json``); where the paper differs, the
paper's variant is reachable through a field and the comment says so.

Methods (issue 9): :data:`METHODS` is the single list of method names. ``alphaedit`` and ``memit``
are the two original ones; ``rome``, ``emmet``, ``prune`` and ``rect`` are the method family of
``alphaedit.methods``, each also with AlphaEdit's null-space projection as ``<name>+proj``
(``alphaedit`` is itself MEMIT's path with the projection and AlphaEdit's objective).
:func:`hparams_for` gives a preset plus the published method-specific defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from alphaedit.fields import Range, instance_problems

ThresholdMode = Literal["absolute", "relative"]
#: Suffix of a method name that switches AlphaEdit's null-space projection P on (``rome+proj``).
PROJECTION_SUFFIX = "+proj"
#: Methods of the family that exist with and without the projection (see alphaedit.methods).
FAMILY: tuple[str, ...] = ("rome", "emmet", "prune", "rect")
#: Every method name the library, the sweep config and jobs/edit.py accept.
METHODS: tuple[str, ...] = ("alphaedit", "memit") + tuple(
    name for base in FAMILY for name in (base, base + PROJECTION_SUFFIX))
RomeKeyMode = Literal["r_rome", "original", "p_rome", "shared"]


class HparamsError(ValueError):
    """Invalid editing hyper-parameters; ``problems`` lists every one (``EditHparams.<field>: ...``)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def _as_layers(layers: object) -> tuple[object, ...]:
    """Layer indices as a tuple; numpy integers become ints, anything else is left for the check."""
    import operator

    items = tuple(layers) if isinstance(layers, list | tuple | range) else (layers,)
    out = []
    for x in items:
        try:
            out.append(x if isinstance(x, bool) else operator.index(x))
        except TypeError:
            out.append(x)
    return tuple(out)


@dataclass(frozen=True)
class EditHparams:
    # --- where to edit -------------------------------------------------------------------------
    layers: tuple[int, ...]  # edited layers, ascending; z is optimized at the last one (L)
    # Token whose representation is edited: "subject_last" (paper and reference code) or "last"
    # (the prompt's last token; MEMIT's codebase names it, AlphaEdit's crashes on it).
    fact_token: Literal["subject_last", "last"] = "subject_last"
    # --- target values z (compute_z), reference defaults for gpt2-xl ---------------------------
    v_num_grad_steps: Annotated[int, Range(ge=1)] = 20  # iterations; the last only evaluates, so at most steps-1 Adam updates
    v_lr: float = 0.5
    v_weight_decay: float = 0.5  # weight of ||δ|| / ||h0||² (plain norm over squared norm, as in the code)
    clamp_norm_factor: float = 0.75  # ||δ|| <= clamp_norm_factor * ||h0|| after each step
    kl_factor: float = 0.0625
    kl_prompt: str = "{} is a"  # KL-anchor prompt (essence), filled with the subject
    v_early_stop_loss: float = 0.05  # a request stops when its loss is below this
    # --- context templates (prefix augmentation) -----------------------------------------------
    template_prefixes: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You")
    template_samples_per_prefix: Annotated[int, Range(ge=1)] = 1
    template_length: Annotated[int, Range(ge=1)] = 10  # total tokens of a sampled prefix, prompt (and BOS) included
    template_top_k: Annotated[int, Range(ge=1)] = 5
    template_seed: int = 0  # the reference sets no seed; we do, for reproducibility
    # --- null-space projector (AlphaEdit) -------------------------------------------------------
    nullspace_threshold: Annotated[float, Range(ge=0)] = 2e-2  # on the *mean* second moment E[k kᵀ] (reference code)
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
    mom2_n_samples: Annotated[int, Range(ge=1)] = 100_000  # number of corpus documents (the reference counts articles)
    # Tokens per document (truncation). None: the model's context (n_positions / max_position_embeddings),
    # as the reference's layer_stats; a preset may cap it (memory).
    mom2_max_length: Annotated[int, Range(ge=1)] | None = None
    mom2_batch_size: Annotated[int, Range(ge=1)] = 16  # documents per forward pass
    key_budget_multiplier: Annotated[float, Range(gt=0)] | None = None  # FastMEMIT: stop after multiplier * d_k keys
    # --- batching of the prompt forwards ---------------------------------------------------------
    prompt_batch_size: Annotated[int, Range(ge=1)] = 512  # rows per forward when computing keys over template prompts
    # --- method family (alphaedit.methods; methods.md) ------------------------------------------
    # ROME (methods.md §2.4): which key/residual enter Δ = r ũᵀ / (ũᵀ k). "r_rome" (r-ROME code
    # default, the paper's Eq. 2: (W+Δ)k* = v*), "original" (kmeng01/rome: denominator and residual
    # from the bare prompt), "p_rome" (bare-prompt key everywhere), "shared" (k*, residual z - h_L as
    # MEMIT/EMMET use it).
    rome_key_mode: RomeKeyMode = "r_rome"
    # ROME's mom2_adjustment: ũ = C0⁻¹ k (True, kmeng01/rome) or ũ = k (C = I; AlphaEdit's and
    # EasyEdit's Llama-3 ROME configs).
    rome_mom2_adjustment: bool = True
    # EMMET ridge ρ on Kᵀ C0⁻¹ K, C0 = E[k kᵀ] unscaled: ρ = mom2_update_weight × emmet_lambda of the
    # reference (methods.md §3.1). Default: GPT2-XL in scalable-model-editing/unified-model-editing
    # (1000 × 0.1).
    emmet_ridge: Annotated[float, Range(ge=0)] = 100.0
    # The EMMET reference adds the ridge only when a batch has more than one edit; EasyEdit always.
    emmet_ridge_single_edit: bool = False
    # μ in C0 + μ I before C0 is inverted (ROME, EMMET); the reference's update_norm_lambda / λ_m.
    cov_ridge: Annotated[float, Range(ge=0)] = 0.0
    # PRUNE (methods.md §4): F(σ) = σ_max + log_α(σ / σ_max) for singular values σ >= σ_max(W_0) of
    # the accumulated edit ("log", α = prune_alpha), or (σ + σ_max) / 2 ("linear").
    prune_alpha: Annotated[float, Range(gt=1)] = math.e  # log base
    prune_function: Literal["log", "linear"] = "log"
    # "shadow" (official protocol): edit on W_0 + Δ_raw, the model holds W_0 + F(Δ_raw);
    # "in_loop": Δ_raw := F(Δ_raw) after every batch, so later edits see the restrained model.
    prune_mode: Literal["shadow", "in_loop"] = "shadow"
    # RECT (methods.md §5): keep the top rect_top_percent % of entries of Δ by |Δ| / (|W| + ε).
    rect_top_percent: Annotated[float, Range(gt=0, le=100)] = 40.0
    rect_eps: float = 1e-8
    # With the projection: M ⊙ (ΔP) then P again ("mask_then_project", keeps Δ = ΔP) or M ⊙ (ΔP) as
    # is ("project_then_mask", exact sparsity, loses Δ K0 ≈ 0; methods.md §5.3).
    rect_projection_order: Literal["mask_then_project", "project_then_mask"] = "mask_then_project"
    # False (AlphaEdit's RECT baseline): later layers are solved against the full update of earlier
    # layers and the mask is applied at insertion; True: the masked update is applied in the loop.
    rect_mask_in_layer_loop: bool = False
    # prune+proj / rect+proj use AlphaEdit's solve; include its Σ Kp Kpᵀ term (AlphaEdit §4.5 is silent).
    projected_uses_prev_keys: bool = True
    # --- speed (issue 16); the defaults keep the reference numerics --------------------------------
    # Dtype of the blocks above L (and the final norm) while z is optimized. "bfloat16": one cast of
    # those frozen weights per compute_targets call (bf16 GEMMs, fp32 accumulation); blocks 0..L, h0,
    # δ, Adam, the output layer and the losses stay fp32. "float32": the reference (fp32 models).
    v_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # ENCORE's most-probable early stopping (arXiv 2502.01636): a request also stops once every target
    # token is the argmax after every rewriting prompt (teacher-forced), whatever its loss.
    v_stop_most_probable: bool = False
    # Dtype of the forward that produces the keys for the key statistics (blocks up to the last edited
    # layer); each batch's Σ k kᵀ is still formed in fp32 and summed in fp64.
    stats_dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def __post_init__(self) -> None:
        """Lists become tuples; then every field is checked against its type, ``Literal`` and bounds
        (NaN and inf are errors), and :class:`HparamsError` lists every problem at once."""
        object.__setattr__(self, "layers", _as_layers(self.layers))
        object.__setattr__(self, "template_prefixes", tuple(self.template_prefixes))
        problems = instance_problems(self)
        layers = self.layers
        if not layers:
            problems.append("EditHparams.layers: at least one edited layer is required")
        elif all(isinstance(x, int) for x in layers) and list(layers) != sorted(set(layers)):
            problems.append(f"EditHparams.layers: must be strictly ascending without repeats, got {layers}")
        if problems:
            raise HparamsError(problems)

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
        # mom2_max_length None: the model's context (8192), as the reference; set 4096 (the 2026
        # refactor's cap) where the statistics run out of memory (AlphaEdit issue #3).
        mom2_max_length=None, mom2_batch_size=4,
    ),
    # The embedded real model, SmolLM2-135M(-Instruct) (eval/realworld; 30 Llama blocks, d_model 576,
    # d_k 1536), chosen by measurement on the real facts (README "The real world"):
    # - layers 2-6: the causal trace of MLP states at the subject's last token (jobs/trace.py, 40
    #   facts, window 5) peaks at windows centred on layers 0-2 and again on 5-6, nothing past 10; the
    #   edit sweep jobs/configs/smollm2_layers.yaml (AlphaEdit, 50 edits in batches of 25) gives
    #   efficacy / generalization / specificity 96.0 / 89.0 / 93.0 for layers 2-6, 92.0 / 77.0 / 93.2
    #   for 4-8 (Llama-3's), 82.0 / 54.0 / 93.6 for 6-10 (unedited 0.0 / 1.0 / 94.6).
    # - nullspace_threshold 2e-2 (the reference's): on the real-world corpus it keeps 0.89 / 0.90 /
    #   0.83 / 0.79 / 0.76 of d_k at layers 2-6, near the ~70% the AlphaEdit author reports for Llama-3.
    # - l2 10 as the reference; v_dtype bfloat16 (issue 16: bf16 blocks above L while z is optimized).
    # - v_lr 0.5, 12 steps (11 Adam updates): on 50 real requests at layers 2-6 (bf16) the mean z loss
    #   after 11 updates is ~0.23 with 94% of the targets already the most probable continuation; the
    #   Llama-3 schedule (lr 0.1, 25 steps) ends at 0.49 and 82% after its 24 updates (lr 0.25: 0.51 /
    #   84% at 12 updates; lr 1.0: 0.11 / 100% at 12). Neither reaches the 0.05 early stop.
    # - mom2_max_length 512: the corpus documents are at most 138 tokens, so nothing is truncated.
    "smollm2": EditHparams(
        layers=(2, 3, 4, 5, 6), v_num_grad_steps=12, v_lr=0.5, v_dtype="bfloat16", mom2_update_weight=15000.0,
        mom2_n_samples=100_000, mom2_max_length=512, mom2_batch_size=16,
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


# Method-specific defaults per preset (methods.md §2.5, §3.2; the z-optimisation fields of the
# family's reference configs). PRUNE and RECT wrap the preset's MEMIT (or, with the projection,
# AlphaEdit) editor and add only their own fields, whose defaults are the dataclass's (α = e,
# top-40%), so they have no entries. Differences from the reference, on purpose:
# - z lives on the shared path (block output, MEMIT's clamp 0.75·||h0||); ROME's reference optimizes
#   the MLP output with clamp 4·||m0|| and has its own v_loss_layer (methods.md §2.4). The same δ
#   results for one edited layer; the clamp reference differs.
# - ROME's 1+20 flat templates are not used: the shared 1+5 grouped templates are (a config field).
METHOD_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "gpt2-xl": {
        "rome": dict(layers=(17,), v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5),  # kmeng01/rome
        "emmet": dict(layers=(17,), emmet_ridge=100.0),  # unified-model-editing: λ_m 1000 × λ_e 0.1
    },
    "gpt-j": {
        "rome": dict(layers=(5,), v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5),  # kmeng01/rome
        "emmet": dict(layers=(5,), emmet_ridge=0.1),  # unified-model-editing: λ_m 1 × λ_e 0.1
    },
    "llama3-8b": {
        # AlphaEdit hparams/ROME/Llama3-8B.json (layer 5, 25 steps, lr 0.5, decay 1e-3). C⁻¹ stays on
        # (methods.md §2.5 recommendation); AlphaEdit's published ROME row used mom2_adjustment false:
        # set rome_mom2_adjustment=False to reproduce it.
        "rome": dict(layers=(5,), v_num_grad_steps=25, v_lr=0.5, v_weight_decay=1e-3),
        # No official EMMET config for Llama-3: AlphaEdit's layers 4-8 with MEMIT spreading (so EMMET
        # and AlphaEdit edit the same layers), ρ = 0.1 as unified-model-editing's Llama-2 config.
        "emmet": dict(emmet_ridge=0.1),
    },
    # The real model (README "The real world"): MEMIT's λ chosen by jobs/configs/smollm2_memit_lambda.yaml
    # (50 edits in batches of 25, layers 2-6): λ 15,000 (Llama-3's) 64.0 / 39.0 / 93.6 (efficacy /
    # generalization / specificity), λ 2,000 96.0 / 86.0 / 93.0, λ 200 98.0 / 94.0 / 93.0; λ = 2,000
    # gives MEMIT AlphaEdit's edit strength on this model (96.0 / 89.0 / 93.0), so the comparison is
    # about what each does to the rest of the model. PRUNE and RECT wrap MEMIT: the same λ. ROME and
    # EMMET: not tuned (ROME on the last edited layer, EMMET with the Llama-3 ridge).
    "smollm2": {
        "memit": dict(mom2_update_weight=2000.0),
        "prune": dict(mom2_update_weight=2000.0),
        "rect": dict(mom2_update_weight=2000.0),
        "rome": dict(layers=(6,), v_weight_decay=1e-3),
        "emmet": dict(emmet_ridge=0.1),
    },
    # Toy world.
    "toy": {
        # MEMIT's reference λ = 15000 is calibrated to the key scale of GPT-J/Llama; on the toy model
        # it barely edits (efficacy 0.03 after 200 edits). λ = 100 gives MEMIT the edit strength of
        # the toy AlphaEdit preset (200 sequential edits, batches of 100: efficacy 0.995 vs 0.915),
        # so the toy comparison is about what each does to the rest of the model.
        "memit": dict(mom2_update_weight=100.0),
        # PRUNE and RECT wrap MEMIT: the same calibrated λ.
        "prune": dict(mom2_update_weight=100.0),
        "rect": dict(mom2_update_weight=100.0),
        # ROME and EMMET edit the last toy layer (as GPT2-XL's layer 17 is the last MEMIT layer); not
        # tuned: on the toy world one batch of 100 gives efficacy 1.0 and specificity ~0.55 with
        # these (README "Methods"), since the toy preset edits at the prompt's last token.
        "rome": dict(layers=(2,)),
        "emmet": dict(layers=(2,), emmet_ridge=1.0),
    },
}


def method_base(method: str) -> str:
    """The method without its projection suffix (``rome+proj`` -> ``rome``); validates the name."""
    if method not in METHODS:
        raise ValueError(f"unknown editing method {method!r}; known: {list(METHODS)}")
    return method.removesuffix(PROJECTION_SUFFIX)


def hparams_for(preset_name: str, method: str, **overrides: Any) -> EditHparams:
    """Preset ``preset_name`` + the published defaults of ``method`` on it + ``overrides``.

    ``alphaedit`` gets the preset unchanged (then the overrides); ``memit`` too, except on the toy
    and smollm2 presets (their λ, see METHOD_DEFAULTS). The projected and unprojected variant of a method share
    their defaults.
    """
    if preset_name not in PRESETS:
        raise KeyError(f"unknown hparams preset {preset_name!r}; known: {sorted(PRESETS)}")
    changes = {**METHOD_DEFAULTS.get(preset_name, {}).get(method_base(method), {}), **overrides}
    return PRESETS[preset_name].replace(**changes) if changes else PRESETS[preset_name]
