"""The toy world's datasets, in the exact schemas of the real benchmark files.

* ``counterfact.json``: the (multi-)CounterFact record layout (``case_id``, ``pararel_idx``,
  ``requested_rewrite``, ``paraphrase_prompts``, ``neighborhood_prompts``, ``attribute_prompts``,
  ``generation_prompts``); one record per edited subject.
* ``attribute_snippets.json`` + ``tfidf_vocab.json`` + ``idf.npy``: the consistency metric's inputs.
* ``zsre.json``: the ``zsre_mend_eval.json`` layout (``subject, src, pred, rephrase, alt,
  answers, loc, loc_ans, cond``).
* ``wiki.jsonl``: the preservation corpus (``id, title, text`` like ``wikimedia/wikipedia``).
* ``probes/*.jsonl`` + ``tasks/*.yaml``: lm-eval general-capability tasks over local files.

Conventions that differ from the real files are deliberate and documented in the README:

* zsRE: real records edit *towards the true answer* ``answers[0]``; here the model already knows
  every true answer, so ``answers[0]`` (and ``alt``) is a *new* object the model does not
  believe, ``pred`` is the true object. Editing towards ``answers[0]`` (as the reference code
  does) or towards ``alt`` (as some forks do) then edits towards the same object.
* Neighborhood prompts (CounterFact) and ``loc`` questions (zsRE) only use subjects whose fact for
  that relation is never the target of an edit in the same dataset, so specificity measures
  preservation, not collateral damage from another record's own edit.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Any

import numpy as np

from eval.datasets import fit_tfidf
from eval.toyworld.world import Relation, Subject, World, biography, filler_sentence, object_id

N_PARAPHRASE = 2
N_NEIGHBORHOOD = 10
N_ATTRIBUTE = 10
N_GENERATION = 10
N_SNIPPETS = 20
N_KNOWLEDGE_ITEMS = 500
N_ACCEPTABILITY_ITEMS = 400
KNOWLEDGE_CHOICES = 4
NQ_LOC_PREFIX = "nq question: "


def _records_relations(world: World, rng: random.Random) -> dict[int, Relation]:
    """Which relation each edited subject's record edits (balanced over relations)."""
    subjects = world.edit_subjects
    rels = [world.relations[i % len(world.relations)] for i in range(len(subjects))]
    rng.shuffle(rels)
    return {s.index: r for s, r in zip(subjects, rels, strict=True)}


def _untouched_by_object(world: World, edited_rel: dict[int, Relation]) -> dict[tuple[str, str], list[Subject]]:
    """(relation_id, object) -> subjects whose fact for that relation no record edits."""
    out: dict[tuple[str, str], list[Subject]] = defaultdict(list)
    for s in world.subjects:
        for r in world.relations:
            if s.index in edited_rel and edited_rel[s.index].relation_id == r.relation_id:
                continue
            out[(r.relation_id, s.facts[r.relation_id])].append(s)
    return out


def _by_object(world: World) -> dict[tuple[str, str], list[Subject]]:
    out: dict[tuple[str, str], list[Subject]] = defaultdict(list)
    for s in world.subjects:
        for r in world.relations:
            out[(r.relation_id, s.facts[r.relation_id])].append(s)
    return out


def _new_object(relation: Relation, true_obj: str, rng: random.Random) -> str:
    return rng.choice([o for o in relation.objects if o != true_obj])


def _sample(pool: list[Subject], k: int, rng: random.Random, exclude: int) -> list[Subject]:
    cands = [s for s in pool if s.index != exclude]
    if len(cands) < k:
        raise RuntimeError(f"toy world too small: need {k} subjects sharing a fact, found {len(cands)}")
    return rng.sample(cands, k)


