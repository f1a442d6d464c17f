"""Base + deltas in memory: apply a checkpoint's deltas for a block of code, then restore the base.

Also reads the checkpoint folders ``python -m jobs.edit`` writes (docs/checkpoint-format.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alphaedit.state import apply_deltas, load_deltas, restore_weights, snapshot_weights


@contextmanager
def edited_weights(model: nn.Module, deltas: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """``W += Δ`` for each ``{param name: Δ}`` inside the block; the exact base weights come back after it
    (also on an exception). Mutates ``model`` meanwhile: nothing else may use it concurrently."""
    snapshot = snapshot_weights(model, list(deltas))
    try:
        apply_deltas(model, deltas)
        yield model
    finally:
        restore_weights(model, snapshot)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint folder: its run config, edited requests (CounterFact layout) and deltas file."""

    folder: Path
    run: dict[str, Any]
    requests: list[dict[str, Any]]

    @property
    def deltas_path(self) -> Path:
        return self.folder / "deltas.safetensors"

    @property
    def is_zsre(self) -> bool:
        """All requests carry their zsRE record (made by :meth:`eval.datasets.ZsreRecord.to_counterfact`)."""
        return bool(self.requests) and all("zsre" in r for r in self.requests)

    def deltas(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return load_deltas(self.deltas_path, device)


def read_checkpoint(folder: str | Path) -> Checkpoint:
    """Read ``run.json`` and ``requests.json`` of a checkpoint folder (deltas are loaded on demand)."""
    folder = Path(folder)
    missing = [n for n in ("run.json", "requests.json", "deltas.safetensors") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete checkpoint folder: {missing} missing "
                                "(write one with `python -m jobs.edit --out FOLDER`)")
    run = json.loads((folder / "run.json").read_text())
    requests = json.loads((folder / "requests.json").read_text())
    if not isinstance(requests, list):
        raise ValueError(f"{folder / 'requests.json'}: expected a JSON list of CounterFact records")
    return Checkpoint(folder=folder, run=run, requests=requests)
