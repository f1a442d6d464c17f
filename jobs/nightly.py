"""Nightly regression run: a pinned sweep, compared with the last passing nightly; exit 1 on regression.

    python -m jobs.nightly                                   # tonight (UTC date), local Ray
    python -m jobs.nightly --date 2026-11-21 --set results=/shared/nightly.duckdb
    ray job submit --submission-id nightly-$(date +%F) --working-dir . -- \\
        python -m jobs.nightly --date $(date +%F) --set results=/shared/nightly/nightly.duckdb \\
        --set artifact_root=/shared/nightly/artifacts

Steps: run the sweep of ``--config`` (default ``jobs/configs/nightly.yaml``) as sweep
``nightly-<date>`` through ``jobs.sweep.main``; read its metrics, probes and edit seconds at the
final ``edits_done``; compare each with the baseline (the last passing nightly of ``--tag`` in the
same results file, or the pinned values of ``--thresholds`` where there is none) under the
per-metric direction and tolerance of the thresholds file; print the regression table; store the
tag, the verdict and the table (``sweep_tags``, ``nightly_verdicts``, ``nightly_checks``); write
an HTML report with the table on top. Rules: ``storage/nightly.py``.

Exit status: 0 pass; 1 a regression, a missing metric or failed run cells; 2 a usage or config
error, or no runs to compare. A rerun of the same night resumes the sweep (finished cells are
skipped) and replaces the night's verdict.
"""

from __future__ import annotations

import argparse
import html
import logging
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from cluster.config import SweepConfig, SweepConfigError, load_config
from eval.cli import add_log_level, cli_edge
from storage import nightly as nl

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("jobs.nightly")

