"""Checks of a sweep config against the world, before any work starts.

:func:`cluster.config.parse_config` validates the config's own shape (keys, types, names). This
module checks what needs a look outside it: the model's config (its ``model_type`` must be
registered, the edited layers must exist), the dataset files (present, every record the cells
edit well-formed, and large enough for the grid's ``n_edits`` and batch sizes), the probe tasks
(known to lm-eval or to the toy world) and the outputs (the results file a DuckDB database not
held by another writer, or creatable; the artifact store a writable folder).
Every problem is collected, so one run of the sweep reports all of them, one line each; nothing is
loaded but configs and JSON lists (no weights).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path

from alphaedit.models import UnknownModelTypeError, n_layers, spec_for
from cluster.config import REPO_ROOT, ModelConfig, SweepConfig, SweepConfigError

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


#: At most this many malformed records are listed per dataset file (the rest are counted).
MAX_LISTED_RECORDS = 20


def dataset_sizes(model: ModelConfig, datasets: Iterable[str], n: int | None = None,
                  on_bad_record: str = "fail") -> tuple[dict[str, int], list[str]]:
    """Usable record counts of the model's dataset files, and the problems of the missing/unreadable
    ones and of every malformed record among the first ``n`` (``on_bad_record="fail"``; with
    ``"skip"`` they are skipped and the count is of valid records, looked for up to ``n``)."""
    from cluster.plan import scan_records
    from eval.datasets import DatasetUnavailableError

    sizes, problems = {}, []
    for ds in datasets:
        source = model.dataset_path(ds)
        where = f"models ({model.name}).{ds}"
        try:
            scan = scan_records(ds, source, n if n is not None else 1 << 62, on_bad_record)
        except DatasetUnavailableError as exc:
            problems.append(f"{where}: {exc}")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{where}: {source}: {exc}")
            continue
        if on_bad_record == "skip":
            sizes[ds] = len(scan.raw) + (scan.total - scan.read)  # valid so far + the rest (not looked at)
            if scan.bad:
                logger.warning("%s: %s: %d malformed record(s) skipped among the first %d (on_bad_record: skip)",
                               where, scan.path, len(scan.bad), scan.read)
            continue
        sizes[ds] = scan.total
        problems += [f"{where}: {scan.path}: {b.describe()}" for b in scan.bad[:MAX_LISTED_RECORDS]]
        if len(scan.bad) > MAX_LISTED_RECORDS:
            problems.append(f"{where}: {scan.path}: ... and {len(scan.bad) - MAX_LISTED_RECORDS} more malformed "
                            "record(s)")
        if scan.bad:
            problems.append(f"{where}: {len(scan.bad)} malformed record(s) among the first {scan.read}; fix them, "
                            "or run with --on-bad-record skip (config: on_bad_record: skip) to skip and count them.")
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


def resolve_location(path: str) -> str:
    """A ``results``/``artifact_root`` value as the sweep uses it (relative: against the repository)."""
    return path if "://" in path or Path(path).is_absolute() else str(REPO_ROOT / path)


def _writable_folder(folder: Path, what: str) -> str | None:
    """None when a file can be created in ``folder`` or, when it does not exist yet, in its nearest
    existing ancestor (a real create-and-delete: permission bits say nothing to root or on read-only
    and immutable folders); else the problem."""
    import tempfile

    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{what}: {probe} is a file, not a folder; the path {folder} cannot be created"
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".preflight-"):
            pass
    except OSError as exc:
        return f"{what}: cannot write in {probe} ({exc.strerror or exc}); pick a writable location"
    return None


def results_file_problems(path: str, what: str = "results") -> list[str]:
    """The results file: a folder that can hold it, and an existing file that is a DuckDB results
    database of this code's schema (or older), not held by another process's writer."""
    if "://" in path:
        return []
    p = Path(path)
    if p.is_dir():
        return [f"{what}: {p} is a folder; give a file path such as {p / 'results.duckdb'}"]
    if not p.exists():
        problem = _writable_folder(p.parent, what)
        return [problem] if problem else []
    try:
        with p.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        return [f"{what}: cannot read {p} ({exc.strerror or exc})"]
    if head[8:12] != b"DUCK":
        seen = "it is empty" if not head else f"it starts with {head[:12]!r}"
        return [f"{what}: {p} is not a DuckDB database ({seen}); give another path "
                "(a new file is created) or the results file of an earlier sweep"]
    import duckdb

    from storage.schema import SCHEMA_VERSION, current_version

    try:
        con = duckdb.connect(str(p), read_only=False)
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        if "lock" in first.lower():
            return [f"{what}: {p} is open for writing in another process ({first}); wait for it to end, or give "
                    "another results path"]
        return [f"{what}: cannot open {p} as a DuckDB database ({first})"]
    try:
        version = current_version(con)
    finally:
        con.close()
    if version > SCHEMA_VERSION:
        return [f"{what}: {p} has schema version {version}, newer than this code knows (up to {SCHEMA_VERSION}); "
                "update this checkout (git pull) before writing to it"]
    problem = _writable_folder(p.parent, what)  # DuckDB writes a .wal beside the file
    return [problem] if problem else []


def artifact_root_problems(root: str) -> list[str]:
    """The artifact store's folder: a folder (or creatable), and writable."""
    if "://" in root:
        return []
    p = Path(root)
    if p.exists() and not p.is_dir():
        return [f"artifact_root: {p} is a file, not a folder; give a folder path"]
    problem = _writable_folder(p, "artifact_root")
    return [problem] if problem else []


def output_problems(cfg: SweepConfig) -> list[str]:
    """Where the sweep writes: the results file and the artifact store."""
    return results_file_problems(resolve_location(cfg.results)) + artifact_root_problems(
        resolve_location(cfg.artifact_root))


def preflight_problems(cfg: SweepConfig, outputs: bool = True) -> list[str]:
    """Every problem of ``cfg`` that needs a look at models, files or task registries (and, with
    ``outputs``, at the results file and the artifact store it writes to)."""
    problems: list[str] = []
    for i, model in enumerate(cfg.models):
        problems += model_problems(i, model, cfg)
        sizes, missing = dataset_sizes(model, cfg.datasets, max(cfg.n_edits), cfg.on_bad_record)
        problems += missing + grid_problems(model, cfg, sizes)
    problems += probe_problems(cfg.probes.tasks)
    if outputs:
        problems += output_problems(cfg)
    return problems


def preflight(cfg: SweepConfig, source: str = "<config>", outputs: bool = True) -> None:
    """Raise :class:`SweepConfigError` listing every problem, or return when the sweep can start."""
    problems = preflight_problems(cfg, outputs)
    if problems:
        raise SweepConfigError(source, problems)
    logger.info("preflight: %d model(s), datasets %s, probes %s: ok", len(cfg.models), list(cfg.datasets),
                list(cfg.probes.tasks))


def add_on_bad_record(parser: argparse.ArgumentParser) -> None:
    """``--on-bad-record fail|skip`` (the config's ``on_bad_record``) for a config-driven command line."""
    parser.add_argument("--on-bad-record", choices=["fail", "skip"], default=None,
                        help="a malformed dataset record: fail before any work starts, listing every one (the "
                             "config's default), or skip it and count it (metric skipped_records); same as --set "
                             "on_bad_record=...")
