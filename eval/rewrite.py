"""Rewrite metrics of the paper's Table 1, computed in batches, scaled x100 like the reference.

CounterFact (``experiments/py/eval_utils_counterfact.py`` + ``summarize.py`` of the reference):

* probability test: for every prompt, the mean-over-tokens NLL of ``" " + target_new`` and of
  ``" " + target_true`` (teacher-forced, :func:`alphaedit.scoring.score_targets`);
* Efficacy / Generalization = mean over records of the record's mean of
  ``[NLL_true > NLL_new]`` over its rewrite / paraphrase prompts;
* Specificity = the same with ``[NLL_true < NLL_new]`` over the neighborhood prompts (the
  direction the authors confirmed in issue #8; the paper's Eq. 21 prints ">");
* magnitudes: ``exp(-NLL_new) - exp(-NLL_true)`` (sign flipped for the neighborhood);
* Fluency: mean n-gram entropy (``H_2 * 2/3`` and ``H_3 * 4/3`` averaged) of one seeded top-5
  sample per generation prompt; Consistency: TF-IDF cosine of the joined samples to the joined
  attribute snippets of ``(relation_id, target_new.id)``.

zsRE (``eval_utils_zsre.py``): token-level teacher-forced top-1 accuracy of ``" " + answers[0]``
after ``src`` (Efficacy) and ``rephrase`` (Generalization), and of ``" " + loc_ans`` after
``loc + "?"`` (Specificity), per record mean over target tokens, then mean over records.
The reference re-tokenizes ``prompt + decode(target[:i])`` per token; here the prompt and the
target are tokenized separately and scored in one teacher-forced pass (identical whenever the
concatenation tokenizes as the concatenation of tokenizations, as for GPT-2 BPE with a
space-prefixed answer).

Every returned value is x100 (percent for rates and magnitudes, entropy x100 for Fluency, cosine
x100 for Consistency), so they sit next to the paper's numbers.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from alphaedit.scoring import (  # the probability test lives beside the scorer (alphaedit.edit uses it too)
    SCALE,  # noqa: F401  (re-exported: eval.rewrite has always offered these)
    CounterFactScores,  # noqa: F401
    counterfact_probability_scores,
    mean_over_records,
    per_record_mean,  # noqa: F401
    probability_margin,  # noqa: F401
    probability_success,  # noqa: F401
    score_targets,
)
from eval.datasets import CounterFactRecord, Snippets, ZsreRecord
from eval.generation import sample_top_k
from eval.rows import MetricRow
from storage import names

logger = logging.getLogger(__name__)

# --- pure pieces ---------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def word_tokens(text: str) -> list[str]:
    """Word tokens as ``nltk.word_tokenize`` gives them, without its downloaded ``punkt`` model.

    ``word_tokenize`` = punkt sentence split + Treebank word tokenizer per sentence. punkt's data is
    not shipped with nltk (and this project never downloads at run time), so sentences are split
    on line breaks and on whitespace after ``.``/``!``/``?`` and each piece goes through nltk's
    ``NLTKWordTokenizer`` (the tokenizer ``word_tokenize`` uses). Abbreviations such as "Dr." may
    split differently from punkt.
    """
    from nltk.tokenize import NLTKWordTokenizer

    tokenizer = NLTKWordTokenizer()
    out: list[str] = []
    for line in text.splitlines():
        for sentence in _SENTENCE_END.split(line):
            if sentence.strip():
                out.extend(tokenizer.tokenize(sentence))
    return out


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean over ``n`` of the Shannon entropy (bits) of the text's n-gram frequencies.

    With the defaults this is ``(2/3 H_2 + 4/3 H_3) / 2`` (reference ``compute_n_gram_entropy``);
    a text with no n-grams of some order contributes 0 for that order. Not scaled.
    """
    tokens = word_tokens(text)
    parts = []
    for n, w in zip(ns, weights, strict=True):
        grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        counts = np.array(list(grams.values()), dtype=np.float64)
        if counts.size == 0:
            parts.append(0.0)
            continue
        freqs = counts / counts.sum()
        parts.append(w * float(-(freqs * np.log2(freqs)).sum()))
    return float(np.mean(parts))


