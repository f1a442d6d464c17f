"""Prompt construction shared by targets and keys: templated prompts and subject-last-token indices."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from alphaedit.requests import EditRequest, fill_subject
from alphaedit.tokens import encode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubjectPrompt:
    ids: list[int]  # token ids of the filled prompt
    lookup: int  # index of the subject's last token in ids


def subject_prompts(tokenizer, templated: Sequence[str], subjects: Sequence[str],
                    fact_token: str = "subject_last") -> list[SubjectPrompt]:
    """Tokenize ``templated[i]`` (one "{}") filled with ``subjects[i]``; find the lookup token.

    ``fact_token="subject_last"`` (reference default): the subject's last token, at index
    len(tokens(prefix + subject)) - 1 with prefix = the text before "{}"; special tokens such as
    Llama's BOS count, as in the reference. ``fact_token="last"``: the prompt's last token.
    """
    if fact_token not in ("subject_last", "last"):
        raise ValueError(f"fact_token must be 'subject_last' or 'last', got {fact_token!r}")
    if len(templated) != len(subjects):
        raise ValueError("subject_prompts: templated prompts and subjects differ in length")
    full = [fill_subject(t, s) for t, s in zip(templated, subjects, strict=True)]
    heads = [t[: t.index("{}")] + s for t, s in zip(templated, subjects, strict=True)]
    full_ids = encode(tokenizer, full)
    head_ids = encode(tokenizer, heads)
    out = []
    for text, ids, head in zip(full, full_ids, head_ids, strict=True):
        lookup = len(head) - 1
        if ids[: len(head)] != head:
            logger.debug("subject tokenization differs inside the full prompt %r; using index %d", text, lookup)
        if fact_token == "last":
            lookup = len(ids) - 1
        out.append(SubjectPrompt(ids, min(lookup, len(ids) - 1)))
    return out


def request_prompts(requests: Sequence[EditRequest], templates: Sequence[str]) -> list[str]:
    """Every template filled with every request prompt, request-major: [r0t0, r0t1, ..., r1t0, ...]."""
    return [t.replace("{}", r.prompt, 1) for r in requests for t in templates]
