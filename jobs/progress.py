"""Progress bars of the command-line drivers (tqdm, on stderr).

The library reports progress through callbacks (the sweep's typed events, :mod:`cluster.events`;
:func:`eval.suite.evaluate_edited`'s ``progress``); the drivers turn them into bars here:

* :class:`SweepBars`: the ``on_progress`` of :func:`cluster.pipeline.run_sweep` (``jobs.sweep``,
  ``jobs.nightly`` through it, ``jobs.edit``, ``jobs.stats``): key-statistics shard tasks, edit
  batches, and evaluation points (rewrite metrics and probes of a checkpoint, one task each).
* :func:`stage_bar`: the stages of one in-process evaluation (``jobs.evaluate``).

On a terminal the bars refresh a few times a second; when stderr is a file (a job log) at most
every :data:`LOG_INTERVAL_S`, so a long run's log holds a readable trace instead of a flood.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

from tqdm import tqdm

from cluster.config import RunCell
from cluster.events import BatchEdited, PointEvaluated, ProgressEvent, ShardsComputed

LOG_INTERVAL_S = 10.0


def new_bar(total: int | None, desc: str, unit: str) -> tqdm:
    """A tqdm bar on stderr, refreshing at most every :data:`LOG_INTERVAL_S` when stderr is not a terminal."""
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=0.1 if tty else LOG_INTERVAL_S,
                dynamic_ncols=tty)


def eval_points(cells: Iterable[RunCell], checkpoint_every: int) -> int:
    """How many evaluation points (rows of rewrite metrics and probes) the cells have in all."""
    from cluster.plan import plan_cell

    return sum(len(plan_cell(cell, checkpoint_every).eval_points) for cell in cells)


class SweepBars:
    """Bars over the sweep's progress events: key statistics (shards, only when computed), edit
    batches and evaluation points; call it with each event, :meth:`close` at the end."""

    def __init__(self, cells: Iterable[RunCell], checkpoint_every: int, edits: bool = True) -> None:
        cells = list(cells)
        self.stats: tqdm | None = None  # opened when statistics are computed (not when read from the store)
        self.shards_done: dict[str, int] = {}
        self.edits = new_bar(sum(-(-c.n_edits // c.batch_size) for c in cells), "edit batches", "batch") if edits \
            else None
        self.evals = new_bar(eval_points(cells, checkpoint_every), "evaluations (rewrite metrics + probes)",
                             "point") if edits else None

    def __call__(self, event: ProgressEvent) -> None:
        if isinstance(event, ShardsComputed):
            before = self.shards_done.get(event.model)
            if before is None:  # the model's shard tasks were just submitted
                if self.stats is None:
                    self.stats = new_bar(event.total, "key statistics", "shard")
                else:
                    self.stats.total += event.total
                    self.stats.refresh()
                before = 0
            self.stats.update(event.done - before)
            self.shards_done[event.model] = event.done
            self.stats.set_postfix_str(event.model, refresh=False)
        elif isinstance(event, BatchEdited) and self.edits is not None:
            self.edits.update(1)
            self.edits.set_postfix_str(str(event)[-60:], refresh=False)
        elif isinstance(event, PointEvaluated) and self.evals is not None:
            self.evals.update(1)
            self.evals.set_postfix_str(str(event)[-60:], refresh=False)

    def close(self) -> None:
        for bar in (self.stats, self.edits, self.evals):
            if bar is not None:
                bar.close()

    def __enter__(self) -> SweepBars:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def stage_bar(desc: str) -> tuple[Callable[[int, int, str], None], Callable[[], None]]:
    """(progress, close) for :func:`eval.suite.evaluate_edited`'s ``progress(done, total, stage)``: a bar
    over the evaluation's stages, named by the stage running now."""
    bar = new_bar(None, desc, "stage")

    def progress(done: int, total: int, stage: str) -> None:
        bar.total = total
        bar.update(done - bar.n)
        bar.set_postfix_str(stage, refresh=True)

    return progress, bar.close
