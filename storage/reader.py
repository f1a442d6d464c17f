"""Read side of a results file: read-only connections and query helpers returning polars frames.

A reader opens the file read-only with file access disabled, so nothing it runs can change the
database or touch other files. While a :class:`storage.writer.ResultWriter` holds the file, no
other process can open it at all (a DuckDB rule); the reader then raises
:class:`storage.sql.ResultsLockedError`, which says how to get a snapshot instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import polars as pl

from storage import names
from storage import sql as sqlh
from storage.schema import check_version

log = logging.getLogger(__name__)


class ResultsReader:
    """A read-only view of a results file; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str], *, allow_file_access: bool = False) -> None:
        """Open ``path`` read-only and check its schema version.

        ``allow_file_access=True`` lets the SQL read and write other files (COPY ... TO,
        read_parquet); the results file itself stays read-only either way.
        """
        self.path = Path(path)
        self._con = sqlh.connect(self.path, read_only=True, external_access=allow_file_access)
        try:
            self.schema_version = check_version(self._con, str(self.path))
        except BaseException:
            self._con.close()
            raise

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> ResultsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> Any:
        """The underlying read-only DuckDB connection (for APIs this class does not wrap)."""
        if self._con is None:
            raise RuntimeError(f"ResultsReader for {self.path} is closed")
        return self._con

    def sql(self, query: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
        """Run a read-only SQL query (``$name`` parameters from ``params``) and return a frame."""
        return sqlh.select(self.connection, query, params)

    def canned(self, name: str, **params: Any) -> pl.DataFrame:
        """Run the canned query ``storage/queries/<name>.sql``; missing parameters are NULL."""
        return sqlh.canned(self.connection, name, params)

    def table(self, name: str) -> pl.DataFrame:
        """A whole table (one of ``storage.names.RESULT_TABLES`` or ``schema_version``)."""
        allowed = (*names.RESULT_TABLES, names.TABLE_SCHEMA_VERSION)
        if name not in allowed:
            raise ValueError(f"no table {name!r}; tables: {', '.join(allowed)}")
        return self.sql(f"SELECT * FROM {name}")

    def runs(self, sweep_id: str | None = None) -> pl.DataFrame:
        """Rows of ``runs``, optionally of one sweep, ordered by run_id."""
        return self.sql(
            "SELECT * FROM runs WHERE $sweep_id IS NULL OR sweep_id = CAST($sweep_id AS VARCHAR) ORDER BY run_id",
            {"sweep_id": sweep_id},
        )

    def metrics(self, run_id: str | None = None) -> pl.DataFrame:
        """Rows of ``metrics``, optionally of one run, ordered by their key."""
        return self.sql(
            "SELECT * FROM metrics WHERE $run_id IS NULL OR run_id = CAST($run_id AS VARCHAR) "
            "ORDER BY run_id, edits_done, dataset, metric",
            {"run_id": run_id},
        )

    def probes(self, run_id: str | None = None) -> pl.DataFrame:
        """Rows of ``probes``, optionally of one run, ordered by their key."""
        return self.sql(
            "SELECT * FROM probes WHERE $run_id IS NULL OR run_id = CAST($run_id AS VARCHAR) "
            "ORDER BY run_id, edits_done, task, metric",
            {"run_id": run_id},
        )


def read_sql(db: str | os.PathLike[str], query: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
    """Open ``db`` read-only, run ``query``, close; return the frame."""
    with ResultsReader(db) as r:
        return r.sql(query, params)


def read_canned(db: str | os.PathLike[str], name: str, **params: Any) -> pl.DataFrame:
    """Open ``db`` read-only, run the canned query ``name``, close; return the frame."""
    with ResultsReader(db) as r:
        return r.canned(name, **params)


def export_parquet(db: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Export every table of the results file ``db`` to ``out_dir/<table>.parquet`` (read-only open)."""
    with ResultsReader(db, allow_file_access=True) as r:
        return sqlh.export_parquet(r.connection, out_dir)
