"""Keys and block outputs equal those of plain full-depth forwards, for every registered family.

``subject_representations`` runs the bare prompts to the read block, the context rows only to the
deepest key layer, and each context template's shared tokens once (a KV cache the rows continue
from). Each value must match a separate, unpadded, full forward of its own prompt.
"""

from __future__ import annotations

import pytest
import torch

from alphaedit.hooks import capture
from alphaedit.keys import subject_representations
from alphaedit.models import spec_for
from alphaedit.prompts import request_prompts, subject_prompts
from alphaedit.templates import flat_templates
from tests.unit.test_core_support import tiny_model, tiny_requests, tiny_tokenizer

TEMPLATES = [["{}"], ["Alice went home. {}", "The weather was cold today. {}"], ["I think that {}"]]


def _plain(model, tok, spec, requests, layer: int, block: int):
    flat = flat_templates(TEMPLATES)
    prompts = subject_prompts(tok, request_prompts(requests, flat), [r.subject for r in requests for _ in flat])
    keys, blocks = [], []
    for p in prompts:
        with torch.no_grad(), capture(model, inputs_of=[spec.mlp_out_name(layer)], outputs_of=[spec.block_name(block)]
                                      ) as store:
            model(input_ids=torch.tensor([p.ids]))
        keys.append(store["in:" + spec.mlp_out_name(layer)][0, p.lookup])
        blocks.append(store["out:" + spec.block_name(block)][0, p.lookup])
    k = torch.stack(keys).view(len(requests), len(flat), -1)
    groups = [slice(0, 1), slice(1, 3), slice(3, 4)]
    return torch.stack([k[:, g].mean(1) for g in groups]).mean(0), torch.stack(blocks).view(len(requests), len(flat), -1)[:, 0]


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "llama", "qwen3"])
@pytest.mark.parametrize("n_requests", [1, 3])
def test_keys_match_plain_forwards(model_type: str, n_requests: int) -> None:
    tok = tiny_tokenizer()
    model = tiny_model(model_type, len(tok), n_layers=4)
    spec = spec_for(model)
    requests = tiny_requests(n_requests)
    for layer in (0, 2):
        reps = subject_representations(model, tok, spec, requests, TEMPLATES, [layer], 3, batch_rows=2)
        want_k, want_b = _plain(model, tok, spec, requests, layer, 3)
        assert torch.allclose(reps.keys[layer], want_k, atol=1e-5, rtol=1e-4), (model_type, layer)
        assert torch.allclose(reps.block_out, want_b, atol=1e-5, rtol=1e-4), (model_type, layer)
    both = subject_representations(model, tok, spec, requests, TEMPLATES, [1, 3], None)  # prev-keys pass: no block
    assert both.block_out is None
    assert torch.allclose(both.keys[1], _plain(model, tok, spec, requests, 1, 3)[0], atol=1e-5, rtol=1e-4)
    assert torch.allclose(both.keys[3], _plain(model, tok, spec, requests, 3, 3)[0], atol=1e-5, rtol=1e-4)
