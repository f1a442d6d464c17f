"""Behaviour on the embedded toy world (skipped until its artifacts are built: `make toyworld`).

Measured on the toy preset (see alphaedit.hparams.PRESETS["toy"] and the final report):
- after 2 AlphaEdit batches of 50, the edited layers' outputs on held-out toy-wiki keys change by a
  relative ||Δ K0|| / ||W K0|| below PRESERVED_BOUND, and MEMIT's change at least 3x more;
- 200 sequential AlphaEdit edits (batches of 50): efficacy >= 0.95, neighborhood specificity within
  0.05 of the unedited model.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_core_support import toy_world, toy_world_available  # noqa: E402

from alphaedit import Editor, preservation_stats, preset, requests_from_counterfact, spec_for  # noqa: E402
from alphaedit.hooks import capture, run_until_stopped  # noqa: E402
from alphaedit.models import from_weight_layout  # noqa: E402
from alphaedit.tokens import encode, pad_id, right_pad  # noqa: E402

pytestmark = pytest.mark.skipif(not toy_world_available(), reason="toy world artifacts not built (make toyworld)")

N_STATS_DOCS = 4000  # preservation corpus used by these tests (the first documents of wiki.jsonl)
N_HELDOUT_DOCS = 200  # held-out documents whose keys test preservation
PRESERVED_BOUND = 0.01


@pytest.fixture(scope="module")
def world():
    model, tok, records, wiki = toy_world()
    hp = preset("toy")
    stats = preservation_stats(model, tok, wiki[:N_STATS_DOCS], hp)
    return model, tok, records, wiki, hp, stats


def _heldout_keys(model, tok, texts, spec, layer):
    ids, mask = right_pad(encode(tok, texts, max_length=128), pad_id(tok))
    name = spec.mlp_out_name(layer)
    with capture(model, inputs_of=[name], stop_after=name) as store, torch.no_grad():
        run_until_stopped(model, ids, mask)
    return store["in:" + name][mask.bool()].double()  # (n, d_k)


def test_alphaedit_preserves_outputs_on_preserved_keys_memit_less(world):
    model, tok, records, wiki, hp, stats = world
    spec = spec_for(model)
    requests = requests_from_counterfact(records[:100])
    heldout = wiki[-N_HELDOUT_DOCS:]
    rel = {}
    for method in ("alphaedit", "memit"):
        edited = copy.deepcopy(model)
        editor = Editor(edited, tok, hp, method, stats=stats)
        editor.edit(requests[:50])
        editor.edit(requests[50:])
        rel[method] = {}
        for layer in hp.layers:
            keys = _heldout_keys(model, tok, heldout, spec, layer)  # base-model keys (n, d_k)
            w = from_weight_layout(editor.base[spec.weight_name(layer)], spec).double()  # (d_model, d_k)
            d = from_weight_layout(editor.state.deltas[spec.weight_name(layer)], spec).double()
            rel[method][layer] = float((keys @ d.T).norm() / (keys @ w.T).norm())
    print("relative output change on held-out preserved keys:", rel)
    for layer in hp.layers:
        assert rel["alphaedit"][layer] < PRESERVED_BOUND, rel
        assert rel["memit"][layer] > 3 * rel["alphaedit"][layer], rel


def test_200_sequential_alphaedit_edits(world):
    from jobs.edit import quick_metrics

    model, tok, records, wiki, hp, stats = world
    edited = copy.deepcopy(model)
    requests = requests_from_counterfact(records[:200])
    pre = quick_metrics(edited, tok, requests)
    editor = Editor(edited, tok, hp, "alphaedit", stats=stats)
    for start in range(0, 200, 50):
        editor.edit(requests[start : start + 50])
    post = quick_metrics(edited, tok, requests)
    print("pre", pre, "post", post)
    assert post["efficacy"] >= 0.95, (pre, post)
    assert post["specificity"] >= pre["specificity"] - 0.05, (pre, post)
    editor.restore()
    assert all(torch.equal(p, q) for p, q in zip(edited.parameters(), model.parameters(), strict=True))
