"""The AlphaEdit paper's published Table 1, to show beside our own numbers in reports.

Source: Junfeng Fang et al., "AlphaEdit: Null-Space Constrained Knowledge Editing for Language
Models", ICLR 2025 (arXiv 2410.02355), Table 1: 2,000 sequential edits in batches of 100 on
CounterFact and ZsRE, means over runs (the +- values are left out). Copied from the project's
reference notes (``docs/reference/alphaedit-method.md``, section 3(f)); the paper's model column is
empty in the OCR used there, and its row blocks were matched to models through Table 6.

CounterFact: Eff./Gen./Spe. in %, Flu. is x100 entropy, Consis. x100 cosine (the scale of our
``metrics.value``). ZsRE: Eff./Gen./Spe. in %.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from storage import names

#: Edits and batch size of the paper's Table 1 protocol.
PAPER_N_EDITS = 2000
PAPER_BATCH_SIZE = 100
PAPER_CITATION = "Fang et al., AlphaEdit, ICLR 2025, Table 1 (2,000 sequential edits, batch 100)"

#: Method key of the paper's "Pre-edited" rows (the unedited model, our ``edits_done = 0``).
UNEDITED = "unedited"

_CF = (names.METRIC_EFFICACY, names.METRIC_GENERALIZATION, names.METRIC_SPECIFICITY,
       names.METRIC_FLUENCY, names.METRIC_CONSISTENCY)
_ZSRE = (names.METRIC_EFFICACY, names.METRIC_GENERALIZATION, names.METRIC_SPECIFICITY)

# model -> method -> (CF Eff, Gen, Spe, Flu, Consis, ZsRE Eff, Gen, Spe); methods as we name them.
_TABLE1: dict[str, dict[str, tuple[float, ...]]] = {
    "llama3-8b": {
        UNEDITED: (7.85, 10.58, 89.48, 635.23, 24.14, 36.99, 36.34, 31.89),
        "ft": (83.33, 67.79, 46.63, 233.72, 8.77, 30.48, 30.22, 15.49),
        "mend": (63.24, 61.17, 45.37, 372.16, 4.21, 0.91, 1.09, 0.53),
        "instructedit": (66.58, 64.18, 47.14, 443.85, 7.28, 1.58, 1.36, 1.01),
        "rome": (64.40, 61.42, 49.44, 449.06, 3.31, 2.01, 1.80, 0.69),
        "memit": (65.65, 64.65, 51.56, 437.43, 6.58, 34.62, 31.28, 18.49),
        "prune": (68.25, 64.75, 49.82, 418.03, 5.90, 24.77, 23.87, 20.69),
        "rect": (66.05, 63.62, 61.41, 526.62, 20.54, 86.05, 80.54, 31.67),
        "alphaedit": (98.90, 94.22, 67.88, 622.49, 32.40, 94.47, 91.13, 32.55),
    },
    "gpt-j": {
        UNEDITED: (16.22, 18.56, 83.11, 621.81, 29.74, 26.32, 25.79, 27.42),
        "ft": (92.15, 72.38, 43.35, 297.92, 6.65, 72.37, 68.91, 19.66),
        "mend": (46.15, 46.22, 53.90, 242.41, 3.94, 0.71, 0.71, 0.52),
        "instructedit": (50.62, 51.73, 56.28, 245.89, 4.21, 0.92, 0.88, 0.65),
        "rome": (57.50, 54.20, 52.05, 589.42, 3.22, 56.42, 54.65, 9.86),
        "memit": (98.55, 95.50, 63.64, 546.28, 34.89, 94.91, 90.22, 30.39),
        "prune": (86.15, 86.85, 53.87, 427.14, 14.78, 0.15, 0.15, 0.00),
        "rect": (98.80, 86.58, 72.22, 617.31, 41.39, 96.38, 91.21, 27.79),
        "alphaedit": (99.75, 96.38, 75.48, 618.50, 42.08, 99.79, 96.00, 28.29),
    },
    "gpt2-xl": {
        UNEDITED: (22.23, 24.34, 78.53, 626.64, 31.88, 22.19, 31.30, 24.15),
        "ft": (63.55, 42.20, 57.06, 519.35, 10.56, 37.11, 33.30, 10.36),
        "mend": (50.80, 50.80, 49.20, 407.21, 1.01, 0.00, 0.00, 0.00),
        "instructedit": (55.32, 53.63, 53.25, 412.57, 1.08, 3.54, 4.25, 3.23),
        "rome": (54.60, 51.18, 52.68, 366.13, 0.72, 47.50, 43.56, 14.27),
        "memit": (94.70, 85.82, 60.50, 477.26, 22.72, 79.17, 71.44, 26.42),
        "prune": (82.05, 78.55, 53.02, 530.47, 15.93, 21.62, 19.27, 13.19),
        "rect": (92.15, 81.15, 65.13, 480.83, 21.05, 81.02, 73.08, 24.85),
        "alphaedit": (99.50, 93.95, 66.39, 597.88, 39.38, 94.81, 86.11, 25.88),
    },
}


def _expand(table: Mapping[str, Mapping[str, tuple[float, ...]]]) -> dict[tuple[str, str, str], dict[str, float]]:
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for model, methods in table.items():
        for method, row in methods.items():
            assert len(row) == len(_CF) + len(_ZSRE), (model, method)
            out[(model, names.DATASET_COUNTERFACT, method)] = dict(zip(_CF, row[: len(_CF)], strict=True))
            out[(model, names.DATASET_ZSRE, method)] = dict(zip(_ZSRE, row[len(_CF):], strict=True))
    return out


#: (paper model key, dataset, method) -> {metric name: value}; metric names as in ``storage.names``.
PAPER_TABLE1: dict[tuple[str, str, str], dict[str, float]] = _expand(_TABLE1)

#: The paper's model keys (also the names of the reference hparams presets).
PAPER_MODELS: tuple[str, ...] = tuple(_TABLE1)

# Normalized model names (last path component, lower case, "_" as "-") -> paper model key.
_ALIASES: dict[str, str] = {
    "gpt2-xl": "gpt2-xl",
    "gpt-j": "gpt-j",
    "gpt-j-6b": "gpt-j",
    "eleutherai-gpt-j-6b": "gpt-j",
    "llama3-8b": "llama3-8b",
    "llama-3-8b": "llama3-8b",
    "llama3-8b-instruct": "llama3-8b",
    "meta-llama-3-8b": "llama3-8b",
    "meta-llama-3-8b-instruct": "llama3-8b",
}


def _normalize(name: str) -> str:
    last = re.split(r"[/\\]", name.strip().rstrip("/\\"))[-1]
    return last.lower().replace("_", "-")


def paper_model_key(model: str, config: Mapping[str, Any] | str | None = None) -> str | None:
    """The paper's model key (``gpt2-xl``, ``gpt-j``, ``llama3-8b``) for a run's model, or None.

    Looks at the run's model name, then the model path and the hparams preset recorded in its
    config (``config["model"]["path"|"preset"]``, as the sweep writes it). A model the paper did
    not use (e.g. the toy world's ``toy-gpt2``) gives None.
    """
    candidates = [model]
    cfg: Any = json.loads(config) if isinstance(config, str) else config
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        candidates += [str(cfg["model"].get(k) or "") for k in ("path", "preset")]
    for name in candidates:
        key = _ALIASES.get(_normalize(name)) if name else None
        if key is not None:
            return key
    return None


def paper_row(model_key: str | None, dataset: str, method: str) -> dict[str, float] | None:
    """The paper's Table 1 numbers for (model key, dataset, method), or None when it has none."""
    if model_key is None:
        return None
    return PAPER_TABLE1.get((model_key, dataset, method.lower()))
