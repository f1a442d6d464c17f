"""Helpers shared by the writer and the reader: guarded SELECTs, canned queries, Parquet export.

duckdb is imported inside functions so that importing ``storage`` stays cheap and free of
DuckDB's native module (Ray workers import and pickle a lot; see the project reference notes).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from eval.errors import ExpectedError
from storage import names
from storage import queries as canned_queries
from storage.views import VIEWS

log = logging.getLogger(__name__)

#: Statement types a read-only query may contain.
_ALLOWED_TYPES = ("SELECT", "EXPLAIN")


class QueryRejectedError(ExpectedError, ValueError):
    """SQL given to a read-only query contains something other than SELECT statements."""


def check_select_only(sql: str) -> None:
    """Raise :class:`QueryRejectedError` unless every statement in ``sql`` is a SELECT or EXPLAIN.

    DESCRIBE, SHOW and SUMMARIZE count as SELECT. This is a first line of defence with a clear
    message; the reader also opens the file read-only, so a statement that slips through still
    cannot change it.
    """
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryRejectedError(f"cannot parse the query: {e}") from e
    if not statements:
        raise QueryRejectedError("the query is empty")
    for st in statements:
        kind = st.type.name
        if kind not in _ALLOWED_TYPES:
            text = st.query.strip().splitlines()[0][:80] if st.query.strip() else ""
            raise QueryRejectedError(
                f"only read-only queries (SELECT, WITH ... SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) are allowed; "
                f"got a {kind} statement: {text!r}. Results are written only by storage.writer.ResultWriter."
            )


class MissingViewError(ExpectedError, ValueError):
    """The SQL names an analysis view (storage/views.py) that this file does not have yet."""


def select(con: Any, sql: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
    """Run a SELECT-only ``sql`` on ``con`` and return a polars frame (params as ``$name``).

    A query on an analysis view the file lacks (written by code older than the view) raises
    :class:`MissingViewError`, which says how to add the views.
    """
    import duckdb

    check_select_only(sql)
    try:
        return con.sql(sql, params=params).pl() if params else con.sql(sql).pl()
    except duckdb.CatalogException as e:
        missing = [v.name for v in VIEWS if re.search(rf"\b{v.name}\b", str(e))]
        if not missing:
            raise
        raise MissingViewError(
            f"{str(e).splitlines()[0]} The view {missing[0]} is made by storage.writer.ResultWriter each time it opens a results "
            "file, and this file was last opened by older code: open it once with ResultWriter(path) (any writer, "
            "e.g. the next sweep into it) to add the views (nothing stored changes)."
        ) from e


def canned(con: Any, name: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
    """Run the canned query ``name`` (``storage/queries/<name>.sql``) with ``params`` on ``con``."""
    q = canned_queries.load(name)
    bound = q.bind(params)
    return select(con, q.sql, bound if bound else None)


def export_parquet(con: Any, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write every result table and ``schema_version`` to ``out_dir/<table>.parquet``.

    Each file is written under a temporary name and renamed, so a reader never sees half a file.
    ``con`` must allow file access. Returns the written paths by table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for table in (*names.RESULT_TABLES, names.TABLE_SCHEMA_VERSION):
        final = out / f"{table}.parquet"
        tmp = out / f".{table}.parquet.tmp-{uuid.uuid4().hex}"
        try:
            con.execute(f"COPY (SELECT * FROM {table}) TO '{_sql_str(tmp)}' (FORMAT parquet)")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        written[table] = final
        log.info("exported %s to %s", table, final)
    return written


def _sql_str(path: Path | str) -> str:
    """``path`` escaped for use inside a single-quoted SQL string literal."""
    return str(path).replace("'", "''")


class ResultsLockedError(ExpectedError, RuntimeError):
    """The results file is held open for writing by another process."""


def locked_message(path: Path, detail: str, *, read_only: bool) -> str:
    """Explain a DuckDB lock conflict on ``path`` and how to get at the data anyway."""
    if not read_only:
        return (
            f"cannot open results file {path} for writing: another process holds it ({detail}). "
            "Only one ResultWriter may own a results file; send rows to the existing writer (the writer "
            "actor of the running sweep) or use a different --db path."
        )
    return (
        f"cannot read results file {path}: a writer process holds it open ({detail}). "
        "DuckDB lets no other process open a file, even read-only, while a writer holds it; "
        "this is expected while a sweep is running (its ResultWriter actor owns the file). To read now, either\n"
        "  * query through the writer: ResultWriter.query(sql) / ResultWriter.canned(name) "
        "(from a Ray driver: ray.get(writer.query.remote(sql))), or\n"
        "  * ask the writer for a consistent copy, ResultWriter.snapshot('snapshot.duckdb') "
        "(ray.get(writer.snapshot.remote('snapshot.duckdb'))), and query that copy: "
        "python -m storage.query --db snapshot.duckdb ..., or\n"
        "  * wait until the sweep ends; the writer closes the file then."
    )


def connect(path: str | os.PathLike[str], *, read_only: bool, external_access: bool = True) -> Any:
    """Open the DuckDB file ``path``; a lock conflict raises :class:`ResultsLockedError`.

    With ``read_only`` the file must exist. ``external_access=False`` (read-only only) also
    forbids the SQL from touching other files (COPY, ATTACH, read_csv, INSTALL) and locks the
    configuration so that the SQL cannot switch it back.
    """
    import duckdb

    p = Path(path)
    if read_only and not p.is_file():
        raise FileNotFoundError(f"results file {p} does not exist; check the --db path (a writer creates it)")
    config: dict[str, Any] = {}
    if not external_access:
        if not read_only:
            raise ValueError("external_access=False is only for read-only connections")
        config = {"enable_external_access": False, "lock_configuration": True}
    try:
        return duckdb.connect(str(p), read_only=read_only, config=config)
    except duckdb.IOException as e:
        msg = str(e)
        if "lock" in msg.lower():
            raise ResultsLockedError(locked_message(p, msg, read_only=read_only)) from e
        raise
