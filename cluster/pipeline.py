"""The sweep on Ray: statistics tasks, one editor actor per model, probe tasks, one writer actor.

Driver-side orchestration only (the run loop); the work itself is in :mod:`cluster.workers` (plain
Python), the artifact keys in :mod:`cluster.keys`, the statistics data path in
:mod:`cluster.statistics`, each cell's records, batches and checkpoints in :mod:`cluster.plan`,
the progress events in :mod:`cluster.events` (the names used from here are importable from here).

* Key statistics of a model come from the artifact store when present (read and checked by a
  task); otherwise Ray tasks each read and compute one shard of the corpus (all edited layers in one
  pass) and a task merges them exactly and stores one artifact per layer, so the next sweep on the
  same model computes nothing (:mod:`cluster.statistics`). The driver holds keys and object
  references only; the cells of a model share one fetch per set of statistics.
* One editor actor per model runs its cells one after the other (weights restored between cells);
  several models run in parallel on different actors.
* Every ``eval_every`` edits the actor's deltas go (as an ObjectRef, never through the driver) to
  a probe task that computes rewrite metrics and lm-eval probes while the actor keeps editing.
* The evaluation of the unedited model (0 edits) is computed once per key
  (:func:`cluster.plan.unedited_key`: model, records, metric and probe settings, device, code version)
  and stored in the artifact store: the cells of a sweep with the same key share one task's rows, and
  later sweeps (resume, ``--rerun replace``, the nightly) read them from the store. Each cell still
  writes its own rows at ``edits_done`` 0; the seconds are charged to the cell that computed them.
* One writer actor owns the DuckDB file; tasks return rows and never open it.
* Resume: the editor checkpoints its state to the artifact store every ``checkpoint_every``
  batches and at every evaluation point. A dead editor actor is restarted (``editor_max_restarts``)
  and the cell continues from its newest checkpoint; a rerun of the sweep (``jobs/sweep.py
  --resume SWEEP_ID``) skips finished cells and, in unfinished ones, finished batches and
  evaluations. Rows are keyed, so nothing is written twice.
* Failures (out of memory, NaN/Inf, a corrupt or missing artifact, a full disk, an editor that
  keeps dying) stop only their cell: ``runs.status = 'failed'`` with the reason in ``runs.error``;
  its finished evaluations and checkpoints are kept and the other cells go on.

Everything runs through an :class:`cluster.executor.Executor`: Ray (:class:`RayExecutor`) or the
in-process twin (:class:`LocalExecutor`, for unit tests), on the same code path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from alphaedit import method_spec
from cluster import placement
from cluster.config import ModelConfig, RunCell, SweepConfig
from cluster.events import BatchEdited, PointEvaluated, ProgressEvent, ShardsComputed
from cluster.executor import Executor, RayExecutor
from cluster.keys import cell_stats_keys, corpus_spec, projector_keys
from cluster.plan import CellData, cell_data, editor_actor_name, eval_request, plan_cell, unedited_key
from cluster.statistics import StatsHandle, StatsSource, fetch_statistics
from cluster.workers import (
    CellFailed,
    CellStart,
    EditorWorker,
    StoredDeltas,
    describe_failure,
    evaluate_checkpoint,
    evaluate_unedited,
    for_run,
    null_space_projectors,
    projector_distances,
)
from eval.rows import METRIC_SKIPPED_RECORDS
from storage import names
from storage.artifacts import ArtifactStore, KeyStatsKey, ProjectorKey
from storage.hashing import config_hash
from storage.writer import ResultWriter, RunDecision, RunSpec

logger = logging.getLogger(__name__)

GET_TIMEOUT_S = 3600.0
RESTART_WAIT_S = 600.0  # how long a restarting editor actor may take to come back
WRITER_NAME_WAIT_S = 30.0  # how long a new writer waits for the name of an ended sweep's writer to be released


class ResourceError(RuntimeError):
    """The config asks for resources the Ray cluster does not have."""


class Interrupted(Exception):
    """The driver was asked to stop (SIGINT/SIGTERM): the cell stops at a batch boundary, resumable."""


def require_gpus(num_gpus: float, what: str, executor: Executor) -> None:
    """Fail fast when a GPU is requested on a cluster without GPUs (Ray would wait forever)."""
    if num_gpus <= 0:
        return
    have = executor.gpus()
    if have < num_gpus:
        raise ResourceError(
            f"{what} asks for {num_gpus} GPU(s) but the Ray cluster has {have:g}. Set num_gpus: 0 for "
            "this model in the sweep config to run on CPU, or start the cluster with GPU nodes "
            "(ray_cluster.yaml)."
        )


def _timing(run_id: str, stage: str, seconds: float, items: int | None = None, step: int = 0) -> dict[str, Any]:
    return {"run_id": run_id, "stage": stage, "seconds": float(seconds), "items": items, "step": step}


def _cause(exc: BaseException) -> BaseException:
    """The worker's own exception inside a Ray task error (``RayTaskError.cause``), else ``exc``."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


