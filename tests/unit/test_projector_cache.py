"""The sweep's projector task: the same P as the library computes, stored once, reread, repaired."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alphaedit import SecondMoment, preset, projectors_from_stats
from cluster.workers import null_space_projectors
from storage.artifacts import ArtifactStore, KeyStatsKey, ProjectorKey


def _stats(d: int = 24, layers=(0, 1)) -> dict[int, tuple[np.ndarray, int]]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for layer in layers:
        keys = torch.randn(200, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, d, generator=gen,
                                                                                      dtype=torch.float64)
        out[layer] = ((keys.T @ keys).numpy(), 200)  # low rank: a null space of d - 6 dims
    return out


def _keys(hp, layers=(0, 1)) -> dict[int, ProjectorKey]:
    return {layer: ProjectorKey(KeyStatsKey(model_id="m", revision="r", module=f"h.{layer}.mlp", corpus="c",
                                            n_samples=200, max_length=8, dtype="float32"),
                                threshold=hp.nullspace_threshold, dtype="float64", mode=hp.threshold_mode)
            for layer in layers}


def _stored(root: Path, keys: dict[int, ProjectorKey]) -> dict[int, np.ndarray]:
    """The P matrices the task left in the artifact store (what the editors read)."""
    store = ArtifactStore(root)
    return {layer: store.get(key)["P"] for layer, key in keys.items()}


def test_projector_task_matches_library_then_reads_the_store(tmp_path: Path) -> None:
    hp = preset("toy")
    stats = _stats()
    keys = _keys(hp)
    info = null_space_projectors(stats, keys, hp.to_dict(), str(tmp_path))
    assert info["computed"] == [0, 1] and len(info["records"]) == 2
    first = _stored(tmp_path, keys)
    lib = projectors_from_stats({k: SecondMoment(torch.from_numpy(a), n) for k, (a, n) in stats.items()}, hp)
    for layer in stats:
        assert first[layer].dtype == np.float32
        assert np.array_equal(first[layer], lib[layer].numpy()), "the task's P must be the library's, bit for bit"
        assert info["kept"][layer] == pytest.approx(18 / 24)
    info2 = null_space_projectors(stats, keys, hp.to_dict(), str(tmp_path))
    assert info2["computed"] == [] and info2["records"] == []
    again = _stored(tmp_path, keys)
    assert all(np.array_equal(first[k], again[k]) for k in stats)


def test_projector_task_recomputes_a_corrupt_artifact_and_checks_the_key(tmp_path: Path) -> None:
    hp = preset("toy")
    stats = _stats()
    keys = _keys(hp)
    null_space_projectors(stats, keys, hp.to_dict(), str(tmp_path))
    store = ArtifactStore(tmp_path)
    data = next(p for p in (tmp_path / store.folder(keys[1])).iterdir() if p.name.startswith("data-"))
    data.write_bytes(data.read_bytes()[:-8] + b"\0" * 8)
    info = null_space_projectors(stats, keys, hp.to_dict(), str(tmp_path))
    assert info["computed"] == [1]
    out = _stored(tmp_path, keys)
    assert np.allclose(out[1] @ out[1], out[1], atol=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        null_space_projectors(stats, keys, hp.replace(nullspace_threshold=0.5).to_dict(), str(tmp_path))
