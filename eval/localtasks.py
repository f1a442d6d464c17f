"""lm-eval task YAMLs over local JSONL files: the one writer of the project's multiple-choice task
files and the one reader that hands them to lm-eval with absolute data paths.

A task file names its data file relative to the repository root, so the lm-eval CLI works from
there and so does a Ray job whose working dir is the repository; :func:`task_configs` makes the path
absolute for in-process evaluation from any working directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def task_yaml(task: str, data_file: str, comment: str, *, doc_to_text: str, doc_to_choice: str,
              doc_to_target: str, metrics: Sequence[str] = ("acc",)) -> str:
    """A zero-shot ``multiple_choice`` task over one JSONL file (``data_file`` relative to the repo)."""
    metric_list = "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n" for m in metrics)
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return (f"{header}# data_files is relative to the repository root; eval.localtasks.task_configs() makes it absolute.\n"
            f"task: {task}\ndataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n"
            f"    test: {data_file}\ntest_split: test\noutput_type: multiple_choice\n"
            f"doc_to_text: {doc_to_text}\ndoc_to_choice: {doc_to_choice}\ndoc_to_target: {doc_to_target}\n"
            f"num_fewshot: 0\nmetric_list:\n{metric_list}metadata:\n  version: 1.0\n")


def task_configs(artifacts_dir: Path, default_dir: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The task YAMLs ``<artifacts_dir>/tasks/<name>.yaml`` as dicts for ``lm_eval.simple_evaluate``.

    Their data paths ("eval/<world>/artifacts/probes/x.jsonl", relative to the repository, i.e. under
    ``default_dir``) are re-rooted under ``artifacts_dir`` and made absolute.
    """
    out = []
    for name in names:
        cfg = yaml.safe_load((artifacts_dir / "tasks" / f"{name}.yaml").read_text())
        files = cfg["dataset_kwargs"]["data_files"]
        for split, rel in files.items():
            files[split] = str(artifacts_dir / Path(rel).relative_to(default_dir.relative_to(REPO_ROOT)))
        out.append(cfg)
    return out
