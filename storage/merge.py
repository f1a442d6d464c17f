"""Command line: copy the rows of results files into one (sweeps run into separate files).

    python -m storage.merge --into results/table1.duckdb results/table1_alphaedit.duckdb results/table1_memit.duckdb

Every source is copied in its own transaction through :meth:`storage.writer.ResultWriter.merge_from`
(the destination is created if missing); a source whose rows clash with rows already there is
refused whole, with the clashing tables named. Exit status 0 when every source was merged, 1
otherwise (the sources merged before the failure stay merged).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.cli import add_log_level, cli_edge
from storage.schema import SchemaVersionError
from storage.sql import ResultsLockedError
from storage.writer import ResultWriter


@cli_edge(level="warning")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m storage.merge", description=__doc__.splitlines()[0])
    p.add_argument("--into", type=Path, required=True, help="destination results file (.duckdb; created if missing)")
    p.add_argument("sources", type=Path, nargs="+", help="results files to copy from (opened read-only)")
    add_log_level(p, "warning")
    args = p.parse_args(argv)
    try:
        writer = ResultWriter(args.into)
    except (ResultsLockedError, SchemaVersionError, OSError) as e:
        print(f"error: {args.into}: {e}", file=sys.stderr)
        return 1
    try:
        for src in args.sources:
            try:
                copied = writer.merge_from(src)
            except (ResultsLockedError, SchemaVersionError, FileNotFoundError, ValueError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            print(f"{src}: " + ", ".join(f"{t} {n}" for t, n in copied.items() if n))
    finally:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
