"""Run a grid of sequential-editing experiments on Ray; every number lands in DuckDB.

    python -m jobs.sweep                                   # default demo on the toy world (local Ray)
    python -m jobs.sweep --config jobs/configs/gpt2-xl.yaml --set n_edits=[2000]
    ray job submit --working-dir . -- python -m jobs.sweep --config ... --set results=/shared/results.duckdb
    python -m jobs.sweep --config ... --resume SWEEP_ID    # continue a sweep whose driver died

The config (YAML) expands models x methods x batch sizes x n_edits x datasets x seeds x hparams
overrides into run cells (see cluster/config.py). Under `ray job submit` the job joins the cluster
(RAY_ADDRESS is set); run directly, it starts a local Ray. Relative `results`/`artifact_root`
paths are resolved against the repository root; under `ray job submit` that is the uploaded copy,
so give absolute paths on shared storage there.

Resume: `--resume SWEEP_ID` (with the same --config/--set as the first run) continues that sweep:
finished cells are skipped; unfinished ones continue from their newest editor checkpoint, and
evaluations already in the database are not redone. SIGINT/SIGTERM stop every cell at its next
batch boundary (status `interrupted`), stop the local Ray and print the `--resume` command. Exit
codes: 0 all cells finished, 1 some cell failed (see `runs.error`), 2 bad config / resources /
nothing to resume, 130/143 stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.config import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG
from cluster.config import SweepConfig, SweepConfigError, load_config
from cluster.preflight import add_on_bad_record
from eval.cli import add_log_level, cli_edge

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("jobs.sweep")


def config_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every config-driven job shares (sweep, stats): config, overrides, Ray address."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="sweep YAML (default: the real-model demo, jobs/configs/default.yaml; the toy world: jobs/configs/toy.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set eval_every=100 --set models.0.num_gpus=1")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else start a local Ray; 'local' "
                   "always starts a new local instance)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray")
    add_on_bad_record(p)
    add_log_level(p)
    return p


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS), or start a local Ray ('local': always a new one),
    watched by :mod:`cluster.watchdog` (stopped when this process dies, even by SIGKILL)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback default; clusters set token mode
    address = address or os.environ.get("RAY_ADDRESS")
    if address == "local":  # a new local instance even when another Ray runs on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    elif address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    node = ray._private.worker.global_worker.node
    if node is None or not getattr(node, "head", False):
        return  # joined a running Ray: not ours to stop
    from cluster.watchdog import start_watchdog

    start_watchdog(node.get_session_dir_path())  # a SIGKILLed driver leaves nothing of its local Ray running


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = config_parser(__doc__)
    p.add_argument("--rerun", choices=["resume", "replace"], default="resume",
                   help="runs already in the database: resume/skip them (default) or replace them")
    p.add_argument("--resume", metavar="SWEEP_ID", default=None,
                   help="continue the sweep SWEEP_ID (same --config/--set as its first run): skip finished "
                        "cells, batches and evaluations")
    p.add_argument("--allow-new-cells", action="store_true",
                   help="with --resume: accept a config whose grid has cells the sweep does not have yet (they "
                        "are added to it); without it such a config is refused")
    return p.parse_args(argv)


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def resolve(path: str) -> str:
    return path if "://" in path or Path(path).is_absolute() else str(REPO / path)


def checked_config(args: argparse.Namespace) -> SweepConfig | None:
    """The config of ``args`` (--config, --set), preflighted; None after printing why it is not usable."""
    overrides = list(args.overrides)
    if getattr(args, "on_bad_record", None):
        overrides.append(f"on_bad_record={args.on_bad_record}")
    try:
        cfg = load_config(args.config, overrides)
        from cluster.preflight import preflight

        # models, layers, every dataset record the cells edit, probe tasks, results file and artifact store
        preflight(cfg, args.config)
    except SweepConfigError as e:
        print(f"error: {e.brief()}", file=sys.stderr)
        return None
    return cfg


@contextmanager
def ray_outputs(cfg: SweepConfig, address: str | None, num_cpus: int | None,
                notices: list[str] | None = None) -> Iterator[tuple[str, Any, Any]]:
    """(results path, writer actor, artifact store) on a started or joined Ray; on exit the writer is
    closed and Ray shut down, then the lines put in ``notices`` meanwhile go to stderr (last). The
    results file's folder is created when it is local."""
    import ray

    from cluster.executor import RayExecutor
    from cluster.pipeline import start_writer
    from storage import live
    from storage.artifacts import ArtifactStore

    init_ray(address, num_cpus)
    results = resolve(cfg.results)
    if "://" not in results:
        Path(results).parent.mkdir(parents=True, exist_ok=True)
    writer = start_writer(results, RayExecutor())
    address = ray.get_runtime_context().gcs_address
    live.publish(results, address, live.writer_actor_name(results))  # for storage.query on the running sweep
    log.info("live results while this runs: python -m storage.query --db %s run_status (the writer actor %s "
             "on Ray at %s answers read-only SQL)", results, live.writer_actor_name(results), address)
    try:
        yield results, writer, ArtifactStore(resolve(cfg.artifact_root))
    finally:
        try:
            ray.get(writer.close.remote(), timeout=60)
        finally:
            live.unpublish(results)
            ray.shutdown()
            for line in notices or ():
                print(line, file=sys.stderr)


