"""Failures stop only their cell, with the reason in `runs`, and keep what finished.

On a local Ray: two MEMIT cells on the toy world, one with a real config that breaks the update
(``mom2_update_weight: 1e39`` with a float32 solve overflows λ·C0 to Inf, the solve gives NaN).
That cell is marked failed with a "non-finite" reason after its unedited evaluation was written;
the other finishes with all its rows. Without Ray: the messages for out of memory, a full disk and
a corrupt artifact, and a corrupt checkpoint that an evaluation reads.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from cluster.config import TOY_CONFIG_PATH, load_config
from cluster.workers import CellFailed, StoredDeltas, checkpoint_key, describe_failure
from storage.artifacts import ArtifactCorruptError, ArtifactStore

BASE = "mom2_n_samples: 100, v_num_grad_steps: 5"
NAN_OVERRIDE = f"{{{BASE}, mom2_update_weight: 1.0e+39, solve_dtype: float32}}"
FAST = ["methods=[memit]", "n_edits=[20]", "batch_sizes=[10]", "eval_every=20", "probes.tasks=[toy_knowledge]",
        "probes.limit=4", "metrics.generation_records=0", "metrics.max_records=4", "stats_shards=1",
        f"hparams_overrides=[{{{BASE}}}, {NAN_OVERRIDE}]"]


@pytest.mark.integration
def test_nan_update_fails_its_cell_only(tmp_path: Path) -> None:
    import ray

    from cluster.executor import RayExecutor
    from cluster.pipeline import run_sweep, start_writer

    cfg = load_config(TOY_CONFIG_PATH, [*FAST, f"results={tmp_path / 'r.duckdb'}",
                                            f"artifact_root={tmp_path / 'artifacts'}"])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ex = RayExecutor()
        writer = start_writer(str(tmp_path / "r.duckdb"), ex)
        try:
            statuses = run_sweep(cfg, "nan", writer, ArtifactStore(tmp_path / "artifacts"), None, executor=ex)

            def q(sql: str):
                return ray.get(writer.query.remote(sql), timeout=120)

            runs = q("SELECT run_id, status, error FROM runs ORDER BY run_id")
            points = q("SELECT run_id, list(DISTINCT edits_done ORDER BY edits_done) AS pts FROM metrics "
                       "GROUP BY 1 ORDER BY 1")
            probes = q("SELECT run_id, count(*) AS n FROM probes GROUP BY 1 ORDER BY 1")
        finally:
            ray.get(writer.close.remote(), timeout=60)
    finally:
        ray.shutdown()
    ok, bad = runs["run_id"].to_list()
    assert ok.endswith("-h0") and bad.endswith("-h1")
    assert statuses == {ok: "finished", bad: "failed"}
    assert runs["status"].to_list() == ["finished", "failed"]
    error = runs["error"][1]
    assert error.startswith("non-finite values") and "NaN/Inf" in error and "edits 0-10" in error, error
    assert "RayTaskError" not in error and "Traceback" not in error, "the reason, not Ray's wrapper"
    assert points["pts"].to_list() == [[0, 20], [0]], "the failed cell keeps its unedited evaluation"
    assert probes["n"].to_list() == [4, 2]


def test_failure_messages_name_kind_place_and_fix() -> None:
    where = "in the batch of edits 10-20 of r1"
    oom = describe_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), where)
    assert oom.startswith("out of memory in the batch of edits 10-20") and "batch_size" in oom
    assert describe_failure(MemoryError(), where).startswith("out of memory")
    full = describe_failure(OSError(errno.ENOSPC, "No space left on device"), where)
    assert full.startswith("disk full") and "--resume" in full
    corrupt = describe_failure(ArtifactCorruptError("checkpoint artifact at /x is corrupt: sha256 ..."), where)
    assert corrupt.startswith("corrupt artifact") and "/x" in corrupt
    assert describe_failure(CellFailed("already described"), where) == "already described"
    other = describe_failure(ValueError("bad"), where)
    assert other == f"ValueError: bad ({where})"


def test_corrupt_checkpoint_is_never_evaluated(tmp_path: Path) -> None:
    from alphaedit.state import EditState
    from cluster.workers import checkpoint_codec

    store = ArtifactStore(tmp_path)
    state = EditState(model_type="gpt2", layers=(0,), weight_names={0: "w"}, prev_keys={0: torch.eye(2)},
                      deltas={"w": torch.ones(2, 2)}, n_edits=10, case_ids=[1, 2])
    key = checkpoint_key("r1", "h", 10)
    record = store.put(key, (state, {"rng.cpu": torch.get_rng_state()}), checkpoint_codec())
    src = StoredDeltas(str(tmp_path), "r1", "h", 10)
    assert torch.equal(torch.from_numpy(src.load()["w"]), torch.ones(2, 2))
    path = Path(record.path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match="corrupt"):
        src.load()
