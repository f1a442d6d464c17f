"""Sequential editing of one model in this process: a one-cell run of the sweep, exported as a folder.

    python -m jobs.edit                                   # toy world, AlphaEdit, 200 edits in batches of 50
    python -m jobs.edit --method memit --n-edits 1000 --batch-size 50 --out runs/memit-1000
    python -m jobs.edit --config jobs/configs/default.yaml --n-edits 100   # the real model of the demo
    python -m jobs.edit --model /path/to/hf-model --preset llama3-8b --dataset cf.json --corpus wiki.jsonl

The options make one cell of a sweep config (``--config``'s first model, with ``--model``,
``--preset``, ``--dataset`` and ``--corpus`` replacing its fields; ``--set KEY=VALUE`` as in
``jobs/sweep.py``). The config is validated and preflighted as the sweep's, then run by the
sweep's own code (:func:`cluster.pipeline.run_sweep`) on the in-process executor
(:class:`cluster.executor.LocalExecutor`): key statistics from (or into) the artifact store under
their full key, the editor's checkpoints, the evaluation before and after editing.

Writes ``--out`` whole or not at all (built beside it, then renamed; a reused folder is replaced;
see docs/checkpoint-format.md):
  deltas.safetensors  one float32 tensor per edited weight, keyed by parameter name, W_edited - W_base
  state.json + state.safetensors   the EditState (Σ Kp Kpᵀ, edit count) to resume or inspect
  requests.json       the edited requests, CounterFact records, in edit order
  timings.json        key statistics seconds and per-batch wall times by stage
  run.json            the run cell's resolved configuration, its run id and config hash, model type
  metrics.json        rewrite metrics before (edits_done 0) and after editing, as in the sweep's tables
  results.duckdb      the run's rows (runs, metrics, probes, timings, artifacts), the sweep's schema
Exit codes: 0 done, 1 the run failed (the reason on stderr; ``--out`` untouched), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from cluster.config import (
    TOY_CONFIG_PATH,
    RunCell,
    SweepConfig,
    SweepConfigError,
    apply_override,
    parse_config,
)
from cluster.preflight import add_on_bad_record
from eval.cli import add_log_level, cli_edge

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("jobs.edit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(TOY_CONFIG_PATH), help="sweep YAML whose first model is edited "
                   "(default: the toy world, jobs/configs/toy.yaml)")
    p.add_argument("--model", default=None, help="HF model id or local path (replaces the config model's path; "
                   "needs --preset)")
    p.add_argument("--preset", default=None, help="hparams preset (see alphaedit.hparams.PRESETS)")
    p.add_argument("--dataset", default=None, help="CounterFact-format JSON file (default: the config model's)")
    p.add_argument("--corpus", default=None, help="preservation corpus: toywiki | realworld | wikipedia[:snapshot] "
                   "| wikitext | comma-separated .jsonl ('text' field) / .txt files")
    p.add_argument("--method", default="alphaedit", help="editing method (see alphaedit.hparams.METHODS)")
    p.add_argument("--n-edits", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hparams", default=None, help="JSON file of EditHparams fields overriding the preset")
    p.add_argument("--layers", default=None, help="comma-separated edited layers (overrides the preset)")
    p.add_argument("--probes", default="", help="comma-separated probe tasks evaluated before/after (default none)")
    p.add_argument("--generation-records", type=int, default=0,
                   help="fluency/consistency on this many edited records (default 0: generation is slow)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of the resulting sweep config, e.g. --set stats_shards=1")
    p.add_argument("--out", default=None, help="output folder (default: runs/edit-<method>-<n>-<bs>)")
    p.add_argument("--artifacts", default=None, help="artifact store (key statistics, projectors, checkpoints); "
                   "default: the config's artifact_root")
    add_on_bad_record(p)
    add_log_level(p)
    return p.parse_args(argv)


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise SweepConfigError(option, [f"{option}: expected comma-separated integers, got {text!r}"]) from None


def hparams_override(args: argparse.Namespace) -> dict[str, Any]:
    """``--hparams`` (a JSON file of EditHparams fields) and ``--layers``, as one hparams override."""
    over: dict[str, Any] = {}
    if args.hparams:
        path = Path(args.hparams)
        try:
            over = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SweepConfigError("--hparams", [f"--hparams {path}: cannot read a JSON object ({exc})"]) from None
        if not isinstance(over, dict):
            raise SweepConfigError("--hparams", [f"--hparams {path}: expected a JSON object of EditHparams fields"])
    if args.layers:
        over["layers"] = _int_list(args.layers, "--layers")
    return over


def cell_config(args: argparse.Namespace, out: Path) -> SweepConfig:
    """The one-cell sweep config of ``args`` (validated as a sweep's; raises :class:`SweepConfigError`)."""
    path = Path(args.config)
    try:
        base = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SweepConfigError(str(path), [f"cannot read the config ({exc})"]) from None
    models = base.get("models") if isinstance(base, dict) else None
    if not isinstance(models, list) or not models or not isinstance(models[0], dict):
        raise SweepConfigError(str(path), ["models: the config must name at least one model"])
    model = dict(models[0])
    if args.model is not None:
        if args.preset is None:
            raise SweepConfigError("--model", ["--preset: required with --model (see alphaedit.hparams.PRESETS)"])
        model = {"name": model.get("name", "model"), "path": args.model, "preset": args.preset,
                 "corpus": model.get("corpus"), "counterfact": model.get("counterfact"), "zsre": model.get("zsre"),
                 "num_gpus": model.get("num_gpus", 0), "num_cpus": model.get("num_cpus", 1)}
    elif args.preset is not None:
        model["preset"] = args.preset
    if args.dataset is not None:
        model["counterfact"] = args.dataset
    if args.corpus is not None:
        model["corpus"] = args.corpus
    raw: dict[str, Any] = {
        "models": [model], "methods": [args.method], "datasets": ["counterfact"], "batch_sizes": [args.batch_size],
        "n_edits": [args.n_edits], "seeds": [args.seed], "hparams_overrides": [hparams_override(args)],
        "eval_every": max(args.n_edits, 1), "checkpoint_every": 1, "editor_max_restarts": 0,
        "probes": {**(base.get("probes") or {}), "tasks": [t for t in args.probes.split(",") if t]},
        "metrics": {"max_records": None, "generation_records": args.generation_records},
        "stats_shards": 1, "results": str(out / "results.duckdb"),
        "artifact_root": args.artifacts or base.get("artifact_root", SweepConfig.artifact_root),
    }
    if args.on_bad_record:
        raw["on_bad_record"] = args.on_bad_record
    for assignment in args.overrides:
        apply_override(raw, assignment)
    cfg = parse_config(raw, f"{path} + options")
    from cluster.preflight import preflight

    preflight(cfg, f"{path} + options")
    return cfg


def _rows(writer: Any, ex: Any, sql: str, run_id: str) -> list[dict[str, Any]]:
    return ex.get(ex.call(writer, "query", sql, {"r": run_id})).to_dicts()


def export(folder: Path, cfg: SweepConfig, cell: RunCell, run_id: str, store: Any, writer: Any, ex: Any) -> None:
    """The run's final checkpoint and rows as the folder of docs/checkpoint-format.md."""
    from cluster.pipeline import cell_data, corpus_spec
    from cluster.workers import checkpoint_codec, checkpoint_key
    from storage import names
    from storage.hashing import config_hash

    state, _ = store.get(checkpoint_key(run_id, config_hash(cell.config()), cell.n_edits), checkpoint_codec())
    state.extra.pop("batch_reports", None)
    state.save(folder)
    edited = cell_data(cell).edit_records
    (folder / "requests.json").write_text(json.dumps(edited, indent=1))
    timings = _rows(writer, ex, "SELECT stage, step, seconds, items FROM timings WHERE run_id = $r ORDER BY step, stage",
                    run_id)
    (folder / "timings.json").write_text(json.dumps({
        "stats_seconds": sum(t["seconds"] for t in timings if t["stage"] == names.STAGE_KEY_STATS),
        "batches": [t for t in timings if t["stage"] in (names.STAGE_EDIT_BATCH, names.STAGE_TARGETS,
                                                         names.STAGE_SOLVE)]}, indent=1))
    metrics = _rows(writer, ex, "SELECT edits_done, metric, value, n_cases FROM metrics WHERE run_id = $r", run_id)
    probes = _rows(writer, ex, "SELECT edits_done, task, metric, value FROM probes WHERE run_id = $r", run_id)
    by_point = {"pre": 0, "post": cell.n_edits}
    (folder / "metrics.json").write_text(json.dumps({
        phase: {**{m["metric"]: m["value"] for m in metrics if m["edits_done"] == p},
                **{f"probe {r['task']}/{r['metric']}": r["value"] for r in probes if r["edits_done"] == p}}
        for phase, p in by_point.items()}, indent=1))
    hp = cell.hparams()
    run = {**cell.config(), "run_id": run_id, "config_hash": config_hash(cell.config()),
           "model_type": state.model_type, "corpus": corpus_spec(cell.model, hp.mom2_n_samples).key(),
           "n_edits_done": state.n_edits, "artifact_root": cfg.artifact_root}
    (folder / "run.json").write_text(json.dumps(run, indent=1, default=str))


def replace_folder(built: Path, out: Path) -> None:
    """``built`` becomes ``out``; a previous ``out`` is removed only once the new one is in place."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    built.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def run(cfg: SweepConfig, build: Path) -> tuple[str, str | None]:
    """Run the config's one cell in this process into ``build``; (status, error)."""
    from cluster.executor import LocalExecutor
    from cluster.pipeline import run_sweep, start_writer
    from storage.artifacts import ArtifactStore

    cell = next(cfg.cells())
    sweep_id = cfg.sweep_id or f"edit-{cfg.hash[:10]}"
    run_id = cell.run_id(sweep_id)
    ex = LocalExecutor()
    store = ArtifactStore(cfg.artifact_root if Path(cfg.artifact_root).is_absolute() else REPO / cfg.artifact_root)
    writer = start_writer(cfg.results, ex)
    try:
        from jobs.progress import SweepBars

        with SweepBars([cell], cfg.checkpoint_every) as bars:  # stderr: statistics, edit batches, evaluations
            status = run_sweep(cfg, sweep_id, writer, store, None, on_existing="replace", executor=ex,
                               parallel=False, on_progress=bars)[run_id]
        if status != "finished":
            err = _rows(writer, ex, "SELECT error FROM runs WHERE run_id = $r", run_id)[0]["error"]
            return status, err
        export(build, cfg, cell, run_id, store, writer, ex)
        return status, None
    finally:
        ex.get(ex.call(writer, "close"))


@cli_edge
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else REPO / "runs" / f"edit-{args.method}-{args.n_edits}-{args.batch_size}"
    build = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        cfg = cell_config(args, build)
    except SweepConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    try:
        status, error = run(cfg, build)
        if status != "finished":
            print(f"error: the edit run {status}: {error}", file=sys.stderr)
            return 1
        replace_folder(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
