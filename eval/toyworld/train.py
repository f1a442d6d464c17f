"""Train the toy world's tokenizer and its GPT-2-architecture model.

The model is trained on two streams at once:

* **fact rows**: every fact in every cloze template and question form (plus the zsRE-style
  "nq question:" form), packed into rows separated by ``<|endoftext|>``; the loss is taken on
  the object tokens only, which is what makes memorisation fast on two CPU cores;
* **text rows**: the biographies (the "wiki" preservation corpus) and unrelated filler
  sentences with the ordinary next-token loss on every token, so that the model is also a
  language model of the world's prose (needed by fluency, the KL prompt and the probes).

Training stops when the recall on a fixed sample of fact prompts reaches ``target_recall`` (or
at ``max_steps``); the build then measures the recall on *all* prompts.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from eval.toyworld.datasets import wiki
from eval.toyworld.world import World, filler_sentence

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
NQ_PREFIX = "nq question: "


@dataclass(frozen=True)
class TrainSpec:
    """Every knob of the tokenizer and model training (all of them change the artifacts)."""

    seed: int = 0
    vocab_size: int = 8192
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    fact_row_len: int = 64
    text_row_len: int = 128
    fact_rows: int = 64
    text_rows: int = 6
    text_loss_weight: float = 0.5
    nq_fraction: float = 0.05
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_steps: int = 3000
    eval_every: int = 200
    eval_sample: int = 2000
    target_recall: float = 0.99
    # Subject curriculum: start on this fraction of the subjects and grow linearly to all of them
    # over `ramp_steps` steps. A small pool breaks the initial plateau (the model has to learn to
    # route the subject's last token to the answer position) much sooner than the full pool.
    start_fraction: float = 0.1
    ramp_steps: int = 1000
    n_filler: int = 3000


def question_to_nq(question: str) -> str:
    """'Where was X born?' -> 'nq question: where was X born' (the zsRE ``loc`` style)."""
    q = question.rstrip("?")
    return NQ_PREFIX + q[0].lower() + q[1:]


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer trained on ``texts``."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=128,
    )


@dataclass(frozen=True)
class FactItem:
    """Token ids of one prompt and its object (``object_ids`` carry the leading space)."""

    prompt_ids: tuple[int, ...]
    object_ids: tuple[int, ...]
    relation_id: str
    form: str  # "template" | "question" | "nq"


def encode_facts(world: World, tok: PreTrainedTokenizerFast, include_nq: bool) -> list[FactItem]:
    items: list[FactItem] = []
    for s in world.subjects:
        for r in world.relations:
            obj_ids = tuple(tok.encode(" " + s.facts[r.relation_id]))
            forms = [(t.format(s.name), "template") for t in r.templates]
            forms += [(q.format(s.name), "question") for q in r.questions]
            if include_nq:
                forms += [(question_to_nq(q.format(s.name)) + "?", "nq") for q in r.questions]
            for prompt, form in forms:
                items.append(FactItem(tuple(tok.encode(prompt)), obj_ids, r.relation_id, form))
    return items


def training_texts(world: World, spec: TrainSpec) -> tuple[list[str], list[str]]:
    """(biographies, filler sentences): the text stream. Biographies are the wiki corpus."""
    bios = [row["text"] for row in wiki(world)]
    rng = random.Random(spec.seed + 1)
    fillers = [filler_sentence(rng) for _ in range(spec.n_filler)]
    return bios, fillers


def _pack(rng: random.Random, pool: Sequence[tuple[list[int], list[int]]], n_rows: int, row_len: int,
          eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack (ids, targets-mask) items into ``n_rows`` rows of ``row_len`` tokens.

    Returns input ids (n_rows, row_len) and next-token targets (n_rows, row_len) holding -100
    where no loss is taken. Items are separated by EOS; an item that does not fit starts a new row.
    """
    ids = torch.full((n_rows, row_len), eos_id, dtype=torch.long)
    tgt = torch.full((n_rows, row_len), -100, dtype=torch.long)
    for row in range(n_rows):
        pos = 0
        while True:
            item_ids, loss_mask = pool[rng.randrange(len(pool))]
            item_ids, loss_mask = item_ids[: row_len - 1], loss_mask[: row_len - 1]
            if pos + len(item_ids) + 1 > row_len:
                break
            ids[row, pos : pos + len(item_ids)] = torch.tensor(item_ids)
            for j, use in enumerate(loss_mask):
                # Token j of the item is predicted from position pos + j - 1.
                if use and pos + j - 1 >= 0:
                    tgt[row, pos + j - 1] = item_ids[j]
            pos += len(item_ids) + 1  # + EOS separator
            if pos >= row_len - 4:
                break
    return ids, tgt


