"""General-capability probes through lm-eval: the one adapter that imports ``lm_eval``.

``run_probes`` evaluates an in-memory ``transformers`` model (no save/reload) on named lm-eval
tasks or task-config dicts (e.g. the toy world's local tasks from
:func:`eval.toyworld.paths.task_configs`) and returns flat metric rows ready for storage.

lm-eval facts this relies on (see ``shared/reference/ray-lmeval-duckdb.md`` section 2):
``bootstrap_iters=0`` (the default bootstrap takes minutes and its stderrs come back as the
string ``'N/A'``), ``TaskManager(include_defaults=False)`` when only local tasks are used
(indexing the ~15k built-in tasks costs 5-7 s), and ``HFLM`` calls ``model.eval()`` on the
object it is given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeRow:
    """One probe number: ``task``'s ``metric`` (e.g. ``acc``) with its lm-eval filter."""

    task: str
    metric: str
    value: float
    n_samples: int
    filter: str = "none"


def run_probes(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str | dict[str, Any]],
    *,
    limit: int | float | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    include_path: str | None = None,
    seed: int = 1234,
) -> list[ProbeRow]:
    """Evaluate ``model`` on ``tasks`` with lm-eval and return one row per (task, metric).

    Args:
        model: a ``transformers.PreTrainedModel`` already on its device.
        tokenizer: its ``PreTrainedTokenizer[Fast]``.
        tasks: lm-eval task names (``"sst2"``) and/or task-config dicts.
        limit: at most this many documents per task (int) or a fraction (float < 1).
        include_path: folder of extra task YAMLs. lm-eval's built-in tasks are indexed only
            when some task is named by string.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # lm-eval's built-in tasks are indexed only when a task is named by string (5-7 s).
    named = any(isinstance(t, str) for t in tasks)
    task_manager = TaskManager(include_path=include_path, include_defaults=named)
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_length=max_length or _model_max_length(model),
    )
    was_training = model.training
    try:
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=task_manager,
            limit=limit,
            num_fewshot=0,
            bootstrap_iters=0,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    finally:
        model.train(was_training)
    return rows_from_results(res)


def rows_from_results(res: dict[str, Any]) -> list[ProbeRow]:
    """Flatten ``simple_evaluate``'s ``results`` into rows; stderr entries are dropped."""
    rows = []
    n_samples = res.get("n-samples", {})
    for task, metrics in sorted(res["results"].items()):
        n = int(n_samples.get(task, {}).get("effective", 0)) if isinstance(n_samples, dict) else 0
        for key, value in sorted(metrics.items()):
            if "," not in key or "_stderr" in key or key == "alias":
                continue
            metric, filt = key.split(",", 1)
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isnan(number):
                logger.warning("lm-eval returned NaN for %s %s", task, key)
            rows.append(ProbeRow(task=task, metric=metric, value=number, n_samples=n, filter=filt))
    return rows


def _model_max_length(model: Any) -> int:
    cfg = model.config
    for attr in ("n_positions", "max_position_embeddings"):
        if getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    return 2048
