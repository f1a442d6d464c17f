"""Loaders: real-schema fixtures load and score; malformed records and missing files fail clearly."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from eval import datasets as ds
from eval.corpus import CorpusSpec, CorpusUnavailableError, iter_corpus
from eval.rewrite import counterfact_metrics, zsre_metrics
from eval.rows import METRIC_SKIPPED_RECORDS, rows_as_dict
from storage import names
from tests.unit.test_core_support import tiny_model, tiny_tokenizer
from tests.unit.test_eval_support import FIXTURES

CF = FIXTURES / "counterfact_3.json"
ZSRE = FIXTURES / "zsre_3.json"
SNIPPETS = FIXTURES / "attribute_snippets_3.json"


def _tfidf_files(tmp_path: Path) -> tuple[Path, Path]:
    vocab = {"english": 0, "french": 1, "honda": 2, "author": 3, "car": 4}
    (tmp_path / "tfidf_vocab.json").write_text(json.dumps(vocab))
    np.save(tmp_path / "idf.npy", np.array([1.5, 1.5, 2.0, 1.0, 1.0]))
    return tmp_path / "tfidf_vocab.json", tmp_path / "idf.npy"


def test_counterfact_fixture_loads_typed() -> None:
    loaded = ds.load_counterfact(CF)
    assert [r.case_id for r in loaded.records] == [0, 1, 2] and loaded.skipped == ()
    rec = loaded.records[0]
    assert rec.request.rewrite_prompt == "The mother tongue of Danielle Darrieux is"
    assert rec.request.target_new == " English" and rec.request.target_true == " French"
    assert rec.request.relation_id == "P103" and rec.request.target_new_id == "Q1860"
    assert len(rec.paraphrase_prompts) == 2 and len(rec.neighborhood_prompts) == 10
    assert len(rec.generation_prompts) == 10
    assert len(ds.load_counterfact(CF, limit=2).records) == 2  # first N in file order


def test_zsre_fixture_loads_typed_and_converts_for_editing() -> None:
    loaded = ds.load_zsre(ZSRE)
    rec = loaded.records[0]
    assert rec.case_id == 0 and rec.target == "Illinois Institute of Technology"
    assert rec.neighborhood_prompt == "nq question: who played desmond doss father in hacksaw ridge?"
    cf = rec.to_counterfact()
    assert cf["requested_rewrite"]["prompt"] == "What university did {} attend?"
    assert cf["requested_rewrite"]["target_true"]["str"] == "Trinity College"
    # pred == answers[0] (the real file edits towards the truth): reference's <|endoftext|> stands in
    assert loaded.records[1].to_counterfact()["requested_rewrite"]["target_true"]["str"] == ds.ZSRE_NO_TRUE_TARGET
    back = ds.zsre_from_requests([r.to_counterfact() for r in loaded.records], Path("requests.json"))
    assert back.records == loaded.records
    typed = ds.counterfact_from_requests([r.to_counterfact() for r in loaded.records], Path("requests.json"))
    assert typed.records[0].request.target_new == " Illinois Institute of Technology"


def test_malformed_record_names_file_case_and_field(tmp_path: Path) -> None:
    records = json.loads(CF.read_text())
    records[1]["requested_rewrite"]["target_new"].pop("str")
    bad = tmp_path / "bad_cf.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(ds.DatasetFormatError) as err:
        ds.load_counterfact(bad)
    msg = str(err.value)
    assert str(bad) in msg and "case_id=1" in msg and "requested_rewrite.target_new.str" in msg
    loaded = ds.load_counterfact(bad, on_error="skip")
    assert [r.case_id for r in loaded.records] == [0, 2]
    assert [s.case_id for s in loaded.skipped] == [1]
    (row,) = ds.skipped_rows(names.DATASET_COUNTERFACT, loaded)
    assert (row.metric, row.value, row.n_cases) == (METRIC_SKIPPED_RECORDS, 1.0, 3)


def test_malformed_zsre_record(tmp_path: Path) -> None:
    records = json.loads(ZSRE.read_text())
    records[2]["answers"] = []
    bad = tmp_path / "bad_zsre.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(ds.DatasetFormatError, match=r"bad_zsre.json: case_id=2 .*answers"):
        ds.load_zsre(bad)
    assert len(ds.load_zsre(bad, on_error="skip").skipped) == 1
    (tmp_path / "notalist.json").write_text("{}")
    with pytest.raises(ds.DatasetFormatError, match="expected a JSON list"):
        ds.load_zsre(tmp_path / "notalist.json")


def test_offline_download_says_where_to_put_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a, **_k):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(ds.DatasetUnavailableError) as err:
        ds.load_counterfact("mcf", cache_dir=tmp_path)
    msg = str(err.value)
    assert "https://memit.baulab.info/data/dsets/multi_counterfact.json" in msg
    assert str(tmp_path / "multi_counterfact.json") in msg
    assert not list(tmp_path.iterdir())  # no partial file left behind
    # a file already in the cache is used without any network access
    (tmp_path / "zsre_mend_eval.json").write_text(ZSRE.read_text())
    assert len(ds.load_zsre("zsre", cache_dir=tmp_path).records) == 3
    with pytest.raises(ds.DatasetUnavailableError, match="not found"):
        ds.load_zsre(tmp_path / "nope.json")


def test_snippets_and_tfidf_load(tmp_path: Path) -> None:
    snips = ds.load_attribute_snippets(SNIPPETS)
    assert len(snips["P103"]["Q1860"]) == 2 and "Honda" in snips["P176"]["Q9584"][0]
    vec = ds.load_tfidf(*_tfidf_files(tmp_path))
    assert vec.transform(["english english car"]).shape == (1, 5)
    np.save(tmp_path / "idf.npy", np.ones(3))
    with pytest.raises(ds.DatasetFormatError, match="same length"):
        ds.load_tfidf(tmp_path / "tfidf_vocab.json", tmp_path / "idf.npy")


def test_fixtures_score_with_a_tiny_model(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=0)
    cf = ds.load_counterfact(CF).records
    rows = counterfact_metrics(model, tok, cf, snippets=ds.load_attribute_snippets(SNIPPETS),
                               vectorizer=ds.load_tfidf(*_tfidf_files(tmp_path)), batch_size=8)
    values = rows_as_dict(rows)
    assert set(values) == set(names.COUNTERFACT_METRICS)
    assert all(r.n_cases == 3 and r.dataset == names.DATASET_COUNTERFACT for r in rows)
    for m in (names.METRIC_EFFICACY, names.METRIC_GENERALIZATION, names.METRIC_SPECIFICITY):
        assert 0.0 <= values[m] <= 100.0
    assert values[names.METRIC_FLUENCY] > 0 and 0.0 <= values[names.METRIC_CONSISTENCY] <= 100.0
    zrows = zsre_metrics(model, tok, ds.load_zsre(ZSRE).records)
    assert [r.metric for r in zrows] == list(names.ZSRE_METRICS) and all(r.n_cases == 3 for r in zrows)


def test_corpus_from_local_files_through_datasets(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"id": i, "body": f"doc {i}"}) for i in range(5)))
    (tmp_path / "b.txt").write_text("line one\n\nline two\nline three\n")
    spec = CorpusSpec(kind="files", files=(str(tmp_path / "a.jsonl"),), text_field="body", n_docs=3, sample="first")
    assert list(iter_corpus(spec)) == ["doc 0", "doc 1", "doc 2"]
    # The default is the reference's FixedRandomSubsetSampler: range(N) shuffled by random.Random(1).
    order = list(range(5))
    random.Random(1).shuffle(order)
    sampled = CorpusSpec(kind="files", files=(str(tmp_path / "a.jsonl"),), text_field="body", n_docs=3)
    assert list(iter_corpus(sampled)) == [f"doc {i}" for i in order[:3]] != ["doc 0", "doc 1", "doc 2"]
    assert sampled.key() != spec.key() and "random-seed1" in sampled.key()
    assert sorted(iter_corpus(CorpusSpec(kind="files", files=(str(tmp_path / "a.jsonl"),), text_field="body"))) == [
        f"doc {i}" for i in range(5)]  # a corpus smaller than n_docs: every document, in another order
    assert list(iter_corpus(CorpusSpec(kind="files", files=(str(tmp_path / "b.txt"),), sample="first"))) == [
        "line one", "line two", "line three"]
    with pytest.raises(CorpusUnavailableError, match="no field 'text'"):
        list(iter_corpus(CorpusSpec(kind="files", files=(str(tmp_path / "a.jsonl"),))))
    with pytest.raises(CorpusUnavailableError, match="not found"):
        list(iter_corpus(CorpusSpec(kind="files", files=(str(tmp_path / "missing.txt"),))))
    assert "20231101.en" in CorpusSpec(kind="wikipedia").key() and "n=3" in spec.key()


def test_wikipedia_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*_a, **_k):
        raise ConnectionError("Couldn't reach 'wikimedia/wikipedia' on the Hub (offline mode is enabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusUnavailableError, match=r"wikimedia/wikipedia/20220301.fr .*kind='files'"):
        next(iter_corpus(CorpusSpec(kind="wikipedia", snapshot="20220301.fr", n_docs=10)))


def test_offline_flags_mean_no_download_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def record(*a, **_k):
        calls.append(a)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", record)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ds.DatasetUnavailableError, match=r"HF_DATASETS_OFFLINE.* is set; download .*multi_counterfact"):
        ds.load_counterfact("mcf", cache_dir=tmp_path)
    assert calls == []  # offline means offline
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ds.DatasetUnavailableError, match="could not fetch"):
        ds.load_counterfact("mcf", cache_dir=tmp_path)
    assert len(calls) == 1 and not list(tmp_path.iterdir())