@dataclass
class UneditedEvaluations:
    """The unedited evaluations of one sweep, shared by its model runs (threads, one per model): the
    reference of each :class:`storage.artifacts.UneditedEvalKey` digest's task, and the digests whose rows
    a cell has written (the first one is charged the seconds)."""

    refs: dict[str, Any] = field(default_factory=dict)
    collected: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get_or_submit(self, digest: str, submit: Callable[[], Any]) -> Any:
        """The reference of ``digest``'s evaluation; ``submit()`` starts it when none is known."""
        with self.lock:
            if digest not in self.refs:
                self.refs[digest] = submit()
            return self.refs[digest]

    def forget(self, digest: str) -> None:
        """Drop a failed evaluation: the next cell with its key asks again."""
        with self.lock:
            self.refs.pop(digest, None)

    def first_collect(self, digest: str) -> bool:
        """Whether this is the first cell to write ``digest``'s rows (and mark it written)."""
        with self.lock:
            first = digest not in self.collected
            self.collected.add(digest)
            return first


@dataclass
class ModelRun:
    """What the cells of one model share: executor, writer, store, the editor actor, the unedited evaluations."""

    cfg: SweepConfig
    model: ModelConfig
    sweep_id: str
    writer: Any
    store: ArtifactStore
    ex: Executor
    on_progress: Callable[[ProgressEvent], None]
    stop: threading.Event | None = None  # set by the driver's signal handler: stop at the next batch boundary
    eval_task: Callable[..., Any] | None = None
    unedited_task: Callable[..., Any] | None = None
    editor: Any = None
    editors_started: int = 0
    stats: StatsSource = field(default_factory=StatsSource)
    stats_id: tuple[str, ...] | None = None
    projector_sets: dict[tuple[str, ...], dict[int, ProjectorKey]] = field(default_factory=dict)  # id -> stored keys
    projector_id: tuple[str, ...] | None = None
    projector_info: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)  # seconds, computed, kept
    unedited: UneditedEvaluations = field(default_factory=UneditedEvaluations)  # the sweep's, shared by its models
    # (run id, projector keys, key budget multiplier, (threshold, mode)) of each cell with projectors, and the
    # budgeted runs whose projector_distance rows are written (FastMEMIT's key budget vs the full corpus)
    projector_runs: list[tuple[str, dict[int, Any], float | None, tuple[float, str]]] = field(default_factory=list)
    distances_written: set[str] = field(default_factory=set)

    def get(self, ref: Any) -> Any:
        return self.ex.get(ref, timeout=GET_TIMEOUT_S)

    def check_stop(self, where: str) -> None:
        """Raise :class:`Interrupted` when the driver was asked to stop."""
        if self.stop is not None and self.stop.is_set():
            raise Interrupted(where)

    def statistics(self, cell: RunCell, keys: dict[int, KeyStatsKey], options: dict[str, Any], num_gpus: float
                   ) -> tuple[StatsHandle, bool]:
        """(handle, first) of ``cell``'s key statistics: fetched on the first request of their ``keys``
        in this model run (stored or computed, off the driver; ``options``: the shard tasks' resources,
        ``num_gpus`` their device), the same object reference for every later cell."""
        m, hp = self.model, cell.hparams()

        def fetch() -> StatsHandle:
            require_gpus(num_gpus, f"statistics for {m.name}", self.ex)
            return fetch_statistics(self.ex, keys, self.store.root, m.resolve(m.path), corpus_spec(m, hp.mom2_n_samples),
                                    hp.to_dict(), self.cfg.stats_shards, options, num_gpus,
                                    single_shard=hp.key_budget_multiplier is not None,
                                    on_shards=lambda done, total: self.on_progress(ShardsComputed(m.name, done, total)),
                                    check_stop=lambda: self.check_stop("during its key statistics"))

        handle, first = self.stats.get(keys, fetch)
        if first:
            if handle.records:
                self.get(self.ex.call(self.writer, "record_artifacts", handle.records))
            logger.info("%s: key statistics of layers %s %s in %.1f s; keys per layer %s", m.name, sorted(keys),
                        "computed" if handle.computed else "from the artifact store", handle.seconds, handle.counts)
        else:
            logger.info("%s: key statistics of layers %s reused (one fetch per model run)", m.name, sorted(keys))
        return handle, first

    def projectors(self, cell: RunCell, stats: Any, stats_keys: dict[int, KeyStatsKey],
                   run_id: str) -> tuple[tuple[str, ...] | None, list[dict[str, Any]]]:
        """(projector id, timing rows) of ``cell``: its null-space projectors (of the statistics ``stats``
        stored under ``stats_keys``; an object reference or the arrays), from the artifact store or computed by one task (on the model's
        resources) and stored; the editor actors read them from the store by key. (None, []) when the
        cell's method does not use the projection."""
        if not method_spec(cell.method).needs_projector:
            return None, []
        keys = projector_keys(cell, stats_keys)
        pid = tuple(keys[layer].digest() for layer in sorted(keys))
        if pid in self.projector_sets:
            return pid, []
        hp = cell.hparams()
        task = self.ex.task(null_space_projectors, **placement.projector_options(self.model),
                            max_retries=3, retry_exceptions=False)
        info = self.get(task(stats, keys, hp.to_dict(), self.store.root, self.model.num_gpus))  # stores every P
        self.projector_sets[pid] = keys
        self.projector_info[pid] = info
        logger.info("%s: null-space projectors (threshold %g, %s) of layers %s: %s in %.1f s; rank/d_k %s",
                    self.model.name, hp.nullspace_threshold, hp.threshold_mode, sorted(keys),
                    f"computed {info['computed']}" if info["computed"] else "from the artifact store",
                    info["seconds"], {layer: round(k, 4) for layer, k in info["kept"].items()})
        if not info["computed"]:
            return pid, []
        self.get(self.ex.call(self.writer, "record_artifacts", info["records"]))
        return pid, [_timing(run_id, names.STAGE_PROJECTOR, info["seconds"], len(info["computed"]))]

    def projector_distance_rows(self, cell: RunCell, keys: dict[int, Any], run_id: str) -> list[dict[str, Any]]:
        """``projector_distance.layer<l>`` rows (dataset projector, edits_done 0) of every budgeted run of this
        model run whose full-corpus projector (same threshold and mode, same layers) is known by now, once per
        run; computed by a task from the artifact store (no matrix on the driver)."""
        hp = cell.hparams()
        self.projector_runs.append((run_id, keys, hp.key_budget_multiplier, (hp.nullspace_threshold, hp.threshold_mode)))
        full = {params: k for _, k, mult, params in self.projector_runs if mult is None}
        rows: list[dict[str, Any]] = []
        for rid, k, mult, params in self.projector_runs:
            ref = full.get(params)
            if mult is None or rid in self.distances_written or ref is None or set(k) != set(ref):
                continue
            task = self.ex.task(projector_distances, **placement.projector_options(self.model), max_retries=3)
            dist = self.get(task(self.store.root, k, ref))  # both sets are in the store (null_space_projectors)
            rows += [{"run_id": rid, "edits_done": names.UNEDITED_EDITS_DONE, "dataset": names.DATASET_PROJECTOR,
                      "metric": names.projector_distance_metric(layer), "value": d, "n_cases": None}
                     for layer, d in sorted(dist.items())]
            self.distances_written.add(rid)
        return rows

    def editor_for(self, stats: StatsHandle, projector_id: tuple[str, ...] | None = None) -> Any:
        """The model's editor actor: a new one when the statistics change, when the cell needs
        projectors other than the actor's, or when the last one died."""
        key = stats.id
        stale = projector_id is not None and projector_id != self.projector_id
        if self.editor is None or self.stats_id != key or stale:
            if self.editor is not None:
                self.ex.kill(self.editor, no_restart=True)
            m = self.model
            # Keys, not object references: the actor reads its statistics and projectors from the artifact
            # store, so a restarted actor (its __init__ runs again) rebuilds itself from there.
            p_keys = self.projector_sets[projector_id] if projector_id is not None else None
            self.editor = self.ex.actor(
                EditorWorker, m.resolve(m.path), stats.keys, m.num_gpus, "float32", self.store.root, p_keys,
                **placement.editor_options(m), max_restarts=self.cfg.editor_max_restarts,
                max_task_retries=0, name=editor_actor_name(self.sweep_id, m.name, self.editors_started),
            )
            self.editors_started += 1
            self.stats_id, self.projector_id = key, projector_id
        return self.editor

    def evaluated_points(self, run_id: str) -> set[int]:
        """edits_done values whose evaluation rows are already in the database (written in one transaction)."""
        frame = self.get(self.ex.call(
            self.writer, "query", "SELECT DISTINCT step FROM timings WHERE run_id = $run_id AND stage = $stage",
            {"run_id": run_id, "stage": names.STAGE_REWRITE_EVAL}))
        return {int(x) for x in frame["step"].to_list()}


