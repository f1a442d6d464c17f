"""Precompute the key statistics E[k kᵀ] that a sweep config needs, on their own.

    python jobs/stats.py                                        # the toy-world demo's statistics
    python jobs/stats.py --config jobs/configs/gpt2-xl.yaml --set stats_shards=16
    ray job submit --working-dir . -- python jobs/stats.py --config ... --set artifact_root=/shared/artifacts

For every model of the config and every distinct statistics spec of its run cells (edited layers,
corpus, sample count, max length, key budget), the statistics come from the artifact store or are
computed by Ray tasks over corpus shards (one forward pass per shard for all edited layers),
merged exactly and stored, exactly as `jobs/sweep.py` does; a later sweep on the same artifact
store computes nothing. Prints one line per model and spec: computed or cached, keys, seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/stats.py` from any directory
    sys.path.insert(0, str(REPO))

from cluster.config import DEFAULT_CONFIG_PATH, RunCell, SweepConfig, SweepConfigError, load_config  # noqa: E402

log = logging.getLogger("jobs.stats")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="sweep YAML (default: the toy-world demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set stats_shards=8")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray")
    return p.parse_args(argv)


def stats_cells(cfg: SweepConfig) -> list[RunCell]:
    """One run cell per (model, distinct statistics spec): the cells whose statistics differ."""
    seen: set[tuple] = set()
    out = []
    for cell in cfg.cells():
        hp = cell.hparams()
        spec = (cell.model.name, hp.layers, hp.mom2_n_samples, hp.mom2_max_length, hp.key_budget_multiplier)
        if spec not in seen:
            seen.add(spec)
            out.append(cell)
    return out


def resolve(path: str) -> str:
    return path if "://" in path or Path(path).is_absolute() else str(REPO / path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        from cluster.preflight import preflight

        preflight(cfg, args.config)
    except SweepConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import ray

    from cluster.pipeline import ResourceError, key_statistics, start_writer
    from storage.artifacts import ArtifactStore

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback default; clusters set token mode
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    results = resolve(cfg.results)
    if "://" not in results:
        Path(results).parent.mkdir(parents=True, exist_ok=True)
    writer = start_writer(results)  # records the artifacts it stores (the `artifacts` table)
    store = ArtifactStore(resolve(cfg.artifact_root))
    try:
        for cell in stats_cells(cfg):
            hp = cell.hparams()
            stats, seconds, computed = key_statistics(cell.model, cell, store, cfg.stats_shards, writer)
            keys = {layer: count for layer, (_, count) in sorted(stats.items())}
            print(f"{cell.model.name}: layers {list(hp.layers)} over {hp.mom2_n_samples} docs "
                  f"(max_length {hp.mom2_max_length}, key budget {hp.key_budget_multiplier}): "
                  f"{'computed' if computed else 'cached'} in {seconds:.1f} s; keys per layer {keys}")
        print(f"artifact store: {store}")
        return 0
    except ResourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        try:
            ray.get(writer.close.remote(), timeout=60)
        finally:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
