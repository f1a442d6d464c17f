"""Canned read-only SQL over the result tables, one ``<name>.sql`` file per query.

File format: a header of ``--`` comment lines, then one SELECT statement. The first header line
is the one-line description; ``-- param <name>: <doc>`` lines document the ``$name`` parameters
the SQL uses. Every parameter is optional: a missing one is passed as NULL, and the SQL treats
NULL as "no filter" or "the default". Parameters arrive as strings from the command line, so the
SQL casts them (``CAST($n_edits AS INTEGER)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_PARAM_DOC = re.compile(r"^--\s*param\s+([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.*)$")


@dataclass(frozen=True)
class CannedQuery:
    """A canned query: its name, description, documented parameters and SQL text."""

    name: str
    description: str
    params: dict[str, str]
    sql: str

    def bind(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Parameters for DuckDB: the given ones, NULL for the rest; unknown names are an error."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise ValueError(f"canned query {self.name!r} has no parameter(s) {', '.join(unknown)}; it takes: {known}")
        return {name: params.get(name) for name in self.params}


def _parse(name: str, text: str) -> CannedQuery:
    header = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        header.append(line)
    if not header:
        raise ValueError(f"canned query {name}.sql has no '--' description header")
    description = header[0].lstrip("-").strip()
    docs = {}
    for line in header:
        m = _PARAM_DOC.match(line)
        if m:
            docs[m.group(1)] = m.group(2).strip()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    used = list(dict.fromkeys(_PARAM.findall(body)))
    undocumented = [p for p in used if p not in docs]
    if undocumented:
        raise ValueError(f"canned query {name}.sql uses undocumented parameter(s) {undocumented}: add '-- param' lines")
    return CannedQuery(name=name, description=description, params={p: docs[p] for p in used}, sql=text.strip())


def available() -> list[str]:
    """Names of the canned queries, sorted."""
    return sorted(f.name[:-4] for f in resources.files(__name__).iterdir() if f.name.endswith(".sql"))


def load(name: str) -> CannedQuery:
    """Load the canned query ``name`` (the file ``storage/queries/<name>.sql``)."""
    if name not in available():
        raise KeyError(f"no canned query {name!r}; available: {', '.join(available())}")
    return _parse(name, resources.files(__name__).joinpath(f"{name}.sql").read_text(encoding="utf-8"))
