"""Checks of a sweep config against the world, before any work starts.

:func:`cluster.config.parse_config` validates the config's own shape (keys, types, names). This
module checks what needs a look outside it: the model's config (its ``model_type`` must be
registered, the edited layers must exist), the dataset files (present, and large enough for the
grid's ``n_edits`` and batch sizes) and the probe tasks (known to lm-eval or to the toy world).
Every problem is collected, so one run of the sweep reports all of them, one line each; nothing is
loaded but configs and JSON lists (no weights).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from alphaedit.models import UnknownModelTypeError, n_layers, spec_for
from cluster.config import ModelConfig, SweepConfig, SweepConfigError

logger = logging.getLogger(__name__)


def model_problems(index: int, model: ModelConfig, cfg: SweepConfig) -> list[str]:
    """Unknown model type, unreadable model config, edited layers out of range."""
    where = f"models.{index} ({model.name})"
    try:
        hf_config = model.hf_config()
    except (OSError, ValueError) as exc:
        return [f"{where}.path: cannot read the model config at {model.resolve(model.path)!r} ({exc}). Give a "
                "local Hugging Face folder, or an id already in the local HF cache (the hub is not reachable "
                "offline)."]
    try:
        spec = spec_for(hf_config.model_type)
    except UnknownModelTypeError as exc:
        return [f"{where}: {exc.args[0]}"]
    try:
        depth: int | None = n_layers(hf_config, spec)
    except LookupError:
        depth = None  # the config names no layer count: ranges cannot be checked here
    problems = []
    seen: set[tuple[int, ...]] = set()
    for cell in cfg.cells():
        if cell.model.name != model.name:
            continue
        layers = cell.hparams().layers
        if layers in seen or depth is None:
            continue
        seen.add(layers)
        bad = [layer for layer in layers if not 0 <= layer < depth]
        if bad:
            problems.append(f"{where}: edited layer(s) {bad} out of range; the model has {depth} layers "
                            f"(0..{depth - 1}). Fix the preset {model.preset!r} or hparams_overrides' layers.")
    return problems


def dataset_sizes(model: ModelConfig, datasets: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Record counts of the model's dataset files, and the problems of the missing/unreadable ones."""
    from eval.datasets import DatasetUnavailableError, read_json_list, resolve_data_file

    sizes, problems = {}, []
    for ds in datasets:
        source = model.dataset_path(ds)
        try:
            path = resolve_data_file(source)
            sizes[ds] = len(read_json_list(Path(path)))
        except DatasetUnavailableError as exc:
            problems.append(f"models ({model.name}).{ds}: {exc}")
        except ValueError as exc:
            problems.append(f"models ({model.name}).{ds}: {source}: {exc}")
    return sizes, problems


def grid_problems(model: ModelConfig, cfg: SweepConfig, sizes: dict[str, int]) -> list[str]:
    """n_edits or a batch size larger than the dataset."""
    problems = []
    for ds, size in sizes.items():
        too_many = sorted({n for n in cfg.n_edits if n > size})
        if too_many:
            problems.append(f"n_edits {too_many} larger than the {ds} dataset of {model.name} ({size} records in "
                            f"{model.dataset_path(ds)}); lower n_edits or use a larger file.")
        too_big = sorted({b for b in cfg.batch_sizes if b > size})
        if too_big:
            problems.append(f"batch_sizes {too_big} larger than the {ds} dataset of {model.name} ({size} records "
                            f"in {model.dataset_path(ds)}).")
    return problems


def _scanned_task_names() -> set[str]:
    """Task, group and tag names written literally in lm-eval's task YAMLs (a ~1 s scan).

    Misses names generated at index time (e.g. per-subject MMLU variants); those fall back to the
    full :class:`lm_eval.tasks.TaskManager` index (tens of seconds), which is only built when a
    name is not found here.
    """
    import re

    import lm_eval

    head = re.compile(r"^(task|group|tag)\s*:\s*(.*)$")
    item = re.compile(r"^\s+-\s+(\S+)\s*$")
    names: set[str] = set()
    for f in (Path(lm_eval.__file__).parent / "tasks").rglob("*.yaml"):
        lines = f.read_text(encoding="utf-8", errors="ignore").splitlines()
        for i, line in enumerate(lines):
            m = head.match(line)
            if not m:
                continue
            value = m.group(2).strip().strip("'\"")
            if value.startswith("["):
                names.update(x.strip().strip("'\"") for x in value.strip("[]").split(",") if x.strip())
            elif value:
                names.add(value)
            else:
                for nxt in lines[i + 1:]:
                    mm = item.match(nxt)
                    if not mm:
                        break
                    names.add(mm.group(1).strip("'\""))
    return names


def probe_problems(tasks: Iterable[str]) -> list[str]:
    """Probe tasks that neither this project (toy and real world) nor lm-eval knows."""
    from eval.probes import LOCAL_TASKS

    other = [t for t in tasks if t not in LOCAL_TASKS]
    if other:
        scanned = _scanned_task_names()
        other = [t for t in other if t not in scanned]
    if not other:
        return []
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    unknown = [t for t in other if t not in known]
    if not unknown:
        return []
    return [f"probes.tasks: {unknown} unknown to lm-eval and to this project (local tasks: {list(LOCAL_TASKS)}; "
            "lm-eval names such as sst2, mrpc, cola, rte, qnli, mnli, mmlu)"]


def preflight_problems(cfg: SweepConfig) -> list[str]:
    """Every problem of ``cfg`` that needs a look at models, files or task registries."""
    problems: list[str] = []
    for i, model in enumerate(cfg.models):
        problems += model_problems(i, model, cfg)
        sizes, missing = dataset_sizes(model, cfg.datasets)
        problems += missing + grid_problems(model, cfg, sizes)
    problems += probe_problems(cfg.probes.tasks)
    return problems


def preflight(cfg: SweepConfig, source: str = "<config>") -> None:
    """Raise :class:`SweepConfigError` listing every problem, or return when the sweep can start."""
    problems = preflight_problems(cfg)
    if problems:
        raise SweepConfigError(source, problems)
    logger.info("preflight: %d model(s), datasets %s, probes %s: ok", len(cfg.models), list(cfg.datasets),
                list(cfg.probes.tasks))
