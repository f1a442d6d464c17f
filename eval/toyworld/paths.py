"""Where the toy world's shipped artifacts live, and how to hand its lm-eval tasks to lm-eval.

Paths are resolved relative to this file, never the working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ARTIFACTS_DIR / "model"
MANIFEST = ARTIFACTS_DIR / "manifest.json"
TASKS_DIR = ARTIFACTS_DIR / "tasks"
COUNTERFACT = ARTIFACTS_DIR / "counterfact.json"
ZSRE = ARTIFACTS_DIR / "zsre.json"
WIKI = ARTIFACTS_DIR / "wiki.jsonl"
ATTRIBUTE_SNIPPETS = ARTIFACTS_DIR / "attribute_snippets.json"
TFIDF_VOCAB = ARTIFACTS_DIR / "tfidf_vocab.json"
IDF = ARTIFACTS_DIR / "idf.npy"
PROBE_TASKS = ("toy_knowledge", "toy_acceptability")


class ToyWorldMissingError(FileNotFoundError):
    """The shipped artifacts are missing (e.g. a partial checkout)."""


def require_artifacts(artifacts_dir: Path = ARTIFACTS_DIR) -> Path:
    manifest = artifacts_dir / "manifest.json"
    if not manifest.is_file():
        raise ToyWorldMissingError(
            f"toy world artifacts not found: {manifest} is missing. They are committed to the "
            "repository; restore them with `git checkout -- eval/toyworld/artifacts` or rebuild "
            "them with `python -m eval.toyworld build` (about 20-30 minutes on 2 CPU cores)."
        )
    return artifacts_dir


def load_manifest(artifacts_dir: Path = ARTIFACTS_DIR) -> dict[str, Any]:
    return json.loads((require_artifacts(artifacts_dir) / "manifest.json").read_text())


def task_configs(artifacts_dir: Path = ARTIFACTS_DIR, names: tuple[str, ...] = PROBE_TASKS) -> list[dict[str, Any]]:
    """The probe task YAMLs as dicts for ``lm_eval.simple_evaluate(tasks=[...])``, data paths absolute
    (:func:`eval.localtasks.task_configs`)."""
    from eval.localtasks import task_configs as local_task_configs

    return local_task_configs(artifacts_dir, ARTIFACTS_DIR, names)
