"""Write a self-contained HTML report (plots + the paper's Table 1 layout) of a results file.

    python -m jobs.report --db results/results.duckdb --out results/report
    python -m jobs.report --db results/results.duckdb --sweep <sweep id> --out results/report-<sweep id>

Open <out>/index.html in any browser; it needs no network. The file is opened read-only, so a
sweep that is still running (and holds the file) makes this fail with a message saying how to
take a snapshot instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import duckdb

from eval.cli import add_log_level, cli_edge
from storage import names
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


@cli_edge
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        index = write_report(args.db, args.out, sweep_id=args.sweep)
    except (FileNotFoundError, ResultsLockedError, SchemaVersionError, UnknownSweepError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    except duckdb.Error as e:  # not a DuckDB file (or a damaged one): DuckDB's first line names it
        print(f"report: cannot read {args.db} as a results database: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"report written: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
