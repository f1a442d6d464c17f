"""Batched, teacher-forced log-probabilities of target strings after prompts.

``score_targets(model, tokenizer, prompts, targets)`` scores pair i = (prompts[i], targets[i]):
the input is tokens(prompt) (special tokens as the tokenizer adds them, e.g. Llama's BOS) followed by
the target's tokens as they continue the prompt (:func:`alphaedit.tokens.continuation_ids`: prompt +
target tokens = tokens of the joined string, so a SentencePiece tokenizer adds no spurious "▁").
For each pair it returns the per-token NLL of the target tokens, their mean (the CounterFact
probability test compares these means: efficacy is mean NLL(true) > mean NLL(new)), and whether every target token is the argmax (the CounterFact "acc" / zsRE
token-accuracy building block).

How it is computed (the result is that of one forward per pair, up to float rounding):

* Every scored sequence (prompt + target minus its last token) goes into one prefix tree of token
  ids, so a prompt shared by several targets, a prefix shared by several prompts (a BOS, "The city
  of") and a repeated prompt are computed once (100 real CounterFact records: 2,600 pairs, 33k
  per-pair tokens, 10.7k trie nodes). Sub-trees are packed into rows of ``row_tokens`` positions (a
  sub-tree too large for a row is split: its children's sub-trees are grouped into pieces, each
  after one copy of their ancestors); each position attends to exactly its ancestors (an explicit
  4-D attention mask) at its depth as position id, which is the causal context it has in its own
  sequence. Short rows (64) keep the dense W x W attention small at ~3% more positions than 256.
* A target token is read from the logits at the node that ends just before it (the first one at
  the prompt's last token), so single-token targets cost no position of their own, and the output
  layer runs only at those nodes (the final norm's output is captured and the forward stops there),
  not over the vocabulary at every position.
* Rows are batched by length (``batch_size`` rows, at most ``max_tokens`` padded tokens a forward).
* In fp32 on CPU the linear layers run through oneDNN with weights packed once per call
  (:mod:`alphaedit.onednn`), for calls large enough to repay the packing.

Models whose ``model_type`` has no :class:`~alphaedit.models.ModelSpec` fall back to the model's
full logits (same numbers, more work).

Targets are used verbatim: pass " Paris" (with the leading space) where the prompt ends before the
answer word, as CounterFact's "prompt + ' ' + target" does. For a cross product of prompts and
targets, build the pairs with :func:`cross_pairs`.

On top of it, the CounterFact probability test (:func:`counterfact_probability_scores`: efficacy,
generalization, specificity and their magnitudes per case), used by ``eval.rewrite`` and by
:func:`alphaedit.edit`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from alphaedit.hooks import capture, cast_parameters, run_until_stopped
from alphaedit.models import ModelSpec, UnknownModelTypeError, get_module, spec_for
from alphaedit.onednn import packed_linears
from alphaedit.requests import EditRequest
from alphaedit.tokens import continuation_ids, encode, model_device, pad_id


@dataclass(frozen=True)
class TargetScores:
    nll: torch.Tensor  # (n,) float32, mean NLL (nats) over each target's tokens
    token_nll: list[torch.Tensor]  # n tensors (|target_i|,) float32
    argmax_correct: torch.Tensor  # (n,) bool: every target token is the greedy prediction
    token_correct: list[torch.Tensor]  # n tensors (|target_i|,) bool

    @property
    def prob(self) -> torch.Tensor:
        """exp(-mean NLL): the geometric-mean token probability."""
        return torch.exp(-self.nll)


def cross_pairs(prompts: Sequence[str], targets: Sequence[str]) -> tuple[list[str], list[str]]:
    """All (prompt, target) pairs, prompt-major: for scoring every target after every prompt."""
    return [p for p in prompts for _ in targets], [t for _ in prompts for t in targets]


class _Trie:
    """Every scored token sequence (prompt + target[:-1]) as a prefix tree of token ids."""

    def __init__(self) -> None:
        self.token: list[int] = []
        self.parent: list[int] = []
        self.depth: list[int] = []
        self.children: list[dict[int, int]] = []
        self.roots: dict[int, int] = {}

    def insert(self, ids: Sequence[int]) -> list[int]:
        """Node ids of every prefix of ``ids`` (node i ends at token i), creating missing nodes."""
        nodes, level, parent = [], self.roots, -1
        for depth, tok in enumerate(ids):
            node = level.get(tok)
            if node is None:
                node = len(self.token)
                self.token.append(tok)
                self.parent.append(parent)
                self.depth.append(depth)
                self.children.append({})
                level[tok] = node
            nodes.append(node)
            level, parent = self.children[node], node
        return nodes

    def sizes(self) -> list[int]:
        size = [1] * len(self.token)
        for node in range(len(self.token) - 1, -1, -1):  # children are created after their parent
            if self.parent[node] >= 0:
                size[self.parent[node]] += size[node]
        return size


@dataclass
class _Row:
    """Tree-packed row: several sub-trees of the trie, each after a copy of its root's ancestors."""

    nodes: list[int]  # trie node at each position
    ancestors: list[list[int]]  # row positions each position attends to (its ancestors and itself)


