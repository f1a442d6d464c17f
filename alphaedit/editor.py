"""The editing loop of one batch, and :class:`Editor`, which carries it over a sequence of batches.

One batch (reference ``apply_AlphaEdit_to_model`` / ``apply_memit_to_model``):

1. z = targets for all requests at the last edited layer L (:func:`compute_targets`).
2. For each edited layer l_i, in ascending order, under the weights already updated for l_<i:
   K1 = template-averaged keys at l_i; R = (z - h_L) / (n - i); Δ_i = solve_update(method, ...);
   W_i += Δ_i.
3. Σ Kp Kpᵀ += K1 K1ᵀ per layer, with K1 recomputed under the fully edited model.

:func:`compute_deltas` performs steps 1-2 and returns the per-weight deltas with the model's
weights restored bit-exactly; :func:`apply_deltas` applies them; :func:`prev_keys_increment`
gives step 3's increments. :class:`Editor` strings them together and keeps the :class:`EditState`.

The method family (``alphaedit.methods``) plugs in here: the solve of step 2 is the method's
(MEMIT, AlphaEdit, ROME, EMMET), RECT masks each layer's update in step 2, ROME runs steps 1-2 once
per request, and PRUNE restrains the accumulated edit after each batch (the Editor keeps the raw
sum Δ_raw in ``EditState.raw_deltas`` and the model holds W_0 + F(Δ_raw)).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from alphaedit.hparams import EditHparams
from alphaedit.keys import subject_representations
from alphaedit.methods import method_spec, postprocess_update, restrain_accumulated, rome_keys, spectral_norm
from alphaedit.models import ModelSpec, edited_weight, from_weight_layout, spec_for, to_weight_layout
from alphaedit.projector import kept_fraction, null_space_projector
from alphaedit.requests import EditRequest
from alphaedit.solve import SolveInputs, solve_update, spread_residual
from alphaedit.state import EditState, apply_deltas, load_edited, restore_weights, snapshot_weights
from alphaedit.stats import SecondMoment, compute_key_stats, key_budget
from alphaedit.targets import TargetResult, compute_targets
from alphaedit.templates import Templates, sample_context_templates
from alphaedit.tokens import model_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchDeltas:
    deltas: dict[str, torch.Tensor]  # param name -> Δ in the weight's shape (float32)
    targets: TargetResult
    seconds: dict[str, float]  # stage -> wall time


class NonFiniteError(FloatingPointError):
    """NaN or Inf in key statistics or in an update; nothing non-finite is ever applied to a model."""


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`NonFiniteError` naming every tensor of ``tensors`` that holds NaN or Inf."""
    bad = [f"{name} ({int((~torch.isfinite(t)).sum())} of {t.numel()} values)"
           for name, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteError(
            f"{what}: NaN/Inf in {', '.join(bad)}. Check the hyper-parameters (l2, mom2_update_weight, "
            "v_lr, solve_dtype) and the key statistics; nothing was applied to the model."
        )


class NullUpdateError(FloatingPointError):
    """An update that is exactly zero in every edited layer: the edit would change nothing."""


def check_changes(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`NullUpdateError` when every tensor of ``tensors`` is all zeros (update norm 0)."""
    if tensors and all(not bool(t.any()) for t in tensors.values()):
        raise NullUpdateError(
            f"{what}: the update is zero in every edited layer ({', '.join(tensors)}), so the edit would change "
            "nothing. Check the hyper-parameters (a nullspace_threshold that keeps no direction, v_lr, "
            "v_num_grad_steps, clamp_norm_factor) and the key statistics; nothing was applied to the model."
        )


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_deltas(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: EditHparams,
    method: str,
    templates: Templates,
    *,
    spec: ModelSpec | None = None,
    projectors: Mapping[int, torch.Tensor] | None = None,
    second_moments: Mapping[int, torch.Tensor] | None = None,
    prev_keys: Mapping[int, torch.Tensor] | None = None,
) -> BatchDeltas:
    """Per-weight deltas of one batch. The model is modified during the call and restored exactly.

    ``projectors``: layer -> P (AlphaEdit, every ``+proj`` method). ``second_moments``: layer ->
    E[k kᵀ] (MEMIT, ROME, EMMET, and PRUNE/RECT without the projection). ``prev_keys``: layer ->
    Σ Kp Kpᵀ of previous batches (used by AlphaEdit and prune/rect+proj; by MEMIT-based methods only
    with ``hparams.memit_uses_prev_keys``; never by ROME and EMMET). RECT's deltas are the masked
    updates; PRUNE's are the unrestrained ones (the restraint acts on the accumulated edit, see
    :class:`Editor`).
    """
    mspec = method_spec(method)
    spec = spec or spec_for(model)
    layers = hparams.layers
    if mspec.max_batch is not None and len(requests) > mspec.max_batch:
        raise ValueError(f"compute_deltas: {method} edits {mspec.max_batch} request at a time, got {len(requests)} "
                         "(Editor.edit splits a batch)")
    if mspec.base == "rome" and len(layers) != 1:
        raise ValueError(f"{method} edits one layer, got layers {layers}: set layers=(l,) or use "
                         f"alphaedit.hparams_for(preset, {method!r})")
    dtype = _dtype(hparams.solve_dtype)
    device = model_device(model)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    targets = compute_targets(model, tokenizer, spec, requests, templates, hparams)
    _sync(device)
    seconds["targets"] = time.perf_counter() - t0

    names = [spec.weight_name(layer) for layer in layers]
    snapshot = snapshot_weights(model, names)
    deltas: dict[str, torch.Tensor] = {}
    use_cache = mspec.uses_prev_keys(hparams)
    t_keys = t_solve = 0.0
    try:
        for i, layer in enumerate(layers):
            t1 = time.perf_counter()
            reps = subject_representations(
                model, tokenizer, spec, requests, templates, [layer], layers[-1], hparams.prompt_batch_size,
                hparams.fact_token,
            )
            _sync(device)
            t2 = time.perf_counter()
            K1 = reps.keys[layer].T  # (d_k, u)  # noqa: N806
            R = spread_residual(targets.z, reps.block_out, i, len(layers))  # (d_model, u)  # noqa: N806
            P = None if (projectors is None or not mspec.projection) else projectors.get(layer)  # noqa: N806
            weight = edited_weight(model, spec, layer)
            W = None  # noqa: N806
            if mspec.base == "rome" or mspec.masks:
                W = from_weight_layout(weight.detach(), spec).to(dtype)  # (d_model, d_k) current weight  # noqa: N806
            K_den = None  # noqa: N806
            if mspec.base == "rome":
                K1, K_den, R = rome_keys(K1.to(dtype), reps.bare_keys[layer].T.to(dtype), R.to(dtype), W,  # noqa: N806
                                         hparams.rome_key_mode)
            inputs = SolveInputs(
                K1=K1, R=R, P=P,
                C0=None if second_moments is None else second_moments.get(layer),
                cache=prev_keys.get(layer) if (use_cache and prev_keys is not None) else None,
                l2=hparams.l2, mom2_update_weight=hparams.mom2_update_weight, K_den=K_den,
                rome_mom2_adjustment=hparams.rome_mom2_adjustment, emmet_ridge=hparams.emmet_ridge,
                emmet_ridge_single_edit=hparams.emmet_ridge_single_edit, cov_ridge=hparams.cov_ridge,
            )
            delta = solve_update(mspec.solver, inputs, dtype)  # (d_model, d_k)
            if mspec.masks:
                kept = postprocess_update(mspec, delta, W, hparams, P)  # (d_model, d_k)
                stored = to_weight_layout(kept, spec).float()  # weight's shape
                in_loop = stored if hparams.rect_mask_in_layer_loop else to_weight_layout(delta, spec).float()
            else:
                stored = in_loop = to_weight_layout(delta, spec).float()  # weight's shape
            with torch.no_grad():
                weight.add_(in_loop.to(weight.dtype))
            deltas[names[i]] = stored
            _sync(device)
            t_keys += t2 - t1
            t_solve += time.perf_counter() - t2
            logger.debug("layer %d: |R| %.4f |Δ| %.4f", layer, float(R.norm()), float(delta.norm()))
    finally:
        restore_weights(model, snapshot)
    seconds["keys"] = t_keys
    seconds["solve"] = t_solve
    return BatchDeltas(deltas=deltas, targets=targets, seconds=seconds)


def prev_keys_increment(
    model: nn.Module, tokenizer, requests: Sequence[EditRequest], hparams: EditHparams, templates: Templates,
    spec: ModelSpec | None = None,
) -> dict[int, torch.Tensor]:
    """K1 K1ᵀ (d_k x d_k, float32) of every edited layer under the current (edited) model, one pass."""
    spec = spec or spec_for(model)
    reps = subject_representations(
        model, tokenizer, spec, requests, templates, hparams.layers, None, hparams.prompt_batch_size,
        hparams.fact_token,
    )
    return {layer: k.T @ k for layer, k in reps.keys.items()}  # (d_k, u) @ (u, d_k)


# --- statistics and projectors at the edge ------------------------------------------------------

def preservation_stats(
    model: nn.Module, tokenizer, texts: Iterable[str], hparams: EditHparams, spec: ModelSpec | None = None,
    **kwargs,
) -> dict[int, SecondMoment]:
    """Key statistics of the edited layers over ``texts`` (at most ``mom2_n_samples`` documents)."""
    spec = spec or spec_for(model)

    def limited() -> Iterable[str]:
        for i, text in enumerate(texts):
            if i >= hparams.mom2_n_samples:
                return
            yield text

    kwargs.setdefault("forward_dtype", None if hparams.stats_dtype == "float32" else hparams.stats_dtype)
    return compute_key_stats(
        model, tokenizer, limited(), spec, hparams.layers,
        max_length=hparams.mom2_max_length, batch_size=hparams.mom2_batch_size,
        max_keys=key_budget(model, spec, hparams.layers, hparams.key_budget_multiplier), **kwargs,
    )


def projectors_from_stats(stats: Mapping[int, SecondMoment], hparams: EditHparams,
                          device: torch.device | str | None = None) -> dict[int, torch.Tensor]:
    """P per layer from E[k kᵀ], as float32 on ``device``."""
    out = {}
    for layer, acc in stats.items():
        proj = null_space_projector(acc.mean(), hparams.nullspace_threshold, hparams.threshold_mode)
        logger.info("layer %d: projector keeps %.4f of d_k=%d", layer, kept_fraction(proj), proj.shape[0])
        out[layer] = proj.to(device=device, dtype=torch.float32)
    return out


# --- the sequential editor ------------------------------------------------------------------------

@dataclass
class BatchReport:
    n_requests: int
    n_edits_total: int
    seconds: dict[str, float]
    mean_target_loss: float
    mean_target_steps: float
    case_ids: list = field(default_factory=list)


class Editor:
    """Sequential editing of one model: holds the base weights, the state and the method inputs.

    ``Editor(...).edit(batch)`` edits the model in place; ``restore()`` returns it bit-exactly to
    its base weights; ``state`` can be saved and given back to a new Editor to resume.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        hparams: EditHparams,
        method: str,
        *,
        spec: ModelSpec | None = None,
        stats: Mapping[int, SecondMoment] | None = None,
        projectors: Mapping[int, torch.Tensor] | None = None,
        second_moments: Mapping[int, torch.Tensor] | None = None,
        templates: Templates | None = None,
        state: EditState | None = None,
    ) -> None:
        self.method_spec = method_spec(method)
        self.model, self.tokenizer, self.hparams, self.method = model, tokenizer, hparams, method
        self.spec = spec or spec_for(model)
        device = model_device(model)
        self.device = device
        if self.method_spec.needs_projector and projectors is None:
            if stats is None:
                raise ValueError(f"Editor(method={method!r}) needs `projectors` or `stats` (key statistics)")
            projectors = projectors_from_stats(stats, hparams, device)
        if self.method_spec.needs_second_moment and second_moments is None:
            if stats is None:
                raise ValueError(f"Editor(method={method!r}) needs `second_moments` or `stats` (key statistics)")
            second_moments = {layer: acc.mean().float() for layer, acc in stats.items()}
        for what, table in (("projectors", projectors), ("second_moments", second_moments)):
            if table is not None and set(hparams.layers) - set(table):
                raise ValueError(f"Editor: {what} lack layers {sorted(set(hparams.layers) - set(table))}")
        self.projectors = None if projectors is None else {k: v.to(device) for k, v in projectors.items()}
        self.second_moments = None if second_moments is None else {
            k: v.to(device) for k, v in second_moments.items()}
        self.templates = templates or sample_context_templates(
            model, tokenizer, hparams.template_prefixes, hparams.template_samples_per_prefix,
            hparams.template_length, hparams.template_top_k, hparams.template_seed,
        )
        names = [self.spec.weight_name(layer) for layer in hparams.layers]
        self.base = snapshot_weights(model, names)
        # PRUNE: σ_max(W_0) per edited weight, from the base weights, once (methods.md §4.7).
        self.sigma_max = {n: spectral_norm(w) for n, w in self.base.items()} if self.method_spec.restrains else {}
        if state is None:
            state = EditState.new(model, self.spec, hparams.layers, device)
            state.extra.update({"method": method, "hparams": hparams.to_dict()})
        else:
            if tuple(state.layers) != hparams.layers:
                raise ValueError(f"Editor: state layers {state.layers} differ from hparams.layers {hparams.layers}")
            state.prev_keys = {k: v.to(device) for k, v in state.prev_keys.items()}
            load_edited(model, self.base, state.deltas)
            if self.method_spec.restrains and state.n_edits and not state.raw_deltas:
                logger.warning("Editor(%s): the state has no raw (unrestrained) deltas; continuing from the "
                               "restrained ones (as prune_mode='in_loop' would)", method)
                state.raw_deltas = {n: d.clone() for n, d in state.deltas.items()}
        self.state = state
        logger.info("editor: method %s, layers %s, device %s, dtype %s",
                    method, hparams.layers, device, next(model.parameters()).dtype)

    def edit(self, requests: Sequence[EditRequest]) -> BatchReport:
        """Edit one batch in place and update the state.

        ROME edits the batch's requests one after another (targets, keys and update per request).
        PRUNE edits on W_0 + Δ_raw and leaves the model at W_0 + F(Δ_raw) (``prune_mode="shadow"``),
        or sets Δ_raw := F(Δ_raw) (``"in_loop"``); ``state.deltas`` always equals what the model holds.
        """
        t0 = time.perf_counter()
        mspec = self.method_spec
        if mspec.restrains:  # edit on the unrestrained accumulated edit
            load_edited(self.model, self.base, self.state.raw_deltas)
        step = mspec.max_batch or max(1, len(requests))
        seconds: dict[str, float] = {}
        losses, steps = [], []
        batch_sum: dict[str, torch.Tensor] = {}
        for start in range(0, len(requests), step):
            batch = compute_deltas(
                self.model, self.tokenizer, requests[start : start + step], self.hparams, self.method, self.templates,
                spec=self.spec, projectors=self.projectors, second_moments=self.second_moments,
                prev_keys=self.state.prev_keys,
            )
            check_finite(batch.deltas, f"update of batch after {self.state.n_edits} edits ({self.method})")
            check_changes(batch.deltas, f"update of batch after {self.state.n_edits} edits ({self.method})")
            apply_deltas(self.model, batch.deltas)
            for name, d in batch.deltas.items():
                batch_sum[name] = d if name not in batch_sum else batch_sum[name] + d
            for stage, sec in batch.seconds.items():
                seconds[stage] = seconds.get(stage, 0.0) + sec
            losses.append(batch.targets.loss)
            steps.append(batch.targets.steps)
        t1 = time.perf_counter()
        increments = prev_keys_increment(self.model, self.tokenizer, requests, self.hparams, self.templates, self.spec)
        for layer, inc in increments.items():
            self.state.prev_keys[layer] += inc.to(self.state.prev_keys[layer].device)
        if mspec.restrains:
            self._restrain(batch_sum)
        else:
            params = dict(self.model.named_parameters())
            for name, base in self.base.items():
                self.state.deltas[name] = params[name].detach().float() - base.float()
        self.state.n_edits += len(requests)
        self.state.case_ids.extend(r.case_id for r in requests)
        _sync(self.device)
        seconds["prev_keys"] = time.perf_counter() - t1
        seconds["total"] = time.perf_counter() - t0
        report = BatchReport(
            n_requests=len(requests), n_edits_total=self.state.n_edits, seconds=seconds,
            mean_target_loss=float(torch.cat(losses).mean()),
            mean_target_steps=float(torch.cat(steps).float().mean()),
            case_ids=[r.case_id for r in requests],
        )
        logger.info("batch of %d edited (%d total) in %.2fs", len(requests), self.state.n_edits, seconds["total"])
        return report

    def _restrain(self, batch_sum: Mapping[str, torch.Tensor]) -> None:
        """PRUNE: Δ_raw += this batch's deltas; the model and state.deltas become W_0 + F(Δ_raw)."""
        t0 = time.perf_counter()
        hp = self.hparams
        restrained = {}
        for name in self.base:
            prev = self.state.raw_deltas.get(name)
            raw = batch_sum[name].float() if prev is None else prev.to(batch_sum[name].device).float() + batch_sum[name]
            self.state.raw_deltas[name] = raw
            restrained[name] = restrain_accumulated(raw, self.sigma_max[name], hp.prune_alpha, hp.prune_function,
                                                    _dtype(hp.solve_dtype)).float()
        if hp.prune_mode == "in_loop":
            self.state.raw_deltas = {n: d.clone() for n, d in restrained.items()}
        self.state.deltas = restrained
        load_edited(self.model, self.base, restrained)
        logger.debug("PRUNE restraint in %.2fs", time.perf_counter() - t0)

    def restore(self) -> None:
        """Put the base weights back (bit-exact); the state is left as is."""
        restore_weights(self.model, self.base)

    def reapply(self) -> None:
        """Set the weights to base + state.deltas (after :meth:`restore`)."""
        load_edited(self.model, self.base, self.state.deltas)
