"""Target values z for a whole batch of requests, optimized together (reference ``compute_z``).

For request r, δ_r ∈ R^{d_model} is added to the output of block L (the last edited layer) at the
subject's last token of every prompt of r. Loss of r (reference code):

    NLL_r = mean over the T context-template prompts of -(1/|o|) Σ_t log p(o_t | prompt, o_<t)
    KL_r  = kl_factor · KL(p_δ || p_0) of the next-token distribution at the subject's last token of
            kl_prompt ("{} is a"), p_0 recorded before any step
    WD_r  = v_weight_decay · ||δ_r|| / ||h0_r||²
    loss_r = NLL_r + KL_r + WD_r

All requests share one padded forward/backward per step; the total loss is Σ_r loss_r, and since
request r's prompts only see δ_r (and Adam is element-wise), every δ_r follows exactly the
trajectory of a separate per-request optimization. A request stops (its δ is frozen) once its loss
is below ``v_early_stop_loss``; the last iteration only evaluates. After each step δ_r is clamped to
||δ_r|| <= clamp_norm_factor · ||h0_r||. Output: z_r = h0_r + δ_r, with h0_r the block-L output at
the subject's last token of the bare prompt.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from alphaedit.hooks import add_at_positions, capture, replay_blocks, run_until_stopped
from alphaedit.hparams import EditHparams
from alphaedit.models import ModelSpec, get_module
from alphaedit.prompts import request_prompts, subject_prompts
from alphaedit.requests import EditRequest
from alphaedit.templates import Templates, flat_templates
from alphaedit.tokens import encode, model_device, pad_id, right_pad

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetResult:
    z: torch.Tensor  # (u, d_model) float32: h0 + δ
    h0: torch.Tensor  # (u, d_model) float32
    loss: torch.Tensor  # (u,) final loss of each request
    nll: torch.Tensor  # (u,) final NLL term
    steps: torch.Tensor  # (u,) Adam updates taken by each request


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Temporarily turn off requires_grad on every parameter (only δ is optimized)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _logits(model: nn.Module, spec: ModelSpec, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits (n, vocab) in float32 of final-norm hidden states (n, d_model)."""
    return get_module(model, spec.lm_head)(hidden).float()


