"""Write a self-contained HTML report (plots + the paper's Table 1 layout) of a results file.

    python -m jobs.report --db results/results.duckdb --out results/report
    python -m jobs.report --db results/results.duckdb --sweep <sweep id> --out results/report-<sweep id>

Open <out>/index.html in any browser; it needs no network. The file is opened read-only; while a
sweep still runs and holds it, the report is made from a consistent snapshot that the sweep's
writer actor takes (storage/live.py; found through the <db>.live.json it publishes, or RAY_ADDRESS).
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from eval.cli import add_log_level, cli_edge
from storage import live, names
from storage.report import write_report
from storage.report.core import default_out_dir
from storage.report.data import UnknownSweepError
from storage.schema import SchemaVersionError
from storage.sql import ResultsLockedError

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("jobs.report")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default=str(names.default_results_path()),
                   help=f"results DuckDB file written by a sweep (default: {names.DEFAULT_RESULTS} in the repository, "
                        "where the default config writes)")
    p.add_argument("--sweep", default=None, help="only the runs of this sweep id (default: all runs)")
    p.add_argument("--out", default=None, help="output folder; index.html is written there (may exist; default: "
                   "report-<sweep id or 'all'> beside the results file)")
    add_log_level(p)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(default_out_dir(args.db, args.sweep))
    return args


def report_of(db: str, out: str, sweep_id: str | None) -> Path:
    """The report of ``db`` in ``out``; when a running sweep holds ``db``, of a snapshot its writer takes now."""
    try:
        return write_report(db, out, sweep_id=sweep_id)
    except ResultsLockedError as locked:
        if live.published(db) is None and not os.environ.get("RAY_ADDRESS"):
            raise
        with tempfile.TemporaryDirectory(prefix="alphaedit-report-") as tmp:
            try:
                snap = live.snapshot_live(db, Path(tmp) / "snapshot.duckdb")
            except live.LiveQueryError as e:
                raise ResultsLockedError(f"{locked.args[0]}\nSnapshot through the sweep's writer: {e}") from e
            taken = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            log.info("%s is held by a running sweep: reporting a snapshot its writer took at %s", db, taken)
            preface = (f'<p class="meta">Live: a snapshot of <code>{html.escape(str(db))}</code> taken at '
                       f"{html.escape(taken)} while a sweep was writing it.</p>")
            return write_report(snap, out, sweep_id=sweep_id, preface_html=preface)


@cli_edge
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        index = report_of(args.db, args.out, args.sweep)
    except (FileNotFoundError, ResultsLockedError, SchemaVersionError, UnknownSweepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except duckdb.Error as e:  # not a DuckDB file (or a damaged one): DuckDB's first line names it
        print(f"error: cannot read {args.db} as a results database: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"report written: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
