"""Artifact store: complete keys, atomic verified writes, corruption detected and recomputed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from storage.artifacts import (
    ARRAYS,
    BYTES,
    JSON,
    NPY,
    ArtifactCorruptError,
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactStore,
    CheckpointKey,
    KeyStatsKey,
    ProjectorKey,
)
from storage.writer import ResultWriter

STATS = KeyStatsKey(
    model_id="toy-gpt2", revision="0123abc", module="transformer.h.1.mlp.c_proj", corpus="toywiki:v1:train",
    n_samples=200, max_length=64, dtype="float32",
)
ARR = {"sum_kkt": np.arange(16, dtype=np.float32).reshape(4, 4), "count": np.array([7], dtype=np.int64)}


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "artifacts")


def data_path(store: ArtifactStore, key) -> Path:
    return Path(store.record(key).path)


def test_every_key_field_changes_the_digest():
    base = STATS.digest()
    changes = dict(model_id="other", revision="fff", module="transformer.h.2.mlp.c_proj", corpus="wiki:en",
                   n_samples=201, max_length=128, dtype="float64", key_budget=1000)
    assert set(changes) == {f.name for f in dataclasses.fields(KeyStatsKey)}
    for field, value in changes.items():
        assert dataclasses.replace(STATS, **{field: value}).digest() != base, field
    assert KeyStatsKey(**dataclasses.asdict(STATS)).digest() == base  # equal keys, equal digests
    p = ProjectorKey(STATS, threshold=1e-2, dtype="float64")
    assert p.digest() != dataclasses.replace(p, threshold=2e-2).digest()
    assert p.digest() != dataclasses.replace(p, stats=dataclasses.replace(STATS, n_samples=1)).digest()
    assert p.digest() != dataclasses.replace(p, dtype="float32").digest()
    assert p.digest() != dataclasses.replace(p, mode="relative").digest()


def test_keys_reject_incomplete_values():
    with pytest.raises(ValueError, match="revision"):
        dataclasses.replace(STATS, revision="")
    with pytest.raises(ValueError, match="n_samples"):
        dataclasses.replace(STATS, n_samples=0)
    with pytest.raises(ValueError, match="threshold"):
        ProjectorKey(STATS, threshold=-1e-2, dtype="float64")
    with pytest.raises(ValueError, match="mode"):
        ProjectorKey(STATS, threshold=1e-2, dtype="float64", mode="percent")
    with pytest.raises(ValueError, match="edits_done"):
        CheckpointKey(run_id="r", config_hash="h", edits_done=-1)


@pytest.mark.parametrize(
    "codec, value",
    [(ARRAYS, ARR), (NPY, np.eye(3)), (JSON, {"rank": 5, "layers": [1, 2]}), (BYTES, b"\x00\x01raw")],
)
def test_round_trip_and_record(store, codec, value):
    record = store.put(STATS, value, codec)
    got = store.get(STATS, codec)
    if codec is ARRAYS:
        assert set(got) == set(value) and all(np.array_equal(got[k], value[k]) for k in value)
    elif codec is NPY:
        np.testing.assert_array_equal(got, value)
    else:
        assert got == value
    assert record.kind == "key_stats" and record.key == STATS.digest() and record.format == codec.name
    assert Path(record.path).is_file() and Path(record.path).stat().st_size == record.bytes
    assert json.loads(record.spec) == STATS.spec()
    assert store.record(STATS) == record
    leftovers = [p for p in Path(store.root).rglob("*") if ".tmp-" in p.name]
    assert not leftovers


def test_missing_artifact(store):
    assert not store.exists(STATS)
    with pytest.raises(ArtifactNotFoundError):
        store.get(STATS)


def corrupt_flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def corrupt_truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-5])


def corrupt_delete(p: Path) -> None:
    p.unlink()


def corrupt_manifest(p: Path) -> None:
    (p.parent / "manifest.json").write_text('{"kind": "key_st')


@pytest.mark.parametrize("damage", [corrupt_flip, corrupt_truncate, corrupt_delete, corrupt_manifest])
def test_corrupt_artifact_is_detected_never_used_and_recomputed(store, damage):
    store.put(STATS, ARR)
    path = data_path(store, STATS)
    damage(path)
    with pytest.raises(ArtifactCorruptError) as err:
        store.get(STATS)
    msg = str(err.value)
    assert str(path.parent) in msg and "delete" in msg and "recompute" in msg

    calls = []

    def compute():
        calls.append(1)
        return ARR

    got = store.get_or_compute(STATS, compute)
    assert got.computed and calls == [1]
    assert np.array_equal(got.value["sum_kkt"], ARR["sum_kkt"])
    again = store.get_or_compute(STATS, compute)  # now healthy: served from the store
    assert not again.computed and calls == [1]
    assert again.record.sha256 == got.record.sha256


def test_manifest_of_another_key_is_not_trusted(store):
    other = dataclasses.replace(STATS, n_samples=999)
    store.put(other, ARR)
    src = Path(store.backend.url(store.folder(other)))
    dst = Path(store.backend.url(store.folder(STATS)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)  # someone moved a folder by hand
    with pytest.raises(ArtifactCorruptError, match="different key"):
        store.get(STATS)


def test_interrupted_write_without_manifest_reads_as_missing(store):
    store.put(STATS, ARR)
    (data_path(store, STATS).parent / "manifest.json").unlink()
    with pytest.raises(ArtifactNotFoundError):
        store.get(STATS)
    assert store.get_or_compute(STATS, lambda: ARR).computed


def test_wrong_codec_is_an_error_and_get_or_compute_recomputes(store):
    store.put(STATS, np.eye(2), NPY)
    with pytest.raises(ArtifactError, match="'npy'"):
        store.get(STATS, ARRAYS)
    assert store.get_or_compute(STATS, lambda: ARR, ARRAYS).computed


def test_file_url_and_memory_url_roots(tmp_path):
    file_store = ArtifactStore(f"file://{tmp_path}/a")
    file_store.put(STATS, ARR)
    assert ArtifactStore(tmp_path / "a").get(STATS)["count"][0] == 7

    mem = ArtifactStore(f"memory://alphaedit-test-{tmp_path.name}")
    rec = mem.put(STATS, ARR)
    assert rec.path.startswith("memory://")
    assert mem.get(STATS)["count"][0] == 7
    data_rel = f"{mem.folder(STATS)}/data-{rec.sha256}.safetensors"
    mem.backend.fs.pipe_file(f"{mem.backend.root}/{data_rel}", b"garbage")
    with pytest.raises(ArtifactCorruptError):
        mem.get(STATS)
    assert mem.get_or_compute(STATS, lambda: ARR).computed


def test_unknown_protocol_gives_a_clear_error():
    with pytest.raises(ArtifactError, match="fsspec implementation"):
        ArtifactStore("nosuchproto://bucket/x")


def test_records_go_into_the_artifacts_table(store, tmp_path):
    rec = store.put(ProjectorKey(STATS, threshold=1e-2, dtype="float64"), np.eye(4), NPY)
    with ResultWriter(tmp_path / "r.duckdb") as w:
        w.record_artifacts([rec, rec])
        got = w.query("SELECT kind, key, path, sha256, bytes, format FROM artifacts").rows()
    assert got == [(rec.kind, rec.key, rec.path, rec.sha256, rec.bytes, "npy")]
