"""Tokenization helpers: right padding done by hand so no tokenizer state is ever mutated."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else its eos token (reference behaviour)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"{type(tokenizer).__name__} has neither a pad nor an eos token; set tokenizer.pad_token before editing"
    )


def encode(tokenizer, texts: Sequence[str], *, add_special_tokens: bool = True,
           max_length: int | None = None) -> list[list[int]]:
    """Token ids of each text (no padding); truncated to ``max_length`` when given."""
    if not texts:
        return []
    enc = tokenizer(
        list(texts),
        add_special_tokens=add_special_tokens,
        truncation=max_length is not None,
        max_length=max_length,
    )
    return [list(ids) for ids in enc["input_ids"]]


def right_pad(ids: Sequence[Sequence[int]], pad: int, device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (batch, max_len), both int64."""
    if not ids:
        raise ValueError("right_pad: empty batch")
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        if not row:
            raise ValueError(f"right_pad: row {i} is empty (an empty text tokenizes to no tokens)")
        input_ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return input_ids.to(device), mask.to(device)


def left_pad(ids: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` (batch, max_len), int64 on the CPU (for generation:
    every row's last token is at the last position; positions come from the mask's cumulative sum)."""
    if not ids:
        raise ValueError("left_pad: empty batch")
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row):] = torch.as_tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return input_ids, mask


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def continuation_ids(tokenizer, prompts: Sequence[str], continuations: Sequence[str], *,
                     prompt_ids: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Token ids of ``continuations[i]`` as the model reads them after ``prompts[i]``.

    The ids are the tail of ``tokens(prompts[i] + continuations[i])`` after ``tokens(prompts[i])``, so
    prompt ids + continuation ids equal the ids of the joined string. Tokenizing the continuation on
    its own (the reference's ``tok(" " + target)``) gives the same ids for byte-level BPE (GPT-2,
    GPT-J, Llama-3, Qwen, SmolLM2), but a SentencePiece tokenizer (Llama-2, Mistral) prepends a "▁"
    to any text it starts, so ``" Paris"`` alone becomes ``["▁", "▁Paris"]`` and every target gets a
    spurious first token. Where the joined string's ids do not extend the prompt's ids (a merge across
    the boundary), the continuation is tokenized on its own, as the reference does.
    ``prompt_ids``: ``encode(tokenizer, prompts)`` when the caller has it already.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"continuation_ids: {len(prompts)} prompts but {len(continuations)} continuations")
    if not prompts:
        return []
    head = encode(tokenizer, prompts) if prompt_ids is None else [list(h) for h in prompt_ids]
    joined = encode(tokenizer, [p + c for p, c in zip(prompts, continuations, strict=True)])
    alone = None
    out: list[list[int]] = []
    for i, (h, j) in enumerate(zip(head, joined, strict=True)):
        if len(j) > len(h) and j[: len(h)] == h:
            out.append(j[len(h):])
            continue
        if alone is None:
            alone = encode(tokenizer, continuations, add_special_tokens=False)
        out.append(alone[i])
    return out
