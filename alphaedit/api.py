"""One call from a model and a few facts to the edited model and its rewrite metrics.

    import alphaedit
    result = alphaedit.edit(model, tokenizer,
                            [{"prompt": "The capital of France is", "subject": "France", "target_new": "Rome"}],
                            corpus=texts)                      # or stats=<precomputed key statistics>
    result.metrics        # {"efficacy": 100.0, ...} x100, on the edited requests; result.metrics_before too
    result.model.save_pretrained("edited")                 # the same HF model, edited in place
    result.restore()      # back to the exact base weights; result.reapply() edits it again

:func:`edit` is a front over the sweep's code path, not a second implementation: the requests
become :class:`~alphaedit.requests.EditRequest` objects, the key statistics come from
:func:`~alphaedit.editor.preservation_stats`, the editing is :class:`~alphaedit.editor.Editor`
(batch after batch, as the sweep's editor actor runs it), and the metrics are the CounterFact
probability test of :func:`~alphaedit.scoring.counterfact_probability_scores` (what
``eval.rewrite`` reports as efficacy, generalization and specificity), x100 like the paper.

A request is one of

* an :class:`~alphaedit.requests.EditRequest`;
* a dict ``{"prompt", "subject", "target_new"}`` with optional ``target_true``, ``case_id``,
  ``relation_id``, ``paraphrase_prompts`` and ``neighborhood_prompts`` (subject filled in; they give
  generalization and specificity). ``prompt`` holds the subject as text ("The capital of France
  is") or as the placeholder ``{}`` ("The capital of {} is");
* a CounterFact record (a dict with ``requested_rewrite``), its paraphrase and neighborhood prompts
  included;
* a string ``"<prompt with the [subject] in square brackets> -> <target_new>"``, e.g.
  ``"The capital of [France] is -> Rome"``.

A missing ``target_true`` is read from the model: its greedy continuation of the prompt, cut at
the first line break or punctuation mark, a leading article dropped, kept to as many words as
``target_new`` has (:func:`answer_from_continuation`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from alphaedit.decoding import argmax_token, generate_ids
from alphaedit.editor import BatchReport, Editor, preservation_stats
from alphaedit.hparams import PRESETS, EditHparams, hparams_for
from alphaedit.methods import method_spec
from alphaedit.requests import EditRequest, InvalidRequestError
from alphaedit.scoring import CounterFactScores, counterfact_probability_scores, mean_over_records
from alphaedit.stats import SecondMoment
from alphaedit.tokens import encode, pad_id

logger = logging.getLogger(__name__)

RequestLike = EditRequest | Mapping[str, Any] | str

#: Keys a flat dict request may have.
REQUEST_KEYS: tuple[str, ...] = ("prompt", "subject", "target_new", "target_true", "case_id", "relation_id",
                                 "paraphrase_prompts", "neighborhood_prompts")

#: Presets recognised from the model's shape: (model_type, layers, hidden size) -> preset name.
PRESET_BY_SHAPE: dict[tuple[str, int, int], str] = {
    ("gpt2", 48, 1600): "gpt2-xl",
    ("gptj", 28, 4096): "gpt-j",
    ("llama", 32, 4096): "llama3-8b",
    ("llama", 30, 576): "smollm2",
    ("gpt2", 4, 128): "toy",
}

_STRING_FORM = "'<prompt with the [subject] in square brackets> -> <target_new>', e.g. 'The capital of [France] is -> Rome'"
_ANSWER_END = re.compile(r"[\n.,;:!?]")
_ARTICLES = frozenset({"the", "a", "an"})


@dataclass(frozen=True)
class EditCase:
    """One edit with its evaluation prompts (a :class:`~alphaedit.scoring.ProbabilityCase`)."""

    request: EditRequest
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()

    @property
    def rewrite_prompts(self) -> tuple[str, ...]:
        return (self.request.rewrite_prompt,)


@dataclass(frozen=True)
class _Draft:
    """A parsed request before ``target_true`` is known (``None``: read it from the model)."""

    case_id: int | str
    prompt: str  # with the "{}" placeholder
    subject: str
    target_new: str
    target_true: str | None
    relation_id: str = ""
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()


@dataclass
class EditResult:
    """What :func:`edit` did. ``model`` is the caller's model, edited in place (``save_pretrained`` works).

    ``metrics`` / ``metrics_before``: efficacy (and generalization / specificity where the requests
    carry paraphrase / neighborhood prompts) with their ``*_magnitude`` variants, x100, over the
    edited requests after / before editing; empty when ``evaluate=False``. ``scores``: the per-request
    values behind ``metrics`` (unscaled). ``stats``: the key statistics used (pass them as ``stats=``
    to a later call on the same model to skip recomputing them).
    """

    model: nn.Module = field(repr=False)
    editor: Editor = field(repr=False)
    cases: list[EditCase] = field(repr=False)
    reports: list[BatchReport] = field(repr=False)
    metrics: dict[str, float]
    metrics_before: dict[str, float]
    scores: CounterFactScores | None = field(repr=False)
    stats: Mapping[int, SecondMoment] = field(repr=False)
    hparams: EditHparams = field(repr=False)
    method: str
    filled_target_true: list[int | str] = field(default_factory=list)  # case ids whose target_true the model gave

    @property
    def requests(self) -> list[EditRequest]:
        return [c.request for c in self.cases]

    @property
    def deltas(self) -> dict[str, torch.Tensor]:
        """``W_edited - W_base`` per edited weight (parameter name -> float32 tensor of the weight's shape);
        :func:`alphaedit.save_deltas` writes them in the checkpoint format."""
        return dict(self.editor.state.deltas)

    def restore(self) -> None:
        """Put the base weights back, bit-exactly (the deltas are kept)."""
        self.editor.restore()

    def reapply(self) -> None:
        """Set the weights to base + deltas again (after :meth:`restore`)."""
        self.editor.reapply()


# --- requests ---------------------------------------------------------------------------------------

def _bad(case_id: Any, name: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"edit request case_id={case_id!r}: field {name!r} {why}")


def _text(value: Any, case_id: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(case_id, name, f"must be a non-empty string, got {value!r}")
    return value


def _prompts(value: Any, case_id: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(p, str) and p.strip() for p in value):
        raise _bad(case_id, name, f"must be a list of non-empty strings (subject filled in), got {value!r}")
    return tuple(value)


def _template(prompt: str, subject: str, case_id: Any) -> str:
    """``prompt`` with the subject replaced by ``{}`` (its first occurrence); kept when it has ``{}``."""
    if "{}" in prompt:
        return prompt
    if subject not in prompt:
        raise _bad(case_id, "subject", f"{subject!r} does not occur in the prompt {prompt!r}; write the subject "
                   "into the prompt or put '{}' where it goes")
    return prompt.replace(subject, "{}", 1)


def _draft_from_string(text: str, index: int) -> _Draft:
    left, arrow, target = text.rpartition("->")
    match = re.fullmatch(r"([^\[\]]*)\[([^\[\]]+)\]([^\[\]]*)", left.strip()) if arrow else None
    if match is None or not target.strip():
        raise InvalidRequestError(f"edit request case_id={index!r}: the string {text!r} does not read {_STRING_FORM}")
    before, subject, after = match.groups()
    return _Draft(case_id=index, prompt=(before + "{}" + after).strip(), subject=subject.strip(),
                  target_new=target.strip(), target_true=None)


def _draft_from_dict(item: Mapping[str, Any], index: int) -> _Draft:
    case_id = item.get("case_id", index)
    unknown = sorted(set(item) - set(REQUEST_KEYS))
    if unknown:
        raise _bad(case_id, unknown[0], f"is not a request field (fields: {', '.join(REQUEST_KEYS)}; a CounterFact "
                   "record has 'requested_rewrite')")
    for name in ("prompt", "subject", "target_new"):
        if name not in item:
            raise _bad(case_id, name, "is missing; a request needs prompt, subject and target_new, e.g. "
                       "{'prompt': 'The capital of France is', 'subject': 'France', 'target_new': 'Rome'}")
    subject = _text(item["subject"], case_id, "subject")
    true = item.get("target_true")
    return _Draft(
        case_id=case_id,
        prompt=_template(_text(item["prompt"], case_id, "prompt"), subject, case_id),
        subject=subject,
        target_new=_text(item["target_new"], case_id, "target_new"),
        target_true=None if true is None else _text(true, case_id, "target_true"),
        relation_id=str(item.get("relation_id", "")),
        paraphrase_prompts=_prompts(item.get("paraphrase_prompts"), case_id, "paraphrase_prompts"),
        neighborhood_prompts=_prompts(item.get("neighborhood_prompts"), case_id, "neighborhood_prompts"),
    )


def _counterfact_case(record: Mapping[str, Any]) -> EditCase:
    case_id = record.get("case_id", "?")
    return EditCase(
        request=EditRequest.from_counterfact(record),
        paraphrase_prompts=_prompts(record.get("paraphrase_prompts"), case_id, "paraphrase_prompts"),
        neighborhood_prompts=_prompts(record.get("neighborhood_prompts"), case_id, "neighborhood_prompts"),
    )


def parse_request(item: RequestLike, index: int) -> EditCase | _Draft:
    """An :class:`EditCase` when the request is complete, else a draft whose ``target_true`` the model gives."""
    if isinstance(item, EditRequest):
        return EditCase(request=item)
    if isinstance(item, str):
        return _draft_from_string(item, index)
    if isinstance(item, Mapping):
        if "requested_rewrite" in item:
            return _counterfact_case(item)
        draft = _draft_from_dict(item, index)
        return draft if draft.target_true is None else _case(draft, draft.target_true)
    raise InvalidRequestError(f"edit request {index}: expected an EditRequest, a dict or a string "
                              f"({_STRING_FORM}), got {type(item).__name__}")


def _case(draft: _Draft, target_true: str) -> EditCase:
    request = EditRequest(case_id=draft.case_id, prompt=draft.prompt, subject=draft.subject,
                          target_new=draft.target_new, target_true=target_true, relation_id=draft.relation_id)
    return EditCase(request=request, paraphrase_prompts=draft.paraphrase_prompts,
                    neighborhood_prompts=draft.neighborhood_prompts)


def answer_from_continuation(text: str, target_new: str) -> str:
    """The answer in a greedy continuation: up to the first line break or punctuation, as many words as
    ``target_new`` has, after a leading article (``the``, ``a``, ``an``) unless ``target_new`` starts with one."""
    words = _ANSWER_END.split(text, maxsplit=1)[0].split()
    wanted = target_new.split()
    if len(words) > 1 and words[0].lower() in _ARTICLES and (not wanted or wanted[0].lower() not in _ARTICLES):
        words = words[1:]
    return " ".join(words[: max(1, len(wanted))])


def greedy_continuations(model: nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 8,
                         batch_size: int = 32) -> list[str]:
    """The greedy (argmax) continuation of each prompt, ``max_new_tokens`` tokens, decoded without the prompt."""
    prompt_ids = encode(tokenizer, prompts)
    generated = generate_ids(model, prompt_ids, [max_new_tokens] * len(prompt_ids), argmax_token,
                             pad=pad_id(tokenizer), batch_size=batch_size)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in generated]


def fill_target_true(model: nn.Module, tokenizer, drafts: Sequence[_Draft]) -> list[EditCase]:
    """Complete drafts with the model's own answer as ``target_true``; errors name the request and field."""
    if not drafts:
        return []
    texts = greedy_continuations(model, tokenizer, [d.prompt.replace("{}", d.subject, 1) for d in drafts])
    cases, errors = [], []
    for draft, text in zip(drafts, texts, strict=True):
        answer = answer_from_continuation(text, draft.target_new)
        if not answer:
            errors.append(str(_bad(draft.case_id, "target_true", f"is missing and the model's greedy continuation "
                                   f"{text!r} holds no answer; give target_true")))
        elif answer == draft.target_new.strip():
            errors.append(str(_bad(draft.case_id, "target_true", f"is missing and the model already answers "
                                   f"target_new ({answer!r}); nothing to edit")))
        else:
            logger.info("request %r: target_true %r read from the model", draft.case_id, answer)
            cases.append(_case(draft, answer))
    if errors:
        raise InvalidRequestError(f"{len(errors)} invalid edit request(s):\n" + "\n".join(errors))
    return cases


def edit_cases(model: nn.Module, tokenizer, requests: Sequence[RequestLike]) -> tuple[list[EditCase], list[int | str]]:
    """Every request as an :class:`EditCase` (in order) and the case ids whose ``target_true`` the model gave.

    All malformed requests are reported together in one :class:`InvalidRequestError`.
    """
    if isinstance(requests, (str, Mapping, EditRequest)):
        requests = [requests]
    parsed: list[EditCase | _Draft] = []
    errors: list[str] = []
    for index, item in enumerate(requests):
        try:
            parsed.append(parse_request(item, index))
        except InvalidRequestError as exc:
            errors.append(str(exc))
    if errors:
        raise InvalidRequestError(f"{len(errors)} invalid edit request(s):\n" + "\n".join(errors))
    if not parsed:
        raise InvalidRequestError("alphaedit.edit: no requests given")
    drafts = [p for p in parsed if isinstance(p, _Draft)]
    filled = iter(fill_target_true(model, tokenizer, drafts))
    cases = [next(filled) if isinstance(p, _Draft) else p for p in parsed]
    ids = [c.request.case_id for c in cases]
    if len(set(map(str, ids))) != len(ids):
        raise InvalidRequestError(f"edit requests: field 'case_id' repeats ({ids}); give each request its own")
    return cases, [d.case_id for d in drafts]


# --- hyper-parameters and statistics -----------------------------------------------------------------

def preset_for_model(model: nn.Module) -> str:
    """The preset of a model of known shape (:data:`PRESET_BY_SHAPE`); a ValueError names the presets otherwise."""
    cfg = model.config
    shape = (cfg.model_type, int(cfg.num_hidden_layers), int(cfg.hidden_size))
    if shape not in PRESET_BY_SHAPE:
        raise ValueError(f"no hparams preset for a {shape[0]} model with {shape[1]} layers and hidden size {shape[2]}; "
                         f"pass hparams= (a preset name {sorted(PRESETS)} or an EditHparams with your layers)")
    return PRESET_BY_SHAPE[shape]


def resolve_hparams(model: nn.Module, hparams: EditHparams | str | None, method: str) -> EditHparams:
    """``hparams`` as given, a preset name + the method's defaults, or the preset of the model's shape."""
    if isinstance(hparams, EditHparams):
        hp = hparams
    else:
        name = hparams if hparams is not None else preset_for_model(model)
        hp = hparams_for(name, method)
        logger.info("hparams: preset %s for method %s", name, method)
    n_layers = int(model.config.num_hidden_layers)
    if max(hp.layers) >= n_layers:
        raise ValueError(f"hparams.layers {hp.layers} exceed the model's {n_layers} layers; "
                         "pass hparams=<EditHparams>.replace(layers=(...))")
    return hp


def key_statistics(model: nn.Module, tokenizer, hp: EditHparams, method: str, corpus: Iterable[str] | None,
                   stats: Mapping[int, SecondMoment] | None) -> Mapping[int, SecondMoment]:
    """The given ``stats``, or those of ``corpus`` (exactly one of the two)."""
    if corpus is not None and stats is not None:
        raise ValueError("alphaedit.edit: pass corpus= or stats=, not both")
    if stats is None:
        if corpus is None:
            raise ValueError(f"alphaedit.edit(method={method!r}) needs key statistics of text the model should keep "
                             "working on: pass corpus=<iterable of texts> (e.g. Wikipedia paragraphs) or "
                             "stats=alphaedit.preservation_stats(model, tokenizer, texts, hparams)")
        if isinstance(corpus, str):
            raise ValueError("alphaedit.edit: corpus= is an iterable of texts, got one string")
        stats = preservation_stats(model, tokenizer, corpus, hp)
        logger.info("key statistics: %s keys per layer", {layer: s.count for layer, s in stats.items()})
    missing = sorted(set(hp.layers) - set(stats))
    if missing:
        raise ValueError(f"alphaedit.edit: stats lack the edited layers {missing} (they cover {sorted(stats)})")
    return stats


# --- metrics -----------------------------------------------------------------------------------------

def rewrite_metrics(model: nn.Module, tokenizer, cases: Sequence[EditCase]) -> tuple[dict[str, float], CounterFactScores]:
    """CounterFact probability test over ``cases``: metric -> mean over requests x100 (metrics without prompts left out)."""
    scores = counterfact_probability_scores(model, tokenizer, cases)
    metrics = {}
    for f in dataclasses.fields(scores):
        value, n = mean_over_records(getattr(scores, f.name))
        if n and not math.isnan(value):
            metrics[f.name] = value
    return metrics, scores


# --- the one call -----------------------------------------------------------------------------------

def edit(
    model: nn.Module,
    tokenizer,
    requests: RequestLike | Sequence[RequestLike],
    method: str = "alphaedit",
    *,
    corpus: Iterable[str] | None = None,
    stats: Mapping[int, SecondMoment] | None = None,
    hparams: EditHparams | str | None = None,
    batch_size: int | None = None,
    evaluate: bool = True,
) -> EditResult:
    """Edit ``model`` in place so that it completes each request's prompt with its ``target_new``.

    ``method``: any of :data:`alphaedit.METHODS`. Key statistics from ``corpus`` (texts the model should
    keep working on) or ``stats`` (e.g. ``result.stats`` of an earlier call). ``hparams``: an
    :class:`EditHparams`, a preset name (plus the method's published defaults, :func:`hparams_for`), or
    None for the preset of the model's shape (:data:`PRESET_BY_SHAPE`). ``batch_size``: edits per
    closed-form solve, applied one batch after another (default: all in one batch). ``evaluate``:
    score the requests before and after (:attr:`EditResult.metrics`).
    """
    method_spec(method)  # validates the name before any work
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"alphaedit.edit: batch_size must be >= 1, got {batch_size}")
    hp = resolve_hparams(model, hparams, method)
    cases, filled = edit_cases(model, tokenizer, requests)
    used_stats = key_statistics(model, tokenizer, hp, method, corpus, stats)
    before, _ = rewrite_metrics(model, tokenizer, cases) if evaluate else ({}, None)
    editor = Editor(model, tokenizer, hp, method, stats=used_stats)
    step = batch_size or len(cases)
    reports = [editor.edit([c.request for c in cases[i : i + step]]) for i in range(0, len(cases), step)]
    after, scores = rewrite_metrics(model, tokenizer, cases) if evaluate else ({}, None)
    if evaluate:
        logger.info("alphaedit.edit: %d edits (%s); efficacy %.1f -> %.1f", len(cases), method,
                    before.get("efficacy", math.nan), after.get("efficacy", math.nan))
    return EditResult(model=model, editor=editor, cases=cases, reports=reports, metrics=after, metrics_before=before,
                      scores=scores, stats=used_stats, hparams=hp, method=method, filled_target_true=filled)
