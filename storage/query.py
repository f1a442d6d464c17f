"""Command line: run a canned or ad-hoc read-only SQL query on a results file.

    python -m storage.query --db results.duckdb method_comparison --param n_edits=2000
    python -m storage.query --db results.duckdb --sql "SELECT metric, avg(value) FROM metrics GROUP BY 1"
    python -m storage.query --db results.duckdb degradation_curve --csv curve.csv
    python -m storage.query --list

The file is opened read-only with file access off: the SQL cannot change it. While a running
sweep holds the file, the query goes to that sweep's writer actor (storage/live.py: found on the
Ray cluster at --address, RAY_ADDRESS or the address published in <db>.live.json), which runs it
the same way on a snapshot; ``--live`` asks that writer directly (exit 2 with one line when no running
sweep publishes one for the file). Exit status 0 on success, 1 when the query fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import polars as pl

from eval.cli import add_log_level, cli_edge
from storage import live, names, queries
from storage.reader import ResultsReader
from storage.schema import SchemaVersionError
from storage.sql import QueryRejectedError, ResultsLockedError


def _parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"error: --param wants NAME=VALUE, got {item!r}")
        params[name.strip()] = value
    return params


def _list() -> str:
    lines = []
    for name in queries.available():
        q = queries.load(name)
        lines.append(f"{name}: {q.description}")
        for p, doc in q.params.items():
            lines.append(f"    --param {p}=...  {doc}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m storage.query",
        description="Run a canned or ad-hoc read-only SQL query against a results DuckDB file.",
        epilog="Canned queries:\n" + _list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", type=Path, default=names.default_results_path(),
                   help=f"results file (.duckdb; default: {names.DEFAULT_RESULTS} in the repository, where the "
                        "default config writes)")
    p.add_argument("name", nargs="?", help="canned query name (see --list)")
    p.add_argument("--sql", help="ad-hoc SQL (SELECT / WITH / DESCRIBE / SHOW / SUMMARIZE / EXPLAIN only)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="canned query parameter")
    p.add_argument("--list", action="store_true", help="list the canned queries and their parameters")
    p.add_argument("--address", default=None,
                   help="Ray address of the sweep that holds --db, for a live query (default: RAY_ADDRESS, else the "
                        "address the sweep publishes in <db>.live.json)")
    p.add_argument("--live", action="store_true",
                   help="query the running sweep that holds --db through its writer actor, without trying to open "
                        "the file (without --live this happens by itself when the file is held)")
    add_log_level(p, "warning")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", type=Path, help="write the result to this CSV file instead of printing it")
    out.add_argument("--parquet", type=Path, help="write the result to this Parquet file instead of printing it")
    return p


@cli_edge(level="warning")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(_list())
        return 0
    if (args.name is None) == (args.sql is None):
        parser.error("give exactly one of a canned query name or --sql")
    if args.sql is not None and args.param:
        parser.error("--param is for canned queries; write values into the --sql text instead")
    params = _parse_params(args.param) if args.name is not None else None
    target = args.csv or args.parquet
    if target is not None and not target.parent.is_dir():  # before the query runs, not after
        print(f"error: {'--csv' if args.csv else '--parquet'} {target}: the folder {target.parent} does not exist; "
              "create it or give another path", file=sys.stderr)
        return 2
    if args.live and live.published(args.db) is None and not (args.address or os.environ.get("RAY_ADDRESS")):
        print(f"error: --live: no running sweep publishes a writer for {args.db} (no {live.sidecar_path(args.db)}); "
              "drop --live to read the file itself, or pass the sweep's --address", file=sys.stderr)
        return 2
    try:
        try:
            if args.live:
                frame = live.query_live(args.db, sql=args.sql, canned=args.name, params=params, address=args.address)
            else:
                with ResultsReader(args.db) as reader:
                    frame = reader.sql(args.sql) if args.sql is not None else reader.canned(args.name, **params)
        except ResultsLockedError as locked:  # a running sweep holds it: ask its writer actor (storage.live)
            try:
                frame = live.query_live(args.db, sql=args.sql, canned=args.name, params=params, address=args.address)
            except live.LiveQueryError as e:
                raise ResultsLockedError(f"{locked.args[0]}\nLive query through the sweep's writer: {e}") from e
            print(f"(live: {args.db} is held by a running sweep; answered by its writer actor from a snapshot "
                  "taken now)", file=sys.stderr)
    except live.LiveQueryError as e:  # --live, and no writer answers for the file
        print(f"error: --live: {e}", file=sys.stderr)
        return 2
    except (ResultsLockedError, SchemaVersionError, QueryRejectedError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1
    except Exception as e:  # duckdb errors: show DuckDB's own message, which names the problem
        print(f"error: query failed: {e}", file=sys.stderr)
        return 1
    try:
        if args.csv:
            frame.write_csv(args.csv)
            print(f"wrote {frame.height} row(s) to {args.csv}", file=sys.stderr)
        elif args.parquet:
            frame.write_parquet(args.parquet)
            print(f"wrote {frame.height} row(s) to {args.parquet}", file=sys.stderr)
        else:
            with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200):
                print(frame, flush=True)
    except BrokenPipeError:  # `... | head` closed the pipe: what it wanted is out; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except OSError as e:
        print(f"error: cannot write {target}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
