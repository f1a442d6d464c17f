"""Target values z for a whole batch of requests, optimized together (reference ``compute_z``).

For request r, δ_r ∈ R^{d_model} is added to the output of block L (the last edited layer) at the
subject's last token of every prompt of r. Loss of r (reference code):

    NLL_r = mean over the T context-template prompts of -(1/|o|) Σ_t log p(o_t | prompt, o_<t)
    KL_r  = kl_factor · KL(p_δ || p_0) of the next-token distribution at the subject's last token of
            kl_prompt ("{} is a"), p_0 recorded before any step
    WD_r  = v_weight_decay · ||δ_r|| / ||h0_r||²
    loss_r = NLL_r + KL_r + WD_r

All requests share one forward/backward per step; the total loss is Σ_r loss_r, and since request
r's prompts only see δ_r (and Adam is element-wise), every δ_r follows exactly the trajectory of a
separate per-request optimization. A request stops (its δ is frozen) once its loss is below
``v_early_stop_loss``, or, with ``v_stop_most_probable`` (ENCORE's most-probable early stopping,
arXiv 2502.01636), once every target token is the argmax after every rewriting prompt; the last
iteration only evaluates. After each step δ_r is clamped to ||δ_r|| <= clamp_norm_factor · ||h0_r||.
Output: z_r = h0_r + δ_r, with h0_r the block-L output at the subject's last token of the bare prompt.

What one step computes (the rest is done once, before the first step):

* δ enters at the lookup position s of each prompt row, so by causality nothing at positions < s
  depends on δ, and nothing below block L does. Blocks 0..L run once over every row (their output
  is replayed at every step), and the blocks above L run once over each row's prefix (positions
  < s) to record its keys/values. A step runs the blocks above L only on each row's *suffix*
  (positions s .. last position a loss reads: the target tokens of a rewriting prompt, the lookup
  itself for the KL prompt), attending to the recorded prefix keys/values through an explicit
  4-D mask, with explicit position ids.
* Rows are grouped by suffix length (one forward per group, one backward for all) so padding stays
  small; only requests still optimizing take part, and the output layer runs only where a loss
  reads a logit.
* ``v_dtype="bfloat16"`` holds the blocks above L (and the final norm) in bf16 for the whole call,
  one cast up front (autocast would re-cast every frozen weight in every step); blocks 0..L, h0, δ,
  Adam, the output layer and the losses stay in fp32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from alphaedit.hooks import (
    add_at_positions,
    cache_kwargs,
    cached_kv,
    capture,
    cast_parameters,
    fill_kv_cache,
    new_kv_cache,
    replay_blocks,
    run_until_stopped,
)
from alphaedit.hparams import EditHparams
from alphaedit.models import ModelSpec, get_module, n_layers
from alphaedit.prompts import request_prompts, subject_prompts
from alphaedit.requests import EditRequest, fill_subject
from alphaedit.templates import Templates, flat_templates
from alphaedit.tokens import continuation_ids, model_device, pad_id, right_pad

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TargetResult:
    z: torch.Tensor  # (u, d_model) float32: h0 + δ
    h0: torch.Tensor  # (u, d_model) float32
    loss: torch.Tensor  # (u,) final loss of each request
    nll: torch.Tensor  # (u,) final NLL term
    steps: torch.Tensor  # (u,) Adam updates taken by each request
    most_probable: torch.Tensor | None = None  # (u,) bool: every target token argmax at the last evaluation
    initial_loss: torch.Tensor | None = None  # (u,) loss at step 0 (δ = 0)


class StuckTargetError(FloatingPointError):
    """A request's target loss did not fall during the z optimisation and its target is not reached:
    the edit would not move the model towards it (e.g. ``v_lr`` far too small)."""


def stuck_requests(result: TargetResult, hparams: EditHparams) -> list[int]:
    """Indices of the requests whose optimisation took at least one Adam update, ended with a loss not
    below its step-0 loss, and did not reach the target: the final loss is not below
    ``v_early_stop_loss`` and not every target token is the argmax. A request whose loss starts below
    the threshold stops at step 0 with no update; one the model already answers (every target token
    the argmax, whose tiny loss Adam's first steps may raise: KL and weight decay) is reached too."""
    if result.initial_loss is None:
        return []
    reached = result.loss < hparams.v_early_stop_loss  # (u,)
    if result.most_probable is not None:
        reached = reached | result.most_probable
    stuck = (result.steps > 0) & ~reached & ~(result.loss < result.initial_loss)  # NaN loss counts as stuck
    return stuck.nonzero()[:, 0].tolist()


def check_targets_moved(result: TargetResult, requests: Sequence[EditRequest], hparams: EditHparams) -> None:
    """Raise :class:`StuckTargetError` naming the requests of :func:`stuck_requests` and the
    hyper-parameters that drive the optimisation."""
    stuck = stuck_requests(result, hparams)
    if not stuck:
        return
    named = ", ".join(f"case_id={requests[i].case_id!r} (loss {float(result.initial_loss[i]):.4g} -> "
                      f"{float(result.loss[i]):.4g} after {int(result.steps[i])} steps)" for i in stuck[:5])
    more = f" and {len(stuck) - 5} more" if len(stuck) > 5 else ""
    raise StuckTargetError(
        f"the target loss did not fall for {len(stuck)} of {len(requests)} request(s): {named}{more}; the target "
        f"(loss < v_early_stop_loss={hparams.v_early_stop_loss:g}, or the target the argmax) is not reached. Check v_lr={hparams.v_lr:g} and "
        f"v_num_grad_steps={hparams.v_num_grad_steps} (and clamp_norm_factor={hparams.clamp_norm_factor:g}); "
        "nothing was applied to the model."
    )


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Temporarily turn off requires_grad on every parameter (only δ is optimized)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _logits(model: nn.Module, spec: ModelSpec, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits (n, vocab) in float32 of final-norm hidden states (n, d_model)."""
    head = get_module(model, spec.lm_head)
    weight = getattr(head, "weight", None)
    if weight is not None and hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    return head(hidden).float()


class _NllHead:
    """Log-probabilities of label tokens under the output layer (n hidden states -> (n,) log p(token)).

    fp32 (``dtype`` float32 or a head without a plain weight): the model's own head, full log-softmax.
    Lower precision: the (n, vocab) logits come from one bf16 GEMM (a copy of the head's weight made
    once), except the label token's own logit, which is recomputed in fp32 (a row-wise dot product)
    and put in its place, so log p(token) = logit_token - logsumexp(logits) is exact up to the other
    words' bf16 rounding weighted by their probability, and tends to exact as p(token) -> 1.
    The full-vocabulary logits at every label are the largest tensor of a step; their GEMM is
    memory-bound in fp32 and 4-5x faster in bf16 on AVX512-BF16/AMX CPUs.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec, dtype: torch.dtype) -> None:
        self.model, self.spec = model, spec
        head = get_module(model, spec.lm_head)
        weight = getattr(head, "weight", None)
        self.low = None
        if dtype != torch.float32 and isinstance(head, nn.Linear) and weight is not None and weight.ndim == 2:
            self.weight = weight.detach()  # (V, d) original precision
            self.bias = None if head.bias is None else head.bias.detach()
            self.low = self.weight.to(dtype)

    def __call__(self, hidden: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(tokens) (n,), argmax over the vocabulary (n,)) for hidden states (n, d)."""
        if self.low is None:
            logp = torch.log_softmax(_logits(self.model, self.spec, hidden), dim=-1)  # (n, V)
            return logp.gather(1, tokens[:, None])[:, 0], logp.detach().argmax(-1)
        logits = torch.nn.functional.linear(hidden.to(self.low.dtype), self.low).float()  # (n, V)
        exact = (hidden.to(self.weight.dtype) * self.weight[tokens]).sum(-1).float()  # (n,)
        if self.bias is not None:
            logits = logits + self.bias.float()
            exact = exact + self.bias[tokens].float()
        logits = logits.scatter(1, tokens[:, None], exact[:, None])
        return exact - torch.logsumexp(logits, dim=-1), logits.detach().argmax(-1)


@contextlib.contextmanager
def _cpu_math_attention(device: torch.device) -> Iterator[None]:
    """On CPU, scaled-dot-product attention through its math path: the fused CPU kernel's backward
    with an explicit mask costs ~10 ms per call at the small shapes of a step (measured, torch 2.13)."""
    if device.type != "cpu":
        yield
        return
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def length_groups(lengths: Sequence[int], overhead: float) -> list[list[int]]:
    """Partition indices of ``lengths`` into groups padded to their longest member, minimizing
    Σ_groups (|group| · max length + overhead): an exact dynamic program over the sorted distinct
    lengths (groups are contiguous runs of them). ``overhead`` is the cost of one more forward, in
    tokens; 0 gives one group per distinct length, a huge value a single group."""
    if not lengths:
        return []
    distinct = sorted(set(lengths))
    counts = [sum(1 for x in lengths if x == v) for v in distinct]
    m = len(distinct)
    best = [0.0] + [float("inf")] * m  # best[j]: cost of grouping distinct[:j]
    cut = [0] * (m + 1)
    for j in range(1, m + 1):
        size = 0
        for i in range(j, 0, -1):  # group = distinct[i-1 .. j-1], padded to distinct[j-1]
            size += counts[i - 1]
            cost = best[i - 1] + size * distinct[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    bounds = []
    j = m
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    groups = []
    for lo, hi in reversed(bounds):
        members = set(distinct[lo:hi])
        groups.append([i for i, x in enumerate(lengths) if x in members])
    return groups


@dataclass
class _Group:
    """Rows of similar suffix length, with everything a step needs that does not depend on δ."""

    req: torch.Tensor  # (g,) request of each row
    start: torch.Tensor  # (g,) lookup position s (first suffix position) in the full row
    length: torch.Tensor  # (g,) suffix length
    replay: torch.Tensor  # (g, S, d_model) block-L output over the suffix (no δ), in the compute dtype
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]]  # upper layer -> prefix (keys, values) (g, h, P, hd)
    prefix_len: int  # P = max start in the group (0: no prefix cache)
    lab_row: torch.Tensor  # (labels,) local row of each label
    lab_pos: torch.Tensor  # (labels,) suffix position whose logits predict the label
    lab_tok: torch.Tensor
    lab_req: torch.Tensor
    kl_row: torch.Tensor  # local rows that are KL prompts (their logits are read at suffix position 0)
    kl_req: torch.Tensor


def _suffix_mask(start: torch.Tensor, length: torch.Tensor, prefix_len: int, width: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask (n, 1, width, prefix_len + width) for suffix queries: a row's prefix
    keys k < start, and its suffix keys causally; padding queries also see themselves (no empty row)."""
    n, device = start.shape[0], start.device
    k = torch.arange(prefix_len, device=device)
    prefix_ok = (k[None, :] < start[:, None])[:, None, :].expand(n, width, prefix_len)  # (n, S, P)
    j = torch.arange(width, device=device)
    causal = j[None, :] <= j[:, None]  # (S, S): key m <= query j
    valid = (j[None, None, :] < length[:, None, None]) | (j[None, :] == j[:, None])[None]  # (n, S, S)
    allowed = torch.cat([prefix_ok, causal[None] & valid], dim=-1)  # (n, S, P + S)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _block_outputs(model: nn.Module, spec: ModelSpec, layer: int, rows: Sequence[Sequence[int]], pad: int,
                   device: torch.device, chunk_rows: int) -> tuple[list[torch.Tensor], bool]:
    """Block-``layer`` output of every row (len(row), d_model), no grad, blocks above never run."""
    name = spec.block_name(layer)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[torch.Tensor | None] = [None] * len(rows)
    is_tuple = False
    with torch.no_grad():
        for lo in range(0, len(order), chunk_rows):
            idx = order[lo : lo + chunk_rows]
            ids, mask = right_pad([rows[i] for i in idx], pad, device)
            record = _TupleProbe(model, name)  # registered first: fires before capture's stop hook
            try:
                with capture(model, outputs_of=[name], stop_after=name) as store:
                    run_until_stopped(model, ids, mask)
            finally:
                record.remove()
            hidden = store["out:" + name]
            is_tuple = record.is_tuple
            for j, i in enumerate(idx):
                out[i] = hidden[j, : len(rows[i])]
    return out, is_tuple  # type: ignore[return-value]


class _TupleProbe:
    """Records whether a module returns a tuple (HF blocks do before transformers 5)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        self.is_tuple = False
        self._handle = get_module(model, name).register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _args: tuple, output: object) -> None:
        self.is_tuple = isinstance(output, tuple)

    def remove(self) -> None:
        self._handle.remove()


def _pad_stack(tensors: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """(n, width, d): each (len_i, d) tensor cut or zero-padded to ``width`` rows."""
    d = tensors[0].shape[-1]
    out = tensors[0].new_zeros(len(tensors), width, d)
    for i, t in enumerate(tensors):
        m = min(width, t.shape[0])
        out[i, :m] = t[:m]
    return out


def compute_targets(
    model: nn.Module,
    tokenizer,
    spec: ModelSpec,
    requests: Sequence[EditRequest],
    templates: Templates,
    hparams: EditHparams,
    layer: int | None = None,
    *,
    group_overhead_tokens: float | None = None,
    history: list[dict[str, torch.Tensor]] | None = None,
) -> TargetResult:
    """Optimize z for all ``requests`` at block ``layer`` (default: the last edited layer).

    ``group_overhead_tokens``: the cost of one more forward per step, in suffix tokens, that the
    grouping of rows by length trades against padding (None: 16 on CPU, 1024 elsewhere, where a
    forward's fixed cost is larger). It changes the speed, not the result (beyond float rounding).
    ``history``: when a list, one dict per evaluated step is appended (``loss``, ``nll``,
    ``most_probable``, ``active``, each (u,); a request's values freeze once it stops).
    """
    if not requests:
        raise ValueError("compute_targets: no requests")
    layer = hparams.layers[-1] if layer is None else layer
    flat = flat_templates(templates)
    if flat[0] != "{}":
        raise ValueError("compute_targets: the first context template must be the bare '{}' template")
    n_tmpl, u = len(flat), len(requests)
    device = model_device(model)
    dtype = TORCH_DTYPES[hparams.v_dtype]
    if group_overhead_tokens is None:
        group_overhead_tokens = 16 if device.type == "cpu" else 1024

    # The target's tokens as they continue the bare prompt (no spurious SentencePiece "▁"; see continuation_ids).
    target_ids = continuation_ids(tokenizer, [fill_subject(r.prompt, r.subject) for r in requests],
                                  [r.target_new for r in requests])
    for r, ids in zip(requests, target_ids, strict=True):
        if not ids:
            raise ValueError(f"case_id={r.case_id!r}: target_new {r.target_new!r} tokenizes to no tokens")
    rewrite = subject_prompts(
        tokenizer, request_prompts(requests, flat), [r.subject for r in requests for _ in flat], hparams.fact_token
    )
    kl = subject_prompts(tokenizer, [hparams.kl_prompt] * u, [r.subject for r in requests], hparams.fact_token)

    # Rows: u·T rewriting prompts (teacher forcing: the target minus its last token), then u KL prompts.
    rows: list[list[int]] = []
    row_req: list[int] = []
    start: list[int] = []  # lookup position = first position that depends on δ
    end: list[int] = []  # one past the last position whose logits a loss reads
    labels: list[list[tuple[int, int]]] = []  # per row: (position, token)
    for r in range(u):
        tgt = target_ids[r]
        for t in range(n_tmpl):
            prompt = rewrite[r * n_tmpl + t]
            rows.append(prompt.ids + tgt[:-1])
            row_req.append(r)
            start.append(prompt.lookup)
            end.append(len(prompt.ids) + len(tgt) - 1)
            labels.append([(len(prompt.ids) - 1 + j, tok) for j, tok in enumerate(tgt)])
    for r, p in enumerate(kl):
        rows.append(p.ids)
        row_req.append(r)
        start.append(p.lookup)
        end.append(p.lookup + 1)
        labels.append([])
    n_kl_first = u * n_tmpl
    tokens_per_req = torch.tensor([len(t) * n_tmpl for t in target_ids], device=device, dtype=torch.float32)
    n_blocks = n_layers(model, spec)
    below = [spec.block_name(i) for i in range(layer + 1)]
    upper_layers = list(range(layer + 1, n_blocks))
    upper_modules = [get_module(model, spec.block_name(i)) for i in upper_layers] + [get_module(model, spec.final_norm)]
    d_model = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd)
    chunk = max(1, hparams.prompt_batch_size)
    pad = pad_id(tokenizer)

    was_training = model.training
    model.eval()
    try:
        with frozen_parameters(model):
            # 1. blocks 0..L once, in the model's dtype: the clean block-L output of every row, h0.
            clean, clean_is_tuple = _block_outputs(
                model, spec, layer, [row[:e] for row, e in zip(rows, end, strict=True)], pad, device, chunk)
            h0 = torch.stack([clean[r * n_tmpl][rewrite[r * n_tmpl].lookup] for r in range(u)]).float()  # (u, d)
            with cast_parameters(upper_modules, dtype), _cpu_math_attention(device):
                groups = _build_groups(model, spec, layer, rows, row_req, start, end, labels, n_kl_first, clean,
                                       clean_is_tuple, below, upper_layers, dtype, device, chunk,
                                       float(group_overhead_tokens))
                del clean
                result = _optimize(model, spec, layer, hparams, groups, below, clean_is_tuple, h0, tokens_per_req,
                                   u, d_model, dtype, device, history)
    finally:
        model.train(was_training)
    delta, loss, nll, steps, most_probable, loss0 = result
    z = h0 + delta
    logger.info(
        "targets z: %d requests, %d row groups, %s, mean final loss %.4f (nll %.4f), mean steps %.1f, "
        "most probable %d/%d, mean |δ|/|h0| %.3f",
        u, len(groups), hparams.v_dtype, float(loss.mean()), float(nll.mean()), float(steps.float().mean()),
        int(most_probable.sum()), u, float((delta.norm(dim=-1) / h0.norm(dim=-1)).mean()),
    )
    out = TargetResult(z=z, h0=h0, loss=loss, nll=nll, steps=steps, most_probable=most_probable, initial_loss=loss0)
    check_targets_moved(out, requests, hparams)
    return out


def _build_groups(model, spec, layer, rows, row_req, start, end, labels, n_kl_first, clean, clean_is_tuple,
                  below, upper_layers, dtype, device, chunk, overhead) -> list[_Group]:
    """Group rows by suffix length; record each group's replayed suffix and its prefix keys/values."""
    lengths = [e - s for s, e in zip(start, end, strict=True)]
    groups = []
    last_block = spec.block_name(upper_layers[-1]) if upper_layers else None
    for members in length_groups(lengths, overhead):
        g_start = [start[i] for i in members]
        width = max(lengths[i] for i in members)
        prefix_len = max(g_start) if upper_layers else 0
        replay = _pad_stack([clean[i][start[i] : end[i]] for i in members], width).to(dtype)
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if prefix_len > 0:
            parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {lay: [] for lay in upper_layers}
            with torch.no_grad():
                for lo in range(0, len(members), chunk):
                    idx = members[lo : lo + chunk]
                    replay_in = _pad_stack([clean[i] for i in idx], prefix_len).to(dtype)  # (c, P, d)
                    mask = torch.zeros(len(idx), prefix_len, dtype=torch.long, device=device)
                    for j, i in enumerate(idx):
                        mask[j, : min(len(clean[i]), prefix_len)] = 1
                    cache = new_kv_cache(model)
                    embeds = torch.zeros_like(replay_in)
                    with (replay_blocks(model, below, (replay_in,) if clean_is_tuple else replay_in),
                          capture(model, stop_after=last_block)):
                        run_until_stopped(model, None, mask, inputs_embeds=embeds, **cache_kwargs(model, cache))
                    for lay in upper_layers:
                        keys, values = cached_kv(cache, lay)
                        parts[lay].append((keys[:, :, :prefix_len], values[:, :, :prefix_len]))
            kv = {lay: (torch.cat([k for k, _ in p]), torch.cat([v for _, v in p])) for lay, p in parts.items()}
        local = {i: j for j, i in enumerate(members)}
        lab = [(local[i], pos - start[i], tok, row_req[i]) for i in members for pos, tok in labels[i]]
        kls = [(local[i], row_req[i]) for i in members if i >= n_kl_first]

        def col(items, k):
            return torch.tensor([x[k] for x in items], dtype=torch.long, device=device)

        groups.append(_Group(
            req=torch.tensor([row_req[i] for i in members], device=device),
            start=torch.tensor(g_start, device=device),
            length=torch.tensor([lengths[i] for i in members], device=device),
            replay=replay, kv=kv, prefix_len=prefix_len,
            lab_row=col(lab, 0), lab_pos=col(lab, 1), lab_tok=col(lab, 2), lab_req=col(lab, 3),
            kl_row=col(kls, 0), kl_req=col(kls, 1),
        ))
    logger.debug("targets z: %d rows in %d groups (suffix lengths %s)", len(rows), len(groups),
                 [int(g.length.max()) for g in groups])
    return groups


def _group_forward(model, spec, layer, group: _Group, act: torch.Tensor, delta_of, below, clean_is_tuple,
                   dtype, device) -> torch.Tensor:
    """Final-norm hidden states (n, S, d_model) of the active rows ``act`` of ``group`` with δ added."""
    n = len(act)
    length, begin = group.length[act], group.start[act]
    width = int(length.max())
    replay = group.replay[act, :width]
    mask = _suffix_mask(begin, length, group.prefix_len, width, dtype)
    steps = torch.minimum(torch.arange(width, device=device)[None, :], (length - 1)[:, None])
    position_ids = begin[:, None] + steps  # (n, S); padding repeats the last real position
    kwargs: dict[str, object] = dict(inputs_embeds=torch.zeros(n, width, replay.shape[-1], dtype=dtype, device=device),
                                     position_ids=position_ids)
    if group.prefix_len > 0:
        cache = fill_kv_cache(model, {lay: (k[act], v[act]) for lay, (k, v) in group.kv.items()})
        kwargs.update(cache_kwargs(model, cache))
    with contextlib.ExitStack() as stack:
        stack.enter_context(replay_blocks(model, below, (replay,) if clean_is_tuple else replay))
        stack.enter_context(add_at_positions(model, spec.block_name(layer), torch.arange(n, device=device),
                                             torch.zeros(n, dtype=torch.long, device=device), delta_of))
        store = stack.enter_context(capture(model, outputs_of=[spec.final_norm], stop_after=spec.final_norm))
        run_until_stopped(model, None, mask, **kwargs)
    return store["out:" + spec.final_norm]


def _optimize(model, spec, layer, hparams: EditHparams, groups: list[_Group], below, clean_is_tuple, h0,
              tokens_per_req, u, d_model, dtype, device, history=None):
    delta = torch.zeros(u, d_model, device=device, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=hparams.v_lr)
    done = torch.zeros(u, dtype=torch.bool, device=device)
    steps = torch.zeros(u, dtype=torch.long, device=device)
    loss = torch.zeros(u, device=device, dtype=torch.float32)
    nll_all = torch.zeros(u, device=device, dtype=torch.float32)
    most_probable = torch.zeros(u, dtype=torch.bool, device=device)
    loss0: torch.Tensor | None = None  # (u,) loss at step 0
    log_p0: torch.Tensor | None = None  # (u, V) KL anchor, recorded at step 0 (every request active)
    head = _NllHead(model, spec, dtype)
    for it in range(hparams.v_num_grad_steps):
        active = ~done  # (u,)
        lab_h, lab_tok, lab_req, kl_h, kl_req = [], [], [], [], []
        for g in groups:
            act = active[g.req].nonzero()[:, 0]
            if len(act) == 0:
                continue
            req_a = g.req[act]
            hidden = _group_forward(model, spec, layer, g, act, lambda req_a=req_a: delta[req_a], below,
                                    clean_is_tuple, dtype, device)  # (n, S, d)
            new_index = torch.full((len(g.req),), -1, dtype=torch.long, device=device)
            new_index[act] = torch.arange(len(act), device=device)
            sel = active[g.lab_req]
            lab_h.append(hidden[new_index[g.lab_row[sel]], g.lab_pos[sel]])
            lab_tok.append(g.lab_tok[sel])
            lab_req.append(g.lab_req[sel])
            ksel = active[g.kl_req]
            kl_h.append(hidden[new_index[g.kl_row[ksel]], 0])
            kl_req.append(g.kl_req[ksel])
        l_tok, l_req, k_req = torch.cat(lab_tok), torch.cat(lab_req), torch.cat(kl_req)
        token_logp, top = head(torch.cat(lab_h), l_tok)  # (labels,) log p(label), argmax word
        nll = -torch.zeros(u, device=device, dtype=torch.float32).index_add(0, l_req, token_logp) / tokens_per_req
        wrong = torch.zeros(u, device=device, dtype=torch.float32).index_add(
            0, l_req, (top != l_tok).float())  # (u,) target tokens that are not the argmax
        log_p = torch.log_softmax(_logits(model, spec, torch.cat(kl_h)), dim=-1)  # (a, V)
        if log_p0 is None:
            log_p0 = torch.zeros(u, log_p.shape[-1], device=device, dtype=log_p.dtype)
            log_p0[k_req] = log_p.detach()
        kl_term = torch.zeros(u, device=device, dtype=torch.float32).index_add(
            0, k_req, (log_p.exp() * (log_p - log_p0[k_req])).sum(-1))  # (u,) KL(p_δ || p_0)
        wd = hparams.v_weight_decay * delta.norm(dim=-1) / h0.norm(dim=-1) ** 2  # (u,)
        step_loss = nll + hparams.kl_factor * kl_term + wd  # (u,), meaningful for active requests
        loss = torch.where(active, step_loss.detach(), loss)
        if loss0 is None:
            loss0 = loss.clone()  # step 0: every request active, δ = 0
        nll_all = torch.where(active, nll.detach(), nll_all)
        most_probable = torch.where(active, wrong == 0, most_probable)
        if history is not None:
            history.append({"loss": loss.clone(), "nll": nll_all.clone(), "most_probable": most_probable.clone(),
                            "active": active.clone()})
        stop = step_loss.detach() < hparams.v_early_stop_loss
        if hparams.v_stop_most_probable:
            stop = stop | (wrong == 0)
        done = done | (active & stop)
        if bool(done.all()) or it == hparams.v_num_grad_steps - 1:
            break
        frozen = delta.detach()[done].clone()
        optimizer.zero_grad(set_to_none=True)
        step_loss[active].sum().backward()
        optimizer.step()
        with torch.no_grad():
            max_norm = hparams.clamp_norm_factor * h0.norm(dim=-1, keepdim=True)  # (u, 1)
            scale = (max_norm / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
            delta.mul_(scale)
            delta[done] = frozen
        steps += (~done).long()
    return delta.detach(), loss, nll_all, steps, most_probable, loss0