class StopRequest(threading.Event):
    """Set by SIGINT/SIGTERM; ``signum`` says which. The sweep's cells stop at their next batch boundary."""

    signum = 0


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM set the yielded event instead of killing the driver (a second SIGINT stops at
    once, with KeyboardInterrupt); the previous handlers are restored on exit."""
    stop = StopRequest()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.signum = signum
        stop.set()
        log.warning("%s: stopping every cell at its next batch boundary (runs marked interrupted; resumable); "
                    "Ctrl-C again stops at once", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def resume_command(argv: list[str] | None, sweep_id: str) -> str:
    """The command line that continues this sweep: the same arguments, ``--resume SWEEP_ID``."""
    args = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            kept.append(a)
    return shlex.join(["python", "-m", "jobs.sweep", *kept, "--resume", sweep_id])


def resume_problem(cfg: SweepConfig, sweep_id: str, allow_new_cells: bool = False) -> str | None:
    """Why ``--resume sweep_id`` cannot continue with ``cfg`` (None: it can), checked on the results
    file before Ray starts: the file must exist and hold the sweep, and the config's cells must be the
    sweep's (same run ids, same cell configs; new cells only with ``allow_new_cells``)."""
    results = resolve(cfg.results)
    if "://" in results:
        return None  # checked through the writer once Ray is up
    if not Path(results).is_file():
        return (f"--resume {sweep_id}: the results file {results} does not exist; pass the same --config and --set "
                "as the sweep's first run (they name its results file)")
    import duckdb

    from storage.hashing import config_hash

    con = duckdb.connect(results, read_only=True)
    try:
        stored = dict(con.execute("SELECT run_id, config_hash FROM runs WHERE sweep_id = ?", [sweep_id]).fetchall())
    finally:
        con.close()
    if not stored:
        return (f"--resume {sweep_id}: no runs of that sweep in {results}; pass the same --config and --set as its "
                "first run (they name the results file)")
    cells = {c.run_id(sweep_id): config_hash(c.config()) for c in cfg.cells()}
    new = sorted(set(cells) - set(stored))
    changed = sorted(r for r in set(cells) & set(stored) if cells[r] != stored[r])
    missing = sorted(set(stored) - set(cells))
    if not changed and (allow_new_cells or not new) and not missing:
        return None
    parts = [f"{len(x)} {what} (e.g. {x[0]})" for x, what in ((new, "new cell(s)"), (changed, "changed cell(s)"),
                                                            (missing, "cell(s) of the sweep not in this config"))
             if x]
    fix = "rerun with the --config and --set of its first run"
    if new and not changed and not missing:
        fix += ", or add --allow-new-cells to add the new cells to the sweep"
    return f"--resume {sweep_id}: this config differs from the sweep's ({'; '.join(parts)}); {fix}"


