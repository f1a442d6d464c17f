"""General-capability probes through lm-eval: the one adapter that imports ``lm_eval``.

``run_probes`` evaluates an in-memory ``transformers`` model (no save/reload) on named lm-eval
tasks or task-config dicts (e.g. the toy world's local tasks from
:func:`eval.toyworld.paths.task_configs`) and returns flat metric rows ready for storage.

lm-eval facts this relies on (see ``docs/reference/ray-lmeval-duckdb.md`` section 2):
``bootstrap_iters=0`` (the default bootstrap takes minutes and its stderrs come back as the
string ``'N/A'``), ``TaskManager(include_defaults=False)`` when only local tasks are used
(indexing the ~15k built-in tasks costs 5-7 s), and ``HFLM`` calls ``model.eval()`` on the
object it is given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from alphaedit.models import context_length
from eval.errors import ExpectedError

logger = logging.getLogger(__name__)

#: The reference's general-capability tasks by their lm-eval names ("NLI" -> mnli or qnli).
#: They need their Hugging Face datasets (downloaded once into the HF cache).
GLUE_MMLU_TASKS: tuple[str, ...] = ("sst2", "mrpc", "cola", "rte", "mnli", "qnli", "mmlu")
#: The toy world's local tasks (resolved to task-config dicts by :func:`resolve_tasks`).
TOY_TASKS: tuple[str, ...] = ("toy_knowledge", "toy_acceptability")
#: The real world's local tasks (eval/realworld/artifacts/tasks), resolved the same way.
REAL_TASKS: tuple[str, ...] = ("real_knowledge", "real_grammar", "real_arithmetic")
#: Every local task name this project ships.
LOCAL_TASKS: tuple[str, ...] = TOY_TASKS + REAL_TASKS


class ProbeUnavailableError(ExpectedError, RuntimeError):
    """lm-eval could not load a task (unknown name, or its dataset is not cached offline)."""


@dataclass(frozen=True)
class ProbeRow:
    """One probe number: ``task``'s ``metric`` (e.g. ``acc``) with its lm-eval filter."""

    task: str
    metric: str
    value: float
    n_samples: int
    filter: str = "none"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_tasks(tasks: Sequence[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
    """Local task names (toy and real world) -> their config dicts (absolute data paths); other names
    and dicts unchanged."""
    configs: dict[str, dict[str, Any]] = {}
    toy = tuple(t for t in tasks if isinstance(t, str) and t in TOY_TASKS)
    real = tuple(t for t in tasks if isinstance(t, str) and t in REAL_TASKS)
    if toy:
        from eval.toyworld import paths as toy_paths

        configs.update({c["task"]: c for c in toy_paths.task_configs(toy_paths.ARTIFACTS_DIR, toy)})
    if real:
        from eval.realworld import paths as real_paths

        configs.update({c["task"]: c for c in real_paths.task_configs(real_paths.ARTIFACTS_DIR, real)})
    return [configs[t] if isinstance(t, str) and t in configs else t for t in tasks]


def run_probes_with_deltas(
    model: Any,
    tokenizer: Any,
    deltas: Mapping[str, Any],
    tasks: Sequence[str | dict[str, Any]],
    **kwargs: Any,
) -> list[ProbeRow]:
    """:func:`run_probes` on base + ``deltas`` ({param name: W_edited - W_base}), in memory.

    The edited weights are snapshotted, the deltas added, the probes run, and the snapshot copied
    back in a ``finally`` (bit-exact), so ``model`` holds its base weights again afterwards, also
    when lm-eval raises. Not thread-safe: nothing else may use ``model`` meanwhile.
    """
    from eval.edited import edited_weights

    with edited_weights(model, deltas):
        return run_probes(model, tokenizer, tasks, **kwargs)


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
        tasks: lm-eval task names (``"sst2"``, see ``GLUE_MMLU_TASKS``), the local task names
            (``LOCAL_TASKS``, resolved with :func:`resolve_tasks`) and/or task-config dicts.
        limit: at most this many documents per task (int) or a fraction (float < 1).
        include_path: folder of extra task YAMLs. lm-eval's built-in tasks are indexed only
            when some task is named by string.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = resolve_tasks(tasks)
    # lm-eval's built-in tasks are indexed only when a task is named by string (5-7 s).
    named = any(isinstance(t, str) for t in tasks)
    task_manager = TaskManager(include_path=include_path, include_defaults=named)
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_length=max_length or context_length(model),
    )
    was_training = model.training
    try:
        res = _simple_evaluate(
            lm_eval.simple_evaluate,
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


def _simple_evaluate(fn: Any, **kwargs: Any) -> dict[str, Any]:
    """``simple_evaluate`` with dataset/name failures turned into :class:`ProbeUnavailableError`."""
    try:
        res = fn(**kwargs)
    except (ConnectionError, OSError, KeyError) as exc:
        names = [t if isinstance(t, str) else t.get("task", "?") for t in kwargs["tasks"]]
        raise ProbeUnavailableError(
            f"lm-eval could not load tasks {names} ({type(exc).__name__}: {exc}). Check the task names; real tasks "
            "(e.g. sst2, mmlu) need their Hugging Face datasets in the local HF cache (run once online, or unset "
            "HF_DATASETS_OFFLINE).") from exc
    if res is None:
        raise ProbeUnavailableError("lm-eval returned no results (non-zero rank?)")
    return res


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
