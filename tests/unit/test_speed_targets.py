"""Targets z on the fast path (suffix-only steps over recorded prefix keys/values, rows grouped by
length, bf16 upper blocks, ENCORE's most-probable stop) against a plain per-request optimization."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_core_support import tiny_model, tiny_requests, tiny_tokenizer  # noqa: E402

from alphaedit import EditHparams, EditRequest, compute_targets, spec_for  # noqa: E402
from alphaedit.hooks import add_at_positions  # noqa: E402
from alphaedit.prompts import request_prompts, subject_prompts  # noqa: E402
from alphaedit.templates import flat_templates  # noqa: E402
from alphaedit.tokens import pad_id, right_pad  # noqa: E402

HP = EditHparams(layers=(1, 2), clamp_norm_factor=4.0, v_num_grad_steps=6, v_early_stop_loss=0.0)
TEMPLATES = [["{}"], ["Because the city. {}", "I live in a very big house. {}"]]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def naive_z(model, tok, spec, request, templates, hp) -> tuple[torch.Tensor, float]:
    """compute_z of one request with a full forward of every prompt in every step (no replay, no
    cache, output layer at every position): (z, final loss)."""
    flat = flat_templates(templates)
    tgt = tok(request.target_new, add_special_tokens=False).input_ids
    rw = subject_prompts(tok, request_prompts([request], flat), [request.subject] * len(flat), hp.fact_token)
    kl = subject_prompts(tok, [hp.kl_prompt], [request.subject], hp.fact_token)[0]
    rows = [p.ids + tgt[:-1] for p in rw] + [kl.ids]
    ids, mask = right_pad(rows, pad_id(tok))
    look = torch.tensor([p.lookup for p in rw] + [kl.lookup])
    delta = torch.zeros(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd,
                        requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    for p in model.parameters():
        p.requires_grad_(False)
    h0 = log_p0 = None
    for it in range(hp.v_num_grad_steps):
        with add_at_positions(model, spec.block_name(hp.layers[-1]), torch.arange(len(rows)), look,
                              lambda: delta[None].expand(len(rows), -1)) as block:
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits, -1)
        if h0 is None:
            h0 = block["clean"][0, look[0]].detach()
        nll = -sum(logp[t, len(rw[t].ids) - 1 + j, tok_id] for t in range(len(flat))
                   for j, tok_id in enumerate(tgt)) / (len(flat) * len(tgt))
        log_p = logp[len(flat), kl.lookup]
        if log_p0 is None:
            log_p0 = log_p.detach()
        loss = nll + hp.kl_factor * (log_p.exp() * (log_p - log_p0)).sum() + hp.v_weight_decay * delta.norm() / h0.norm() ** 2
        if float(loss.detach()) < hp.v_early_stop_loss or it == hp.v_num_grad_steps - 1:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            max_norm = hp.clamp_norm_factor * h0.norm()
            delta.mul_((max_norm / delta.norm().clamp_min(1e-12)).clamp(max=1.0))
    for p in model.parameters():
        p.requires_grad_(True)
    return h0 + delta.detach(), float(loss.detach())


@pytest.mark.parametrize("model_type,fact_token", [("llama", "subject_last"), ("gpt2", "subject_last"),
                                                   ("qwen2", "last")])
def test_fast_path_equals_plain_per_request_optimization(tok, model_type, fact_token):
    model = tiny_model(model_type, len(tok))
    spec = spec_for(model)
    hp = HP.replace(fact_token=fact_token)
    reqs = tiny_requests(3)
    batched = compute_targets(model, tok, spec, reqs, TEMPLATES, hp)
    for i, r in enumerate(reqs):
        z, loss = naive_z(model, tok, spec, r, TEMPLATES, hp)
        assert torch.allclose(batched.z[i], z, rtol=1e-5, atol=1e-5 * float(z.abs().max())), (i, batched.z[i] - z)
        assert abs(float(batched.loss[i]) - loss) < 1e-4


def test_length_grouping_does_not_change_z(tok):
    model = tiny_model("llama", len(tok))
    spec = spec_for(model)
    # requests with different subject and target lengths give suffixes of different lengths
    reqs = tiny_requests(4) + [EditRequest(case_id=9, prompt="The job of {} is", subject="Anna Varo Marsh",
                                           target_new="painter and writer", target_true="pilot")]
    hp = HP.replace(v_num_grad_steps=5)
    many = compute_targets(model, tok, spec, reqs, TEMPLATES, hp, group_overhead_tokens=0)
    one = compute_targets(model, tok, spec, reqs, TEMPLATES, hp, group_overhead_tokens=1e9)
    assert torch.allclose(many.z, one.z, rtol=1e-5, atol=1e-5 * float(one.z.abs().max()))
    assert torch.equal(many.steps, one.steps)


def test_bf16_targets_run_and_reduce_the_loss(tok):
    model = tiny_model("llama", len(tok))
    spec = spec_for(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reqs = tiny_requests(3)
    start = compute_targets(model, tok, spec, reqs, TEMPLATES, HP.replace(v_num_grad_steps=1))  # δ = 0
    low = compute_targets(model, tok, spec, reqs, TEMPLATES, HP.replace(v_dtype="bfloat16", v_num_grad_steps=10))
    full = compute_targets(model, tok, spec, reqs, TEMPLATES, HP.replace(v_num_grad_steps=10))
    assert low.z.dtype == torch.float32 and bool(torch.isfinite(low.z).all())
    assert bool((low.loss < start.loss - 0.1).all()), (start.loss, low.loss)
    assert torch.allclose(low.h0, full.h0)  # blocks 0..L stay in fp32
    assert float((low.loss - full.loss).abs().max()) < 0.05 * float(full.loss.abs().max()) + 0.05
    for n, p in model.named_parameters():  # the one-off bf16 cast is undone bit-exactly
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n


def test_most_probable_stop(tok):
    model = tiny_model("llama", len(tok))
    spec = spec_for(model)
    templates = [["{}"]]
    r = tiny_requests(1)[0]
    target = tok(" Paris", add_special_tokens=False).input_ids
    assert len(target) == 1
    with torch.no_grad():  # make " Paris" the model's greedy answer after the bare prompt
        out = model(torch.tensor([tok(r.rewrite_prompt).input_ids]), output_hidden_states=True)
        h = out.hidden_states[-1][0, -1]  # final-norm output at the last position
        model.lm_head.weight[target[0]] += 20 * h / h.norm() ** 2
    already = EditRequest(case_id=1, prompt=r.prompt, subject=r.subject, target_new=" Paris", target_true=" Rome")
    reqs = [already, tiny_requests(2)[1]]
    plain = compute_targets(model, tok, spec, reqs, templates, HP)
    encore = compute_targets(model, tok, spec, reqs, templates, HP.replace(v_stop_most_probable=True))
    assert int(plain.steps[0]) == HP.v_num_grad_steps - 1  # the loss alone never stops it (threshold 0)
    assert int(encore.steps[0]) == 0 and bool(encore.most_probable[0])
    assert torch.allclose(encore.z[0], encore.h0[0])  # stopped before any update
    # the other request is unaffected until its own target becomes the argmax
    assert int(encore.steps[1]) <= int(plain.steps[1])
    if int(encore.steps[1]) < int(plain.steps[1]):
        assert bool(encore.most_probable[1])


def test_hparams_validate_speed_fields():
    with pytest.raises(ValueError, match="v_dtype"):
        EditHparams(layers=(1,), v_dtype="float8")
    with pytest.raises(ValueError, match="stats_dtype"):
        EditHparams(layers=(1,), stats_dtype="int8")
    with pytest.raises(ValueError, match="v_stop_most_probable"):
        EditHparams(layers=(1,), v_stop_most_probable="yes")
    assert EditHparams(layers=(1,)).v_dtype == "float32"  # the reference numerics by default
