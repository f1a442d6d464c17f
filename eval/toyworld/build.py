"""Build and check the toy world's artifacts.

``build`` generates the datasets, trains the tokenizer and the model, measures recall on every
fact prompt, runs the lm-eval probes, and publishes everything at once into
``eval/toyworld/artifacts`` (written to a temporary folder first, manifest last, then renamed).
``check`` verifies the shipped files against the manifest and re-measures recall from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from eval.toyworld.datasets import generate_files
from eval.toyworld.paths import ARTIFACTS_DIR, task_configs
from eval.toyworld.train import (
    FactItem,
    TrainSpec,
    encode_facts,
    question_to_nq,
    recall,
    train_model,
    train_tokenizer,
    training_texts,
)
from eval.toyworld.world import World, WorldSpec, generate_world, world_from_json

logger = logging.getLogger(__name__)

MIN_RECALL = 0.95
MAX_MODEL_BYTES = 25 * 1024 * 1024


def tokenizer_texts(world: World, spec: TrainSpec) -> list[str]:
    """Everything the model will read: biographies, fillers, and every fact statement."""
    bios, fillers = training_texts(world, spec)
    texts = bios + fillers
    for s in world.subjects:
        for r in world.relations:
            obj = s.facts[r.relation_id]
            texts += [f"{t.format(s.name)} {obj}." for t in r.templates]
            texts += [f"{q.format(s.name)} {obj}" for q in r.questions]
            texts += [f"{question_to_nq(q.format(s.name))}? {obj}" for q in r.questions]
    return texts


def check_tokenization(world: World, tok: PreTrainedTokenizerFast) -> None:
    """Every surname must be one token (unique last subject token); objects must split on words."""
    bad = [s.surname for s in world.subjects if len(tok.encode(" " + s.surname)) != 1]
    if bad:
        raise RuntimeError(
            f"{len(bad)} surnames are not single tokens (e.g. {bad[:5]}); raise TrainSpec.vocab_size"
        )
    for s in world.subjects[:50]:
        for r in world.relations:
            prompt = r.templates[0].format(s.name)
            obj = " " + s.facts[r.relation_id]
            if tok.encode(prompt + obj) != tok.encode(prompt) + tok.encode(obj):
                raise RuntimeError(f"prompt/object tokenization is not additive for {prompt!r} + {obj!r}")


def recall_report(model: Any, items: Sequence[FactItem]) -> dict[str, Any]:
    """Recall overall, per relation and per prompt form (templates and questions)."""
    hits = recall(model, items)
    by_rel: dict[str, list[bool]] = defaultdict(list)
    by_form: dict[str, list[bool]] = defaultdict(list)
    for it, ok in zip(items, hits, strict=True):
        by_rel[it.relation_id].append(ok)
        by_form[it.form].append(ok)
    mean = lambda xs: round(sum(xs) / len(xs), 4)  # noqa: E731
    return {
        "overall": mean(hits),
        "n_prompts": len(hits),
        "per_relation": {k: mean(v) for k, v in sorted(by_rel.items())},
        "per_form": {k: mean(v) for k, v in sorted(by_form.items())},
    }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _counts(files: dict[str, bytes]) -> dict[str, int]:
    counts = {}
    for name, data in files.items():
        if name.endswith(".jsonl"):
            counts[name] = data.count(b"\n")
        elif name.endswith(".json"):
            obj = json.loads(data)
            counts[name] = len(obj) if isinstance(obj, list | dict) else 1
    return counts


def build(out_dir: Path = ARTIFACTS_DIR, world_spec: WorldSpec | None = None, train_spec: TrainSpec | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Build every artifact into ``out_dir`` atomically; return the manifest."""
    world_spec = world_spec or WorldSpec()
    train_spec = train_spec or TrainSpec()
    from tqdm.auto import tqdm

    from eval.probes import run_probes

    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    world = generate_world(world_spec)
    files = generate_files(world)
    tmp = Path(tempfile.mkdtemp(prefix=".toyworld-build-", dir=out_dir.parent))
    try:
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)

        tok = train_tokenizer(tokenizer_texts(world, train_spec), train_spec.vocab_size)
        check_tokenization(world, tok)
        bar = tqdm(total=train_spec.max_steps, desc="train toy model", disable=not progress, mininterval=2)

        def on_step(step: int, stats: dict[str, float]) -> None:
            bar.update(step - bar.n)
            bar.set_postfix({k: round(v, 3) for k, v in stats.items() if k != "step"}, refresh=False)

        model, train_stats = train_model(world, tok, train_spec, progress=on_step)
        bar.close()
        model_dir = tmp / "model"
        model.save_pretrained(model_dir, safe_serialization=True)
        tok.save_pretrained(model_dir)
        weights = model_dir / "model.safetensors"
        if weights.stat().st_size > MAX_MODEL_BYTES:
            raise RuntimeError(f"{weights} is {weights.stat().st_size} bytes, over the 25 MB budget")

        # Re-measure from the saved files, exactly as users will load them.
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tok = AutoTokenizer.from_pretrained(model_dir)
        items = [it for it in encode_facts(world, tok, include_nq=False)]
        rec = recall_report(model, items)
        logger.info("recall %.4f over %d prompts", rec["overall"], rec["n_prompts"])
        probes = run_probes(model, tok, task_configs(tmp), batch_size=64)
        build_seconds = round(time.time() - t0, 1)

        manifest = {
            "name": "toyworld",
            "seed": world_spec.seed,
            "world_spec": asdict(world_spec),
            "train_spec": asdict(train_spec),
            "counts": {
                "subjects": len(world.subjects),
                "edit_subjects": len(world.edit_subjects),
                "heldout_subjects": len(world.heldout_subjects),
                "relations": len(world.relations),
                "facts": len(world.subjects) * len(world.relations),
                "files": _counts(files),
            },
            "model": {
                "architecture": "GPT2LMHeadModel",
                "parameters": sum(p.numel() for p in model.parameters()),
                "weights_bytes": weights.stat().st_size,
                "vocab_size": len(tok),
                "train_steps": int(train_stats["steps"]),
            },
            "recall": rec,
            "probes": {f"{p.task}/{p.metric}": round(p.value, 4) for p in probes},
            "build_seconds": build_seconds,
            "torch_threads": torch.get_num_threads(),
            "files": [],
        }
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp).as_posix()
            manifest["files"].append({"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")  # manifest last

        old = out_dir.with_name(out_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old.exists():
            shutil.rmtree(old)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class ArtifactMismatchError(RuntimeError):
    pass


def verify_files(artifacts_dir: Path = ARTIFACTS_DIR) -> dict[str, Any]:
    """Check every file listed in the manifest (exists, size, sha256); return the manifest."""
    manifest_path = artifacts_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactMismatchError(f"{manifest_path} is missing; run `python -m eval.toyworld build`")
    manifest = json.loads(manifest_path.read_text())
    problems = []
    for entry in manifest["files"]:
        path = artifacts_dir / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: content differs from the manifest (sha256/size)")
    if problems:
        raise ArtifactMismatchError(
            "toy world artifacts do not match manifest.json:\n  " + "\n  ".join(problems)
            + "\nRestore them with `git checkout -- eval/toyworld/artifacts` or rebuild with "
            "`python -m eval.toyworld build`."
        )
    return manifest


def measure_recall(artifacts_dir: Path = ARTIFACTS_DIR) -> dict[str, Any]:
    """Re-measure recall of the shipped model on every fact prompt, from the shipped files."""
    verify_files(artifacts_dir)
    world = world_from_json(json.loads((artifacts_dir / "world.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(artifacts_dir / "model").eval()
    tok = AutoTokenizer.from_pretrained(artifacts_dir / "model")
    return recall_report(model, encode_facts(world, tok, include_nq=False))
