"""Model registry: where the edited weights live in each supported Hugging Face architecture.

A :class:`ModelSpec` names, for one HF ``model_type``, the MLP output projection that is edited
(its *input* is the key k, its output the value v = W k), the transformer block whose output is
the residual stream h^l, the final norm and the LM head, plus the weight orientation. GPT-2 stores
its projections as ``Conv1D`` with weight shape (d_in, d_out) = (d_k, d_model); every other
registered family uses ``nn.Linear`` with weight shape (d_out, d_in) = (d_model, d_k).

Unknown architectures are added with :func:`register_spec` or by passing a ``ModelSpec`` override
(e.g. from a config file) to :func:`spec_for`; nothing branches on model names.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

WeightLayout = Literal["out_in", "in_out"]


@dataclass(frozen=True)
class ModelSpec:
    """Module names (``{}`` = layer index) and weight layout of one architecture.

    ``weight_layout``: "out_in" for ``nn.Linear`` (weight is d_model x d_k), "in_out" for GPT-2's
    ``Conv1D`` (weight is d_k x d_model, so an update Δ (d_model x d_k) is stored transposed).
    """

    model_type: str
    mlp_out: str  # edited projection W_out; its input is the key k (d_k), its output the value (d_model)
    block: str  # transformer block; its output is the residual stream after layer l
    final_norm: str
    lm_head: str
    weight_layout: WeightLayout = "out_in"
    n_layers_attr: str = "num_hidden_layers"  # config attribute holding the number of blocks

    def mlp_out_name(self, layer: int) -> str:
        return self.mlp_out.format(layer)

    def block_name(self, layer: int) -> str:
        return self.block.format(layer)

    def weight_name(self, layer: int) -> str:
        """Full parameter name of the edited weight, e.g. ``transformer.h.1.mlp.c_proj.weight``."""
        return self.mlp_out_name(layer) + ".weight"


_LLAMA_LIKE = dict(
    mlp_out="model.layers.{}.mlp.down_proj",
    block="model.layers.{}",
    final_norm="model.norm",
    lm_head="lm_head",
)

_REGISTRY: dict[str, ModelSpec] = {
    "gpt2": ModelSpec(
        "gpt2",
        mlp_out="transformer.h.{}.mlp.c_proj",
        block="transformer.h.{}",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        weight_layout="in_out",
    ),
    "gptj": ModelSpec(
        "gptj",
        mlp_out="transformer.h.{}.mlp.fc_out",
        block="transformer.h.{}",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
    ),
    "llama": ModelSpec("llama", **_LLAMA_LIKE),
    "mistral": ModelSpec("mistral", **_LLAMA_LIKE),
    "qwen2": ModelSpec("qwen2", **_LLAMA_LIKE),
    "qwen3": ModelSpec("qwen3", **_LLAMA_LIKE),
}


class UnknownModelTypeError(KeyError):
    """Raised for a ``model_type`` with no registered :class:`ModelSpec`."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def known_model_types() -> list[str]:
    return sorted(_REGISTRY)


def register_spec(spec: ModelSpec, *, replace: bool = False) -> None:
    """Add an architecture to the registry (``replace=True`` to overwrite an existing entry)."""
    if spec.model_type in _REGISTRY and not replace:
        raise ValueError(
            f"model_type {spec.model_type!r} is already registered; pass replace=True to overwrite it"
        )
    _REGISTRY[spec.model_type] = spec


