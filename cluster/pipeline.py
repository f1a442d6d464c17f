"""The sweep on Ray: statistics tasks, one editor actor per model, probe tasks, one writer actor.

Driver-side orchestration only; the work itself is in :mod:`cluster.workers` (plain Python).

* Key statistics of a model come from the artifact store when present; otherwise Ray tasks each
  compute one shard of the corpus (all edited layers in one pass), the driver merges them exactly
  and stores one artifact per layer, so the next sweep on the same model computes nothing.
* One editor actor per model runs its cells one after the other (weights restored between cells);
  several models run in parallel on different actors.
* Every ``eval_every`` edits the actor's deltas go (as an ObjectRef, never through the driver) to
  a probe task that computes rewrite metrics and lm-eval probes while the actor keeps editing.
* One writer actor owns the DuckDB file; tasks return rows and never open it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from alphaedit import spec_for
from cluster.config import ModelConfig, RunCell, SweepConfig
from cluster.workers import (
    CellStart,
    EditorWorker,
    EvalRequest,
    evaluate_checkpoint,
    merge_shards,
    stats_shard,
)
from storage import names
from storage.artifacts import ArtifactStore, KeyStatsKey
from storage.writer import ResultWriter, RunDecision, RunSpec

logger = logging.getLogger(__name__)

GET_TIMEOUT_S = 3600.0


class ResourceError(RuntimeError):
    """The config asks for resources the Ray cluster does not have."""


def require_gpus(num_gpus: float, what: str) -> None:
    """Fail fast when a GPU is requested on a cluster without GPUs (Ray would wait forever)."""
    if num_gpus <= 0:
        return
    have = ray.cluster_resources().get("GPU", 0.0)
    if have < num_gpus:
        raise ResourceError(
            f"{what} asks for {num_gpus} GPU(s) but the Ray cluster has {have:g}. Set num_gpus: 0 for "
            "this model in the sweep config to run on CPU, or start the cluster with GPU nodes "
            "(ray_cluster.yaml)."
        )


def corpus_spec(model: ModelConfig, n_docs: int):
    """``toywiki`` | ``wikipedia[:<snapshot>]`` | ``wikitext`` | comma-separated local files."""
    from eval.corpus import CorpusSpec

    c = model.corpus
    if c == "toywiki":
        return CorpusSpec(kind="toywiki", n_docs=n_docs)
    if c.startswith("wikipedia"):
        return CorpusSpec(kind="wikipedia", snapshot=c.split(":", 1)[1] if ":" in c else "20231101.en", n_docs=n_docs)
    if c == "wikitext":
        return CorpusSpec(kind="wikitext", n_docs=n_docs)
    return CorpusSpec(kind="files", files=tuple(model.resolve(p) for p in c.split(",")), n_docs=n_docs)


def model_revision(model: ModelConfig) -> str:
    """``model.revision``, or for ``local``: a sha256 over the local folder's config and weight files."""
    import hashlib
    from pathlib import Path

    path = Path(model.resolve(model.path))
    if model.revision != "local" or not path.is_dir():
        return model.revision
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors", ".bin")):
        h.update(f.name.encode())
        with f.open("rb") as fh:
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
                           dtype="float32", key_budget=budget)
        for layer in hp.layers
    }


def key_statistics(model: ModelConfig, cell: RunCell, store: ArtifactStore, shards: int,
                   writer: Any) -> tuple[dict[int, tuple[np.ndarray, int]], float, bool]:
    """Per-layer (Σ k kᵀ, count) for ``cell``'s hparams: from the store, or computed by Ray tasks.

    Returns (stats, seconds, computed).
    """
    from transformers import AutoConfig

    hp = cell.hparams()
    cfg = AutoConfig.from_pretrained(model.resolve(model.path))
    spec = spec_for(cfg.model_type)
    module_names = {layer: spec.mlp_out_name(layer) for layer in hp.layers}
    corpus = corpus_spec(model, hp.mom2_n_samples)
    budget = None
    if hp.key_budget_multiplier is not None:
        # FastMEMIT: multiplier x d_k keys (d_k = MLP intermediate width, from the config).
        d_k = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * cfg.hidden_size
        budget = int(hp.key_budget_multiplier * d_k)
    keys = stats_keys(model, cell, module_names, corpus.key(), budget)
    t0 = time.perf_counter()
    if all(store.exists(k) for k in keys.values()):
        out = {}
        for layer, key in keys.items():
            arrays = store.get(key)
            out[layer] = (arrays["sum_kkT"], int(arrays["count"][0]))
        logger.info("%s: key statistics from the artifact store (%s)", model.name, store)
        return out, time.perf_counter() - t0, False

    from eval.corpus import iter_corpus

    texts = list(iter_corpus(corpus))
    # A key budget is defined in corpus order: one shard keeps it exact.
    n_shards = 1 if hp.key_budget_multiplier is not None else max(1, min(shards, len(texts)))
    bounds = np.linspace(0, len(texts), n_shards + 1).astype(int)
    require_gpus(model.num_gpus, f"statistics for {model.name}")
    task = ray.remote(stats_shard).options(num_cpus=model.num_cpus, num_gpus=model.num_gpus, max_retries=3,
                                           retry_exceptions=False)
    refs = [task.remote(model.resolve(model.path), texts[a:b], hp.to_dict(), model.num_gpus)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    shards = []
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=GET_TIMEOUT_S)
        if not done:
            raise TimeoutError(f"{model.name}: statistics shard did not finish in {GET_TIMEOUT_S} s")
        shards.append(ray.get(done[0]))
    merged = merge_shards(shards)
    records = []
    out = {}
    for layer, acc in merged.items():
        arrays = {"sum_kkT": acc.sum_kkT.numpy(), "count": np.array([acc.count], dtype=np.int64)}
        records.append(store.put(keys[layer], arrays).as_row())
        out[layer] = (arrays["sum_kkT"], acc.count)
    ray.get(writer.record_artifacts.remote(records), timeout=GET_TIMEOUT_S)
    logger.info("%s: key statistics of layers %s over %d texts in %d shards", model.name, sorted(out),
                len(texts), len(refs))
    return out, time.perf_counter() - t0, True