class CellRun:
    """One run cell on the model's editor: begin or resume, stream the batches, collect the evaluations.

    ``written``: evaluation points whose rows are in the database; ``evals``: evaluations in flight;
    ``last_ok``: edits done as confirmed by the editor (evaluations up to there are valid even if
    the editor dies later).
    """

    def __init__(self, mr: ModelRun, cell: RunCell, resume: bool) -> None:
        self.mr, self.cell, self.resume = mr, cell, resume
        self.run_id = cell.run_id(mr.sweep_id)
        self.config_hash = config_hash(cell.config())
        self.plan = plan_cell(cell, mr.cfg.checkpoint_every)
        self.writes: list[Any] = []
        self.written: set[int] = set()
        self.evals: dict[int, Any] = {}
        self.last_ok = 0
        self.begun = False  # whether the current attempt's `begin` went through
        self.data: CellData | None = None
        self.unedited_digest = ""  # the key of its unedited evaluation (:meth:`unedited`)

    def write(self, **rows: Any) -> None:
        self.writes.append(self.mr.ex.call(self.mr.writer, "write", **rows))

    def run(self) -> str:
        mr, ex = self.mr, self.mr.ex
        try:
            if self.resume:
                self.written = mr.evaluated_points(self.run_id)
            keys = cell_stats_keys(mr.model, self.cell)
            opts = placement.stats_options(mr.cfg, mr.model)
            stats, first = mr.statistics(self.cell, keys, opts, placement.device_gpus(opts))
            if first and stats.computed:
                self.write(timings=[_timing(self.run_id, names.STAGE_KEY_STATS, stats.seconds)])
            projector_id, rows = mr.projectors(self.cell, stats.ref, keys, self.run_id)
            if rows:
                self.write(timings=rows)
            if projector_id is not None:  # rank P / d_k per layer, with the run (the threshold study reads it)
                self.write(metrics=[
                    {"run_id": self.run_id, "edits_done": 0, "dataset": names.DATASET_PROJECTOR,
                     "metric": names.kept_fraction_metric(layer), "value": float(kept), "n_cases": None}
                    for layer, kept in sorted(mr.projector_info[projector_id]["kept"].items())])
                self.write(metrics=mr.projector_distance_rows(self.cell, projector_keys(self.cell, keys), self.run_id))
            self.data = cell_data(self.cell, mr.cfg.on_bad_record)
            if mr.cfg.on_bad_record == "skip":  # how many malformed records the cell's stream skipped
                self.write(metrics=[{"run_id": self.run_id, "edits_done": 0, "dataset": self.cell.dataset,
                                     "metric": METRIC_SKIPPED_RECORDS, "value": float(self.data.skipped),
                                     "n_cases": self.data.read}])
            mr.get(ex.call(mr.writer, "set_status", self.run_id, names.RunStatus.RUNNING))
            restarts = 0
            deadline = time.monotonic() + RESTART_WAIT_S
            while True:
                mr.check_stop("before its first batch")
                editor = mr.editor_for(stats, projector_id)
                try:
                    self.attempt(editor)
                    break
                except ex.actor_errors as exc:
                    if not self.begun and isinstance(exc, ex.transient_errors) and time.monotonic() < deadline:
                        time.sleep(1.0)  # the actor is restarting (loading its model): ask again
                        continue
                    deadline = time.monotonic() + RESTART_WAIT_S
                    restarts += 1
                    if restarts > mr.cfg.editor_max_restarts:
                        mr.editor = None
                        raise CellFailed(f"the editor actor of {mr.model.name} died {restarts} times in "
                                         f"{self.run_id} (editor_max_restarts={mr.cfg.editor_max_restarts}); "
                                         f"last: {exc}") from exc
                    logger.warning("%s: editor actor died after %d confirmed edits (%s); resuming from its "
                                   "newest checkpoint (restart %d of %d)", self.run_id, self.last_ok,
                                   type(exc).__name__, restarts, mr.cfg.editor_max_restarts)
                    self.collect(upto=self.last_ok, strict=False)
                    self.evals.clear()  # the rest depended on the dead actor's state
                    self.resume = True
            mr.get(self.writes)
            mr.get(ex.call(mr.writer, "set_status", self.run_id, names.RunStatus.FINISHED))
            return names.RunStatus.FINISHED
        except Interrupted as exc:  # stopped at a batch boundary: keep what is done, resumable
            logger.warning("%s interrupted %s after %d confirmed edits", self.run_id, exc, self.last_ok)
            self.keep_finished(only_ready=True)
            mr.get(ex.call(mr.writer, "set_status", self.run_id, names.RunStatus.INTERRUPTED))
            return names.RunStatus.INTERRUPTED
        except Exception as exc:  # one cell failing must not stop the others: record it in `runs`
            cause = _cause(exc)
            message = describe_failure(cause, f"in {self.run_id}")[:4000]
            logger.error("%s failed: %s", self.run_id, message)
            self.keep_finished()
            mr.get(ex.call(mr.writer, "set_status", self.run_id, names.RunStatus.FAILED, error=message))
            if isinstance(cause, ResourceError):
                raise cause from exc
            if isinstance(exc, ex.actor_errors):
                mr.editor = None  # a fresh actor for the next cell
            return names.RunStatus.FAILED

    def attempt(self, editor: Any) -> None:
        """Begin (or resume) on ``editor`` and run the rest of the stream; actor deaths propagate."""
        mr, ex, cell, plan = self.mr, self.mr.ex, self.cell, self.plan
        assert self.data is not None
        start = CellStart(self.run_id, cell.method, cell.hparams().to_dict(), cell.seed, self.config_hash,
                          plan.checkpoint_at, plan.keep, self.resume)
        self.begun = False
        info = mr.get(ex.call(editor, "begin", start))
        self.begun = True
        done = int(info["edits_done"])
        self.last_ok = done
        logger.info("%s: %s at %d edits", self.run_id, "resumed" if done else "started", done)
        for report in info.get("reports", []):  # batches before the checkpoint (rows may be missing)
            self.write_report(int(report["step"]), report)
        for p in plan.eval_points:
            if p <= done and p not in self.written and p not in self.evals:
                self.evals[p] = self.unedited() if p == 0 else self.evaluate(
                    p, StoredDeltas(mr.store.root, self.run_id, self.config_hash, p))
        edit_refs = []
        for step, first, end in plan.batches:
            if first < done:
                continue
            want = end in plan.eval_points and end not in self.written
            report_ref, deltas_ref = ex.call(editor, "edit", self.data.edit_records[first:end], first, want,
                                             num_returns=2)
            edit_refs.append((step, end, report_ref))
            if want:
                self.evals[end] = self.evaluate(end, deltas_ref)
        for step, end, ref in edit_refs:
            report = mr.get(ref)
            self.last_ok = end
            self.write_report(step, report)
            mr.on_progress(BatchEdited(self.run_id, report["edits_done"], cell.n_edits))
            self.collect(upto=self.last_ok, strict=True, only_ready=True)  # rows land while the cell runs
            if end < cell.n_edits:
                mr.check_stop(f"at {end} edits")  # the batches queued after this one are dropped with the actor
        self.collect(upto=cell.n_edits, strict=True)

    def write_report(self, step: int, report: dict[str, Any]) -> None:
        """Timing rows of one edited batch (and its checkpoint's row and artifact record)."""
        sec, n = report["seconds"], report["n_requests"]
        rows = [_timing(self.run_id, names.STAGE_EDIT_BATCH, sec["total"], n, step),
                _timing(self.run_id, names.STAGE_TARGETS, sec.get("targets", 0.0), n, step),
                _timing(self.run_id, names.STAGE_SOLVE, sec.get("solve", 0.0), n, step)]
        ckpt = report.get("checkpoint")
        if ckpt is not None:
            rows.append(_timing(self.run_id, names.STAGE_CHECKPOINT, ckpt["seconds"], ckpt["bytes"], step))
            if ckpt["kept"]:
                artifact = {k: v for k, v in ckpt.items() if k not in ("seconds", "kept")}
                self.writes.append(self.mr.ex.call(self.mr.writer, "record_artifacts", [artifact]))
        self.write(timings=rows)

    def evaluate(self, edits_done: int, deltas: Any) -> Any:
        mr = self.mr
        assert self.data is not None and mr.eval_task is not None
        req = eval_request(mr.cfg, self.cell, self.run_id, self.data, edits_done)
        gpus = placement.device_gpus(placement.eval_options(mr.cfg, mr.model))
        return mr.eval_task(mr.model.resolve(mr.model.path), deltas, req, gpus)

    def unedited(self) -> Any:
        """The evaluation of the unedited model: one task per :func:`cluster.plan.unedited_key` in this sweep,
        whose reference every cell with that key shares; the task reads it from the artifact store
        when an earlier sweep (or an earlier attempt of this one) stored it, else computes and stores it."""
        mr = self.mr
        assert self.data is not None and mr.unedited_task is not None
        req = eval_request(mr.cfg, self.cell, self.run_id, self.data, 0)
        gpus = placement.device_gpus(placement.eval_options(mr.cfg, mr.model))
        key = unedited_key(mr.model, req, "cuda" if gpus > 0 else "cpu")
        self.unedited_digest = key.digest()
        return mr.unedited.get_or_submit(self.unedited_digest, lambda: mr.unedited_task(
            mr.model.resolve(mr.model.path), key, req, mr.store.root, gpus))

    def unedited_timings(self, out: dict[str, Any]) -> dict[str, float]:
        """The seconds of the unedited evaluation ``out`` charged to this cell (and its artifact row recorded):
        all of them to the first cell that writes a computed one; a reuse gets what it took (the store read
        for the first cell of a stored one, 0 for the cells sharing this sweep's)."""
        mr, digest = self.mr, self.unedited_digest
        first = mr.unedited.first_collect(digest)
        if first and not out["reused"]:
            if out["record"] is not None:
                self.writes.append(mr.ex.call(mr.writer, "record_artifacts", [out["record"]]))
            logger.info("%s: unedited evaluation computed and stored as %s", self.run_id, digest)
            return out["timings"]
        logger.info("%s: unedited evaluation reused from %s (%s)", self.run_id, digest,
                    "the artifact store" if first else "this sweep's")
        return out["timings"] if first else {"metrics": 0.0, "probes": 0.0}

    def collect(self, upto: int, strict: bool, only_ready: bool = False) -> None:
        """Write the evaluations of points <= ``upto``; lenient (``strict=False``) skips failed ones;
        ``only_ready``: only those that have finished (does not wait)."""
        points = [p for p in sorted(self.evals) if p <= upto]
        if only_ready:
            points = [p for p, ok in zip(points, self.mr.ex.ready([self.evals[p] for p in points]), strict=True) if ok]
        for p in points:
            ref = self.evals.pop(p)
            try:
                out = for_run(self.mr.get(ref), self.run_id)
            except Exception as exc:
                if p == 0:  # the next cell with this key asks again
                    self.mr.unedited.forget(self.unedited_digest)
                if strict:
                    raise
                logger.warning("%s: evaluation at %d edits lost (%s); it is redone on resume", self.run_id, p,
                               type(_cause(exc)).__name__)
                continue
            seconds = self.unedited_timings(out) if p == 0 else out["timings"]
            self.write(metrics=out["metrics"], probes=out["probes"], drift_points=out["drift_points"], timings=[
                _timing(self.run_id, names.STAGE_REWRITE_EVAL, seconds["metrics"], out["n_records"], p),
                _timing(self.run_id, names.STAGE_PROBE, seconds["probes"], None, p)])
            self.written.add(p)
            self.mr.on_progress(PointEvaluated(self.run_id, p))

    def keep_finished(self, only_ready: bool = False) -> None:
        """After a failure: write what finished (evaluations up to the last confirmed batch), drop the rest
        (``only_ready``: do not wait for evaluations still running; they are redone on resume)."""
        try:
            self.collect(upto=self.last_ok, strict=False, only_ready=only_ready)
        finally:
            self.evals.clear()
            try:
                self.mr.get(self.writes)
            except Exception as exc:  # the failure itself is recorded in `runs` by the caller
                logger.error("%s: some rows of the failed cell were not written: %s", self.run_id, _cause(exc))