def spec_for(model_or_type: nn.Module | str, override: ModelSpec | dict | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of a model (by ``model.config.model_type``) or of a type name.

    ``override`` (a ModelSpec, or a dict of its fields) wins over the registry; this is how a
    config file adds an architecture without code changes.
    """
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        model_type = getattr(getattr(model_or_type, "config", None), "model_type", None)
    if override is not None:
        if isinstance(override, dict):
            fields = {"model_type": model_type or "custom", **override}
            return ModelSpec(**fields)
        return override
    if model_type not in _REGISTRY:
        example = dataclasses.asdict(_REGISTRY["llama"])
        example["model_type"] = model_type
        raise UnknownModelTypeError(
            f"model_type {model_type!r} has no ModelSpec; known types: {', '.join(known_model_types())}. "
            "To add one, pass a spec override naming its modules, e.g. "
            f"spec_for(model, override={example}) (or a `model_spec:` mapping with these keys in the "
            "run config), or call alphaedit.models.register_spec(ModelSpec(...))."
        )
    return _REGISTRY[model_type]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with an error that says which spec field to fix."""
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise LookupError(
            f"module {name!r} not found in {type(model).__name__}; the ModelSpec names a module this "
            "model does not have. Check the spec (alphaedit.models) or pass an override."
        ) from exc


def n_layers(model: nn.Module | Any, spec: ModelSpec) -> int:
    """Number of blocks, from a model or from its (HF) config."""
    cfg = getattr(model, "config", model)
    for attr in (spec.n_layers_attr, "num_hidden_layers", "n_layer"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int):
            return value
    raise LookupError(f"cannot find the number of layers in {type(cfg).__name__}; set ModelSpec.n_layers_attr")


def edited_weight(model: nn.Module, spec: ModelSpec, layer: int) -> torch.Tensor:
    """The edited weight parameter of ``layer``, after checking its layout against the spec."""
    module = get_module(model, spec.mlp_out_name(layer))
    weight = module.weight
    is_linear = isinstance(module, nn.Linear)
    if is_linear and spec.weight_layout != "out_in":
        raise TypeError(
            f"{spec.mlp_out_name(layer)} is nn.Linear but the {spec.model_type} spec says "
            f"weight_layout={spec.weight_layout!r}; use 'out_in' for Linear layers"
        )
    if not is_linear and type(module).__name__ == "Conv1D" and spec.weight_layout != "in_out":
        raise TypeError(
            f"{spec.mlp_out_name(layer)} is a Conv1D (weight d_in x d_out) but the spec says "
            f"weight_layout={spec.weight_layout!r}; use 'in_out'"
        )
    return weight


def key_dim(model: nn.Module, spec: ModelSpec, layer: int) -> int:
    """d_k: the input width of the edited projection (MLP intermediate size)."""
    weight = edited_weight(model, spec, layer)
    return int(weight.shape[1] if spec.weight_layout == "out_in" else weight.shape[0])


def model_dim(model: nn.Module, spec: ModelSpec, layer: int) -> int:
    """d_model: the output width of the edited projection."""
    weight = edited_weight(model, spec, layer)
    return int(weight.shape[0] if spec.weight_layout == "out_in" else weight.shape[1])


def context_length(model: nn.Module | Any, default: int = 2048) -> int:
    """The model's context in tokens (``n_positions`` / ``max_position_embeddings`` of its config).

    The reference truncates each statistics document at this length (layer_stats' maxlen); a config
    that names neither gets ``default`` (logged).
    """
    cfg = getattr(model, "config", model)
    for attr in ("n_positions", "max_position_embeddings", "max_sequence_length"):
        value = getattr(cfg, attr, None)
        if value:
            return int(value)
    logger.warning("model config names no context length; using %d tokens", default)
    return default


def to_weight_layout(delta: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Δ in the math orientation (d_model x d_k, acting on keys) -> the stored weight's shape."""
    return delta if spec.weight_layout == "out_in" else delta.T


def from_weight_layout(weight: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """A stored weight (or weight delta) -> the math orientation (d_model x d_k)."""
    return weight if spec.weight_layout == "out_in" else weight.T


# --- loading ------------------------------------------------------------------------------------

def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when visible, else CPU; any other name (``"cpu"``, ``"cuda:1"``) as given."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(path: str, device: str | torch.device = "auto", dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) from an HF id or local folder, on ``device``, in eval mode.

    The one loader of the project (editor actors, statistics tasks, the single-process jobs). A
    tokenizer without a pad token (GPT-2's) gets its EOS token as pad, as the reference code does;
    padded positions are always masked out, so the choice does not change a result.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use a torch dtype name such as float32, bfloat16 or float16")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model.to(resolve_device(device)).eval(), tok
