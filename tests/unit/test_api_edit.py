"""alphaedit.edit, the one-call API, on the embedded toy world: real edits, real scores, no mocks."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_core_support import tiny_model, tiny_tokenizer, toy_world, toy_world_available  # noqa: E402

import alphaedit  # noqa: E402
from alphaedit.api import answer_from_continuation, greedy_continuations, preset_for_model  # noqa: E402

pytestmark = pytest.mark.skipif(not toy_world_available(), reason="toy world artifacts not built (make toyworld)")

N_STATS_DOCS = 300  # enough toy-wiki documents for a projector on the 3 edited layers, in about a second


@pytest.fixture(scope="module")
def world():
    model, tok, records, wiki = toy_world()
    stats = alphaedit.preservation_stats(model, tok, wiki[:N_STATS_DOCS], alphaedit.preset("toy"))
    return model, tok, records, wiki, stats


def _flat(record: dict, with_true: bool = False) -> dict:
    """A record as the plain dict a user writes: the subject inside the prompt text, no placeholder."""
    rw = record["requested_rewrite"]
    out = {"prompt": rw["prompt"].replace("{}", rw["subject"]), "subject": rw["subject"],
           "target_new": rw["target_new"]["str"], "case_id": record["case_id"]}
    if with_true:
        out["target_true"] = rw["target_true"]["str"]
    return out


def _string(record: dict) -> str:
    rw = record["requested_rewrite"]
    return rw["prompt"].replace("{}", f"[{rw['subject']}]") + " -> " + rw["target_new"]["str"]


def test_edit_raises_efficacy_fills_target_true_and_restores(world):
    base_model, tok, records, _, stats = world
    model = copy.deepcopy(base_model)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    requests = [_flat(r) for r in records[:4]] + [_string(r) for r in records[4:6]] + records[6:10]
    result = alphaedit.edit(model, tok, requests, stats=stats)

    assert result.model is model and isinstance(result.editor, alphaedit.Editor)
    assert result.metrics_before["efficacy"] <= 20.0, result.metrics_before
    assert result.metrics["efficacy"] >= 80.0, result.metrics
    assert result.metrics["efficacy"] > result.metrics_before["efficacy"] + 50.0
    # generalization / specificity come from the CounterFact records (the last four) only
    assert {"generalization", "specificity", "efficacy_magnitude"} <= set(result.metrics)
    assert result.scores is not None and math.isnan(float(result.scores.generalization[0]))

    # target_true of the dict and string requests was read from the model: the toy model knows these facts
    filled = {c.request.case_id: c.request.target_true.strip() for c in result.cases[:6]}
    assert result.filled_target_true == [r["case_id"] for r in records[:4]] + [4, 5]
    truth = [r["requested_rewrite"]["target_true"]["str"] for r in records[:6]]
    assert sum(got == want for got, want in zip(filled.values(), truth, strict=True)) >= 5, (filled, truth)

    edited = {n: p.detach().clone() for n, p in model.named_parameters()}
    changed = {n for n in base if not torch.equal(edited[n], base[n])}
    assert changed == set(result.deltas) and len(changed) == len(result.hparams.layers)
    result.restore()
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())
    result.reapply()
    assert all(torch.equal(p, edited[n]) for n, p in model.named_parameters())


def test_edit_is_the_editor_path_bit_for_bit(world):
    """alphaedit.edit with batches of 2 gives exactly the deltas of Editor.edit over the same batches."""
    base_model, tok, records, _, stats = world
    result = alphaedit.edit(copy.deepcopy(base_model), tok, records[:4], method="memit", stats=stats,
                            hparams="toy", batch_size=2, evaluate=False)
    assert len(result.reports) == 2 and result.metrics == {} and result.metrics_before == {}
    assert result.hparams == alphaedit.hparams_for("toy", "memit")

    twin = copy.deepcopy(base_model)
    editor = alphaedit.Editor(twin, tok, alphaedit.hparams_for("toy", "memit"), "memit", stats=stats)
    requests = alphaedit.requests_from_counterfact(records[:4])
    editor.edit(requests[:2])
    editor.edit(requests[2:])
    assert set(editor.state.deltas) == set(result.deltas)
    for name, delta in editor.state.deltas.items():
        assert torch.equal(delta, result.deltas[name]), name


def test_corpus_and_save_pretrained(world, tmp_path):
    from transformers import AutoModelForCausalLM

    base_model, tok, records, wiki, stats = world
    model = copy.deepcopy(base_model)
    result = alphaedit.edit(model, tok, [_flat(records[0], with_true=True)], corpus=wiki[:N_STATS_DOCS])
    assert result.filled_target_true == []
    for layer in result.hparams.layers:  # the corpus gives the statistics the fixture computed the same way
        assert result.stats[layer].count == stats[layer].count
        assert torch.allclose(result.stats[layer].mean(), stats[layer].mean())
    result.model.save_pretrained(tmp_path / "edited")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "edited", dtype=torch.float32)
    params = dict(loaded.named_parameters())
    for name in result.deltas:
        assert torch.equal(params[name], dict(model.named_parameters())[name])
        assert not torch.equal(params[name], dict(base_model.named_parameters())[name])


def test_bad_requests_name_the_field(world):
    base_model, tok, records, _, stats = world
    model = copy.deepcopy(base_model)
    good = _flat(records[0])
    cases = [
        ({k: v for k, v in good.items() if k != "target_new"}, "field 'target_new' is missing"),
        ({**good, "target": "Paris"}, "field 'target'"),
        ({**good, "subject": "Nobody Here"}, "field 'subject'"),
        ({**good, "target_new": "  "}, "field 'target_new' must be a non-empty string"),
        ({**good, "neighborhood_prompts": "one string"}, "field 'neighborhood_prompts'"),
        ("The capital of France is Rome", "does not read '<prompt with the [subject]"),
        (42, "expected an EditRequest, a dict or a string"),
    ]
    for request, message in cases:
        with pytest.raises(alphaedit.InvalidRequestError, match=message.replace("[", r"\[")):
            alphaedit.edit(model, tok, [request], stats=stats)
    # every problem is reported at once, and nothing was edited
    with pytest.raises(alphaedit.InvalidRequestError, match="2 invalid edit request") as err:
        alphaedit.edit(model, tok, [cases[0][0], good, cases[2][0]], stats=stats)
    assert "case_id=" in str(err.value)
    # a target_new the model already gives: no edit to make, said about target_true
    already = {**good, "target_new": records[0]["requested_rewrite"]["target_true"]["str"]}
    with pytest.raises(alphaedit.InvalidRequestError, match="field 'target_true' is missing and the model already"):
        alphaedit.edit(model, tok, [already], stats=stats)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), base_model.parameters(), strict=True))


def test_missing_statistics_and_unknown_model_shape(world):
    base_model, tok, records, _, stats = world
    with pytest.raises(ValueError, match="needs key statistics.*corpus="):
        alphaedit.edit(copy.deepcopy(base_model), tok, records[:1])
    with pytest.raises(ValueError, match="not both"):
        alphaedit.edit(copy.deepcopy(base_model), tok, records[:1], stats=stats, corpus=["text"])
    with pytest.raises(ValueError, match="unknown editing method"):
        alphaedit.edit(copy.deepcopy(base_model), tok, records[:1], method="memitt", stats=stats)
    assert preset_for_model(base_model) == "toy"
    tiny = tiny_model("gpt2", len(tiny_tokenizer()))
    with pytest.raises(ValueError, match="no hparams preset for a gpt2 model"):
        preset_for_model(tiny)


def test_greedy_continuations_batched_equal_one_by_one(world):
    base_model, tok, records, _, _ = world
    prompts = [r["requested_rewrite"]["prompt"].replace("{}", r["requested_rewrite"]["subject"]) for r in records[:6]]
    prompts[2] = "In a long sentence about nothing in particular, " + prompts[2]  # unequal lengths: left padding
    batched = greedy_continuations(base_model, tok, prompts, max_new_tokens=4)
    alone = [greedy_continuations(base_model, tok, [p], max_new_tokens=4)[0] for p in prompts]
    assert batched == alone


def test_answer_from_continuation() -> None:
    assert answer_from_continuation(" Paris. It is a city", "Rome") == "Paris"
    assert answer_from_continuation(" Los Angeles, California", "New York") == "Los Angeles"
    assert answer_from_continuation(" Redfern Studios and more", "Pinnacle Games") == "Redfern Studios"
    assert answer_from_continuation(" the Portuguese language", "German") == "Portuguese"
    assert answer_from_continuation(" the Netherlands and", "the United Kingdom") == "the Netherlands and"
    assert answer_from_continuation(" the", "German") == "the"  # nothing after the article: kept
    assert answer_from_continuation("\nnothing", "Rome") == ""
