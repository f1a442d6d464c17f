"""Precompute the key statistics E[k kᵀ] (and null-space projectors) that a sweep config needs, on their own.

    python -m jobs.stats                                        # the toy-world demo's statistics
    python -m jobs.stats --config jobs/configs/gpt2-xl.yaml --set stats_shards=16
    ray job submit --working-dir . -- python -m jobs.stats --config ... --set artifact_root=/shared/artifacts

For every model of the config and every distinct statistics spec of its run cells (edited layers,
corpus, sample count, max length, key budget), the statistics come from the artifact store or are
computed by Ray tasks over corpus shards (one forward pass per shard for all edited layers),
merged exactly and stored, exactly as `jobs/sweep.py` does. Then the null-space projectors of the
cells that use them (AlphaEdit and every "+proj" method; one per statistics spec, threshold and
threshold mode) are computed by a task and stored. A later sweep on the same artifact store computes
nothing. Prints one line per model and spec: computed or cached, keys (ranks), seconds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from cluster.config import RunCell, SweepConfig
from eval.cli import cli_edge

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("jobs.stats")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from jobs.sweep import config_parser

    return config_parser(__doc__).parse_args(argv)


def stats_spec(cell: RunCell) -> tuple:
    """What the cell's key statistics depend on (beyond the model's files and corpus)."""
    hp = cell.hparams()
    return cell.model.name, hp.layers, hp.mom2_n_samples, hp.mom2_max_length, hp.key_budget_multiplier


def stats_cells(cfg: SweepConfig) -> list[RunCell]:
    """One run cell per (model, distinct statistics spec): the cells whose statistics differ."""
    seen: set[tuple] = set()
    out = []
    for cell in cfg.cells():
        spec = stats_spec(cell)
        if spec not in seen:
            seen.add(spec)
            out.append(cell)
    return out


@cli_edge
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from jobs.sweep import checked_config, ray_outputs

    cfg = checked_config(args)
    if cfg is None:
        return 2
    # The writer records the artifacts stored here (the `artifacts` table).
    with ray_outputs(cfg, args.address, args.num_cpus) as (_, writer, store):
        return compute_all(cfg, writer, store)


def compute_all(cfg: SweepConfig, writer: Any, store: Any) -> int:
    """Statistics of every distinct spec, then the projectors of the cells that use them; the exit code."""
    from cluster.executor import RayExecutor
    from cluster.pipeline import ModelRun, ResourceError, cell_stats_keys
    from cluster.placement import device_gpus, stats_options
    from jobs.progress import SweepBars

    runs: dict[str, ModelRun] = {}
    bars = SweepBars((), cfg.checkpoint_every, edits=False)  # stderr: the shard tasks of computed statistics

    def model_run(cell: RunCell) -> ModelRun:
        return runs.setdefault(cell.model.name, ModelRun(cfg, cell.model, "stats", writer, store, RayExecutor(),
                                                         bars))

    try:
        by_spec = {}
        for cell in stats_cells(cfg):
            hp = cell.hparams()
            keys = cell_stats_keys(cell.model, cell)
            opts = stats_options(cfg, cell.model)
            # the sweep's own path: tasks read, merge and store; only references and counts come back here
            stats, _ = model_run(cell).statistics(cell, keys, opts, device_gpus(opts))
            by_spec[stats_spec(cell)] = stats.ref, keys
            print(f"{cell.model.name}: layers {list(hp.layers)} over {hp.mom2_n_samples} docs "
                  f"(max_length {hp.mom2_max_length}, key budget {hp.key_budget_multiplier}): "
                  f"{'computed' if stats.computed else 'cached'} in {stats.seconds:.1f} s; keys per layer "
                  f"{dict(sorted(stats.counts.items()))}")
        # The null-space projectors of the cells that use them (AlphaEdit, every "+proj" method).
        for cell in cfg.cells():
            mr = model_run(cell)
            before = set(mr.projector_sets)
            pid, rows = mr.projectors(cell, *by_spec[stats_spec(cell)], "")
            if pid is None or pid in before:
                continue
            hp, info = cell.hparams(), mr.projector_info[pid]
            print(f"{cell.model.name}: null-space projectors of layers {list(hp.layers)} (threshold "
                  f"{hp.nullspace_threshold:g}, {hp.threshold_mode}): {'computed' if rows else 'cached'} in "
                  f"{info['seconds']:.1f} s; rank/d_k per layer "
                  f"{ {layer: round(k, 4) for layer, k in info['kept'].items()} }")
        bars.close()
        print(f"artifact store: {store}")
        return 0
    except ResourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
