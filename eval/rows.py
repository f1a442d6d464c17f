"""Metric rows: the plain, picklable values that ``eval/`` hands to the storage writer.

A :class:`MetricRow` is one number of one dataset (``metrics`` table: dataset, metric, value),
with the number of records it averages over. Metric and dataset names come from
:mod:`storage.names`, so the SQL in ``storage/queries`` finds them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Records a loader skipped as malformed (only when the config asks to skip, see
#: :func:`eval.datasets.load_counterfact`). Not a paper metric; proposed for ``storage.names``.
METRIC_SKIPPED_RECORDS = "skipped_records"


@dataclass(frozen=True)
class MetricRow:
    """``metric`` of ``dataset`` = ``value`` (scaled like the paper, x100), averaged over ``n_cases`` records."""

    dataset: str
    metric: str
    value: float
    n_cases: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rows_as_dict(rows: list[MetricRow]) -> dict[str, float]:
    """``{metric: value}`` of rows of one dataset (raises on duplicate metric names)."""
    out: dict[str, float] = {}
    for row in rows:
        if row.metric in out:
            raise ValueError(f"duplicate metric {row.metric!r} in rows of {row.dataset!r}")
        out[row.metric] = row.value
    return out
