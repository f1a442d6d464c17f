"""Keys K1 (template-averaged MLP-projection inputs at the subject's last token) and block outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from alphaedit.hooks import capture, run_until_stopped
from alphaedit.models import ModelSpec
from alphaedit.prompts import SubjectPrompt, request_prompts, subject_prompts
from alphaedit.requests import EditRequest
from alphaedit.templates import Templates, flat_templates
from alphaedit.tokens import model_device, pad_id, right_pad


@dataclass(frozen=True)
class SubjectReps:
    keys: dict[int, torch.Tensor]  # layer -> (u, d_k) float32, template-averaged keys
    block_out: torch.Tensor | None  # (u, d_model) float32: block-L output on the bare prompt
    bare_keys: dict[int, torch.Tensor] | None = None  # layer -> (u, d_k) float32, key of the bare prompt (ROME)


@torch.no_grad()
def subject_representations(
    model: nn.Module,
    tokenizer,
    spec: ModelSpec,
    requests: Sequence[EditRequest],
    templates: Templates,
    key_layers: Sequence[int],
    block_layer: int | None = None,
    batch_rows: int = 512,
    fact_token: str = "subject_last",
) -> SubjectReps:
    """Keys at ``key_layers`` and the block output at ``block_layer``, from one pass per row batch.

    Key of request r (reference ``compute_ks``): the input of the edited projection at the subject's
    last token, averaged within each template group, then over groups (k = ½ k_bare + ½ mean_5 k_pre).
    The block output is taken on the bare prompt (first template, "{}"). The forward stops after the
    deepest module needed: the bare prompts run to ``block_layer``, the other rows only to the deepest
    key layer.
    """
    flat = flat_templates(templates)
    if flat[0] != "{}":
        raise ValueError("subject_representations: the first context template must be the bare '{}'")
    n_tmpl, u = len(flat), len(requests)
    key_layers = sorted(set(key_layers))
    prompts = subject_prompts(tokenizer, request_prompts(requests, flat), [r.subject for r in requests for _ in flat],
                              fact_token)
    device = model_device(model)
    pad = pad_id(tokenizer)
    key_names = [spec.mlp_out_name(layer) for layer in key_layers]
    block_names = [] if block_layer is None else [spec.block_name(block_layer)]
    deepest = max(key_layers + ([block_layer] if block_layer is not None else []))
    stop = spec.block_name(deepest) if block_layer == deepest else spec.mlp_out_name(deepest)

    # Only the bare prompts' block output is read, so the other rows stop after the deepest key
    # module (reference compute_ks/compute_z read the same values from full-depth passes).
    parts = [(list(range(len(prompts))), key_names, block_names, stop)]
    if block_layer is not None and max(key_layers) < block_layer and n_tmpl > 1:
        bare = list(range(0, len(prompts), n_tmpl))
        rest = [i for i in range(len(prompts)) if i % n_tmpl != 0]
        parts = [(bare, key_names, block_names, stop), (rest, key_names, [], spec.mlp_out_name(max(key_layers)))]
    per_row: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        for index, ins, outs, last in parts:
            got = _captured_at_lookup(model, [prompts[i] for i in index], ins, outs, last, pad, device, batch_rows)
            at = torch.as_tensor(index, dtype=torch.long)
            for name, values in got.items():
                if name not in per_row:
                    per_row[name] = values.new_zeros((len(prompts), values.shape[1]))
                per_row[name][at] = values
    finally:
        model.train(was_training)

    group_slices, offset = [], 0
    for group in templates:
        group_slices.append(slice(offset, offset + len(group)))
        offset += len(group)
    keys, bare_keys = {}, {}
    for layer, name in zip(key_layers, key_names, strict=True):
        k = per_row["in:" + name].view(u, n_tmpl, -1)  # (u, T, d_k)
        keys[layer] = torch.stack([k[:, s].mean(1) for s in group_slices]).mean(0)  # (u, d_k)
        bare_keys[layer] = k[:, 0]  # (u, d_k)
    block_out = None
    if block_names:
        block_out = per_row["out:" + block_names[0]].view(u, n_tmpl, -1)[:, 0]  # (u, d_model), bare prompt
    return SubjectReps(keys=keys, block_out=block_out, bare_keys=bare_keys)


def _captured_at_lookup(model: nn.Module, prompts: Sequence[SubjectPrompt], inputs_of: Sequence[str],
                        outputs_of: Sequence[str], stop: str, pad: int, device: torch.device, batch_rows: int
                        ) -> dict[str, torch.Tensor]:
    """"in:<name>" / "out:<name>" -> (len(prompts), d) float32 at each prompt's lookup token."""
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(prompts), batch_rows):
        chunk = prompts[start : start + batch_rows]
        input_ids, mask = right_pad([p.ids for p in chunk], pad, device)
        rows = torch.arange(len(chunk), device=device)
        cols = torch.tensor([p.lookup for p in chunk], device=device)
        with capture(model, inputs_of=inputs_of, outputs_of=outputs_of, stop_after=stop) as store:
            run_until_stopped(model, input_ids, mask)
        for key in [f"in:{n}" for n in inputs_of] + [f"out:{n}" for n in outputs_of]:
            out.setdefault(key, []).append(store[key][rows, cols].float())
    return {key: torch.cat(values) for key, values in out.items()}
