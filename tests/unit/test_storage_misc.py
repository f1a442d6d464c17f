"""Canonical hashing and what Ray needs to ship storage objects between processes."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from storage.artifacts import ArtifactStore, KeyStatsKey, ProjectorKey
from storage.hashing import canonical_json, config_hash
from storage.writer import RunSpec


def test_canonical_json_is_order_independent_and_strict():
    assert canonical_json({"b": 1, "a": [1, 2.5, None]}) == '{"a":[1,2.5,null],"b":1}'
    assert config_hash({"a": 1, "b": (1, 2)}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    with pytest.raises(ValueError, match="non-finite"):
        canonical_json({"x": math.nan})
    with pytest.raises(TypeError, match="ndarray"):
        canonical_json({"x": np.zeros(2)})
    with pytest.raises(TypeError, match="keys must be str"):
        canonical_json({1: "a"})


def test_run_spec_hash_follows_config_and_validates():
    a = RunSpec("r", "s", "m", "alphaedit", "counterfact", 10, 100, 0, {"lr": 0.5})
    assert a.config_hash == config_hash({"lr": 0.5})
    with pytest.raises(ValueError, match="run_id"):
        RunSpec("", "s", "m", "alphaedit", "counterfact", 10, 100, 0)
    with pytest.raises(ValueError, match="batch_size"):
        RunSpec("r", "s", "m", "alphaedit", "counterfact", 0, 100, 0)


def test_storage_objects_survive_pickling(tmp_path):
    stats = KeyStatsKey("m", "rev", "mod", "corpus", 10, 16, "float32")
    store = ArtifactStore(tmp_path / "a")
    rec = store.put(ProjectorKey(stats, 0.01, "float64"), {"P": np.eye(2)})
    spec = RunSpec("r", "s", "m", "alphaedit", "counterfact", 10, 100, 0, {"lr": 0.5})
    for obj in (stats, rec, spec):
        assert pickle.loads(pickle.dumps(obj)) == obj
    store2 = pickle.loads(pickle.dumps(store))
    assert np.array_equal(store2.get(ProjectorKey(stats, 0.01, "float64"))["P"], np.eye(2))
    assert pickle.loads(pickle.dumps(stats)).digest() == stats.digest()