@dataclass
class CellData:
    """The records of one cell: what the editor edits and what the evaluation scores."""

    edit_records: list[dict[str, Any]]
    eval_records: list[dict[str, Any]]
    snippets: str | None = None
    tfidf: tuple[str, str] | None = None


def cell_data(cell: RunCell) -> CellData:
    """The first ``n_edits`` records of the cell's dataset (validated by the eval loaders)."""
    from eval.datasets import load_counterfact, load_zsre, read_json_list

    path = cell.model.dataset_path(cell.dataset)
    if cell.dataset == "counterfact":
        loaded = load_counterfact(path, limit=cell.n_edits)
        raw = read_json_list(loaded.path)[: cell.n_edits]
        edit = eval_ = raw
    else:
        loaded = load_zsre(path, limit=cell.n_edits)
        edit = [r.to_counterfact() for r in loaded.records]
        eval_ = [dict(r.to_json(), case_id=r.case_id) for r in loaded.records]
    if len(edit) < cell.n_edits:
        raise ValueError(f"{path}: only {len(edit)} records, the cell asks for n_edits={cell.n_edits}")
    m = cell.model
    snippets = m.resolve(m.attribute_snippets) if m.attribute_snippets else None
    tfidf = (m.resolve(m.tfidf_vocab), m.resolve(m.idf)) if m.tfidf_vocab and m.idf else None
    return CellData(edit, eval_, snippets, tfidf)


def eval_request(cfg: SweepConfig, cell: RunCell, run_id: str, data: CellData, edits_done: int) -> EvalRequest:
    """What to score at ``edits_done``: the records edited so far (all of them before editing)."""
    records = data.eval_records[: edits_done if edits_done > 0 else cell.n_edits]
    if cfg.metrics.max_records:
        records = records[: cfg.metrics.max_records]
    return EvalRequest(run_id=run_id, edits_done=edits_done, dataset=cell.dataset, records=tuple(records),
                       probe_tasks=cfg.probes.tasks, probe_limit=cfg.probes.limit,
                       probe_batch_size=cfg.probes.batch_size, generation_records=cfg.metrics.generation_records,
                       snippets_source=data.snippets, tfidf_sources=data.tfidf, seed=cell.seed)


@dataclass
class SweepState:
    """Driver bookkeeping of what is in flight."""

    writes: list[Any] = field(default_factory=list)
    probes: list[tuple[str, int, Any]] = field(default_factory=list)


def _for_run(out: dict[str, Any], run_id: str) -> dict[str, Any]:
    """An evaluation's rows re-labelled for ``run_id`` (the unedited evaluation is shared)."""
    return {**out, "metrics": [{**r, "run_id": run_id} for r in out["metrics"]],
            "probes": [{**r, "run_id": run_id} for r in out["probes"]]}


def _timing(run_id: str, stage: str, seconds: float, items: int | None = None, step: int = 0) -> dict[str, Any]:
    return {"run_id": run_id, "stage": stage, "seconds": float(seconds), "items": items, "step": step}


