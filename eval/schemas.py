"""Record schemas of the benchmark files (CounterFact, zsRE, attribute snippets, probes).

Each ``*_problems`` function returns the list of problems of one record (empty when valid), each
naming the field, so loaders can report ``file, case id, field`` and tests can check whole files.
The layouts are those of the real files (``docs/reference/alphaedit-method.md`` section 4).
"""

from __future__ import annotations

from typing import Any


def _str(rec: dict[str, Any], path: str, problems: list[str], *, subject_slot: bool = False) -> None:
    cur: Any = rec
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            problems.append(f"{path}: missing")
            return
        cur = cur[part]
    if not isinstance(cur, str) or not cur.strip():
        problems.append(f"{path}: must be a non-empty string, got {cur!r}")
    elif subject_slot and cur.count("{}") != 1:
        problems.append(f"{path}: must contain exactly one '{{}}' for the subject, got {cur!r}")


def _str_list(rec: dict[str, Any], key: str, problems: list[str], min_len: int = 1) -> None:
    value = rec.get(key)
    if not isinstance(value, list) or len(value) < min_len:
        problems.append(f"{key}: must be a list of at least {min_len} strings")
    elif not all(isinstance(v, str) and v.strip() for v in value):
        problems.append(f"{key}: every entry must be a non-empty string")


def counterfact_problems(rec: Any) -> list[str]:
    """Problems of one (multi-)CounterFact record."""
    if not isinstance(rec, dict):
        return [f"record: must be an object, got {type(rec).__name__}"]
    problems: list[str] = []
    if not isinstance(rec.get("case_id"), int):
        problems.append("case_id: must be an integer")
    _str(rec, "requested_rewrite.prompt", problems, subject_slot=True)
    for field in ("subject", "relation_id", "target_new.str", "target_new.id", "target_true.str", "target_true.id"):
        _str(rec, f"requested_rewrite.{field}", problems)
    rw = rec.get("requested_rewrite", {})
    if isinstance(rw, dict):
        new, true = rw.get("target_new", {}), rw.get("target_true", {})
        if (isinstance(new, dict) and isinstance(true, dict) and isinstance(new.get("str"), str)
                and isinstance(true.get("str"), str) and new["str"].strip()
                and new["str"].strip() == true["str"].strip()):
            problems.append("requested_rewrite.target_new.str: must differ from target_true.str")
    _str_list(rec, "paraphrase_prompts", problems)
    _str_list(rec, "neighborhood_prompts", problems)
    _str_list(rec, "attribute_prompts", problems, min_len=0)
    _str_list(rec, "generation_prompts", problems, min_len=0)
    return problems


def zsre_problems(rec: Any) -> list[str]:
    """Problems of one ``zsre_mend_eval.json`` record."""
    if not isinstance(rec, dict):
        return [f"record: must be an object, got {type(rec).__name__}"]
    problems: list[str] = []
    for key in ("subject", "src", "rephrase", "loc", "loc_ans"):
        _str(rec, key, problems)
    _str_list(rec, "answers", problems)
    if not problems and rec["subject"] not in rec["src"]:
        problems.append(f"src: must contain the subject {rec['subject']!r}")
    return problems


def attribute_snippets_problems(rec: Any) -> list[str]:
    if not isinstance(rec, dict):
        return [f"record: must be an object, got {type(rec).__name__}"]
    problems: list[str] = []
    _str(rec, "relation_id", problems)
    _str(rec, "target_id", problems)
    samples = rec.get("samples")
    if not isinstance(samples, list):
        problems.append("samples: must be a list")
    else:
        for i, s in enumerate(samples):
            if not isinstance(s, dict) or not isinstance(s.get("text"), str):
                problems.append(f"samples[{i}].text: must be a string")
    return problems


def knowledge_item_problems(rec: Any) -> list[str]:
    if not isinstance(rec, dict):
        return ["record: must be an object"]
    problems: list[str] = []
    _str(rec, "question", problems)
    choices = rec.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or len(set(choices)) != len(choices):
        problems.append("choices: must be a list of at least 2 distinct strings")
    elif not isinstance(rec.get("answer"), int) or not 0 <= rec["answer"] < len(choices):
        problems.append("answer: must be an index into choices")
    return problems


def acceptability_item_problems(rec: Any) -> list[str]:
    if not isinstance(rec, dict):
        return ["record: must be an object"]
    problems: list[str] = []
    _str(rec, "sentence_good", problems)
    _str(rec, "sentence_bad", problems)
    if not problems and rec["sentence_good"] == rec["sentence_bad"]:
        problems.append("sentence_bad: must differ from sentence_good")
    return problems
