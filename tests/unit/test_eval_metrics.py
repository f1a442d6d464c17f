"""Rewrite metrics on hand-built examples whose answers are computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alphaedit.requests import EditRequest
from eval.datasets import CounterFactRecord, ZsreRecord
from eval.generation import sample_top_k
from eval.rewrite import (
    counterfact_metrics,
    mean_over_records,
    ngram_entropy,
    per_record_mean,
    probability_margin,
    probability_success,
    tfidf_similarity,
    word_tokens,
    zsre_metrics,
)
from eval.rows import rows_as_dict
from storage import names
from tests.unit.test_core_support import tiny_model, tiny_tokenizer
from tests.unit.test_eval_support import BigramLM


def tid(text: str) -> int:
    ids = tiny_tokenizer()(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (text, ids)
    return ids[0]


def test_success_direction_and_margin() -> None:
    nll_new = torch.tensor([0.5, 2.0, 1.0])
    nll_true = torch.tensor([1.0, 1.0, 1.0])
    assert probability_success(nll_new, nll_true, new_should_win=True).tolist() == [True, False, False]
    # specificity: success when the TRUE target is more likely (NLL_true < NLL_new), issue #8
    assert probability_success(nll_new, nll_true, new_should_win=False).tolist() == [False, True, False]
    m = probability_margin(nll_new, nll_true, new_should_win=True)
    assert m[0].item() == pytest.approx(math.exp(-0.5) - math.exp(-1.0))
    assert probability_margin(nll_new, nll_true, new_should_win=False)[0].item() == pytest.approx(-m[0].item())


def test_per_record_then_over_records() -> None:
    # record 0 has 3 prompts (1 success), record 1 has 1 (success), record 2 has none
    per = per_record_mean(torch.tensor([1.0, 0.0, 0.0, 1.0]), [0, 0, 0, 1], 3)
    assert per[0].item() == pytest.approx(1 / 3) and per[1].item() == 1.0 and math.isnan(per[2].item())
    value, n = mean_over_records(per)
    assert n == 2 and value == pytest.approx(100 * (1 / 3 + 1) / 2)  # x100, mean of record means


def test_ngram_entropy_by_hand() -> None:
    # tokens a b a b: bigrams ab, ba, ab -> H2 = H(2/3, 1/3); trigrams aba, bab -> H3 = 1 bit
    h2 = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("a a a a a") == 0.0  # one distinct n-gram of each order
    assert ngram_entropy("") == 0.0


def test_word_tokens_split_sentences_and_punctuation() -> None:
    assert word_tokens("Anna lives in Paris. She doesn't.\nNew line") == [
        "Anna", "lives", "in", "Paris", ".", "She", "does", "n't", ".", "New", "line"]


def test_tfidf_similarity() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(vocabulary={"paris": 0, "berlin": 1, "rome": 2})
    vec.fit([""])
    vec.idf_ = np.array([1.0, 2.0, 1.0])
    assert tfidf_similarity("Paris Berlin", "paris berlin", vec) == pytest.approx(1.0)
    assert tfidf_similarity("Paris", "Rome", vec) == 0.0
    assert tfidf_similarity("Paris", "nothing known", vec) == 0.0
    # (1, 2, 0) . (1, 0, 0) / |(1, 2, 0)| = 1 / sqrt(5)
    assert tfidf_similarity("Paris Berlin", "Paris", vec) == pytest.approx(1 / math.sqrt(5))


def _bigram_world() -> BigramLM:
    tok = tiny_tokenizer()
    model = BigramLM(len(tok))
    model.set_next(tid(" in"), {tid(" Paris"): 2.0, tid(" Berlin"): 1.0})
    model.set_next(tid("?"), {tid(" Paris"): 3.0})
    model.set_next(tid(" Paris"), {tid(" is"): 3.0})
    return model


def _cf(case_id: int, new: str, true: str, para: list[str], neigh: list[str]) -> CounterFactRecord:
    return CounterFactRecord(
        case_id=case_id,
        request=EditRequest(case_id=case_id, prompt="{} was born in", subject="Anna Varo",
                            target_new=new, target_true=true),
        paraphrase_prompts=tuple(para), neighborhood_prompts=tuple(neigh))


def test_counterfact_probability_metrics_on_bigram_model() -> None:
    tok = tiny_tokenizer()
    model = _bigram_world()
    # after " in": P(Paris) > P(Berlin) > every other token; after " a" everything is uniform
    records = [
        _cf(0, "Paris", "Berlin", ["Anna Varo lives in", "Anna Varo works as a"],
            ["Boris Quill was born in", "Boris Quill works as a"]),
        _cf(1, "Berlin", "Paris", ["Anna Varo lives in"], ["Boris Quill lives in", "Clara Marsh was born in"]),
    ]
    rows = rows_as_dict(counterfact_metrics(model, tok, records, generation=False, batch_size=3))
    # record 0: rewrite Paris>Berlin ok; paraphrases: ok, tie (not >) -> 1/2;
    #           neighborhood: true Berlin loses, tie (not <) -> 0
    # record 1: rewrite fails; paraphrase fails; neighborhood: true Paris wins twice -> 1
    assert rows[names.METRIC_EFFICACY] == pytest.approx(100 * (1 + 0) / 2)
    assert rows[names.METRIC_GENERALIZATION] == pytest.approx(100 * (0.5 + 0) / 2)
    assert rows[names.METRIC_SPECIFICITY] == pytest.approx(100 * (0 + 1) / 2)
    z = math.exp(2) + math.exp(1) + (len(tok) - 2)
    d = (math.exp(2) - math.exp(1)) / z  # P(Paris | in) - P(Berlin | in)
    assert rows[names.METRIC_EFFICACY_MAGNITUDE] == pytest.approx(100 * (d - d) / 2, abs=1e-4)
    assert rows[names.METRIC_GENERALIZATION_MAGNITUDE] == pytest.approx(100 * ((d + 0) / 2 - d) / 2, abs=1e-4)
    assert rows[names.METRIC_SPECIFICITY_MAGNITUDE] == pytest.approx(100 * ((-d + 0) / 2 + d) / 2, abs=1e-4)
    assert names.METRIC_FLUENCY not in rows


def test_zsre_token_accuracy_on_bigram_model() -> None:
    tok = tiny_tokenizer()
    model = _bigram_world()
    rec = ZsreRecord(case_id=0, subject="Anna Varo", src="What city is Anna Varo in?",
                     rephrase="Anna Varo was born in", answers=("Paris Berlin",),
                     loc="nq question: what city is Boris Quill in", loc_ans="Paris is")
    rows = zsre_metrics(model, tok, [rec])
    values = rows_as_dict(rows)
    # src ends in "?": Paris (argmax) ok, then Berlin after Paris (argmax is " is") wrong -> 1/2
    assert values[names.METRIC_EFFICACY] == pytest.approx(50.0)
    # rephrase ends in " in": Paris (argmax) ok, Berlin wrong -> 1/2
    assert values[names.METRIC_GENERALIZATION] == pytest.approx(50.0)
    # loc + "?": Paris ok, then " is" after Paris ok -> 1
    assert values[names.METRIC_SPECIFICITY] == pytest.approx(100.0)
    assert {r.n_cases for r in rows} == {1} and {r.dataset for r in rows} == {names.DATASET_ZSRE}


def test_sampler_follows_the_only_likely_token_and_counts_the_prompt() -> None:
    tok = tiny_tokenizer()
    model = BigramLM(len(tok))
    model.set_next(tid(" in"), {tid(" Paris"): 60.0})
    model.set_next(tid(" Paris"), {tid(" is"): 60.0})
    model.set_next(tid(" is"), {tid(" Paris"): 60.0})
    texts = sample_top_k(model, tok, ["Anna Varo was born in", "Anna Varo lives in"], max_out_len=9, seed=3)
    assert texts == ["Anna Varo was born in Paris is Paris", "Anna Varo lives in Paris is Paris is"]
    assert sample_top_k(model, tok, ["Anna Varo was born in"], max_out_len=4) == ["Anna Varo was born in"]


def test_sampler_batched_left_padding_matches_one_by_one() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=1, init_range=0.5)
    prompts = ["Anna", "Boris Quill was born in Paris and", "Clara Marsh works as"]
    batched = sample_top_k(model, tok, prompts, max_out_len=16, top_k=1, batch_size=3)
    single = [sample_top_k(model, tok, [p], max_out_len=16, top_k=1)[0] for p in prompts]
    assert batched == single
    # seeded top-5 sampling is reproducible and the seed matters
    a = sample_top_k(model, tok, prompts, max_out_len=20, seed=7)
    assert a == sample_top_k(model, tok, prompts, max_out_len=20, seed=7)
    assert a != sample_top_k(model, tok, prompts, max_out_len=20, seed=8)


def test_fluency_of_a_repetitive_generation_is_low() -> None:
    tok = tiny_tokenizer()
    model = BigramLM(len(tok))
    model.set_next(tid(" in"), {tid(" Paris"): 60.0})
    model.set_next(tid(" Paris"), {tid(" in"): 60.0})
    rec = CounterFactRecord(
        case_id=0, request=EditRequest(case_id=0, prompt="{} was born in", subject="Anna Varo",
                                       target_new="Paris", target_true="Berlin"),
        paraphrase_prompts=("Anna Varo lives in",), neighborhood_prompts=("Boris Quill was born in",),
        generation_prompts=("Anna Varo was born in",))
    rows = rows_as_dict(counterfact_metrics(model, tok, [rec]))
    text = sample_top_k(model, tok, ["Anna Varo was born in"])[0]
    assert rows[names.METRIC_FLUENCY] == pytest.approx(100 * ngram_entropy(text))
    assert rows[names.METRIC_FLUENCY] < 150  # "in Paris in Paris ..." has ~2 distinct bigrams
    assert names.METRIC_CONSISTENCY not in rows  # no snippets given