def compute_targets(
    model: nn.Module,
    tokenizer,
    spec: ModelSpec,
    requests: Sequence[EditRequest],
    templates: Templates,
    hparams: EditHparams,
    layer: int | None = None,
) -> TargetResult:
    """Optimize z for all ``requests`` at block ``layer`` (default: the last edited layer)."""
    if not requests:
        raise ValueError("compute_targets: no requests")
    layer = hparams.layers[-1] if layer is None else layer
    flat = flat_templates(templates)
    if flat[0] != "{}":
        raise ValueError("compute_targets: the first context template must be the bare '{}' template")
    n_tmpl, u = len(flat), len(requests)
    device = model_device(model)

    target_ids = [encode(tokenizer, [r.target_new], add_special_tokens=False)[0] for r in requests]
    for r, ids in zip(requests, target_ids, strict=True):
        if not ids:
            raise ValueError(f"case_id={r.case_id!r}: target_new {r.target_new!r} tokenizes to no tokens")
    rewrite = subject_prompts(
        tokenizer, request_prompts(requests, flat), [r.subject for r in requests for _ in flat], hparams.fact_token
    )
    kl = subject_prompts(tokenizer, [hparams.kl_prompt] * u, [r.subject for r in requests], hparams.fact_token)

    rows: list[list[int]] = []
    label_row, label_pos, label_tok, label_req = [], [], [], []
    for r in range(u):
        tgt = target_ids[r]
        for t in range(n_tmpl):
            prompt = rewrite[r * n_tmpl + t]
            row = len(rows)
            rows.append(prompt.ids + tgt[:-1])  # teacher forcing: the target minus its last token
            for j, tok in enumerate(tgt):
                label_row.append(row)
                label_pos.append(len(prompt.ids) - 1 + j)  # logits here predict target token j
                label_tok.append(tok)
                label_req.append(r)
    rows.extend(p.ids for p in kl)
    lookups = [p.lookup for p in rewrite] + [p.lookup for p in kl]
    row_req = torch.tensor([r for r in range(u) for _ in range(n_tmpl)] + list(range(u)), device=device)
    lookup_cols = torch.tensor(lookups, device=device)
    kl_rows = torch.arange(u * n_tmpl, u * n_tmpl + u, device=device)
    kl_cols = torch.tensor([p.lookup for p in kl], device=device)
    bare_rows = torch.arange(0, u * n_tmpl, n_tmpl, device=device)
    bare_cols = torch.tensor([rewrite[r * n_tmpl].lookup for r in range(u)], device=device)
    l_row = torch.tensor(label_row, device=device)
    l_pos = torch.tensor(label_pos, device=device)
    l_tok = torch.tensor(label_tok, device=device)
    l_req = torch.tensor(label_req, device=device)
    tokens_per_req = torch.tensor([len(t) * n_tmpl for t in target_ids], device=device, dtype=torch.float32)

    input_ids, mask = right_pad(rows, pad_id(tokenizer), device)
    d_model = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd)
    delta = torch.zeros(u, d_model, device=device, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=hparams.v_lr)
    done = torch.zeros(u, dtype=torch.bool, device=device)
    steps = torch.zeros(u, dtype=torch.long, device=device)
    loss = torch.zeros(u, device=device, dtype=torch.float32)
    nll_all = torch.zeros(u, device=device, dtype=torch.float32)
    below = [spec.block_name(i) for i in range(layer + 1)]
    h0: torch.Tensor | None = None
    log_p0: torch.Tensor | None = None
    clean: torch.Tensor | None = None  # block-L output of all rows, recorded once (it does not depend on δ)
    clean_is_tuple = False

    was_training = model.training
    model.eval()
    try:
        with frozen_parameters(model):
            for it in range(hparams.v_num_grad_steps):
                # Only requests still optimizing take part in the forward (their rows, re-indexed).
                active = ~done  # (u,)
                act_rows = active[row_req].nonzero()[:, 0]  # rows of active requests
                new_index = torch.full((len(rows),), -1, dtype=torch.long, device=device)
                new_index[act_rows] = torch.arange(len(act_rows), device=device)
                width = int(mask[act_rows].sum(1).max())
                ids_a, mask_a = input_ids[act_rows, :width], mask[act_rows, :width]
                req_a = row_req[act_rows]
                lab = active[l_req]  # labels of active requests
                kl_req = active.nonzero()[:, 0]
                with contextlib.ExitStack() as stack:
                    if clean is not None:  # blocks 0..L are replayed from the first forward
                        replay = clean[act_rows, :width]
                        stack.enter_context(replay_blocks(model, below, (replay,) if clean_is_tuple else replay))
                    block = stack.enter_context(add_at_positions(
                        model, spec.block_name(layer), torch.arange(len(act_rows), device=device),
                        lookup_cols[act_rows], lambda req_a=req_a: delta[req_a]))
                    store = stack.enter_context(capture(model, outputs_of=[spec.final_norm], stop_after=spec.final_norm))
                    run_until_stopped(model, ids_a, mask_a)
                hidden = store["out:" + spec.final_norm]  # (active rows, seq, d_model)
                if clean is None:
                    clean = block["clean"].detach()
                    clean_is_tuple = bool(block["is_tuple"])
                    h0 = clean[bare_rows, bare_cols].float()  # (u, d_model)
                logp = torch.log_softmax(
                    _logits(model, spec, hidden[new_index[l_row[lab]], l_pos[lab]]), dim=-1)  # (labels, V)
                token_logp = logp.gather(1, l_tok[lab][:, None])[:, 0]  # (labels,)
                nll = -torch.zeros(u, device=device, dtype=torch.float32).index_add(0, l_req[lab], token_logp) / tokens_per_req  # (u,)
                log_p = torch.log_softmax(
                    _logits(model, spec, hidden[new_index[kl_rows[kl_req]], kl_cols[kl_req]]), dim=-1)  # (a, V)
                if log_p0 is None:
                    log_p0 = log_p.detach()  # every request is active at step 0
                kl_term = torch.zeros(u, device=device, dtype=torch.float32).index_add(
                    0, kl_req, (log_p.exp() * (log_p - log_p0[kl_req])).sum(-1))  # (u,) KL(p_δ || p_0)
                wd = hparams.v_weight_decay * delta.norm(dim=-1) / h0.norm(dim=-1) ** 2  # (u,)
                step_loss = nll + hparams.kl_factor * kl_term + wd  # (u,), meaningful for active requests
                loss = torch.where(active, step_loss.detach(), loss)
                nll_all = torch.where(active, nll.detach(), nll_all)
                done = done | (active & (step_loss.detach() < hparams.v_early_stop_loss))
                if bool(done.all()) or it == hparams.v_num_grad_steps - 1:
                    break
                frozen = delta.detach()[done].clone()
                optimizer.zero_grad(set_to_none=True)
                step_loss[active].sum().backward()
                optimizer.step()
                with torch.no_grad():
                    max_norm = hparams.clamp_norm_factor * h0.norm(dim=-1, keepdim=True)  # (u, 1)
                    scale = (max_norm / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
                    delta.mul_(scale)
                    delta[done] = frozen
                steps += (~done).long()
    finally:
        model.train(was_training)
    nll = nll_all
    assert h0 is not None
    z = h0 + delta.detach()
    logger.info(
        "targets z: %d requests, mean final loss %.4f (nll %.4f), mean steps %.1f, mean |δ|/|h0| %.3f",
        u, float(loss.detach().mean()), float(nll.detach().mean()), float(steps.float().mean()),
        float((delta.detach().norm(dim=-1) / h0.norm(dim=-1)).mean()),
    )
    return TargetResult(z=z, h0=h0, loss=loss, nll=nll, steps=steps)
