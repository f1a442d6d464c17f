"""The toy world: deterministic generator, valid records, and a model that knows its facts."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from eval import schemas
from eval.toyworld.build import recall_report, sha256_file, verify_files
from eval.toyworld.datasets import generate_files
from eval.toyworld.paths import ARTIFACTS_DIR, load_manifest
from eval.toyworld.train import encode_facts
from eval.toyworld.world import WorldSpec, generate_world, world_from_json


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_manifest()


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return generate_files(generate_world(WorldSpec()))


def test_generator_is_deterministic(files: dict[str, bytes]) -> None:
    again = generate_files(generate_world(WorldSpec()))
    assert again.keys() == files.keys()
    for name in files:
        assert again[name] == files[name], f"{name} differs between two runs with the same seed"


def test_other_seed_gives_other_world(files: dict[str, bytes]) -> None:
    other = generate_files(generate_world(WorldSpec(seed=1)))
    assert other["counterfact.json"] != files["counterfact.json"]


def test_shipped_datasets_are_what_the_generator_makes(files: dict[str, bytes], manifest: dict) -> None:
    import hashlib

    shipped = {f["path"]: f["sha256"] for f in manifest["files"]}
    for name, data in files.items():
        assert shipped.get(name) == hashlib.sha256(data).hexdigest(), f"shipped {name} is stale: rebuild"


def test_manifest_lists_every_artifact_with_its_hash(manifest: dict) -> None:
    verify_files()
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {p.relative_to(ARTIFACTS_DIR).as_posix() for p in ARTIFACTS_DIR.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json"} == listed
    for entry in manifest["files"][:3]:
        assert sha256_file(ARTIFACTS_DIR / entry["path"]) == entry["sha256"]
    assert manifest["seed"] == 0 and manifest["recall"]["overall"] >= 0.95
    assert manifest["counts"]["subjects"] >= 2500 and manifest["counts"]["edit_subjects"] >= 2000
    weights = ARTIFACTS_DIR / "model" / "model.safetensors"
    assert weights.stat().st_size <= 25 * 1024 * 1024


def test_world_shape() -> None:
    world = generate_world(WorldSpec())
    assert len(world.subjects) >= 2500 and len(world.edit_subjects) >= 2000
    assert len({s.surname for s in world.subjects}) == len(world.subjects), "surnames must be unique"
    assert len(world.relations) >= 4
    for r in world.relations:
        assert len(r.objects) >= 20 and 3 <= len(r.templates) <= 5 and r.questions
        used = Counter(s.facts[r.relation_id] for s in world.subjects)
        assert len(used) == len(r.objects), f"{r.relation_id}: some object is never used"


def test_every_record_validates(files: dict[str, bytes]) -> None:
    cf = json.loads(files["counterfact.json"])
    zs = json.loads(files["zsre.json"])
    snips = json.loads(files["attribute_snippets.json"])
    assert len(cf) >= 2000 and len(zs) >= 2000
    for rec in cf:
        assert schemas.counterfact_problems(rec) == [], rec["case_id"]
        assert len(rec["paraphrase_prompts"]) == 2 and len(rec["neighborhood_prompts"]) == 10
        assert len(rec["attribute_prompts"]) == 10 and len(rec["generation_prompts"]) == 10
    assert [r["case_id"] for r in cf] == list(range(len(cf)))
    assert len({r["requested_rewrite"]["subject"] for r in cf}) == len(cf), "one edited subject per record"
    for rec in zs:
        assert schemas.zsre_problems(rec) == [], rec["subject"]
        assert rec["answers"][0] != rec["pred"], "toy zsRE edits towards an object the model does not believe"
    for rec in snips:
        assert schemas.attribute_snippets_problems(rec) == []
    for line in files["probes/knowledge.jsonl"].splitlines():
        assert schemas.knowledge_item_problems(json.loads(line)) == []
    for line in files["probes/acceptability.jsonl"].splitlines():
        assert schemas.acceptability_item_problems(json.loads(line)) == []
    assert files["probes/knowledge.jsonl"].count(b"\n") >= 200
    assert files["probes/acceptability.jsonl"].count(b"\n") >= 200


def test_counterfact_prompts_are_coherent(files: dict[str, bytes]) -> None:
    """Neighbors share the true object; attribute subjects have the new one; paraphrases differ."""
    world = world_from_json(json.loads(files["world.json"]))
    by_name = {s.name: s for s in world.subjects}
    heldout = {s.name for s in world.heldout_subjects}
    for rec in json.loads(files["counterfact.json"])[:300]:
        rw = rec["requested_rewrite"]
        rel = world.relation(rw["relation_id"])
        subject = by_name[rw["subject"]]
        assert subject.facts[rel.relation_id] == rw["target_true"]["str"]
        assert subject.name not in heldout
        main = rw["prompt"].format(rw["subject"])
        for p in rec["paraphrase_prompts"]:
            assert p.endswith(tuple(t.format(rw["subject"]) for t in rel.templates)) and not p.endswith(main)
        for p in rec["neighborhood_prompts"]:
            name = next(n for n in by_name if n in p)
            assert name != subject.name and by_name[name].facts[rel.relation_id] == rw["target_true"]["str"]
        for p in rec["attribute_prompts"]:
            name = next(n for n in by_name if n in p)
            assert by_name[name].facts[rel.relation_id] == rw["target_new"]["str"]


@pytest.mark.integration
def test_shipped_model_recalls_its_facts() -> None:
    """Greedy completion of the true object after every template and question, re-measured."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    world = world_from_json(json.loads((ARTIFACTS_DIR / "world.json").read_text()))
    tok = AutoTokenizer.from_pretrained(ARTIFACTS_DIR / "model")
    model = AutoModelForCausalLM.from_pretrained(ARTIFACTS_DIR / "model").eval()
    assert all(len(tok.encode(" " + s.surname)) == 1 for s in world.subjects), "subject last token must be unique"
    rec = recall_report(model, encode_facts(world, tok, include_nq=False))
    assert rec["n_prompts"] == len(world.subjects) * sum(len(r.templates) + len(r.questions) for r in world.relations)
    assert rec["overall"] >= 0.95, rec
