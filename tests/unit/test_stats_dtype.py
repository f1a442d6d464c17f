"""EditHparams.stats_dtype reaches the sweep's statistics: the shard's forward dtype and the cache key."""

from __future__ import annotations

import numpy as np
import torch

from alphaedit import hparams_for
from cluster.config import TOY_CONFIG_PATH, load_config
from cluster.keys import cell_stats_keys
from cluster.workers import stats_shard
from eval.corpus import CorpusSpec, iter_corpus
from eval.toyworld.paths import MODEL_DIR


def test_bf16_statistics_forward_is_close_and_keyed_apart() -> None:
    torch.set_num_threads(1)
    texts = list(iter_corpus(CorpusSpec(kind="toywiki", n_docs=40, sample="first")))
    hp = hparams_for("toy", "alphaedit")
    fp32 = stats_shard(str(MODEL_DIR), texts, hp.to_dict())
    bf16 = stats_shard(str(MODEL_DIR), texts, {**hp.to_dict(), "stats_dtype": "bfloat16"})
    for layer, (s32, n32) in fp32.items():
        s16, n16 = bf16[layer]
        assert n16 == n32 and s16.dtype == np.float64  # same keys counted; sums accumulate in fp64
        rel = np.linalg.norm(s16 - s32) / np.linalg.norm(s32)
        assert 0.0 < rel < 5e-2, (layer, rel)  # the bf16 forward moves the sums a little, not a lot
    cfg = load_config(TOY_CONFIG_PATH, [])
    cell = next(cfg.cells())
    bf_cfg = load_config(TOY_CONFIG_PATH, ["hparams_overrides=[{stats_dtype: bfloat16}]"])
    k32 = cell_stats_keys(cell.model, cell)
    k16 = cell_stats_keys(cell.model, next(bf_cfg.cells()))
    assert {k.dtype for k in k32.values()} == {"float32"} and {k.dtype for k in k16.values()} == {"bfloat16"}
    assert all(k32[la].digest() != k16[la].digest() for la in k32)
