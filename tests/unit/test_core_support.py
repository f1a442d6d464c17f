"""Shared helpers for the alphaedit core tests (no tests here): tiny tokenizer, tiny models, toy world."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TOY_DIR = REPO / "eval" / "toyworld" / "artifacts"

FIRST = ["Anna", "Boris", "Clara", "David", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Karin", "Liam"]
LAST = ["Varo", "Quill", "Marsh", "Tobin", "Drax", "Pell", "Roan", "Sable", "Wick", "Yarrow", "Zell", "Brisk"]
CITIES = ["Paris", "Berlin", "Rome", "Madrid", "Oslo", "Vienna", "Lisbon", "Prague"]
JOBS = ["painter", "doctor", "pilot", "farmer", "writer", "chemist"]


def synthetic_texts(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        out.append(
            f"{name} was born in {rng.choice(CITIES)}. {name} works as a {rng.choice(JOBS)} "
            f"and lives in {rng.choice(CITIES)}. The city of {rng.choice(CITIES)} is large."
        )
    return out


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer (~400 tokens) trained in-process on the synthetic texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(synthetic_texts(400) + [" is a", " Therefore", " Because", " You", " I"], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_model(model_type: str, vocab_size: int, seed: int = 0, n_layers: int = 4, width: int = 64,
               init_range: float = 0.1):
    """A randomly initialised causal LM of the given HF model_type (float32, eval mode)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, num_hidden_layers=n_layers, hidden_size=width,
                  intermediate_size=4 * width, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, tie_word_embeddings=False, initializer_range=init_range)
    if model_type == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab_size, n_layer=n_layers, n_embd=width, n_head=4, n_positions=256,
                             initializer_range=init_range)
        model = tf.GPT2LMHeadModel(cfg)
    elif model_type == "gptj":
        cfg = tf.GPTJConfig(vocab_size=vocab_size, n_layer=n_layers, n_embd=width, n_head=4, n_positions=256,
                            rotary_dim=8, initializer_range=init_range)
        model = tf.GPTJForCausalLM(cfg)
    elif model_type == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    elif model_type == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(**common))
    elif model_type == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
    elif model_type == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, head_dim=16))
    else:
        raise ValueError(model_type)
    return model.eval()


def tiny_requests(n: int = 4):
    from alphaedit import EditRequest

    out = []
    for i in range(n):
        out.append(EditRequest(
            case_id=i, prompt="{} was born in", subject=f"{FIRST[i % len(FIRST)]} {LAST[i % len(LAST)]}",
            target_new=CITIES[(i + 1) % len(CITIES)], target_true=CITIES[i % len(CITIES)],
        ))
    return out


def toy_world_available() -> bool:
    return (TOY_DIR / "model").is_dir() and (TOY_DIR / "counterfact.json").exists() and (TOY_DIR / "wiki.jsonl").exists()


@functools.lru_cache(maxsize=1)
def toy_world():
    """(model, tokenizer, counterfact records, wiki texts) of the embedded toy world."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOY_DIR / "model")
    model = AutoModelForCausalLM.from_pretrained(TOY_DIR / "model", dtype=torch.float32).eval()
    records = json.loads((TOY_DIR / "counterfact.json").read_text())
    wiki = [json.loads(line)["text"] for line in (TOY_DIR / "wiki.jsonl").read_text().splitlines() if line.strip()]
    return model, tokenizer, records, wiki
