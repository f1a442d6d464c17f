"""GPU tier: edits on CUDA match CPU within tolerance (skipped without CUDA)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_core_support import synthetic_texts, tiny_model, tiny_requests, tiny_tokenizer  # noqa: E402

from alphaedit import EditHparams, Editor, compute_key_stats, preservation_stats, spec_for  # noqa: E402

pytestmark = pytest.mark.gpu
HP = EditHparams(layers=(1, 2), mom2_max_length=64, mom2_batch_size=32, clamp_norm_factor=4.0, v_num_grad_steps=10)


@pytest.mark.parametrize("method", ["alphaedit", "memit"])
def test_cuda_edit_matches_cpu(method):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tok = tiny_tokenizer()
    texts = synthetic_texts(80)
    deltas = {}
    for device in ("cpu", "cuda"):
        model = tiny_model("llama", len(tok)).to(device)
        stats = preservation_stats(model, tok, texts, HP)
        editor = Editor(model, tok, HP, method, stats=stats, templates=[["{}"], ["The city. {}", "I live. {}"]])
        editor.edit(tiny_requests(4))
        deltas[device] = {k: v.cpu() for k, v in editor.state.deltas.items()}
    for name, d_cpu in deltas["cpu"].items():
        rel = (deltas["cuda"][name] - d_cpu).norm() / d_cpu.norm()
        assert rel < 1e-3, (name, float(rel))


def test_cuda_stats_match_cpu():
    tok = tiny_tokenizer()
    texts = synthetic_texts(50)
    out = {}
    for device in ("cpu", "cuda"):
        model = tiny_model("gpt2", len(tok)).to(device)
        out[device] = compute_key_stats(model, tok, texts, spec_for(model), [1, 2], max_length=64, accumulate_on=None)
    for layer in (1, 2):
        a, b = out["cpu"][layer], out["cuda"][layer]
        assert a.count == b.count
        assert float((a.sum_kkT - b.sum_kkT.cpu()).norm() / a.sum_kkT.norm()) < 1e-4
