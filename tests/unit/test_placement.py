"""Placement from config (cluster/placement.py): Ray options per kind of work, validated, never hashed."""

from __future__ import annotations

import pytest

from cluster import placement
from cluster.config import TOY_CONFIG_PATH, SweepConfigError, load_config

GPU_NODES = ["models.0.num_gpus=1", "models.0.memory_gb=40", "models.0.resources={editor_slot: 1}",
             "models.0.labels={node-kind: gpu}"]
CPU_EVAL = ["eval_placement={num_gpus: 0, num_cpus: 4, labels: {node-kind: cpu}}",
            "stats_placement={spread: true, resources: {cpu_node: 0.5}}"]


def test_options_per_kind_of_work() -> None:
    cfg = load_config(TOY_CONFIG_PATH, GPU_NODES + CPU_EVAL)
    m = cfg.models[0]
    assert placement.editor_options(m) == {"num_cpus": 1, "num_gpus": 1, "memory": 40 * 2**30,
                                           "resources": {"editor_slot": 1}, "label_selector": {"node-kind": "gpu"}}
    # the projector goes where the editor goes (its device) but never waits for the editor's slot
    assert placement.projector_options(m) == {"num_cpus": 1, "num_gpus": 1, "memory": 40 * 2**30,
                                              "label_selector": {"node-kind": "gpu"}}
    # unset fields take the model's values; set ones replace them
    assert placement.stats_options(cfg, m) == {"num_cpus": 1, "num_gpus": 1, "memory": 40 * 2**30,
                                               "resources": {"cpu_node": 0.5}, "scheduling_strategy": "SPREAD"}
    ev = placement.eval_options(cfg, m)
    assert ev == {"num_cpus": 4, "num_gpus": 0, "memory": 40 * 2**30, "label_selector": {"node-kind": "cpu"}}
    assert placement.device_gpus(ev) == 0.0 and placement.device_gpus(placement.stats_options(cfg, m)) == 1.0
    assert set(placement.describe(cfg)[m.name]) == {"editor", "projector", "stats", "eval"}
    # the statistics' merge/load tasks: the shards' node kind and resources, one CPU, no GPU, not spread
    assert placement.helper_options(placement.stats_options(cfg, m)) == {
        "num_cpus": 1, "num_gpus": 0, "memory": 40 * 2**30, "resources": {"cpu_node": 0.5}}


def test_default_config_places_everything_on_the_model_resources() -> None:
    cfg = load_config(TOY_CONFIG_PATH)
    m = cfg.models[0]
    plain = {"num_cpus": m.num_cpus, "num_gpus": m.num_gpus}
    assert placement.editor_options(m) == placement.projector_options(m) == plain
    assert placement.stats_options(cfg, m) == placement.eval_options(cfg, m) == plain
    assert placement.writer_options(None) == {"num_cpus": 0, "max_concurrency": 1}


def test_placement_changes_no_hash() -> None:
    plain = load_config(TOY_CONFIG_PATH)
    placed = load_config(TOY_CONFIG_PATH, GPU_NODES[1:] + CPU_EVAL)
    assert placed.hash == plain.hash
    assert [c.config() for c in placed.cells()] == [c.config() for c in plain.cells()]
    # num_gpus is not placement only: it decides the device, so it stays in the hash
    assert load_config(TOY_CONFIG_PATH, GPU_NODES[:1]).hash != plain.hash


@pytest.mark.parametrize(("override", "problem"), [
    ("models.0.resources={editor_slot: -1}", "models.0.resources.editor_slot: must be >= 0"),
    ("models.0.memory_gb=0", "models.0.memory_gb: must be > 0"),
    ("models.0.labels={node-kind: 1}", "models.0.labels.node-kind: expected a string"),
    ("eval_placement={num_gpu: 0}", "eval_placement.num_gpu: unknown key"),
    ("stats_placement={spread: 3}", "stats_placement.spread: expected true or false"),
    ("stats_placement=cpu", "stats_placement: expected a mapping of TaskPlacement fields"),
])
def test_bad_placement_is_a_config_error(override: str, problem: str) -> None:
    with pytest.raises(SweepConfigError) as err:
        load_config(TOY_CONFIG_PATH, [override])
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems
