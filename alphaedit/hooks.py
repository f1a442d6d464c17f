"""Forward hooks: capture module inputs/outputs, stop the forward early, add δ to a block output;
plus the pieces of a forward that reuses a key/value prefix (a cache of the prompt positions that do
not depend on δ) and runs some blocks in a lower precision.

All hooks are installed by context managers and always removed, even when the forward raises.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from alphaedit.models import get_module


class _StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised from a hook to end a forward pass once everything needed has been captured."""


def _first(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value,index]


@contextlib.contextmanager
def capture(
    model: nn.Module,
    inputs_of: Sequence[str] = (),
    outputs_of: Sequence[str] = (),
    stop_after: str | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the first positional input of ``inputs_of`` modules and the output of ``outputs_of``.

    With ``stop_after``, the forward is aborted right after that module ran; wrap the forward call
    in :func:`run_until_stopped`. Tensors are stored as produced (no copy, no detach).
    """
    store: dict[str, torch.Tensor] = {}
    handles = []

    def input_hook(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            store["in:" + name] = args[0]

        return hook

    def output_hook(name: str) -> Callable:
        def hook(_module: nn.Module, _args: tuple, output: object) -> None:
            store["out:" + name] = _first(output)

        return hook

    def stop_hook(_module: nn.Module, _args: tuple, _output: object) -> None:
        raise _StopForward

    try:
        for name in inputs_of:
            handles.append(get_module(model, name).register_forward_pre_hook(input_hook(name)))
        for name in outputs_of:
            handles.append(get_module(model, name).register_forward_hook(output_hook(name)))
        if stop_after is not None:  # registered last, so it fires after the capture hooks
            handles.append(get_module(model, stop_after).register_forward_hook(stop_hook))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def run_until_stopped(model: nn.Module, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                      **kwargs: object) -> None:
    """Run ``model`` forward and swallow the early-stop signal of :func:`capture`.

    No KV cache unless ``kwargs`` pass one (see :func:`cache_kwargs`); other ``kwargs`` (e.g.
    ``inputs_embeds``, ``position_ids``) go to the model as given.
    """
    kwargs.setdefault("use_cache", False)
    try:
        if input_ids is None:
            model(attention_mask=attention_mask, **kwargs)
        else:
            model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    except _StopForward:
        pass


@contextlib.contextmanager
def add_at_positions(
    model: nn.Module, block: str, rows: torch.Tensor, cols: torch.Tensor, values: Callable[[], torch.Tensor]
) -> Iterator[dict[str, torch.Tensor]]:
    """Add ``values()`` (n, d) to the output of ``block`` at (rows[i], cols[i]); record the clean output.

    ``values`` is called at every forward so that the current (trainable) δ is used. The output
    before the addition is stored under ``"clean"``.
    """
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _args: tuple, output: object) -> object:
        hidden = _first(output)
        store["clean"] = hidden
        store["is_tuple"] = isinstance(output, tuple)  # type: ignore[assignment]
        delta = values().to(hidden.dtype)
        update = torch.zeros_like(hidden).index_put((rows, cols), delta, accumulate=True)
        edited = hidden + update  # (batch, seq, d_model)
        if isinstance(output, tuple):
            return (edited, *output[1:])
        return edited

    handle = get_module(model, block).register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextlib.contextmanager
def replay_blocks(model: nn.Module, block_names: Sequence[str], output: object) -> Iterator[None]:
    """Skip the computation of a prefix of blocks: all but the last pass their input through, the last
    returns ``output`` (a recorded output of that block for the same input batch).

    Exact when the recorded output is still valid, i.e. nothing below the last block changed since it
    was recorded. Hooks registered on the blocks still fire. Implemented by shadowing each block's
    ``forward`` on the instance, restored on exit.
    """
    modules = [get_module(model, name) for name in block_names]
    as_tuple = isinstance(output, tuple)

    def passthrough(*args: object, **kwargs: object) -> object:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) if as_tuple else hidden

    def replay(*_args: object, **_kwargs: object) -> object:
        return output

    try:
        for module in modules[:-1]:
            module.forward = passthrough
        modules[-1].forward = replay
        yield
    finally:
        for module in modules:
            del module.forward


@contextlib.contextmanager
def cast_parameters(modules: Iterable[nn.Module], dtype: torch.dtype,
                    exclude: Iterable[torch.Tensor] = ()) -> Iterator[None]:
    """Hold the floating-point parameters of ``modules`` (but those in ``exclude``) in ``dtype`` for the
    duration.

    A copy in ``dtype`` is made once on entry and the original tensors are put back on exit, so the
    weights are bit-identical afterwards (a plain ``.to(bfloat16)`` round trip would round them).
    The Parameter objects stay the same, so hooks and tied weights keep working. Nothing is copied
    for tensors already in ``dtype``. Buffers (e.g. rotary frequencies) keep their dtype. Used to run
    frozen blocks in bf16 without autocast re-casting every weight at every step (autocast caches
    casts only of leaf tensors that require grad).
    """
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: set[int] = {id(t) for t in exclude}
    try:
        for module in modules:
            for t in module.parameters():
                if id(t) in seen or t.dtype == dtype or not t.is_floating_point():
                    continue
                seen.add(id(t))
                saved.append((t, t.data))
                t.data = t.data.to(dtype)
        yield
    finally:
        for t, data in saved:
            t.data = data


def cache_kwargs(model: nn.Module, cache: object) -> dict[str, object]:
    """Keyword arguments that hand ``cache`` to the HF model's forward (``cache`` in transformers >= 5,
    ``past_key_values`` before)."""
    params = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    return {name: cache, "use_cache": True}


def new_kv_cache(model: nn.Module) -> object:
    """An empty HF ``DynamicCache`` for ``model`` (filled by the forward or by :func:`fill_kv_cache`)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56: no config argument
        return DynamicCache()


def cached_kv(cache: object, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) of ``layer`` in an HF cache, each (batch, kv_heads, seq, head_dim)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[layer].keys, layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]  # type: ignore[attr-defined]


def fill_kv_cache(model: nn.Module, kv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> object:
    """A new HF cache holding ``kv[layer] = (keys, values)`` for the given layers (others empty)."""
    cache = new_kv_cache(model)
    for layer in sorted(kv):
        keys, values = kv[layer]
        cache.update(keys, values, layer)  # type: ignore[attr-defined]
    return cache