def counterfact(world: World) -> list[dict[str, Any]]:
    """One CounterFact record per edited subject (case_id = position in the file)."""
    rng = random.Random(world.spec.seed * 1000 + 11)
    edited_rel = _records_relations(world, rng)
    untouched = _untouched_by_object(world, edited_rel)
    everyone = _by_object(world)
    records = []
    for case_id, s in enumerate(world.edit_subjects):
        r = edited_rel[s.index]
        true_obj = s.facts[r.relation_id]
        new_obj = _new_object(r, true_obj, rng)
        t_main = rng.randrange(len(r.templates))
        others = [t for i, t in enumerate(r.templates) if i != t_main]
        paraphrases = [f"{filler_sentence(rng)} {t.format(s.name)}" for t in rng.sample(others, N_PARAPHRASE)]
        neigh = _sample(untouched[(r.relation_id, true_obj)], N_NEIGHBORHOOD, rng, s.index)
        attr = _sample(everyone[(r.relation_id, new_obj)], N_ATTRIBUTE, rng, s.index)
        gen_pool = list(r.templates) + [
            "{} is known for",
            "{}'s story begins in",
            "People who know {} say that",
        ]
        records.append(
            {
                "case_id": case_id,
                "pararel_idx": s.index,
                "requested_rewrite": {
                    "prompt": r.templates[t_main],
                    "relation_id": r.relation_id,
                    "target_new": {"str": new_obj, "id": object_id(r, new_obj)},
                    "target_true": {"str": true_obj, "id": object_id(r, true_obj)},
                    "subject": s.name,
                },
                "paraphrase_prompts": paraphrases,
                "neighborhood_prompts": [rng.choice(r.templates).format(n.name) for n in neigh],
                "attribute_prompts": [rng.choice(r.templates).format(a.name) for a in attr],
                "generation_prompts": [rng.choice(gen_pool).format(s.name) for _ in range(N_GENERATION)],
            }
        )
    return records


def wiki(world: World) -> list[dict[str, Any]]:
    """The preservation corpus: one biography per subject, ``wikimedia/wikipedia`` field names."""
    rng = random.Random(world.spec.seed * 1000 + 1)  # the same stream the model's training text uses
    return [{"id": str(s.index), "title": s.name, "text": biography(s, rng)} for s in world.subjects]


