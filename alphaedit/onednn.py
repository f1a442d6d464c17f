"""fp32 linear layers through oneDNN with weights packed once, for no-grad forwards on CPU.

PyTorch sends an fp32 ``nn.Linear`` on CPU to MKL's sgemm. On CPUs where MKL does not take its
AVX-512 path (AMD EPYC: measured here on Zen 5 with AVX-512, 2 threads, (4096 x 576) @ (576 x 1536)
and back: MKL ~100 GFLOPS per thread, oneDNN with a pre-packed weight ~225) oneDNN, which dispatches
on the instruction set, is ~2x faster on the same fp32 arithmetic (results differ by the summation
order only, ~1e-6 relative). :func:`packed_linears` reorders every fp32 ``nn.Linear`` weight of a
model once into oneDNN's blocked layout and, for the duration, runs those layers with
``torch.ops.mkldnn._linear_pointwise`` (the op Inductor's CPU backend emits for a linear layer).

Only for inference: the op has no autograd, so a layer called with gradients enabled, or on an
input that is not fp32 on CPU, runs its own forward. The weights must not change inside the
context (the packed copies would be stale); nothing is modified, and leaving the context removes
every override. Where oneDNN is not available, the context does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterable, Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)


def onednn_available() -> bool:
    """Whether this PyTorch build can run packed fp32 linears through oneDNN."""
    return bool(torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None):
    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() < 2:
            return nn.Linear.forward(self, x)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")  # (..., out)

    return forward


@contextlib.contextmanager
def packed_linears(modules: Iterable[nn.Module], exclude: Iterable[nn.Module] = ()) -> Iterator[int]:
    """Run every fp32 CPU ``nn.Linear`` inside ``modules`` (but those in ``exclude``) through oneDNN
    with a weight packed on entry; yields the number of layers so handled (0 where unavailable)."""
    if not onednn_available():
        yield 0
        return
    skip = {id(m) for m in exclude}
    patched: list[nn.Linear] = []
    try:
        for root in modules:
            for module in root.modules():
                if (type(module) is not nn.Linear or id(module) in skip or "forward" in module.__dict__
                        or module.weight.dtype != torch.float32 or module.weight.device.type != "cpu"):
                    continue
                skip.add(id(module))
                weight = module.weight.detach()
                bias = None if module.bias is None else module.bias.detach()
                if bias is not None and bias.dtype != torch.float32:
                    continue
                packed = torch.ops.mkldnn._reorder_linear_weight(weight)  # (out, in), oneDNN layout
                module.forward = types.MethodType(_packed_forward(packed, bias), module)
                patched.append(module)
        logger.debug("packed_linears: %d fp32 linear layers through oneDNN", len(patched))
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
