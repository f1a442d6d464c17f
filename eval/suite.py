"""The one evaluation entry point: rewrite metrics, generation metrics and probes of base + deltas.

:func:`evaluate_edited` is what the sweep's evaluation tasks (:func:`cluster.workers.evaluate_checkpoint`)
and the command line (``python -m jobs.evaluate``) call: the probability metrics of every record
(efficacy, generalization, specificity and their magnitudes; zsRE token accuracies), fluency and
consistency of the first ``generation_records`` CounterFact records (generation is the slow part;
their probability metrics are not computed a second time), then the lm-eval probes, all on the base
weights plus ``deltas``. Non-finite deltas are refused (they would score as a model that predicts
nothing); the base weights are restored afterwards.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from alphaedit.editor import check_finite
from eval.datasets import CounterFactRecord, Snippets, ZsreRecord
from eval.drift import drift_metrics, hidden_states, pca_basis, pca_project
from eval.probes import ProbeRow, resolve_tasks, run_probes
from eval.rewrite import (
    ZsreAnswerTokens,
    counterfact_generation_scores,
    counterfact_metrics,
    mean_over_records,
    zsre_metrics,
)
from eval.rows import MetricRow
from storage import names


@dataclass(frozen=True)
class EvalPlan:
    """What to evaluate: the records (of one dataset), how many get generation metrics, which probes."""

    dataset: str  # names.DATASET_COUNTERFACT | names.DATASET_ZSRE
    records: Sequence[CounterFactRecord] | Sequence[ZsreRecord]
    generation_records: int = 0  # CounterFact: fluency (and consistency) on the first N records
    snippets: Snippets | None = None
    vectorizer: Any | None = None
    probe_tasks: Sequence[str | dict[str, Any]] = ()
    probe_limit: int | float | None = None
    probe_batch_size: int = 64
    batch_size: int = 64  # rows per scoring forward
    generation_batch_size: int = 32
    seed: int = 0  # generation seed
    zsre_answer_tokens: ZsreAnswerTokens = "clean"  # eval.rewrite.zsre_answer_prefix
    drift_texts: Sequence[str] = ()  # preserved documents whose hidden states are compared (eval.drift)
    drift_layer: int | None = None  # block whose output is compared (the last edited layer)


@dataclass(frozen=True)
class DriftPoint:
    """One preserved document's hidden state as a 2-D PCA point (the unedited states' basis, eval.drift)."""

    edited: bool  # False: the unedited model's state (stored at edits_done 0); True: base + deltas
    doc: int  # index into the plan's drift_texts
    x: float
    y: float


@dataclass
class Evaluation:
    """Rows of one evaluation and where its time went (``seconds``: metrics, probes); ``drift_points``:
    the unedited and the edited states of the drift documents on one PCA basis (empty without drift)."""

    rows: list[MetricRow]
    probes: list[ProbeRow]
    seconds: dict[str, float] = field(default_factory=dict)
    drift_points: list[DriftPoint] = field(default_factory=list)


def drift_point_list(before: torch.Tensor, after: torch.Tensor) -> list[DriftPoint]:
    """The unedited (``before``) and edited (``after``) states, (n, d) each, as PCA points on the basis
    fitted on ``before`` alone, so points of every checkpoint are comparable."""
    basis = pca_basis(before)
    out = []
    for edited, states in ((False, before), (True, after)):
        xy = pca_project(states, basis)  # (n, 2)
        out += [DriftPoint(edited, i, float(x), float(y)) for i, (x, y) in enumerate(xy.tolist())]
    return out


def generation_rows(model: nn.Module, tokenizer, records: Sequence[CounterFactRecord], plan: EvalPlan) -> list[MetricRow]:
    """Fluency (and consistency when the plan has snippets and a vectorizer) of ``records``."""
    gen = counterfact_generation_scores(model, tokenizer, records, plan.snippets, plan.vectorizer, seed=plan.seed,
                                        batch_size=plan.generation_batch_size)
    per_metric = {names.METRIC_FLUENCY: gen.fluency}
    if plan.snippets is not None and plan.vectorizer is not None:
        per_metric[names.METRIC_CONSISTENCY] = gen.consistency
    rows = []
    for metric, values in per_metric.items():
        value, n = mean_over_records(values)
        rows.append(MetricRow(plan.dataset, metric, value, n))
    return rows


def rewrite_rows(model: nn.Module, tokenizer, plan: EvalPlan) -> list[MetricRow]:
    """The rewrite metrics of ``plan`` on ``model`` as it is (no deltas applied here); none without records
    (a plan of probes or drift only)."""
    if not plan.records:
        return []
    if plan.dataset == names.DATASET_ZSRE:
        return zsre_metrics(model, tokenizer, list(plan.records), batch_size=plan.batch_size,
                            answer_tokens=plan.zsre_answer_tokens)
    records = list(plan.records)
    rows = counterfact_metrics(model, tokenizer, records, generation=False, batch_size=plan.batch_size,
                               dataset=plan.dataset)
    if plan.generation_records > 0:
        rows += generation_rows(model, tokenizer, records[: plan.generation_records], plan)
    return rows


def evaluation_stages(plan: EvalPlan) -> list[str]:
    """The names of the stages :func:`evaluate_edited` runs for ``plan``, in order."""
    gen = plan.dataset == names.DATASET_COUNTERFACT and plan.generation_records > 0
    stages = ["drift (unedited)"] if plan.drift_texts else []
    if plan.records:
        stages.append(f"rewrite metrics ({len(plan.records)} records{', generation' if gen else ''})")
    if plan.drift_texts:
        stages.append("drift (edited)")
    if plan.probe_tasks:
        stages.append("probes")
    return stages


def evaluate_edited(model: nn.Module, tokenizer, plan: EvalPlan,
                    deltas: Mapping[str, torch.Tensor] | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> Evaluation:
    """Rewrite metrics and probes of ``model`` + ``deltas`` ({param name: W_edited - W_base}).

    Raises :class:`alphaedit.editor.NonFiniteError` naming the weights when a delta holds NaN/Inf.
    ``model`` holds its base weights again afterwards (also on an error). ``progress(done, total,
    stage)``: called as each stage of :func:`evaluation_stages` begins, and with ``done == total`` at the end.
    """
    from eval.edited import edited_weights

    stages = evaluation_stages(plan)
    step = iter(range(len(stages) + 1))

    def begin(stage: str) -> None:
        if progress is not None:
            progress(next(step), len(stages), stage)

    deltas = dict(deltas or {})
    check_finite({f"delta of {name}": d for name, d in deltas.items()}, "the deltas to evaluate")
    t0 = time.perf_counter()
    drift = bool(plan.drift_texts)
    if drift and plan.drift_layer is None:
        raise ValueError("evaluate_edited: drift_texts need a drift_layer (the last edited layer)")
    if drift:
        begin(stages[0])
    before = hidden_states(model, tokenizer, list(plan.drift_texts), plan.drift_layer) if drift else None
    points: list[DriftPoint] = []
    with edited_weights(model, deltas):
        if plan.records:
            begin(stages[1 if drift else 0])
        rows = rewrite_rows(model, tokenizer, plan)
        if before is not None:
            begin("drift (edited)")
            after = hidden_states(model, tokenizer, list(plan.drift_texts), plan.drift_layer)
            rows += [MetricRow(names.DATASET_PRESERVED, metric, value, len(plan.drift_texts))
                     for metric, value in drift_metrics(before, after).items()]
            points = drift_point_list(before, after)
        t_metrics = time.perf_counter() - t0
        if plan.probe_tasks:
            begin("probes")
        probes = run_probes(model, tokenizer, resolve_tasks(list(plan.probe_tasks)), limit=plan.probe_limit,
                            batch_size=plan.probe_batch_size) if plan.probe_tasks else []
    begin("done")
    return Evaluation(rows, probes, {"metrics": t_metrics, "probes": time.perf_counter() - t0 - t_metrics}, points)


@functools.lru_cache(maxsize=1)
def evaluation_code_version() -> str:
    """sha256 of what the evaluation's numbers depend on besides its inputs: the sources of the
    ``alphaedit`` package (model loading, decoding), every file of the ``eval`` package (scoring,
    generation, drift, probes, and the embedded worlds' data: probe tasks, corpora) and the versions
    of torch, transformers and lm-eval. Part of the key of a stored evaluation
    (:class:`storage.artifacts.UneditedEvalKey`), so a change to any of them recomputes it."""
    import hashlib
    from importlib import metadata
    from pathlib import Path

    import alphaedit

    h = hashlib.sha256()
    for package, pattern in ((Path(alphaedit.__file__).parent, "*.py"), (Path(__file__).parent, "*")):
        for path in sorted(package.rglob(pattern)):
            rel = path.relative_to(package)
            if not path.is_file() or "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
                continue
            h.update(f"{package.name}/{rel.as_posix()}\0".encode())
            h.update(path.read_bytes())
    for dist in ("torch", "transformers", "lm_eval"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "absent"
        h.update(f"{dist}=={version}\0".encode())
    return h.hexdigest()


def drift_point_rows(run_id: str, edits_done: int, points: Sequence[DriftPoint]) -> list[dict[str, Any]]:
    """``drift_points`` rows of one evaluation at ``edits_done``: the edited states under ``edits_done``,
    the unedited ones under 0 (the same values at every checkpoint, so rewriting them is idempotent)."""
    return [{"run_id": run_id, "edits_done": int(edits_done) if p.edited else names.UNEDITED_EDITS_DONE,
             "doc": p.doc, "x": p.x, "y": p.y}
            for p in points if not (p.edited and edits_done == names.UNEDITED_EDITS_DONE)]
