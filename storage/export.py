"""Command line: export every table of a results file to Parquet, one file per table.

    python -m storage.export --db results.duckdb --out results_parquet/

Writes ``<out>/<table>.parquet`` for runs, metrics, probes, timings, artifacts and
schema_version (each under a temporary name, then renamed). The results file is opened
read-only. Exit status 0 on success, 1 on failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.cli import add_log_level, cli_edge
from storage.reader import export_parquet
from storage.schema import SchemaVersionError
from storage.sql import ResultsLockedError


@cli_edge(level="warning")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m storage.export", description=__doc__.splitlines()[0])
    p.add_argument("--db", type=Path, required=True, help="results file (.duckdb)")
    p.add_argument("--out", type=Path, required=True, help="folder for the Parquet files (created if missing)")
    add_log_level(p, "warning")
    args = p.parse_args(argv)
    try:
        written = export_parquet(args.db, args.out)
    except (ResultsLockedError, SchemaVersionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for table, path in written.items():
        print(f"{table}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
