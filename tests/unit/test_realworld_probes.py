"""The real world's generated capability probes: deterministic, well-formed, as committed."""

from __future__ import annotations

import hashlib

from eval.probes import REAL_TASKS, resolve_tasks
from eval.realworld import paths
from eval.realworld.probes import arithmetic_items, grammar_pairs, write_probe_files


def test_probes_are_deterministic_and_well_formed() -> None:
    assert grammar_pairs() == grammar_pairs() and arithmetic_items() == arithmetic_items()
    pairs = grammar_pairs()
    assert len(pairs) == 400 and all(p["sentence_good"] != p["sentence_bad"] for p in pairs)
    # a minimal pair: the sentences differ in exactly one word (the verb)
    assert all(sum(a != b for a, b in zip(p["sentence_good"].split(), p["sentence_bad"].split(), strict=True)) == 1
               for p in pairs)
    items = arithmetic_items()
    assert len(items) == 81 and len({i["question"] for i in items}) == 81
    for item in items:
        a, b = (int(w.rstrip("?")) for w in item["question"].split() if w.rstrip("?").isdigit())
        assert item["choices"][item["answer"]] == str(a + b) and len(set(item["choices"])) == 4


def test_committed_probe_files_are_regenerated_byte_for_byte(tmp_path) -> None:
    written = write_probe_files(tmp_path)
    for path in written:
        committed = paths.ARTIFACTS_DIR / path.relative_to(tmp_path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(committed.read_bytes()).hexdigest(), path


def test_real_task_names_resolve_to_local_configs() -> None:
    resolved = resolve_tasks(["real_grammar", "real_arithmetic", "sst2"])
    assert resolved[2] == "sst2"
    for cfg in resolved[:2]:
        assert isinstance(cfg, dict) and cfg["task"] in REAL_TASKS
        (data,) = cfg["dataset_kwargs"]["data_files"].values()
        assert data.startswith("/") and data.endswith(".jsonl")