def run_model(cfg: SweepConfig, model: ModelConfig, cells: Sequence[RunCell], sweep_id: str, writer: Any,
              store: ArtifactStore, on_progress: Callable[[ProgressEvent], None] = lambda event: None, *,
              executor: Executor, resume: Collection[str] = (), stop: threading.Event | None = None,
              unedited: UneditedEvaluations | None = None) -> dict[str, str]:
    """Run all cells of one model on one editor actor; return {run_id: final status}.

    ``resume``: run ids to continue from their checkpoints and rows (registered as RESUME). ``stop``:
    once set, the running cell stops at its next batch boundary and it and the cells not begun are
    marked ``interrupted`` (their editor actor is killed; ``--resume`` continues them). ``unedited``:
    the sweep's unedited evaluations, shared with its other models (a new set when None).
    """
    ex = executor
    require_gpus(model.num_gpus, f"editor for {model.name}", ex)
    mr = ModelRun(cfg, model, sweep_id, writer, store, ex, on_progress, stop)
    if unedited is not None:
        mr.unedited = unedited
    mr.eval_task = ex.task(evaluate_checkpoint, **placement.eval_options(cfg, model), max_retries=2)
    mr.unedited_task = ex.task(evaluate_unedited, **placement.eval_options(cfg, model), max_retries=2)
    statuses: dict[str, str] = {}
    try:
        for cell in cells:
            run = CellRun(mr, cell, resume=cell.run_id(sweep_id) in resume)
            if stop is not None and stop.is_set():  # not begun: interrupted as well (resumable)
                mr.get(ex.call(writer, "set_status", run.run_id, names.RunStatus.INTERRUPTED))
                statuses[run.run_id] = names.RunStatus.INTERRUPTED
                continue
            statuses[run.run_id] = run.run()
    finally:
        if mr.editor is not None:  # free its resources (and its name) now, not when the handle is collected
            ex.kill(mr.editor, no_restart=True)
    return statuses


