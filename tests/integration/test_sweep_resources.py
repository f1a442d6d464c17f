"""A GPU request on a cluster without GPUs fails fast with a clear message."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_gpu_request_on_cpu_cluster_fails_fast() -> None:
    import ray

    from cluster.executor import RayExecutor
    from cluster.pipeline import ResourceError, require_gpus

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        require_gpus(0, "cpu editor", RayExecutor())  # fine
        with pytest.raises(ResourceError, match="num_gpus: 0"):
            require_gpus(1, "editor for toy-gpt2", RayExecutor())
    finally:
        ray.shutdown()
