"""The real world's preservation corpus (Wikipedia's role in the paper): English prose that the
real model itself writes from diverse openings.

Why model samples. No Wikipedia dump (nor any other large English corpus) ships on PyPI, and the
hub is unreachable. K0 is meant to stand for "the keys the model sees on ordinary text"; SmolLM2 was
pretrained on a web / encyclopedic / educational mix, so its own samples (temperature 1, top-k 50,
from 120 topic openings over history, science, sport, cooking, music, technology, health, nature,
economics and everyday life) follow that distribution far more closely than a hand-written text
would. The openings never use the edited relations' templates (no "... is located in the country
of", no "The capital of ... is"), so the corpus is not made of the edited facts' own prompts.
Sampling is seeded; the committed ``corpus.jsonl`` is the artifact (floating point may make a
rebuild on other hardware differ slightly, as with the toy model).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Topic openings: each is sampled ``docs_per_opening`` times with different seeds.
OPENINGS: tuple[str, ...] = (
    "The history of the printing press", "In the early nineteenth century,", "The Industrial Revolution",
    "Ancient Egyptian temples", "During the Middle Ages, farmers", "The fall of the Berlin Wall",
    "Archaeologists working in the desert", "The origins of the Olympic Games", "Medieval castles were",
    "The invention of the telephone", "Photosynthesis is the process", "The human heart",
    "Black holes are regions", "A volcano forms when", "The theory of evolution", "Water boils at",
    "Electric cars have become", "The immune system protects", "Honey bees communicate",
    "The Moon's surface", "Climate scientists have observed", "Quantum mechanics describes",
    "The periodic table", "Dinosaurs lived", "A healthy breakfast", "To bake a loaf of bread,",
    "The best way to cook rice", "Coffee beans are", "A traditional soup recipe", "Chocolate is made",
    "Vegetables grown in the garden", "When making pasta at home,", "The football match ended",
    "Tennis players train", "The marathon runner", "Basketball was invented", "Swimming is an excellent",
    "The chess tournament", "Cycling through the countryside", "The orchestra began to play",
    "Jazz music developed", "Learning to play the piano", "The band released its first album",
    "Classical composers such as", "A good song usually", "The first computers were",
    "Software engineers often", "The internet changed", "Smartphones allow people",
    "Artificial intelligence research", "A database stores", "Programming languages like",
    "Regular exercise helps", "Sleep is important because", "Doctors recommend", "A balanced diet",
    "Hospitals around the world", "Vaccines work by", "The forest was quiet", "Rivers carry",
    "Elephants are known for", "The ocean covers", "Birds migrate south", "Mountains are formed",
    "Rain fell all afternoon", "The desert at night", "Inflation occurs when", "A small business owner",
    "The stock market", "Banks lend money", "International trade allows", "Taxes are collected",
    "The novel tells the story", "Shakespeare's plays", "Poetry often uses", "The library opened",
    "Children learn to read", "A good teacher", "The museum's collection", "Every morning, she",
    "My grandfather used to say", "The train was late again,", "On weekends, families",
    "Moving to a new city", "The old house at the end of the street", "Writing a letter by hand",
    "The school year begins", "A friendly neighbour", "The meeting was scheduled", "Gardening tips:",
    "How to fix a flat tire:", "Instructions for assembling the shelf:", "The weather forecast says",
    "A brief guide to saving money:", "The company announced", "Researchers at the university",
    "The new bridge", "Public transport in large cities", "Renewable energy sources", "The election results",
    "Human rights are", "Philosophers have long debated", "The word 'democracy'", "Mathematics is",
    "A triangle has", "Prime numbers are", "Statistics can be used", "The recipe calls for",
    "In a small village,", "Once upon a time,", "The detective looked at", "She opened the door and",
    "He had never seen", "The children ran", "After the storm,", "The festival takes place",
    "Tourists often visit", "Street food is", "Architecture in the twentieth century", "Paintings by",
    "The photographer", "Film directors", "The theatre was full",
)


def sample_documents(model: Any, tokenizer: Any, openings: Sequence[str], docs_per_opening: int,
                     new_tokens: int, seed: int, batch_size: int = 64) -> list[dict[str, Any]]:
    """``docs_per_opening`` seeded samples of ``new_tokens`` tokens after each opening."""
    import torch
    from tqdm import tqdm

    rows = [(i, o, r) for r in range(docs_per_opening) for i, o in enumerate(openings)]
    tokenizer.padding_side = "left"  # generation continues at the right end
    docs: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="corpus", disable=os.environ.get("CI") == "true"):
        batch = rows[start:start + batch_size]
        torch.manual_seed(seed * 1_000_003 + start)
        enc = tokenizer([o for _, o, _ in batch], return_tensors="pt", padding=True).to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=True, top_k=50, temperature=1.0,
                                 pad_token_id=tokenizer.pad_token_id)
        for (i, opening, r), ids in zip(batch, out, strict=True):
            text = tokenizer.decode(ids[enc.input_ids.shape[1]:], skip_special_tokens=True)
            docs.append({"id": f"o{i:03d}-s{r:02d}", "title": opening, "text": opening + text})
    tokenizer.padding_side = "right"
    docs.sort(key=lambda d: d["id"])
    return docs


def write_corpus(docs: Sequence[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