def build_model(spec: TrainSpec, tok: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    return GPT2LMHeadModel(config)


@torch.no_grad()
def recall(model: GPT2LMHeadModel, items: Sequence[FactItem], batch_size: int = 512) -> list[bool]:
    """Greedy-completion recall: is every object token the argmax after prompt + earlier tokens?

    With teacher forcing, "all object tokens are the argmax" is exactly "greedy decoding of
    len(object) tokens reproduces the object", computed in one padded forward per batch.
    """
    model.eval()
    out: list[bool] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        seqs = [list(it.prompt_ids) + list(it.object_ids) for it in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        for i, it in enumerate(chunk):
            p = len(it.prompt_ids)
            want = torch.tensor(it.object_ids)
            got = pred[i, p - 1 : p - 1 + len(it.object_ids)]
            out.append(bool(torch.equal(got, want)))
    return out


def train_model(
    world: World,
    tok: PreTrainedTokenizerFast,
    spec: TrainSpec,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[GPT2LMHeadModel, dict[str, float]]:
    """Train until the sampled recall reaches ``spec.target_recall``; return model and stats."""
    rng = random.Random(spec.seed + 2)
    torch.manual_seed(spec.seed)
    eos = tok.eos_token_id
    facts = encode_facts(world, tok, include_nq=True)
    plain = [f for f in facts if f.form != "nq"]
    nq = [f for f in facts if f.form == "nq"]
    # encode_facts yields the items subject by subject, so a prefix of the pool is a prefix of
    # the subjects (the curriculum below relies on it).
    fact_pool = [(list(f.prompt_ids) + list(f.object_ids), [0] * len(f.prompt_ids) + [1] * len(f.object_ids))
                 for f in plain]
    nq_pool = [(list(f.prompt_ids) + list(f.object_ids), [0] * len(f.prompt_ids) + [1] * len(f.object_ids))
               for f in nq]
    bios, fillers = training_texts(world, spec)
    text_pool = [(ids, [1] * len(ids)) for ids in (tok.encode(t) for t in bios + fillers)]
    eval_items = random.Random(spec.seed + 3).sample(plain, min(spec.eval_sample, len(plain)))

    model = build_model(spec, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < spec.warmup_steps:
            return spec.lr * (step + 1) / spec.warmup_steps
        frac = (step - spec.warmup_steps) / max(1, spec.max_steps - spec.warmup_steps)
        return spec.lr * (spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    n_nq_rows = max(1, round(spec.fact_rows * spec.nq_fraction))
    stats: dict[str, float] = {}
    step = 0
    for step in range(1, spec.max_steps + 1):
        model.train()
        active = min(1.0, spec.start_fraction + (1 - spec.start_fraction) * step / max(1, spec.ramp_steps))
        f_pool = fact_pool[: max(1, int(len(fact_pool) * active))]
        q_pool = nq_pool[: max(1, int(len(nq_pool) * active))]
        f_ids, f_tgt = _pack(rng, f_pool, spec.fact_rows - n_nq_rows, spec.fact_row_len, eos)
        q_ids, q_tgt = _pack(rng, q_pool, n_nq_rows, spec.fact_row_len, eos)
        t_ids, t_tgt = _pack(rng, text_pool, spec.text_rows, spec.text_row_len, eos)
        f_ids, f_tgt = torch.cat([f_ids, q_ids]), torch.cat([f_tgt, q_tgt])
        loss_f = _selected_loss(model, f_ids, f_tgt)
        loss_t = _selected_loss(model, t_ids, t_tgt)
        loss = loss_f + spec.text_loss_weight * loss_t
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        stats = {"step": step, "fact_loss": loss_f.item(), "text_loss": loss_t.item()}
        if step % spec.eval_every == 0 or step == spec.max_steps:
            stats["sample_recall"] = sum(recall(model, eval_items)) / len(eval_items)
            if progress:
                progress(step, stats)
            if stats["sample_recall"] >= spec.target_recall:
                break
        elif progress:
            progress(step, stats)
    model.eval()
    stats["steps"] = step
    return model, stats


def _selected_loss(model: GPT2LMHeadModel, ids: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on positions with a target only (the LM head runs on those rows only)."""
    hidden = model.transformer(input_ids=ids).last_hidden_state  # (B, T, d)
    sel = tgt != -100
    logits = model.lm_head(hidden[sel])  # (n_sel, V)
    return torch.nn.functional.cross_entropy(logits, tgt[sel])