@cli_edge
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = checked_config(args)
    if cfg is None:
        return 2
    if args.resume and args.rerun == "replace":
        print("error: --resume continues a sweep; it cannot be combined with --rerun replace", file=sys.stderr)
        return 2
    sweep_id = args.resume or cfg.sweep_id or f"sweep-{cfg.hash[:10]}"
    if args.allow_new_cells and not args.resume:
        print("error: --allow-new-cells only goes with --resume SWEEP_ID", file=sys.stderr)
        return 2
    if args.resume:
        problem = resume_problem(cfg, sweep_id, args.allow_new_cells)  # before Ray starts; creates no file
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    log.info("resolved config (hash %s, sweep %s):\n%s", cfg.hash, sweep_id, json.dumps(cfg.to_dict(), indent=1))

    import ray

    from cluster.executor import RayExecutor
    from cluster.pipeline import GET_TIMEOUT_S, ResourceError, run_sweep

    ex = RayExecutor()
    exit_code = 0
    notices: list[str] = []
    with ray_outputs(cfg, args.address, args.num_cpus, notices) as (results, writer, store):
        t0 = time.time()
        try:
            if args.resume:
                known = ray.get(writer.query.remote("SELECT count(*) AS n FROM runs WHERE sweep_id = $s",
                                                    {"s": sweep_id}), timeout=GET_TIMEOUT_S)["n"][0]
                if not known:
                    print(f"error: --resume {sweep_id}: no runs of that sweep in {results}; pass the same --config "
                          "and --set as its first run (they name the results file)", file=sys.stderr)
                    return 2
            from jobs.progress import SweepBars

            cells = list(cfg.cells())
            # bars on stderr: key statistics (shards), edit batches, evaluations (rewrite metrics + probes)
            with stop_on_signals() as stop, SweepBars(cells, cfg.checkpoint_every) as bars:
                statuses = run_sweep(cfg, sweep_id, writer, store, git_sha(), on_existing=args.rerun, executor=ex,
                                     on_progress=bars, stop=stop)
            if stop.is_set():
                stopped = sum(s == "interrupted" for s in statuses.values())
                notices.append(f"interrupted by {signal.Signals(stop.signum).name}: {stopped} cell(s) stopped at a "
                               f"batch boundary and marked interrupted; resume with: {resume_command(argv, sweep_id)}")
                return 128 + stop.signum
            log.info("%d run cells, %d to run (%d finished earlier)", len(cells), len(statuses),
                     len(cells) - len(statuses))
            summary = ray.get(writer.canned.remote("method_comparison", sweep_id=sweep_id), timeout=GET_TIMEOUT_S)
            probes = ray.get(writer.query.remote(
                "SELECT r.method, p.task, p.edits_done, round(p.value, 4) AS value FROM probes p JOIN runs r USING (run_id) "
                "WHERE r.sweep_id = $s AND p.metric = 'acc' ORDER BY 2, 1, 3", {"s": sweep_id}), timeout=GET_TIMEOUT_S)
            import polars as pl

            with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200):
                print(f"\nsweep {sweep_id}: {len(statuses)} cells run in {time.time() - t0:.0f} s; results in {results}")
                print(summary)
                print(probes)
            failed = {rid: s for rid, s in statuses.items() if s != "finished"}
            if failed:
                print(f"{len(failed)} cells failed; see `SELECT run_id, error FROM runs WHERE status = 'failed'`")
                exit_code = 1
            print(f"query: python -m storage.query --db {results} method_comparison")
            from storage.report import report_hint

            print(f"report: {report_hint(results, sweep_id)}")
        except ResourceError as e:
            print(f"error: {e}", file=sys.stderr)
            exit_code = 2
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
