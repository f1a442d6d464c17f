"""Sequential-editing state: running Σ Kp Kpᵀ per layer, edit count, accumulated weight deltas.

On disk (a folder; safetensors + JSON, no pickle):

- ``deltas.safetensors``: one float32 tensor per edited weight, keyed by the parameter's full name
  (e.g. ``transformer.h.1.mlp.c_proj.weight``), same shape as the weight, holding W_edited - W_base.
- ``state.safetensors``: ``prev_keys.<layer>`` = Σ Kp Kpᵀ (d_k x d_k, float32) per edited layer.
- ``state.json``: format, model type, layers, weight names, edit count, edited case ids, extras.
- ``raw_deltas.safetensors`` (PRUNE only): the unrestrained accumulated edit Δ_raw per weight,
  same keys and shapes as ``deltas.safetensors`` (which holds the restrained W_0 + F(Δ_raw) - W_0).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_bytes
from torch import nn

from alphaedit.models import ModelSpec, key_dim

STATE_FORMAT = "alphaedit.edit_state.v1"
CHECKPOINT_FORMAT = "alphaedit.edit_checkpoint.v1"


@dataclass
class EditState:
    model_type: str
    layers: tuple[int, ...]
    weight_names: dict[int, str]  # layer -> full parameter name of the edited weight
    prev_keys: dict[int, torch.Tensor]  # layer -> Σ Kp Kpᵀ (d_k, d_k) float32
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)  # param name -> W_edited - W_base (fp32)
    n_edits: int = 0
    case_ids: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able metadata (method, hparams, ...)
    # PRUNE: unrestrained accumulated edit Δ_raw per param name (fp32); empty for other methods
    raw_deltas: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def new(cls, model: nn.Module, spec: ModelSpec, layers: Sequence[int],
            device: torch.device | str | None = None) -> EditState:
        """An empty state (no edits, zero Σ Kp Kpᵀ) for ``layers`` of ``model``."""
        layers = tuple(int(x) for x in layers)
        return cls(
            model_type=spec.model_type,
            layers=layers,
            weight_names={layer: spec.weight_name(layer) for layer in layers},
            prev_keys={
                layer: torch.zeros(key_dim(model, spec, layer), key_dim(model, spec, layer),
                                   dtype=torch.float32, device=device)
                for layer in layers
            },
        )

    def save(self, folder: str | Path) -> Path:
        """Write the three files into ``folder`` (created); each is written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_deltas(self.deltas, folder / "deltas.safetensors",
                    metadata={"format": STATE_FORMAT, "model_type": self.model_type})
        _atomic_safetensors(
            {f"prev_keys.{layer}": t.detach().float().cpu().contiguous() for layer, t in self.prev_keys.items()},
            folder / "state.safetensors", {"format": STATE_FORMAT},
        )
        if self.raw_deltas:
            save_deltas(self.raw_deltas, folder / "raw_deltas.safetensors",
                        metadata={"format": STATE_FORMAT, "model_type": self.model_type})
        _atomic_write_text(folder / "state.json", json.dumps(self._meta(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str | None = None) -> EditState:
        folder = Path(folder)
        meta_path = folder / "state.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: not an EditState folder (see EditState.save)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {STATE_FORMAT!r}")
        tensors = load_file(str(folder / "state.safetensors"), device=str(device or "cpu"))
        raw_path = folder / "raw_deltas.safetensors"
        return cls._from_meta(
            meta, prev_keys=tensors, deltas=load_deltas(folder / "deltas.safetensors"),
            raw_deltas=load_deltas(raw_path) if raw_path.exists() else {},
        )

    @classmethod
    def _from_meta(cls, meta: Mapping[str, Any], prev_keys: Mapping[str, torch.Tensor],
                   deltas: dict[str, torch.Tensor], raw_deltas: dict[str, torch.Tensor]) -> EditState:
        """The inverse of :meth:`_meta`; ``prev_keys`` holds ``prev_keys.<layer>`` for every layer."""
        layers = tuple(int(x) for x in meta["layers"])
        return cls(
            model_type=meta["model_type"],
            layers=layers,
            weight_names={int(k): v for k, v in meta["weight_names"].items()},
            prev_keys={layer: prev_keys[f"prev_keys.{layer}"] for layer in layers},
            deltas=deltas,
            n_edits=int(meta["n_edits"]),
            case_ids=list(meta["case_ids"]),
            extra=dict(meta.get("extra", {})),
            raw_deltas=raw_deltas,
        )

    def _meta(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "model_type": self.model_type,
            "layers": list(self.layers),
            "weight_names": {str(k): v for k, v in self.weight_names.items()},
            "n_edits": self.n_edits,
            "case_ids": list(self.case_ids),
            "extra": self.extra,
        }

    def to_bytes(self, extra_tensors: Mapping[str, torch.Tensor] | None = None) -> bytes:
        """The whole state as one safetensors blob (a checkpoint), optionally with extra tensors.

        Tensors: ``delta.<param name>`` (float32), ``prev_keys.<layer>`` (float32),
        ``raw_delta.<param name>`` (float32, PRUNE's Δ_raw, only when present) and ``extra.<name>``
        for each of ``extra_tensors`` (any dtype, e.g. exact edited weights or an RNG state); the JSON
        metadata of :meth:`save` is in the header. Round-trips bit-exactly through :meth:`from_bytes`.
        """
        tensors = {f"delta.{n}": t.detach().float().cpu().contiguous() for n, t in self.deltas.items()}
        tensors |= {f"prev_keys.{layer}": t.detach().float().cpu().contiguous() for layer, t in self.prev_keys.items()}
        tensors |= {f"raw_delta.{n}": t.detach().float().cpu().contiguous() for n, t in self.raw_deltas.items()}
        tensors |= {f"extra.{k}": t.detach().cpu().contiguous().clone() for k, t in (extra_tensors or {}).items()}
        return save_bytes(tensors, metadata={"format": CHECKPOINT_FORMAT, "state": json.dumps(self._meta())})

    @classmethod
    def from_bytes(cls, data: bytes, device: torch.device | str | None = None
                   ) -> tuple[EditState, dict[str, torch.Tensor]]:
        """(state, extra tensors) from :meth:`to_bytes` output; prev_keys on ``device``, the rest on CPU."""
        header = _safetensors_metadata(data)
        if header.get("format") != CHECKPOINT_FORMAT or "state" not in header:
            raise ValueError(f"not an EditState checkpoint: header format {header.get('format')!r}, "
                             f"expected {CHECKPOINT_FORMAT!r} (written by EditState.to_bytes)")
        tensors = load_bytes(data)

        def group(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        prev_keys = {k: v.to(device or "cpu") for k, v in tensors.items() if k.startswith("prev_keys.")}
        state = cls._from_meta(json.loads(header["state"]), prev_keys=prev_keys, deltas=group("delta."),
                               raw_deltas=group("raw_delta."))
        return state, group("extra.")


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte little-endian header size, then JSON)."""
    if len(data) < 8:
        raise ValueError(f"not a safetensors blob: {len(data)} bytes")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"not a safetensors blob: header of {n} bytes in {len(data)} bytes")
    return dict(json.loads(data[8 : 8 + n].decode("utf-8")).get("__metadata__") or {})


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_deltas(deltas: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``{param name: W_edited - W_base}`` as float32 safetensors (atomic write)."""
    tensors = {name: t.detach().float().cpu().contiguous() for name, t in deltas.items()}
    _atomic_safetensors(tensors, Path(path), dict(metadata or {}))


def load_deltas(path: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


# --- explicit weight mutation -------------------------------------------------------------------

def snapshot_weights(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Exact copies of the named parameters (for a bit-exact restore)."""
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"parameters {missing} not found in {type(model).__name__}")
    return {n: params[n].detach().clone() for n in names}


@torch.no_grad()
def restore_weights(model: nn.Module, snapshot: Mapping[str, torch.Tensor]) -> None:
    """Copy a :func:`snapshot_weights` back into the model (bit-exact)."""
    params = dict(model.named_parameters())
    for name, value in snapshot.items():
        params[name].copy_(value)


@torch.no_grad()
def apply_deltas(model: nn.Module, deltas: Mapping[str, torch.Tensor]) -> None:
    """W += Δ for each ``{param name: Δ}`` (Δ in the weight's shape), in the weight's dtype. Mutates ``model``."""
    params = dict(model.named_parameters())
    for name, delta in deltas.items():
        if name not in params:
            raise KeyError(f"apply_deltas: parameter {name!r} not in {type(model).__name__}")
        weight = params[name]
        if tuple(delta.shape) != tuple(weight.shape):
            raise ValueError(f"apply_deltas: delta for {name} has shape {tuple(delta.shape)}, "
                             f"weight has {tuple(weight.shape)}")
        weight.add_(delta.to(device=weight.device, dtype=weight.dtype))


@torch.no_grad()
def load_edited(model: nn.Module, base: Mapping[str, torch.Tensor], deltas: Mapping[str, torch.Tensor]) -> None:
    """Set W = W_base + Δ (computed in float32, then cast to the weight's dtype). Mutates ``model``."""
    params = dict(model.named_parameters())
    for name, delta in deltas.items():
        weight = params[name]
        weight.copy_((base[name].float() + delta.to(base[name].device).float()).to(weight.dtype))
