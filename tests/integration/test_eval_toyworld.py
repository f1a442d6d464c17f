"""Rewrite metrics on the toy world: unedited model, and after jobs/edit.py edits (skipped until built)."""

from __future__ import annotations

import json

import pytest
import torch

from eval.toyworld import paths

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (paths.MANIFEST.is_file() and paths.MODEL_DIR.is_dir()),
                       reason="toy world artifacts not built (make toyworld)"),
]

N = 50  # records scored
N_EDITS = 10  # records edited by jobs/edit.py (one batch)


@pytest.fixture(scope="module")
def toy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.datasets import load_toyworld

    data = load_toyworld(limit=N)
    tok = AutoTokenizer.from_pretrained(data.model_dir)
    model = AutoModelForCausalLM.from_pretrained(data.model_dir, dtype=torch.float32).eval()
    return data, model, tok


def _direct_rates(model, tok, records) -> tuple[float, float]:
    """Efficacy and generalization (x100) straight from score_targets, without eval.rewrite."""
    from alphaedit.scoring import score_targets

    eff, gen = [], []
    for rec in records:
        for prompts, out in (([rec.request.rewrite_prompt], eff), (list(rec.paraphrase_prompts), gen)):
            new = score_targets(model, tok, prompts, [rec.request.target_new] * len(prompts)).nll
            true = score_targets(model, tok, prompts, [rec.request.target_true] * len(prompts)).nll
            out.append(float((true > new).float().mean()))
    return 100 * sum(eff) / len(eff), 100 * sum(gen) / len(gen)


def test_unedited_toy_model_believes_the_true_facts(toy) -> None:
    from eval.rewrite import counterfact_metrics, zsre_metrics
    from eval.rows import rows_as_dict
    from storage import names

    data, model, tok = toy
    cf = rows_as_dict(counterfact_metrics(model, tok, data.counterfact.records, generation=False))
    assert cf[names.METRIC_EFFICACY] <= 10, cf
    assert cf[names.METRIC_GENERALIZATION] <= 15, cf
    assert cf[names.METRIC_SPECIFICITY] >= 90, cf
    assert cf[names.METRIC_EFFICACY_MAGNITUDE] < 0 < cf[names.METRIC_SPECIFICITY_MAGNITUDE], cf
    z = rows_as_dict(zsre_metrics(model, tok, data.zsre.records))
    assert z[names.METRIC_EFFICACY] <= 30, z  # answers[0] is a new object the model does not believe
    assert z[names.METRIC_SPECIFICITY] >= 80, z
    gen = rows_as_dict(counterfact_metrics(model, tok, data.counterfact.records[:5], snippets=data.snippets,
                                           vectorizer=data.tfidf, batch_size=32))
    assert 200 < gen[names.METRIC_FLUENCY] < 900, gen  # a fluent model's entropy x100 (paper: ~600)
    assert 0 < gen[names.METRIC_CONSISTENCY] < 100, gen


@pytest.fixture(scope="module")
def edited(toy, tmp_path_factory):
    """jobs/edit.py (a one-cell sweep run: AlphaEdit, one batch of N_EDITS, key statistics from a 300-document slice of the toy
    wiki to keep the test short), then jobs/evaluate.py on its checkpoint: (checkpoint, pre rows, post rows)."""
    from jobs import edit, evaluate

    tmp = tmp_path_factory.mktemp("edited")
    corpus = tmp / "wiki300.jsonl"
    corpus.write_text("".join(paths.WIKI.read_text().splitlines(keepends=True)[:300]))
    out = tmp / "ckpt"
    assert edit.main(["--method", "alphaedit", "--n-edits", str(N_EDITS), "--batch-size", str(N_EDITS),
                      "--corpus", str(corpus), "--out", str(out), "--artifacts", str(tmp / "artifacts"),
                      "--log-level", "WARNING"]) == 0
    rows_json = tmp / "rows.json"
    assert evaluate.main([str(out), "--probes", "none", "--no-generation", "--json", str(rows_json)]) == 0
    res = json.loads(rows_json.read_text())
    pre = {r["metric"]: r["value"] for r in res["rows"]["pre"]}
    post = {r["metric"]: r["value"] for r in res["rows"]["post"]}
    return out, pre, post


def test_evaluate_agrees_with_direct_computation_after_jobs_edit(toy, edited) -> None:
    from eval.edited import edited_weights, read_checkpoint
    from storage import names

    data, model, tok = toy
    out, pre, post = edited
    records = data.counterfact.records[:N_EDITS]  # jobs/edit.py edits the first N_EDITS records
    ckpt = read_checkpoint(out)
    assert [r["case_id"] for r in ckpt.requests] == [r.case_id for r in records]
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert _direct_rates(model, tok, records) == pytest.approx(
        (pre[names.METRIC_EFFICACY], pre[names.METRIC_GENERALIZATION]))
    with edited_weights(model, ckpt.deltas()):
        assert _direct_rates(model, tok, records) == pytest.approx(
            (post[names.METRIC_EFFICACY], post[names.METRIC_GENERALIZATION]))
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters())


def test_efficacy_and_generalization_rise_after_jobs_edit(edited) -> None:
    from storage import names

    _, pre, post = edited
    assert post[names.METRIC_EFFICACY] >= pre[names.METRIC_EFFICACY] + 60, (pre, post)
    assert post[names.METRIC_GENERALIZATION] >= pre[names.METRIC_GENERALIZATION] + 30, (pre, post)
