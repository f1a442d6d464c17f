"""Where each kind of the sweep's work runs on a Ray cluster: Ray option dicts built from the config.

Each kind of work is placed by the config (none of it changes a result, so none of it is part
of a config hash):

* the **editor actor** of a model (and the one **projector task** before it, which needs the
  editor's device for its eigh): the model's ``num_gpus``, ``num_cpus``, ``memory_gb``,
  ``resources`` (custom resources, e.g. ``{editor_slot: 1}``: one editor per GPU node) and
  ``labels`` (node labels the actor needs, Ray's ``label_selector``). The projector task takes
  the same options without the custom resources, so that it never waits for an editor slot (it may
  wait for a GPU its model's editor holds: docs/scale-out.md, "Placement pitfalls");
* the **key-statistics shard tasks**: ``stats_placement`` of the sweep, and beside them (its labels,
  memory and resources, one CPU, no GPU) their helpers: counting the corpus, reading stored
  statistics, merging and storing (:func:`helper_options`);
* the **evaluation tasks** (rewrite metrics + lm-eval probes of a checkpoint): ``eval_placement``;
* the **writer actor**: on Ray, on the driver's node (:func:`writer_options`).

A :class:`TaskPlacement` field left unset (``None``) takes the model's value, so a config that says
nothing runs every task as before: on the model's CPUs and GPUs, anywhere. ``ray_cluster.yaml`` shows
the node types these options select (GPU workers with ``editor_slot`` and a ``node-kind: gpu``
label, cheap CPU workers with ``node-kind: cpu``).

Pure functions of the config: the pipeline passes their dicts to ``Executor.task`` / ``.actor``
(``ray.remote(...).options(**opts)`` on Ray; ignored in-process). :func:`device_gpus` is the
GPU count a worker is told to use (its device), which must agree with what Ray reserved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from alphaedit.fields import Range

if TYPE_CHECKING:  # config imports this module for TaskPlacement; no import cycle at run time
    from cluster.config import ModelConfig, SweepConfig

GIB = 2**30


@dataclass(frozen=True)
class TaskPlacement:
    """Ray resources of one kind of task; ``None`` fields take the model's own value.

    ``memory_gb``: Ray's logical ``memory`` (GiB) reserved per task (admission only; Ray does not
    cap a process at it). ``resources``: custom resources per task (``{cpu_node: 1}``).
    ``labels``: node labels the task needs (``{node-kind: cpu}``; Ray's ``label_selector``).
    ``spread``: Ray's SPREAD scheduling (shards over as many nodes as possible).
    """

    num_cpus: Annotated[float, Range(ge=0)] | None = None
    num_gpus: Annotated[float, Range(ge=0)] | None = None
    memory_gb: Annotated[float, Range(gt=0)] | None = None
    resources: Mapping[str, Annotated[float, Range(ge=0)]] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    spread: bool = False


def ray_options(num_cpus: float, num_gpus: float, memory_gb: float | None = None,
                resources: Mapping[str, float] | None = None, labels: Mapping[str, str] | None = None,
                spread: bool = False) -> dict[str, Any]:
    """The ``ray.remote`` options of one placement (only the keys that are set)."""
    opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if memory_gb is not None:
        opts["memory"] = int(memory_gb * GIB)
    if resources:
        opts["resources"] = dict(resources)
    if labels:
        opts["label_selector"] = dict(labels)
    if spread:
        opts["scheduling_strategy"] = "SPREAD"
    return opts


def editor_options(model: ModelConfig) -> dict[str, Any]:
    """The editor actor of ``model``: its GPUs, CPUs, memory, custom resources and node labels."""
    return ray_options(model.num_cpus, model.num_gpus, model.memory_gb, model.resources, model.labels)


def projector_options(model: ModelConfig) -> dict[str, Any]:
    """The projector task of ``model``: the editor's node kind and device, not its custom resources
    (an ``editor_slot`` held by the model's running editor would otherwise keep it waiting)."""
    return ray_options(model.num_cpus, model.num_gpus, model.memory_gb, None, model.labels)


def task_options(placement: TaskPlacement, model: ModelConfig) -> dict[str, Any]:
    """A statistics or evaluation task of ``model`` placed by ``placement`` (unset fields: the model's)."""
    return ray_options(
        model.num_cpus if placement.num_cpus is None else placement.num_cpus,
        model.num_gpus if placement.num_gpus is None else placement.num_gpus,
        model.memory_gb if placement.memory_gb is None else placement.memory_gb,
        placement.resources, placement.labels, placement.spread,
    )


def stats_options(cfg: SweepConfig, model: ModelConfig) -> dict[str, Any]:
    """The key-statistics shard tasks of ``model``."""
    return task_options(cfg.stats_placement, model)


def eval_options(cfg: SweepConfig, model: ModelConfig) -> dict[str, Any]:
    """The evaluation tasks (rewrite metrics + probes) of ``model``'s checkpoints."""
    return task_options(cfg.eval_placement, model)


def device_gpus(options: Mapping[str, Any]) -> float:
    """The GPU count a worker started with ``options`` may use (0: it runs on CPU)."""
    return float(options.get("num_gpus", 0.0) or 0.0)


def describe(cfg: SweepConfig) -> dict[str, dict[str, Any]]:
    """Every kind of work's options, per model (the sweep logs it with the resolved config)."""
    return {m.name: {"editor": editor_options(m), "projector": projector_options(m),
                     "stats": stats_options(cfg, m), "eval": eval_options(cfg, m)} for m in cfg.models}


def writer_options(driver_node_id: str | None) -> dict[str, Any]:
    """The writer actor: no CPU, one call at a time, and on the driver's node (``driver_node_id``;
    None in-process), where the results path was resolved; Ray would otherwise put a zero-CPU actor
    on any node, and losing that node would lose the database's only writer."""
    opts: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 1}
    if driver_node_id is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(driver_node_id, soft=False)
    return opts


def helper_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The statistics' helper tasks (count the corpus, read stored statistics, merge and store the
    shards' partials) beside the shards they serve: the shards' node labels, memory and custom
    resources, one CPU and no GPU (they hold d_k x d_k float64 partials, they run no model)."""
    return {**{k: v for k, v in options.items() if k != "scheduling_strategy"}, "num_cpus": 1, "num_gpus": 0}
