"""ray_cluster.yaml passes Ray's own cluster-launcher validation (what `ray up` runs)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_ray_cluster_yaml_validates() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)
    assert config["head_node_type"] == "head"
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}
    start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start and "--dashboard-host=127.0.0.1" in start


def test_ray_cluster_yaml_node_types_match_the_documented_placement() -> None:
    """The labels and custom resources that the placement example in the YAML's header selects exist."""
    raw = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    types = raw["available_node_types"]
    assert types["gpu_worker"]["labels"] == {"node-kind": "gpu"}
    assert types["gpu_worker"]["resources"] == {"editor_slot": 1}
    assert types["cpu_worker"]["labels"] == {"node-kind": "cpu"}
    header = (REPO / "ray_cluster.yaml").read_text().split("cluster_name:")[0]
    for selector in ("resources: {editor_slot: 1}", "labels: {node-kind: gpu}", "labels: {node-kind: cpu}"):
        assert selector in header, selector