def _units(trie: _Trie, width: int) -> list[tuple[list[int], list[int]]]:
    """(ancestor path, sub-tree roots) pieces of at most ``width`` positions covering every node.

    A sub-tree too large for a row is split: its root joins the path, and its children's sub-trees
    are grouped (first-fit decreasing) into pieces that each carry one copy of that path.
    """
    size = trie.sizes()
    out: list[tuple[list[int], list[int]]] = []
    stack: list[tuple[list[int], list[int]]] = [([], list(trie.roots.values()))]
    while stack:
        path, roots = stack.pop()
        groups: list[list[int]] = []
        free: list[int] = []
        for node in sorted(roots, key=lambda n: -size[n]):
            if size[node] + len(path) > width and trie.children[node]:
                stack.append((path + [node], list(trie.children[node].values())))
                continue
            slot = next((i for i, f in enumerate(free) if f >= size[node]), None)
            if slot is None:
                groups.append([])
                free.append(width - len(path))
                slot = len(groups) - 1
            groups[slot].append(node)
            free[slot] -= size[node]
        out.extend((path, group) for group in groups)
    return out


def _pack_rows(trie: _Trie, width: int) -> list[_Row]:
    """First-fit-decreasing packing of the pieces of :func:`_units` into rows of <= ``width``."""
    size = trie.sizes()
    units = sorted(_units(trie, width), key=lambda u: -(len(u[0]) + sum(size[n] for n in u[1])))
    rows: list[_Row] = []
    free: list[int] = []
    for path, roots in units:
        need = len(path) + sum(size[n] for n in roots)
        slot = next((i for i, f in enumerate(free) if f >= need), None)
        if slot is None:
            rows.append(_Row([], []))
            free.append(width)
            slot = len(rows) - 1
        row = rows[slot]
        chain: list[int] = []
        for node in path:  # the ancestors, copied once for the piece
            row.nodes.append(node)
            chain.append(len(row.nodes) - 1)
            row.ancestors.append(list(chain))
        stack = [(root, chain) for root in reversed(roots)]
        while stack:  # depth-first over the sub-trees; each position sees its chain of ancestors
            node, above = stack.pop()
            row.nodes.append(node)
            mine = above + [len(row.nodes) - 1]
            row.ancestors.append(mine)
            stack.extend((child, mine) for child in reversed(list(trie.children[node].values())))
        free[slot] -= need
    return rows


def _tree_mask(rows: Sequence[_Row], width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask (b, 1, W, W): position q attends to k iff k is q or one of its ancestors."""
    b_idx, q_idx, k_idx = [], [], []
    for b, row in enumerate(rows):
        for q, keys in enumerate(row.ancestors):
            b_idx.extend([b] * len(keys))
            q_idx.extend([q] * len(keys))
            k_idx.extend(keys)
    allowed = torch.zeros(len(rows), width, width, dtype=torch.bool)
    allowed[b_idx, q_idx, k_idx] = True
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # padding queries see themselves
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None].to(device)


def _batches(rows: list[_Row], batch_size: int, max_tokens: int) -> list[list[_Row]]:
    order = sorted(rows, key=lambda r: len(r.nodes))
    out: list[list[_Row]] = []
    batch: list[_Row] = []
    for row in order:  # ascending length: the padded size of a batch is (len(batch) + 1) * len(row)
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * len(row.nodes) > max_tokens):
            out.append(batch)
            batch = []
        batch.append(row)
    if batch:
        out.append(batch)
    return out


def _low_logits(head: nn.Module, low_weight: torch.Tensor, hidden: torch.Tensor, read_nodes: list[int],
                needed: dict[int, set[int]]) -> torch.Tensor:
    """Logits (n, V) of the output layer from ``low_weight`` (its weight in the compute dtype) with
    the scored tokens' logits redone in the head's own precision."""
    weight, bias = head.weight, getattr(head, "bias", None)  # the head was left in its own dtype
    logits = torch.nn.functional.linear(hidden.to(low_weight.dtype), low_weight).float()  # (n, V)
    rows = torch.tensor([i for i, n in enumerate(read_nodes) for _ in needed[n]], device=hidden.device)
    toks = torch.tensor([t for n in read_nodes for t in sorted(needed[n])], device=hidden.device)
    exact = (hidden[rows].float() * weight[toks].float()).sum(-1)  # (reads,)
    if bias is not None:
        logits = logits + bias.float()
        exact = exact + bias[toks].float()
    return logits.index_put_((rows, toks), exact)


#: Positions from which ``score_targets`` packs the linear layers for oneDNN by default (packing the
#: weights of SmolLM2-135M takes about as long as ~400 positions' forwards save).
ONEDNN_MIN_POSITIONS = 1024


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@torch.no_grad()
def score_targets(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 64,
    *,
    max_tokens: int = 4096,
    row_tokens: int = 64,
    spec: ModelSpec | None = None,
    dtype: torch.dtype | str | None = None,
    onednn: bool | None = None,
) -> TargetScores:
    """Teacher-forced NLL and argmax-correctness of ``targets[i]`` after ``prompts[i]``.

    ``batch_size``: packed rows per forward; ``max_tokens``: padded tokens per forward; ``row_tokens``:
    positions per packed row (longer sequences get a row of their own length). ``spec``: where the
    final norm and output layer are (default: from the model's type).

    ``dtype`` (e.g. ``"bfloat16"``; default None: the model's own, which gives the per-pair numbers):
    every weight but the output layer's is held in that dtype for the call (one cast, restored
    bit-exactly); the output layer's GEMM runs in it too, but the logit of every scored token is
    recomputed in fp32 and the log-softmax is taken in fp32. Faster on bf16 hardware (AVX512-BF16,
    AMX, GPUs); the NLLs move by the bf16 rounding of the forward (~1e-2), so a comparison of two
    targets that are that close can flip. Needs a registered ``spec``.

    ``onednn`` (fp32 on CPU): True runs the model's linear layers through oneDNN with weights packed
    once for the call (:func:`alphaedit.onednn.packed_linears`: the same fp32 arithmetic in another
    summation order, ~1e-6 relative; ~2x faster GEMMs where MKL lacks its AVX-512 path); False keeps
    PyTorch's own; None (default) packs when the call computes at least ``ONEDNN_MIN_POSITIONS``
    positions (packing costs about as much as that many positions save).
    """
    if len(prompts) != len(targets):
        raise ValueError(f"score_targets: {len(prompts)} prompts but {len(targets)} targets; pass pairs "
                         "(see cross_pairs for a cross product)")
    prompt_ids = encode(tokenizer, prompts)
    target_ids = continuation_ids(tokenizer, prompts, targets, prompt_ids=prompt_ids)
    for i, ids in enumerate(target_ids):
        if not ids:
            raise ValueError(f"score_targets: target {i} ({targets[i]!r}) tokenizes to no tokens")
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ValueError(f"score_targets: prompt {i} ({prompts[i]!r}) tokenizes to no tokens")
    if not prompts:
        return TargetScores(nll=torch.zeros(0), token_nll=[], argmax_correct=torch.zeros(0, dtype=torch.bool),
                            token_correct=[])
    if spec is None:
        try:
            spec = spec_for(model)
        except UnknownModelTypeError:
            spec = None
    device = model_device(model)
    model_dtype = _model_dtype(model)
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"score_targets: unknown dtype {dtype!r}; use e.g. 'bfloat16'")
        dtype = getattr(torch, dtype)
    low = dtype is not None and dtype != model_dtype
    if low and spec is None:
        raise ValueError(f"score_targets: dtype={dtype} needs a ModelSpec for {type(model).__name__}; pass spec=")
    dtype = dtype or model_dtype
    pad = pad_id(tokenizer)
    trie = _Trie()
    reads: list[list[int]] = []  # per pair: the node whose logits predict each target token
    for p, t in zip(prompt_ids, target_ids, strict=True):
        nodes = trie.insert(p + t[:-1])
        reads.append(nodes[len(p) - 1 : len(p) - 1 + len(t)])
    width = max(row_tokens, max(len(p) + len(t) for p, t in zip(prompt_ids, target_ids, strict=True)))
    rows = _pack_rows(trie, width)
    where: dict[int, tuple[int, int]] = {}  # node -> (row, position) of its first occurrence
    for r, row in enumerate(rows):
        for pos, node in enumerate(row.nodes):
            where.setdefault(node, (r, pos))
    node_nll: dict[tuple[int, int], torch.Tensor] = {}  # (node, token) -> (nll, argmax)
    needed: dict[int, set[int]] = {}  # node -> tokens read after it
    for pair_reads, t in zip(reads, target_ids, strict=True):
        for node, tok in zip(pair_reads, t, strict=True):
            needed.setdefault(node, set()).add(tok)
    row_of = {id(row): r for r, row in enumerate(rows)}
    was_training = model.training
    model.eval()
    head = get_module(model, spec.lm_head) if spec is not None else None
    if onednn is None:
        onednn = sum(len(row.nodes) for row in rows) >= ONEDNN_MIN_POSITIONS
    cast = (cast_parameters([model], dtype, exclude=list(head.parameters())) if low and head is not None
            else packed_linears([model]) if onednn and not low else contextlib.nullcontext())
    low_weight = head.weight.detach().to(dtype) if low and head is not None else None
    try:
        with cast:
            for batch in _batches(rows, max(1, batch_size), max_tokens):
                w = max(len(r.nodes) for r in batch)
                input_ids = torch.full((len(batch), w), pad, dtype=torch.long)
                position_ids = torch.zeros((len(batch), w), dtype=torch.long)
                for b, row in enumerate(batch):
                    input_ids[b, : len(row.nodes)] = torch.tensor([trie.token[n] for n in row.nodes])
                    position_ids[b, : len(row.nodes)] = torch.tensor([trie.depth[n] for n in row.nodes])
                mask = _tree_mask(batch, w, dtype, device)
                input_ids, position_ids = input_ids.to(device), position_ids.to(device)
                local = {row_of[id(row)]: b for b, row in enumerate(batch)}
                read_nodes = [n for n in needed if where[n][0] in local]
                rows_t = torch.tensor([local[where[n][0]] for n in read_nodes], device=device)
                cols_t = torch.tensor([where[n][1] for n in read_nodes], device=device)
                if spec is not None:
                    kwargs: dict[str, object] = dict(position_ids=position_ids)
                    if low:  # the (fp32, maybe output-tied) embedding, then the compute dtype
                        kwargs["inputs_embeds"] = model.get_input_embeddings()(input_ids).to(dtype)
                    with capture(model, outputs_of=[spec.final_norm], stop_after=spec.final_norm) as store:
                        run_until_stopped(model, None if low else input_ids, mask, **kwargs)
                    hidden = store["out:" + spec.final_norm][rows_t, cols_t]  # (read positions, d_model)
                    logits = (_low_logits(head, low_weight, hidden, read_nodes, needed) if low
                              else head(hidden))  # (read positions, V)
                else:
                    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                   use_cache=False).logits[rows_t, cols_t]
                logp = torch.log_softmax(logits.float(), dim=-1).cpu()  # (read positions, V)
                top = logp.argmax(-1)
                for i, node in enumerate(read_nodes):
                    for tok in needed[node]:
                        node_nll[(node, tok)] = torch.stack([-logp[i, tok], (top[i] == tok).float()])
    finally:
        model.train(was_training)
    token_nll, token_correct = [], []
    for pair_reads, t in zip(reads, target_ids, strict=True):
        vals = torch.stack([node_nll[(node, tok)] for node, tok in zip(pair_reads, t, strict=True)])  # (|t|, 2)
        token_nll.append(vals[:, 0].contiguous())
        token_correct.append(vals[:, 1].bool())
    nll_mean = torch.stack([x.mean() for x in token_nll]) if token_nll else torch.zeros(0)
    all_correct = torch.stack([x.all() for x in token_correct]) if token_correct else torch.zeros(0, dtype=torch.bool)
    return TargetScores(nll=nll_mean, token_nll=token_nll, argmax_correct=all_correct, token_correct=token_correct)


# --- the CounterFact probability test (eval.rewrite's rewrite metrics and alphaedit.edit use it) ----

#: Rewrite metrics are reported x100, like the paper's tables.
SCALE = 100.0


class ProbabilityCase(Protocol):
    """What the probability test reads of a case: the request and its three kinds of prompts
    (``eval.datasets.CounterFactRecord`` is one; so is ``alphaedit.api.EditCase``)."""

    @property
    def request(self) -> EditRequest: ...
    @property
    def rewrite_prompts(self) -> Sequence[str]: ...
    @property
    def paraphrase_prompts(self) -> Sequence[str]: ...
    @property
    def neighborhood_prompts(self) -> Sequence[str]: ...


def probability_success(nll_new: torch.Tensor, nll_true: torch.Tensor, *, new_should_win: bool) -> torch.Tensor:
    """CounterFact success booleans: ``NLL_true > NLL_new`` (rewrite/paraphrase) or ``<`` (neighborhood)."""
    return (nll_true > nll_new) if new_should_win else (nll_true < nll_new)


def probability_margin(nll_new: torch.Tensor, nll_true: torch.Tensor, *, new_should_win: bool) -> torch.Tensor:
    """``exp(-NLL_new) - exp(-NLL_true)``, sign flipped when the true target should win."""
    diff = torch.exp(-nll_new) - torch.exp(-nll_true)
    return diff if new_should_win else -diff


def per_record_mean(values: torch.Tensor, owners: Sequence[int], n_records: int) -> torch.Tensor:
    """(n_records,) mean of ``values[j]`` over the j with ``owners[j] == record``; NaN where none."""
    owner = torch.as_tensor(list(owners), dtype=torch.long)
    sums = torch.zeros(n_records, dtype=torch.float64).index_add(0, owner, values.double())
    counts = torch.zeros(n_records, dtype=torch.float64).index_add(0, owner, torch.ones(len(owner), dtype=torch.float64))
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))


def mean_over_records(per_record: torch.Tensor | Sequence[float]) -> tuple[float, int]:
    """(mean x100, number of records) over records with a value (NaN = no value)."""
    vals = torch.as_tensor(per_record, dtype=torch.float64)
    has = ~torch.isnan(vals)
    n = int(has.sum())
    return (float(vals[has].mean()) * SCALE if n else math.nan), n



@dataclass(frozen=True)
class CounterFactScores:
    """Per-record values (n_records,), unscaled; NaN where a record has no prompt of that kind."""

    efficacy: torch.Tensor
    generalization: torch.Tensor
    specificity: torch.Tensor
    efficacy_magnitude: torch.Tensor
    generalization_magnitude: torch.Tensor
    specificity_magnitude: torch.Tensor


def counterfact_probability_scores(model: nn.Module, tokenizer, records: Sequence[ProbabilityCase],
                                   *, batch_size: int = 64) -> CounterFactScores:
    """The probability tests of all records: both targets after every prompt, in padded batches."""
    kinds = {"rewrite": (lambda r: r.rewrite_prompts, True),
             "paraphrase": (lambda r: r.paraphrase_prompts, True),
             "neighborhood": (lambda r: r.neighborhood_prompts, False)}
    prompts: list[str] = []
    news: list[str] = []
    trues: list[str] = []
    spans: dict[str, tuple[int, int, list[int]]] = {}
    for kind, (get, _) in kinds.items():
        start, owners = len(prompts), []
        for i, rec in enumerate(records):
            for p in get(rec):
                prompts.append(p)
                news.append(rec.request.target_new)
                trues.append(rec.request.target_true)
                owners.append(i)
        spans[kind] = (start, len(prompts), owners)
    n = len(prompts)
    nll = score_targets(model, tokenizer, prompts + prompts, news + trues, batch_size=batch_size).nll  # (2n,)
    nll_new, nll_true = nll[:n], nll[n:]
    out: dict[str, torch.Tensor] = {}
    for (kind, (_, new_wins)), metric in zip(kinds.items(), ("efficacy", "generalization", "specificity"),
                                             strict=True):
        lo, hi, owners = spans[kind]
        ok = probability_success(nll_new[lo:hi], nll_true[lo:hi], new_should_win=new_wins).float()
        margin = probability_margin(nll_new[lo:hi], nll_true[lo:hi], new_should_win=new_wins)
        out[metric] = per_record_mean(ok, owners, len(records))
        out[f"{metric}_magnitude"] = per_record_mean(margin, owners, len(records))
    return CounterFactScores(**out)