DEFAULT_CONFIG = REPO / "jobs" / "configs" / "nightly.yaml"
DEFAULT_THRESHOLDS = REPO / "jobs" / "configs" / "nightly_thresholds.yaml"
DEFAULT_TAG = "nightly"
EXIT_PASS, EXIT_REGRESSION, EXIT_ERROR = 0, 1, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="pinned sweep YAML (default: %(default)s)")
    p.add_argument("--thresholds", default=str(DEFAULT_THRESHOLDS),
                   help="per-metric direction/tolerance and pinned baseline values (default: %(default)s)")
    p.add_argument("--date", type=date.fromisoformat, default=None, metavar="YYYY-MM-DD",
                   help="the night this run stands for (default: today, UTC); sweep id nightly-<date>")
    p.add_argument("--sweep-id", default=None, help="sweep id (default: nightly-<date>)")
    p.add_argument("--tag", default=DEFAULT_TAG, help="suite of nightlies; baselines come from the same tag")
    p.add_argument("--baseline", default="auto", metavar="auto|thresholds|SWEEP_ID",
                   help="auto: last passing nightly of the tag, else the thresholds file (default); "
                        "thresholds: only the thresholds file; or a sweep id to compare with")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, as in jobs/sweep.py (e.g. --set results=/shared/n.duckdb)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray")
    p.add_argument("--rerun", choices=["resume", "replace"], default="resume",
                   help="runs of this night already in the results file: resume/skip them (default) or "
                        "replace them (e.g. after changing the nightly config the same night)")
    p.add_argument("--compare-only", action="store_true",
                   help="do not run the sweep; judge the sweep already in the results file (refused, exit 2, "
                        "unless its runs are exactly the cells of --config with --set)")
    p.add_argument("--report-dir", default=None,
                   help="where to write the HTML report (default: <results dir>/reports/<sweep id>)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    add_log_level(p)
    return p.parse_args(argv)


def nightly_config_hash(cfg: SweepConfig) -> str:
    """Hash of what determines the nightly's numbers (not its sweep id or where results go)."""
    return cfg.hash


def expected_runs(cfg: SweepConfig, sweep_id: str) -> dict[str, str]:
    """{run_id: config hash} of the runs ``cfg`` makes as sweep ``sweep_id`` (what a nightly of it holds)."""
    from storage.hashing import config_hash

    return {cell.run_id(sweep_id): config_hash(cell.config()) for cell in cfg.cells()}


def run_sweep(args: argparse.Namespace, sweep_id: str) -> int:
    """Run (or resume) the nightly sweep through ``jobs.sweep.main``; its exit code, 2 on a crash."""
    from jobs import sweep

    argv = ["--config", args.config]
    for o in [*args.overrides, f"sweep_id={sweep_id}"]:
        argv += ["--set", o]
    if args.address:
        argv += ["--address", args.address]
    if args.num_cpus is not None:
        argv += ["--num-cpus", str(args.num_cpus)]
    argv += ["--rerun", args.rerun]
    log.info("nightly sweep: jobs/sweep.py %s", " ".join(argv))
    try:
        return int(sweep.main(argv))
    except Exception:  # the comparison still runs and records the failed night
        log.exception("the nightly sweep %s crashed", sweep_id)
        return EXIT_ERROR


def resolve(path: str) -> str:
    """The results path as jobs/sweep.py resolves it (relative to the repository root)."""
    from jobs import sweep

    return sweep.resolve(path)


def write_report(results: str, out_dir: Path, sweep_id: str, preface_html: str) -> Path | None:
    """The night's HTML report with the regression table on top (None when reports are unavailable)."""
    try:
        from storage.report import write_report as _write_report
    except ImportError as e:  # storage.report is optional for the nightly verdict
        log.warning("no HTML report: storage.report is not importable (%s)", e)
        return None
    try:
        return _write_report(results, out_dir, sweep_id=sweep_id, preface_html=preface_html)
    except Exception:  # a report failure must not hide the verdict
        log.exception("writing the nightly report to %s failed", out_dir)
        return None


@cli_edge
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    night = args.date or datetime.now(UTC).date()
    sweep_id = args.sweep_id or f"nightly-{night.isoformat()}"
    try:
        thresholds = nl.load_thresholds(args.thresholds)
        cfg = load_config(args.config, [*args.overrides, f"sweep_id={sweep_id}"])
    except (nl.ThresholdsError, SweepConfigError) as e:
        print(f"error: {e.brief() if isinstance(e, SweepConfigError) else e}", file=sys.stderr)
        return EXIT_ERROR
    results = resolve(cfg.results)
    log.info("nightly %s (tag %s, night %s): results %s, thresholds %s", sweep_id, args.tag, night, results,
             thresholds.source)

    sweep_rc = 0 if args.compare_only else run_sweep(args, sweep_id)
    if not Path(results).is_file():
        print(f"error: results file {results} does not exist (the sweep wrote nothing)", file=sys.stderr)
        return EXIT_ERROR

    from jobs.sweep import git_sha

    with nl.open_results(results) as con:
        cells = nl.run_cells(con, sweep_id)
        if not cells:
            print(f"error: {results} holds no runs of sweep {sweep_id}", file=sys.stderr)
            return EXIT_ERROR
        if args.compare_only:  # judge only a nightly of this config: never tag or judge another sweep
            problems = nl.config_mismatch(con, sweep_id, expected_runs(cfg, sweep_id))
            if problems:
                shown = "\n  ".join(problems[:5]) + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else "")
                print(f"error: --compare-only: sweep {sweep_id} in {results} is not a nightly of {args.config} "
                      f"(with the given --set): {len(problems)} difference(s):\n  {shown}\nNothing was recorded. "
                      "Pass the --config and --set it was run with, or compare sweeps with SQL "
                      "(python -m storage.query) instead.", file=sys.stderr)
                return EXIT_ERROR
        current = nl.observations(con, sweep_id)
        if args.baseline == "auto":
            base = nl.select_baseline(nl.history(con), tag=args.tag, night=night, exclude=sweep_id)
            base_id = base.sweep_id if base else None
        elif args.baseline == "thresholds":
            base_id = None
        else:
            base_id = args.baseline
        db_baseline = nl.observations(con, base_id) if base_id else []
        if base_id and not db_baseline:
            print(f"error: baseline sweep {base_id} has no metrics in {results}", file=sys.stderr)
            return EXIT_ERROR
        checks = nl.compare(current, cells, thresholds, db_baseline, base_id)
        v = nl.verdict(checks, sweep_rc)
        nl.record(con, nl.NightlyRecord(
            sweep_id=sweep_id, tag=args.tag, night=night, verdict=v, baseline_sweep_id=base_id,
            thresholds=thresholds.source, sweep_exit_code=sweep_rc, config_hash=nightly_config_hash(cfg),
            git_sha=git_sha()), checks)

    source = f"last passing nightly {base_id}" if base_id else f"pinned values of {thresholds.source}"
    title = f"nightly {sweep_id} (tag {args.tag}): {v.status.value.upper()}"
    print(f"\n{title}\nbaseline: {source}; tolerances: {thresholds.source}")
    print(nl.format_table(checks))
    print(f"{v.n_failed} of {v.n_checks} metrics failed" + (f": {v.message}" if v.message else ""))
    if not args.no_report:
        out_dir = Path(args.report_dir) if args.report_dir else Path(results).parent / "reports" / sweep_id
        preface = nl.format_html(checks, title) + f"<p>baseline: {html.escape(source)}</p>"
        index = write_report(results, out_dir, sweep_id, preface)
        if index:
            print(f"report: {index}")
    return EXIT_PASS if v.status == nl.NightlyStatus.PASS else EXIT_REGRESSION


if __name__ == "__main__":
    sys.exit(main())