def tfidf_similarity(text_a: str, text_b: str, vectorizer: Any) -> float:
    """Cosine similarity of the two texts' TF-IDF vectors (0 when either vector is zero). Not scaled."""
    a, b = vectorizer.transform([text_a, text_b]).toarray()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm > 0 else 0.0


# --- CounterFact ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenerationScores:
    """Per-record fluency (entropy) and consistency (cosine), unscaled; NaN where not computable."""

    fluency: torch.Tensor
    consistency: torch.Tensor
    texts: tuple[tuple[str, ...], ...]


def counterfact_generation_scores(model: nn.Module, tokenizer, records: Sequence[CounterFactRecord],
                                  snippets: Snippets | None, vectorizer: Any | None, *, seed: int = 0,
                                  batch_size: int = 32, max_out_len: int = 100,
                                  top_k: int = 5) -> GenerationScores:
    """Fluency and consistency of one seeded sample per generation prompt of every record."""
    prompts = [p for rec in records for p in rec.generation_prompts]
    texts = sample_top_k(model, tokenizer, prompts, max_out_len=max_out_len, top_k=top_k, seed=seed,
                         batch_size=batch_size)
    per_record: list[tuple[str, ...]] = []
    pos = 0
    for rec in records:
        per_record.append(tuple(texts[pos : pos + len(rec.generation_prompts)]))
        pos += len(rec.generation_prompts)
    fluency = torch.tensor([float(np.mean([ngram_entropy(t) for t in ts])) if ts else math.nan
                            for ts in per_record], dtype=torch.float64)
    consistency = torch.full((len(records),), math.nan, dtype=torch.float64)
    missing = 0
    if snippets is not None and vectorizer is not None:
        for i, (rec, ts) in enumerate(zip(records, per_record, strict=True)):
            snips = snippets.get(rec.request.relation_id, {}).get(rec.request.target_new_id)
            if not ts or not snips:
                missing += bool(ts)
                continue
            consistency[i] = tfidf_similarity(" ".join(ts), " ".join(snips), vectorizer)
    if missing:
        logger.warning("consistency: %d record(s) have no attribute snippets for (relation_id, target_new.id); "
                       "they are left out of the consistency mean", missing)
    return GenerationScores(fluency=fluency, consistency=consistency, texts=tuple(per_record))


def counterfact_metrics(model: nn.Module, tokenizer, records: Sequence[CounterFactRecord], *,
                        snippets: Snippets | None = None, vectorizer: Any | None = None,
                        generation: bool = True, batch_size: int = 64, generation_batch_size: int = 32,
                        seed: int = 0, dataset: str = names.DATASET_COUNTERFACT) -> list[MetricRow]:
    """CounterFact rows (x100): efficacy, generalization, specificity, their magnitudes, and with
    ``generation`` fluency and consistency (consistency only when snippets and a vectorizer are given)."""
    if not records:
        raise ValueError("counterfact_metrics: no records to score")
    probs = counterfact_probability_scores(model, tokenizer, records, batch_size=batch_size)
    per_metric: dict[str, torch.Tensor] = {
        names.METRIC_EFFICACY: probs.efficacy,
        names.METRIC_GENERALIZATION: probs.generalization,
        names.METRIC_SPECIFICITY: probs.specificity,
        names.METRIC_EFFICACY_MAGNITUDE: probs.efficacy_magnitude,
        names.METRIC_GENERALIZATION_MAGNITUDE: probs.generalization_magnitude,
        names.METRIC_SPECIFICITY_MAGNITUDE: probs.specificity_magnitude,
    }
    if generation:
        gen = counterfact_generation_scores(model, tokenizer, records, snippets, vectorizer, seed=seed,
                                            batch_size=generation_batch_size)
        per_metric[names.METRIC_FLUENCY] = gen.fluency
        if snippets is not None and vectorizer is not None:
            per_metric[names.METRIC_CONSISTENCY] = gen.consistency
    rows = []
    for metric, values in per_metric.items():
        value, n = mean_over_records(values)
        rows.append(MetricRow(dataset, metric, value, n))
    return rows


