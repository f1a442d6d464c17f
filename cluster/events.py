"""Typed progress events of the sweep's driver (``on_progress`` callbacks of :mod:`cluster.pipeline`).

Each event is its own log line (a ``str``: callbacks that print or log progress keep working) with
typed fields, so a consumer tells the kinds apart with ``isinstance`` and reads numbers from fields,
never by matching text.
"""

from __future__ import annotations


class ProgressEvent(str):
    """One thing the driver finished for a run cell; the string is the human-readable line."""

    run_id: str
    edits_done: int


class BatchEdited(ProgressEvent):
    """A batch of ``run_id`` was edited: ``edits_done`` of its ``n_edits`` edits are done."""

    n_edits: int

    def __new__(cls, run_id: str, edits_done: int, n_edits: int) -> BatchEdited:
        event = super().__new__(cls, f"{run_id}: {edits_done}/{n_edits} edits")
        event.run_id, event.edits_done, event.n_edits = run_id, int(edits_done), int(n_edits)
        return event


class PointEvaluated(ProgressEvent):
    """The evaluation of ``run_id`` at ``edits_done`` edits is written."""

    def __new__(cls, run_id: str, edits_done: int) -> PointEvaluated:
        event = super().__new__(cls, f"{run_id}: evaluated at {edits_done} edits")
        event.run_id, event.edits_done = run_id, int(edits_done)
        return event


class ShardsComputed(ProgressEvent):
    """``done`` of the ``total`` key-statistics shard tasks of the model ``model`` have finished
    (statistics are per model, not per run cell: ``run_id`` is empty)."""

    model: str
    done: int
    total: int

    def __new__(cls, model: str, done: int, total: int) -> ShardsComputed:
        event = super().__new__(cls, f"{model}: key statistics {done}/{total} shards")
        event.run_id, event.edits_done, event.model, event.done, event.total = "", 0, model, int(done), int(total)
        return event
