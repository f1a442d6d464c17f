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
