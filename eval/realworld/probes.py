"""The real world's capability probes that do not touch the edited relations (lm-eval local tasks).

* ``real_grammar`` (BLiMP-like): subject-verb agreement minimal pairs across an attractor
  ("The keys to the old cabinet are / is on the table."), generated from word lists; the model must
  give the grammatical sentence the higher likelihood. 400 pairs.
* ``real_arithmetic``: the 81 single-digit additions as a worded 4-way cloze ("What is 7 plus 5?
  The answer is" with the sum and three near misses).

Both are deterministic (a seeded ``random.Random``); the files are committed with the other
real-world artifacts. The held-out facts probe (``real_knowledge``) comes from the facts builder.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from eval.localtasks import task_yaml

# (singular, plural) nouns, attractors (prepositional phrases with a noun of the other number are
# built from NOUNS), verbs as (singular, plural, rest of the sentence).
NOUNS: tuple[tuple[str, str], ...] = (
    ("key", "keys"), ("book", "books"), ("teacher", "teachers"), ("dog", "dogs"), ("car", "cars"),
    ("student", "students"), ("painting", "paintings"), ("doctor", "doctors"), ("letter", "letters"),
    ("window", "windows"), ("song", "songs"), ("farmer", "farmers"), ("bottle", "bottles"),
    ("child", "children"), ("woman", "women"), ("man", "men"), ("box", "boxes"), ("bird", "birds"),
    ("house", "houses"), ("plant", "plants"),
)
PLACES: tuple[str, ...] = ("near the", "behind the", "next to the", "from the", "beside the", "of the", "by the")
ADJECTIVES: tuple[str, ...] = ("old", "new", "small", "large", "quiet", "red", "famous", "empty")
VERBS: tuple[tuple[str, str, str], ...] = (
    ("is", "are", "on the table"), ("was", "were", "very old"), ("has", "have", "a strange smell"),
    ("seems", "seem", "quite happy"), ("looks", "look", "beautiful today"), ("needs", "need", "some help"),
    ("belongs", "belong", "to my brother"), ("makes", "make", "a lot of noise"),
)


def grammar_pairs(n: int = 400, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        (s_sg, s_pl), (a_sg, a_pl) = rng.sample(NOUNS, 2)
        plural = rng.random() < 0.5
        subject = s_pl if plural else s_sg
        attractor = a_sg if plural else a_pl  # the attractor has the other number
        v_sg, v_pl, rest = rng.choice(VERBS)
        good, bad = (v_pl, v_sg) if plural else (v_sg, v_pl)
        head = f"The {subject} {rng.choice(PLACES)} {rng.choice(ADJECTIVES)} {attractor}"
        rows.append({"id": len(rows), "sentence_good": f"{head} {good} {rest}.", "sentence_bad": f"{head} {bad} {rest}."})
    return rows


def arithmetic_items(seed: int = 0) -> list[dict[str, Any]]:
    """All 81 single-digit additions, worded ("What is 7 plus 5? The answer is"), 4-way.

    Worded prompts because the model is near chance on symbolic ones: on 100 items each, "7 + 5 ="
    0.34, "Question: What is 13 - 4?\nAnswer:" 0.34, "What is 7 plus 5? The answer is" 0.78
    (chance 0.25; lowest mean NLL of the four choices).
    """
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    rng.shuffle(pairs)
    rows = []
    for a, b in pairs:
        answer = a + b
        wrong = sorted({answer + d for d in (-2, -1, 1, 2, 10, -10) if answer + d >= 0} - {answer})
        choices = [answer] + rng.sample(wrong, 3)
        rng.shuffle(choices)
        rows.append({"id": len(rows), "question": f"What is {a} plus {b}? The answer is",
                     "choices": [str(c) for c in choices], "answer": choices.index(answer)})
    return rows


GRAMMAR_YAML = task_yaml(
    "real_grammar", "eval/realworld/artifacts/probes/grammar.jsonl",
    "Agreement probe (BLiMP-like): the grammatical sentence must be the more likely one.",
    doc_to_text='""', doc_to_choice='"{{[sentence_good, sentence_bad]}}"', doc_to_target="0")

ARITHMETIC_YAML = task_yaml(
    "real_arithmetic", "eval/realworld/artifacts/probes/arithmetic.jsonl",
    "Arithmetic probe: the 81 single-digit additions, worded, 4-way cloze.",
    doc_to_text='"{{question}}"', doc_to_choice='"{{choices}}"', doc_to_target="answer")


def write_probe_files(artifacts_dir: Path, seed: int = 0) -> list[Path]:
    """Write the two probes' data and task YAMLs under ``artifacts_dir``; returns the paths written."""
    probes, tasks = artifacts_dir / "probes", artifacts_dir / "tasks"
    probes.mkdir(parents=True, exist_ok=True)
    tasks.mkdir(parents=True, exist_ok=True)
    out = []
    for name, rows, yaml_text in (("grammar", grammar_pairs(seed=seed), GRAMMAR_YAML),
                                  ("arithmetic", arithmetic_items(seed=seed), ARITHMETIC_YAML)):
        data = probes / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        task = tasks / f"real_{name}.yaml"
        task.write_text(yaml_text)
        out += [data, task]
    return out