def run_model(cfg: SweepConfig, model: ModelConfig, cells: Sequence[RunCell], sweep_id: str, writer: Any,
              store: ArtifactStore, on_progress: Callable[[str], None] = lambda msg: None) -> dict[str, str]:
    """Run all cells of one model on one editor actor; return {run_id: final status}."""
    statuses: dict[str, str] = {}
    require_gpus(model.num_gpus, f"editor for {model.name}")
    eval_task = ray.remote(evaluate_checkpoint).options(num_cpus=model.num_cpus, num_gpus=model.num_gpus,
                                                        max_retries=2)
    editor = None
    stats_id = None
    unedited: dict[tuple[str, int, int], Any] = {}  # one evaluation of the base model per dataset slice
    for cell in cells:
        run_id = cell.run_id(sweep_id)
        state = SweepState()
        try:
            stats, stats_s, computed = key_statistics(model, cell, store, cfg.stats_shards, writer)
            if computed:
                state.writes.append(writer.write.remote(timings=[_timing(run_id, names.STAGE_KEY_STATS, stats_s)]))
            key = tuple(sorted(stats))
            if editor is None or stats_id != key:
                stats_ref = ray.put(stats)
                editor = ray.remote(EditorWorker).options(
                    num_cpus=model.num_cpus, num_gpus=model.num_gpus, max_restarts=0, max_task_retries=0,
                ).remote(model.resolve(model.path), stats_ref, model.num_gpus)
                stats_id = key
            data = cell_data(cell)
            ray.get(writer.set_status.remote(run_id, names.RunStatus.RUNNING), timeout=GET_TIMEOUT_S)
            info = ray.get(editor.start_cell.remote(CellStart(run_id, cell.method, cell.hparams().to_dict(),
                                                              cell.seed)), timeout=GET_TIMEOUT_S)
            logger.info("%s: started (%s)", run_id, info)
            points = cell.checkpoints()

            path = model.resolve(model.path)
            base_key = (cell.dataset, cell.n_edits, cell.seed)
            if base_key not in unedited:
                unedited[base_key] = eval_task.remote(path, ray.put({}), eval_request(cfg, cell, run_id, data, 0),
                                                      model.num_gpus)
                state.probes.append((run_id, 0, unedited[base_key]))
            else:
                state.probes.append((run_id, 0, unedited[base_key]))
            edit_refs = []
            for step, start in enumerate(range(0, cell.n_edits, cell.batch_size)):
                batch = data.edit_records[start : start + cell.batch_size]
                edit_refs.append((step, editor.edit.remote(batch)))
                done = min(start + cell.batch_size, cell.n_edits)
                if done in points:
                    req = eval_request(cfg, cell, run_id, data, done)
                    state.probes.append((run_id, done, eval_task.remote(path, editor.deltas.remote(), req,
                                                                         model.num_gpus)))
            for step, ref in edit_refs:
                report = ray.get(ref, timeout=GET_TIMEOUT_S)
                sec = report["seconds"]
                rows = [_timing(run_id, names.STAGE_EDIT_BATCH, sec["total"], report["n_requests"], step)]
                rows += [_timing(run_id, names.STAGE_TARGETS, sec.get("targets", 0.0), report["n_requests"], step),
                         _timing(run_id, names.STAGE_SOLVE, sec.get("solve", 0.0), report["n_requests"], step)]
                state.writes.append(writer.write.remote(timings=rows))
                on_progress(f"{run_id}: {report['edits_done']}/{cell.n_edits} edits")
            for rid, edits_done, ref in state.probes:
                out = _for_run(ray.get(ref, timeout=GET_TIMEOUT_S), rid)
                state.writes.append(writer.write.remote(
                    metrics=out["metrics"], probes=out["probes"],
                    timings=[_timing(rid, names.STAGE_REWRITE_EVAL, out["timings"]["metrics"], out["n_records"],
                                     edits_done),
                             _timing(rid, names.STAGE_PROBE, out["timings"]["probes"], None, edits_done)]))
                on_progress(f"{rid}: evaluated at {edits_done} edits")
            ray.get(state.writes, timeout=GET_TIMEOUT_S)
            ray.get(writer.set_status.remote(run_id, names.RunStatus.FINISHED), timeout=GET_TIMEOUT_S)
            statuses[run_id] = names.RunStatus.FINISHED
        except Exception as exc:  # one cell failing must not stop the others: record it in `runs`
            logger.exception("%s failed", run_id)
            message = f"{type(exc).__name__}: {exc}"[:2000]
            ray.get(state.writes, timeout=GET_TIMEOUT_S)
            ray.get(writer.set_status.remote(run_id, names.RunStatus.FAILED, error=message), timeout=GET_TIMEOUT_S)
            statuses[run_id] = names.RunStatus.FAILED
            if isinstance(exc, ResourceError):
                raise
            if isinstance(exc, ray.exceptions.RayActorError):
                editor = None  # start a fresh actor for the next cell
    return statuses


def register(cfg: SweepConfig, sweep_id: str, writer: Any, git_sha: str | None,
             on_existing: str = "resume") -> dict[str, RunCell]:
    """Register every cell in ``runs``; return the cells to run (skipping finished ones)."""
    cells = {cell.run_id(sweep_id): cell for cell in cfg.cells()}
    specs = [RunSpec(run_id=rid, sweep_id=sweep_id, model=c.model.name, method=c.method, dataset=c.dataset,
                     batch_size=c.batch_size, n_edits=c.n_edits, seed=c.seed, config=c.config(), git_sha=git_sha)
             for rid, c in cells.items()]
    decisions = ray.get(writer.register_runs.remote(specs, on_existing=on_existing), timeout=GET_TIMEOUT_S)
    return {rid: c for rid, c in cells.items() if decisions[rid] != RunDecision.SKIP}


def start_writer(path: str) -> Any:
    """The one process that owns the DuckDB file."""
    return ray.remote(ResultWriter).options(num_cpus=0, max_concurrency=1).remote(path)
