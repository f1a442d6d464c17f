"""Live results: read-only queries on a results file that a running sweep's writer holds.

While a sweep runs, its :class:`storage.writer.ResultWriter` actor owns the DuckDB file and no
other process can open it (a DuckDB rule). The actor is therefore *named*
(:func:`writer_actor_name`, in the namespace :data:`NAMESPACE`) for the sweep's lifetime (it is
not detached: it ends with the sweep's driver), and the driver publishes where to find it in a
small file beside the results file (:func:`publish`, ``<results>.live.json``: the Ray address and
the actor name), removed when the sweep ends.

:func:`query_live` connects to that Ray cluster (``address``, else ``RAY_ADDRESS``, else the
published address), finds the writer by name and asks it for
:meth:`storage.writer.ResultWriter.read_only_query`: the same guard as
:class:`storage.reader.ResultsReader` (SELECT-like statements only, run on a consistent snapshot
opened read-only with file access off), so a live query can neither change the results nor read
other files. ``python -m storage.query --db X ...`` falls back to it when X is locked (``--live``
asks the writer directly). :func:`snapshot_live` has the writer copy the file consistently, for
readers that need a whole database (``python -m jobs.report`` on a running sweep).

``ray`` is imported only inside :func:`live_writer` (the rest of ``storage`` never imports it).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from storage.sql import check_select_only

#: The Ray namespace of every writer actor (fixed, so that any driver can look them up).
NAMESPACE = "alphaedit"
WRITER_PREFIX = "alphaedit-writer:"
SIDECAR_SUFFIX = ".live.json"
GET_TIMEOUT_S = 120.0


class LiveQueryError(RuntimeError):
    """A locked results file could not be queried through its writer (no cluster, no such actor)."""


def canonical_results_path(results: str | os.PathLike[str]) -> str:
    """The results path as the writer's name is derived from it (absolute, symlinks resolved;
    ``scheme://`` paths as given)."""
    s = str(results)
    return s if "://" in s else str(Path(s).resolve())


def writer_actor_name(results: str | os.PathLike[str]) -> str:
    """``alphaedit-writer:<16 hex of sha256(canonical results path)>``: one writer per results file."""
    digest = hashlib.sha256(canonical_results_path(results).encode()).hexdigest()[:16]
    return f"{WRITER_PREFIX}{digest}"


def sidecar_path(results: str | os.PathLike[str]) -> Path:
    """``<results>.live.json``, where a running sweep says how to reach its writer."""
    p = Path(canonical_results_path(results))
    return p.with_name(p.name + SIDECAR_SUFFIX)


def publish(results: str | os.PathLike[str], address: str, actor_name: str) -> Path | None:
    """Write ``<results>.live.json`` (address, namespace, actor, pid) atomically; None for remote paths."""
    if "://" in str(results):
        return None
    path = sidecar_path(results)
    info = {"address": address, "namespace": NAMESPACE, "actor": actor_name, "results": canonical_results_path(results),
            "pid": os.getpid(), "host": socket.gethostname()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def unpublish(results: str | os.PathLike[str]) -> None:
    """Remove ``<results>.live.json`` (when the sweep's writer closes)."""
    if "://" not in str(results):
        sidecar_path(results).unlink(missing_ok=True)


def published(results: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The contents of ``<results>.live.json``, or None when there is none (or it is unreadable)."""
    path = sidecar_path(results)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _reachable(address: str, timeout: float = 2.0) -> bool:
    """Whether something listens at a ``host:port`` address (other address forms: assumed yes)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return True
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def live_writer(db: str | os.PathLike[str], address: str | None = None) -> Iterator[Any]:
    """The writer actor handle of the sweep holding ``db``, on a Ray connection held for the block.

    The Ray address is ``address``, else ``RAY_ADDRESS``, else the one the sweep published in
    ``<db>.live.json``. Raises :class:`LiveQueryError` when no writer can be reached.
    """
    info = published(db) or {}
    name = info.get("actor") or writer_actor_name(db)
    where = address or os.environ.get("RAY_ADDRESS") or info.get("address")
    if not where:
        raise LiveQueryError(
            f"no Ray address for the sweep holding {db}: it publishes one in {sidecar_path(db)} while it runs "
            "(absent here), or pass --address (the sweep logs it) or set RAY_ADDRESS")
    if not _reachable(where):
        source = "--address" if address else "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else str(sidecar_path(db))
        raise LiveQueryError(
            f"no Ray cluster answers at {where} (from {source}); "
            "the process holding the file is not a running sweep there. Pass the sweep's --address, or wait until the "
            "holder closes the file")
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # as jobs.sweep.init_ray: loopback default
    started = not ray.is_initialized()
    if started:
        ray.init(address=where, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING")
    try:
        try:
            writer = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError as e:
            raise LiveQueryError(
                f"the Ray cluster at {where} has no writer actor {name!r} for {canonical_results_path(db)} "
                f"(namespace {NAMESPACE!r}); the file is held by something else than a running sweep on that cluster") from e
        yield writer
    finally:
        if started:
            ray.shutdown()


def _call(remote_call: Any, timeout: float) -> Any:
    """``ray.get`` of a writer call; the writer's own error (DuckDB's, a rejected query) unwrapped."""
    import ray

    try:
        return ray.get(remote_call, timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        raise (cause if isinstance(cause, BaseException) else e) from None


def query_live(db: str | os.PathLike[str], *, sql: str | None = None, canned: str | None = None,
               params: dict[str, Any] | None = None, address: str | None = None,
               timeout: float = GET_TIMEOUT_S) -> pl.DataFrame:
    """Run a read-only query (``sql``, or the canned query ``canned`` with ``params``) on the
    results file ``db`` through the writer actor of the sweep that holds it (see :func:`live_writer`
    for how it is found).

    Raises :class:`storage.sql.QueryRejectedError` for SQL that is not read-only (before
    connecting) and :class:`LiveQueryError` when no writer can be reached.
    """
    if (sql is None) == (canned is None):
        raise ValueError("give exactly one of sql or canned")
    if sql is not None:
        check_select_only(sql)  # fail fast here; the writer checks again
    with live_writer(db, address) as writer:
        return _call(writer.read_only_query.remote(sql, params, canned=canned), timeout)


def snapshot_live(db: str | os.PathLike[str], dest: str | os.PathLike[str], *, address: str | None = None,
                  timeout: float = GET_TIMEOUT_S) -> Path:
    """A consistent copy of ``db`` at ``dest`` (which must not exist), written by the writer actor of
    the sweep that holds ``db`` (:meth:`storage.writer.ResultWriter.snapshot`); the copy can be
    opened read-only while the sweep goes on. The writer runs on the sweep driver's node, so
    ``dest`` must be on a file system that node and this process share (this machine, when the
    sweep published from here). Raises :class:`LiveQueryError` when no writer can be reached.
    """
    info = published(db) or {}
    if info.get("host") not in (None, socket.gethostname()):
        raise LiveQueryError(f"the sweep holding {db} runs on {info['host']}, not here: its writer would write the "
                             f"snapshot there; run this on {info['host']}")
    dest = Path(dest).resolve()
    with live_writer(db, address) as writer:
        return Path(_call(writer.snapshot.remote(str(dest)), timeout))