# --- zsRE ----------------------------------------------------------------------------------------

def _leading_space(text: str) -> str:
    return text if text.startswith(" ") else " " + text


@dataclass(frozen=True)
class ZsreScores:
    """Per-record token accuracies (n_records,), unscaled."""

    efficacy: torch.Tensor
    generalization: torch.Tensor
    specificity: torch.Tensor


ZsreAnswerTokens = Literal["clean", "reference"]


def zsre_answer_prefix(tokenizer, answer_tokens: ZsreAnswerTokens) -> str:
    """The text put before every zsRE answer: ``""`` (clean), or, in ``"reference"`` mode, the BOS token's
    text when the tokenizer starts every encoding with it.

    The reference's ``eval_utils_zsre.py`` scores ``tok(" " + answer)["input_ids"]``, which for a
    tokenizer that adds BOS (Llama-3) starts with BOS: the model is asked to predict BOS after the
    prompt (it never does) and reads the answer after prompt + BOS, which caps its zsRE numbers
    (Llama-3 specificity most visibly). ``"reference"`` reproduces that; ``"clean"`` (the default)
    scores the answer's own tokens. Tokenizers without a BOS (GPT-2, GPT-J, SmolLM2) give the same
    numbers in both modes.
    """
    if answer_tokens not in ("clean", "reference"):
        raise ValueError(f"zsRE answer_tokens must be 'clean' or 'reference', got {answer_tokens!r}")
    if answer_tokens == "clean":
        return ""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer(" x")["input_ids"]
    return tokenizer.bos_token if bos is not None and ids and ids[0] == bos else ""


def zsre_token_accuracy_scores(model: nn.Module, tokenizer, records: Sequence[ZsreRecord], *,
                               batch_size: int = 64, answer_tokens: ZsreAnswerTokens = "clean") -> ZsreScores:
    """Token-level teacher-forced top-1 accuracy per record, for rewrite, paraphrase and neighborhood
    (``answer_tokens``: see :func:`zsre_answer_prefix`)."""
    prompts = ([r.src for r in records] + [r.rephrase for r in records]
               + [r.neighborhood_prompt for r in records])
    head = zsre_answer_prefix(tokenizer, answer_tokens)
    targets = [head + _leading_space(r.target) for r in records] * 2 + [head + _leading_space(r.loc_ans)
                                                                        for r in records]
    scores = score_targets(model, tokenizer, prompts, targets, batch_size=batch_size)
    acc = torch.tensor([float(c.float().mean()) for c in scores.token_correct], dtype=torch.float64)
    n = len(records)
    return ZsreScores(efficacy=acc[:n], generalization=acc[n : 2 * n], specificity=acc[2 * n :])


def zsre_metrics(model: nn.Module, tokenizer, records: Sequence[ZsreRecord], *, batch_size: int = 64,
                 dataset: str = names.DATASET_ZSRE, answer_tokens: ZsreAnswerTokens = "clean") -> list[MetricRow]:
    """zsRE rows (x100): efficacy, generalization, specificity as token-level top-1 accuracies."""
    if not records:
        raise ValueError("zsre_metrics: no records to score")
    s = zsre_token_accuracy_scores(model, tokenizer, records, batch_size=batch_size, answer_tokens=answer_tokens)
    rows = []
    for metric, values in ((names.METRIC_EFFICACY, s.efficacy), (names.METRIC_GENERALIZATION, s.generalization),
                           (names.METRIC_SPECIFICITY, s.specificity)):
        value, n = mean_over_records(values)
        rows.append(MetricRow(dataset, metric, value, n))
    return rows