def register_cells(cfg: SweepConfig, sweep_id: str, writer: Any, git_sha: str | None,
                   on_existing: str = "resume", *, executor: Executor) -> dict[str, tuple[RunCell, RunDecision]]:
    """Register every cell in ``runs``; return {run_id: (cell, decision)} of the cells to run (not SKIP)."""
    ex = executor
    cells = {cell.run_id(sweep_id): cell for cell in cfg.cells()}
    specs = [RunSpec(run_id=rid, sweep_id=sweep_id, model=c.model.name, method=c.method, dataset=c.dataset,
                     batch_size=c.batch_size, n_edits=c.n_edits, seed=c.seed, config=c.config(), git_sha=git_sha)
             for rid, c in cells.items()]
    decisions = ex.get(ex.call(writer, "register_runs", specs, on_existing=on_existing), timeout=GET_TIMEOUT_S)
    return {rid: (c, RunDecision(decisions[rid])) for rid, c in cells.items() if decisions[rid] != RunDecision.SKIP}


def run_sweep(cfg: SweepConfig, sweep_id: str, writer: Any, store: ArtifactStore, git_sha: str | None,
              on_existing: str = "resume", *, executor: Executor,
              on_progress: Callable[[ProgressEvent], None] = lambda event: None, parallel: bool = True,
              stop: threading.Event | None = None) -> dict[str, str]:
    """Register the sweep's cells and run the unfinished ones; return {run_id: status} of those run.

    ``executor``: where the work runs (:class:`RayExecutor`, or :class:`LocalExecutor` in-process),
    always given by the caller. Models run in parallel threads (one editor actor each) when
    ``parallel``; the in-process executor runs them one after the other. ``stop``: see :func:`run_model`.
    """
    from concurrent.futures import ThreadPoolExecutor

    ex = executor
    todo = register_cells(cfg, sweep_id, writer, git_sha, on_existing, executor=ex)
    resume = {rid for rid, (_, d) in todo.items() if d is RunDecision.RESUME}
    by_model: dict[str, list[RunCell]] = {}
    for cell, _ in todo.values():
        by_model.setdefault(cell.model.name, []).append(cell)
    logger.info("sweep %s: %d cells to run (%d resumed) on %d model(s)", sweep_id, len(todo), len(resume),
                len(by_model))
    statuses: dict[str, str] = {}
    unedited = UneditedEvaluations()  # one per key for the whole sweep (models sharing weights share it)
    if not parallel or len(by_model) <= 1:
        for cells in by_model.values():
            statuses.update(run_model(cfg, cells[0].model, cells, sweep_id, writer, store, on_progress, executor=ex,
                                      resume=resume, stop=stop, unedited=unedited))
        return statuses
    for cells in by_model.values():  # transformers' lazy imports are not thread-safe: the first ones here
        cells[0].model.hf_config()
    with ThreadPoolExecutor(max_workers=len(by_model)) as pool:
        futures = [pool.submit(run_model, cfg, cells[0].model, cells, sweep_id, writer, store, on_progress,
                               executor=ex, resume=resume, stop=stop, unedited=unedited)
                   for cells in by_model.values()]
        for f in futures:
            statuses.update(f.result())
    return statuses


def start_writer(path: str, executor: Executor) -> Any:
    """The one process that owns the DuckDB file, on the driver's node (:func:`cluster.placement.writer_options`).

    On Ray it is named :func:`storage.live.writer_actor_name` in the namespace
    :data:`storage.live.NAMESPACE`, so that other processes can query a running sweep
    (:func:`storage.live.query_live`); it is not detached and ends with the driver."""
    from storage import live

    ex = executor
    node = None
    opts: dict[str, Any] = {}
    if isinstance(ex, RayExecutor):
        import ray

        node = ray.get_runtime_context().get_node_id()
        opts = {"name": live.writer_actor_name(path), "namespace": live.NAMESPACE}
    deadline = time.monotonic() + WRITER_NAME_WAIT_S
    while True:
        try:
            return ex.actor(ResultWriter, path, **placement.writer_options(node), **opts)
        except ValueError as e:  # Ray: the name is taken: a writer of an ended job not yet released, or a live sweep
            if "already taken" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise RuntimeError(f"another sweep on this Ray cluster is writing {path} (its writer actor "
                                   f"{opts['name']!r} exists): wait for it to end or give this sweep another results "
                                   "path") from e
            time.sleep(1.0)
