"""Artifact keys of a sweep's cached work: key statistics and null-space projectors of a run cell.

A key names everything that determines its artifact (model id + revision, module, corpus spec,
sample count, max length, dtype, key budget; a projector adds its threshold and mode), so a cache
hit is always the right artifact; :mod:`storage.artifacts` checks the full key on every read.
"""

from __future__ import annotations

import functools

from alphaedit import spec_for
from cluster.config import ModelConfig, RunCell
from storage.artifacts import KeyStatsKey, ProjectorKey


def corpus_spec(model: ModelConfig, n_docs: int):
    """``toywiki`` | ``realworld`` | ``wikipedia[:<snapshot>]`` | ``wikitext`` | comma-separated local files."""
    from eval.corpus import CorpusSpec

    c = model.corpus
    if c in ("toywiki", "realworld"):
        return CorpusSpec(kind=c, n_docs=n_docs)
    if c.startswith("wikipedia"):
        return CorpusSpec(kind="wikipedia", snapshot=c.split(":", 1)[1] if ":" in c else "20231101.en", n_docs=n_docs)
    if c == "wikitext":
        return CorpusSpec(kind="wikitext", n_docs=n_docs)
    return CorpusSpec(kind="files", files=tuple(model.resolve(p) for p in c.split(",")), n_docs=n_docs)


def model_revision(model: ModelConfig) -> str:
    """``model.revision``, or for ``local``: a sha256 over the local folder's config and weight files.

    The hash is computed once per folder state (file names, sizes and modification times): a sweep
    asks for it once per cell, and multi-GB weights would otherwise be read again each time.
    """
    from pathlib import Path

    path = Path(model.resolve(model.path))
    if model.revision != "local" or not path.is_dir():
        return model.revision
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors", ".bin"))
    state = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _folder_sha256(str(path), state)


@functools.lru_cache(maxsize=64)
def _folder_sha256(path: str, state: tuple[tuple[str, int, int], ...]) -> str:
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for name, _, _ in state:
        h.update(name.encode())
        with (Path(path) / name).open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def stats_keys(model: ModelConfig, cell: RunCell, module_names: dict[int, str], corpus_key: str,
               budget: int | None) -> dict[int, KeyStatsKey]:
    hp = cell.hparams()
    revision = model_revision(model)
    return {
        layer: KeyStatsKey(model_id=model.path, revision=revision, module=module_names[layer],
                           corpus=corpus_key, n_samples=hp.mom2_n_samples, max_length=hp.mom2_max_length,
                           dtype=hp.stats_dtype, key_budget=budget)
        for layer in hp.layers
    }


def cell_stats_keys(model: ModelConfig, cell: RunCell) -> dict[int, KeyStatsKey]:
    """The artifact keys of the key statistics ``cell`` needs, one per edited layer."""
    hp = cell.hparams()
    cfg = model.hf_config()
    spec = spec_for(cfg.model_type)
    module_names = {layer: spec.mlp_out_name(layer) for layer in hp.layers}
    budget = None
    if hp.key_budget_multiplier is not None:
        # FastMEMIT: multiplier x d_k keys (d_k = MLP intermediate width, from the config).
        d_k = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * cfg.hidden_size
        budget = int(hp.key_budget_multiplier * d_k)
    return stats_keys(model, cell, module_names, corpus_spec(model, hp.mom2_n_samples).key(), budget)


def projector_keys(cell: RunCell, stats: dict[int, KeyStatsKey]) -> dict[int, ProjectorKey]:
    """The artifact keys of ``cell``'s null-space projectors (eigh in float64, as the library does)."""
    hp = cell.hparams()
    return {layer: ProjectorKey(stats=key, threshold=hp.nullspace_threshold, dtype="float64", mode=hp.threshold_mode)
            for layer, key in stats.items()}
