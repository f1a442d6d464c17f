"""Where the toy world's shipped artifacts live, and how to hand its lm-eval tasks to lm-eval.

Paths are resolved relative to this file, never the working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

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
    """The probe task YAMLs as dicts for ``lm_eval.simple_evaluate(tasks=[...])``.

    The YAML files name their data files relative to the repository root (so the lm-eval CLI
    works from there, and so does a Ray job whose working dir is the repository). Here they are
    made absolute, so in-process evaluation works from any working directory.
    """
    out = []
    for name in names:
        cfg = yaml.safe_load((artifacts_dir / "tasks" / f"{name}.yaml").read_text())
        files = cfg["dataset_kwargs"]["data_files"]
        for split, rel in files.items():
            # "eval/toyworld/artifacts/probes/x.jsonl" -> <artifacts_dir>/probes/x.jsonl
            files[split] = str(artifacts_dir / Path(rel).relative_to(ARTIFACTS_DIR.relative_to(REPO_ROOT)))
        out.append(cfg)
    return out
