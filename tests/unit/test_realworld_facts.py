"""Real-world facts and datasets: deterministic candidates, and datasets that the committed
facts.json regenerates byte for byte. No test here needs the installed model."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from eval import schemas
from eval.datasets import load_attribute_snippets, load_counterfact, load_tfidf, load_zsre
from eval.realworld import paths
from eval.realworld.build import DATASET_FILES, FACTS_FILE, _overlap, build_datasets, refresh_manifest
from eval.realworld.facts import RELATION_IDS, candidate_facts, candidate_objects, object_table

ART = paths.ARTIFACTS_DIR


@pytest.fixture(scope="module")
def manifest() -> dict:
    return paths.load_manifest()


@pytest.fixture(scope="module")
def facts_doc() -> dict:
    return json.loads((ART / FACTS_FILE).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory, manifest: dict) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("realworld")
    return out, build_datasets(ART / FACTS_FILE, out, seed=manifest["seed"])


@pytest.fixture(scope="module")
def cf() -> list[dict]:
    return json.loads((ART / "counterfact.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def zs() -> list[dict]:
    return json.loads((ART / "zsre.json").read_text(encoding="utf-8"))


def test_candidate_facts_are_deterministic_and_cover_the_relations() -> None:
    a, b = candidate_facts(), candidate_facts()
    assert a == b
    by_rel = Counter(f.relation_id for f in a)
    assert len(by_rel) >= 4 and set(by_rel) == set(RELATION_IDS)
    assert len({(f.relation_id, f.subject) for f in a}) == len(a)
    table = object_table(a)
    for f in a[:: max(1, len(a) // 200)]:
        cands = candidate_objects(f, table)
        ids = [o["id"] for o in cands]
        assert f.object_id in ids and len(ids) == len(set(ids)) <= 20
        assert not set(f.also_true) & set(ids)


def test_committed_facts_match_the_candidates(facts_doc: dict) -> None:
    now = [f.as_dict() for f in candidate_facts()]
    keys = ("subject", "subject_id", "relation_id", "object", "object_id", "population", "also_true")
    assert [{k: f[k] for k in keys} for f in facts_doc["facts"]] == now
    assert sum(f["known"] for f in facts_doc["facts"]) >= 2500
    for f in facts_doc["facts"]:
        assert f["known"] == (f["greedy_ok"] and f["rank_ok"])


def test_datasets_regenerate_byte_for_byte(rebuilt: tuple[Path, dict], manifest: dict) -> None:
    out, info = rebuilt
    for rel in DATASET_FILES:
        data = (out / rel).read_bytes()
        assert manifest["files"][rel]["sha256"] == hashlib.sha256(data).hexdigest(), f"committed {rel} is stale"
        assert manifest["files"][rel]["bytes"] == len(data)
        assert (ART / rel).read_bytes() == data
    assert info["counts"] == manifest["counts"]


def test_manifest_lists_every_artifact(manifest: dict) -> None:
    on_disk = {p.relative_to(ART).as_posix() for p in ART.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert on_disk - {"manifest.json"} == set(manifest["files"])
    for rel, entry in manifest["files"].items():
        data = (ART / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"], rel
    assert sum(e["bytes"] for e in manifest["files"].values()) < 20 * 2**20
    for rid in RELATION_IDS:
        r = manifest["recall"][rid]
        assert r["candidates"] > 0 and 0 <= r["known"] <= r["candidates"]


def test_refresh_manifest_rehashes_and_merges(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[]\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text("{}\n")
    m = refresh_manifest(tmp_path, counts={"x": 1})
    assert set(m["files"]) == {"a.json", "sub/b.jsonl"} and m["counts"] == {"x": 1}
    (tmp_path / "c.txt").write_text("new")
    m = refresh_manifest(tmp_path, corpus={"rows": 3})
    assert set(m["files"]) == {"a.json", "c.txt", "sub/b.jsonl"}
    assert m["counts"] == {"x": 1} and m["corpus"] == {"rows": 3}
    assert json.loads((tmp_path / "manifest.json").read_text()) == m
    assert "counts" not in refresh_manifest(tmp_path, counts=None)


def test_records_load_and_validate(cf: list[dict], zs: list[dict]) -> None:
    assert len(load_counterfact(ART / "counterfact.json", download=False).records) == len(cf) >= 2000
    assert len(load_zsre(ART / "zsre.json", download=False).records) == len(zs) >= 2000
    snips = load_attribute_snippets(ART / "attribute_snippets.json", download=False)
    vec = load_tfidf(ART / "tfidf_vocab.json", ART / "idf.npy", download=False)
    assert vec.transform(["a city in France"]).shape[1] == len(vec.vocabulary_)
    for rec in cf[:200]:
        rw = rec["requested_rewrite"]
        assert rw["target_new"]["id"] in snips[rw["relation_id"]]
    for line in (ART / "probes" / "knowledge.jsonl").read_text().splitlines():
        assert not schemas.knowledge_item_problems(json.loads(line))


def test_counterfact_records_are_coherent(cf: list[dict]) -> None:
    assert [r["case_id"] for r in cf] == list(range(len(cf)))
    edited = {(r["requested_rewrite"]["subject"], r["requested_rewrite"]["relation_id"]) for r in cf}
    assert len({r["requested_rewrite"]["subject"] for r in cf}) == len(cf)
    for rec in cf:
        rw = rec["requested_rewrite"]
        s, rid = rw["subject"], rw["relation_id"]
        assert rw["target_new"]["id"] != rw["target_true"]["id"] and rw["target_new"]["str"] != rw["target_true"]["str"]
        assert len(rec["paraphrase_prompts"]) == 2 and all(s in p for p in rec["paraphrase_prompts"])
        assert len(rec["neighborhood_prompts"]) == 10 and len(rec["attribute_prompts"]) == 10
        assert len(rec["generation_prompts"]) == 10 and all(s in p for p in rec["generation_prompts"])
        assert rw["prompt"].format(s) not in rec["paraphrase_prompts"]
    # neighborhood subjects: never the record's subject (nor a name containing it, e.g. "New Delhi" for
    # "Delhi"), and never edited for that relation by any record
    facts = json.loads((ART / FACTS_FILE).read_text(encoding="utf-8"))["facts"]
    templates = {r["relation_id"]: r["templates"] for r in json.loads((ART / FACTS_FILE).read_text())["relations"]}
    known = {(f["relation_id"], f["subject"]): f["object_id"] for f in facts if f["known"]}
    for rec in cf:
        rw = rec["requested_rewrite"]
        rid, s = rw["relation_id"], rw["subject"]
        for p in rec["neighborhood_prompts"]:
            subj = _subject_of(p, templates[rid])
            assert subj != s and not _overlap(subj, s), f"case {rec['case_id']}: neighbor {subj!r} of {s!r}"
            assert known[(rid, subj)] == rw["target_true"]["id"] and (subj, rid) not in edited
        for p in rec["attribute_prompts"]:
            subj = _subject_of(p, templates[rid])
            assert subj != s and known[(rid, subj)] == rw["target_new"]["id"]


def _subject_of(prompt: str, templates: list[str]) -> str:
    for t in templates:
        pre, post = t.split("{}")
        if prompt.startswith(pre) and prompt.endswith(post) and len(prompt) > len(pre) + len(post):
            return prompt[len(pre): len(prompt) - len(post)]
    raise AssertionError(f"{prompt!r} fills none of the templates")


def test_zsre_records_edit_towards_new_objects_with_heldout_loc(zs: list[dict], facts_doc: dict,
                                                                cf: list[dict]) -> None:
    known = [f for f in facts_doc["facts"] if f["known"]]
    edited_subjects = {r["subject"] for r in zs} | {r["requested_rewrite"]["subject"] for r in cf}
    heldout = {f["subject"] for f in known} - edited_subjects
    truth = {(f["subject"], f["object"]) for f in known}
    questions = [q for r in facts_doc["relations"] for q in r["questions"]]
    for rec in zs:
        assert rec["subject"] in rec["src"] and rec["subject"] in rec["rephrase"] and rec["src"] != rec["rephrase"]
        assert rec["answers"] == [rec["alt"]] and rec["alt"] != rec["pred"]
        assert (rec["subject"], rec["pred"]) in truth
        assert rec["loc"].startswith("nq question: ")
        loc = rec["loc"][len("nq question: "):]
        subj = next(_subject_of(loc + "?", [q[0].lower() + q[1:], q]) for q in questions
                    if _fits(loc + "?", q))
        assert subj in heldout, f"loc question about {subj!r}, which is edited"
        assert (subj, rec["loc_ans"]) in truth


def _fits(prompt: str, question: str) -> bool:
    try:
        _subject_of(prompt, [question[0].lower() + question[1:], question])
        return True
    except AssertionError:
        return False


def test_knowledge_probe_is_about_heldout_facts(facts_doc: dict, cf: list[dict], zs: list[dict],
                                                manifest: dict) -> None:
    items = [json.loads(x) for x in (ART / "probes" / "knowledge.jsonl").read_text().splitlines()]
    assert 300 <= len(items) <= 500
    edited = {r["subject"] for r in zs} | {r["requested_rewrite"]["subject"] for r in cf}
    truth = {(f["subject"], f["relation_id"]): f["object"] for f in facts_doc["facts"] if f["known"]}
    for it in items:
        assert it["subject"] not in edited
        assert len(it["choices"]) == 4 and it["choices"][it["answer"]] == truth[(it["subject"], it["relation_id"])]
    cfg = paths.task_configs(names=("real_knowledge",))[0]
    assert Path(cfg["dataset_kwargs"]["data_files"]["test"]) == ART / "probes" / "knowledge.jsonl"
    toy = (paths.REPO_ROOT / "eval/toyworld/artifacts/tasks/toy_knowledge.yaml").read_text()
    ours = (ART / "tasks" / "real_knowledge.yaml").read_text()
    strip = lambda t: [ln for ln in t.splitlines() if not ln.startswith("#")]  # noqa: E731
    assert strip(ours) == [ln.replace("toy_knowledge", "real_knowledge").replace("toyworld", "realworld")
                           for ln in strip(toy)]