def attribute_snippets(world: World, wiki_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """snips[relation_id][target_id] -> biographies of subjects that have that object."""
    text_of = {int(row["id"]): row["text"] for row in wiki_rows}
    everyone = _by_object(world)
    out = []
    for r in world.relations:
        for obj in r.objects:
            subs = everyone.get((r.relation_id, obj), [])[:N_SNIPPETS]
            out.append(
                {
                    "relation_id": r.relation_id,
                    "target_id": object_id(r, obj),
                    "samples": [{"id": str(s.index), "name": s.name, "text": text_of[s.index]} for s in subs],
                }
            )
    return out


def zsre(world: World) -> list[dict[str, Any]]:
    """One zsRE-format record per edited subject (see the module docstring for ``answers``)."""
    rng = random.Random(world.spec.seed * 1000 + 13)
    edited_rel = _records_relations(world, rng)
    heldout = world.heldout_subjects
    records = []
    for s in world.edit_subjects:
        r = edited_rel[s.index]
        true_obj = s.facts[r.relation_id]
        new_obj = _new_object(r, true_obj, rng)
        src, rephrase = (q.format(s.name) for q in rng.sample(r.questions, 2))
        other = rng.choice(heldout)
        lr = rng.choice(world.relations)
        loc_q = rng.choice(lr.questions).format(other.name).rstrip("?")
        records.append(
            {
                "subject": s.name,
                "src": src,
                "pred": true_obj,
                "rephrase": rephrase,
                "alt": new_obj,
                "answers": [new_obj],
                "loc": NQ_LOC_PREFIX + loc_q[0].lower() + loc_q[1:],
                "loc_ans": other.facts[lr.relation_id],
                "cond": f"{true_obj} >> {new_obj} || {src}",
            }
        )
    return records


def knowledge_probe(world: World) -> list[dict[str, Any]]:
    """Multiple-choice questions about subjects that are never edited (MMLU-like)."""
    rng = random.Random(world.spec.seed * 1000 + 17)
    items = []
    heldout = world.heldout_subjects
    for i in range(N_KNOWLEDGE_ITEMS):
        s = heldout[i % len(heldout)]
        r = world.relations[i % len(world.relations)]
        true_obj = s.facts[r.relation_id]
        choices = [true_obj, *rng.sample([o for o in r.objects if o != true_obj], KNOWLEDGE_CHOICES - 1)]
        rng.shuffle(choices)
        items.append(
            {
                "id": i,
                "subject": s.name,
                "relation_id": r.relation_id,
                "question": rng.choice(r.questions).format(s.name),
                "choices": choices,
                "answer": choices.index(true_obj),
            }
        )
    return items


def _scramble(sentence: str, rng: random.Random) -> str:
    body = sentence.rstrip(".")
    words = body.split()
    for _ in range(100):
        shuffled = words[:]
        rng.shuffle(shuffled)
        if shuffled != words:
            out = " ".join(shuffled)
            return out[0].upper() + out[1:] + "."
    raise RuntimeError(f"cannot scramble {sentence!r}")


def acceptability_probe(world: World) -> list[dict[str, Any]]:
    """Minimal pairs (BLiMP-like): a well-formed sentence vs. the same words scrambled.

    Half the good sentences are fresh filler sentences, half are biography sentences about
    never-edited subjects, so the task probes the model's grammar of the world's prose.
    """
    rng = random.Random(world.spec.seed * 1000 + 19)
    heldout = world.heldout_subjects
    items = []
    for i in range(N_ACCEPTABILITY_ITEMS):
        if i % 2 == 0:
            good = filler_sentence(rng)
        else:
            s = heldout[rng.randrange(len(heldout))]
            r = rng.choice(world.relations)
            good = rng.choice(r.bio_sentences).format(name=s.name, sur=s.surname, o=s.facts[r.relation_id])
        items.append({"id": i, "sentence_good": good, "sentence_bad": _scramble(good, rng)})
    return items


TASK_YAMLS: dict[str, str] = {
    "toy_knowledge": """\
# Knowledge probe (MMLU-like): questions about never-edited subjects, 4 choices.
# data_files is relative to the repository root (the CWD of `ray job submit --working-dir .`);
# eval.toyworld.paths.task_configs() resolves it to an absolute path for in-process use.
task: toy_knowledge
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: eval/toyworld/artifacts/probes/knowledge.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: answer
num_fewshot: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
    "toy_acceptability": """\
# Acceptability probe (BLiMP/CoLA-like): a sentence vs. the same words scrambled.
# data_files is relative to the repository root; see toy_knowledge.yaml.
task: toy_acceptability
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: eval/toyworld/artifacts/probes/acceptability.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: ""
doc_to_target: 0
doc_to_choice: "{{[sentence_good, sentence_bad]}}"
num_fewshot: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
}


def world_json(world: World) -> dict[str, Any]:
    """The world definition: relations (templates, objects with ids) and subjects with facts."""
    return {
        "seed": world.spec.seed,
        "relations": [
            {
                "relation_id": r.relation_id,
                "name": r.name,
                "templates": list(r.templates),
                "questions": list(r.questions),
                "bio_sentences": list(r.bio_sentences),
                "objects": [{"str": o, "id": object_id(r, o)} for o in r.objects],
            }
            for r in world.relations
        ],
        "subjects": [
            {"index": s.index, "name": s.name, "first": s.first, "surname": s.surname, "edited": s.edited,
             "facts": dict(s.facts)}
            for s in world.subjects
        ],
    }


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes (stable across runs: same input, same bytes)."""
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def dumps_jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def generate_files(world: World) -> dict[str, bytes]:
    """Every dataset file of the toy world as {relative path: bytes}. Pure and deterministic."""
    wiki_rows = wiki(world)
    snippets = attribute_snippets(world, wiki_rows)
    vocab, idf = fit_tfidf(snippets)
    files = {
        "world.json": dumps(world_json(world)),
        "wiki.jsonl": dumps_jsonl(wiki_rows),
        "counterfact.json": dumps(counterfact(world)),
        "attribute_snippets.json": dumps(snippets),
        "tfidf_vocab.json": dumps(vocab),
        "idf.npy": npy_bytes(idf),
        "zsre.json": dumps(zsre(world)),
        "probes/knowledge.jsonl": dumps_jsonl(knowledge_probe(world)),
        "probes/acceptability.jsonl": dumps_jsonl(acceptability_probe(world)),
    }
    for name, text in TASK_YAMLS.items():
        files[f"tasks/{name}.yaml"] = text.encode("utf-8")
    return files
