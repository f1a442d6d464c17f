"""Bad sweep configs fail before any work starts, with one clear message each (issue 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import TOY_CONFIG_PATH, SweepConfigError, load_config
from cluster.preflight import preflight, preflight_problems


def problems(*overrides: str) -> list[str]:
    return preflight_problems(load_config(TOY_CONFIG_PATH, list(overrides)))


def test_default_demo_passes_preflight() -> None:
    preflight(load_config(TOY_CONFIG_PATH))


def test_unknown_model_type(tmp_path: Path) -> None:
    from transformers import BertConfig

    BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    found = problems(f"models.0.path={tmp_path}")
    assert len(found) == 1, found
    assert "'bert'" in found[0] and "known types" in found[0] and "gpt2" in found[0], found


def test_unreadable_model_path(tmp_path: Path) -> None:
    found = problems(f"models.0.path={tmp_path / 'no-model-here'}")
    assert len(found) == 1 and "models.0 (toy-gpt2).path" in found[0], found


def test_layer_out_of_range() -> None:
    found = problems("hparams_overrides=[{layers: [0, 7]}]")
    assert len(found) == 1, found
    assert "[7] out of range" in found[0] and "4 layers" in found[0], found


def test_missing_dataset_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    found = problems(f"models.0.counterfact={missing}")
    assert len(found) == 1 and str(missing) in found[0] and "counterfact" in found[0], found


def test_batch_size_and_n_edits_larger_than_dataset() -> None:
    found = problems("batch_sizes=[5000]", "n_edits=[5000]")  # a batch larger than n_edits is a config error
    assert len(found) == 2 and "batch_sizes [5000]" in found[1] and "2000 records" in found[1], found
    found = problems("n_edits=[2500]", "batch_sizes=[100]")
    assert len(found) == 1 and "n_edits [2500]" in found[0], found


@pytest.mark.integration  # builds lm-eval's full task index (~15 s)
def test_unknown_probe_task_and_all_problems_at_once(tmp_path: Path) -> None:
    with pytest.raises(SweepConfigError) as err:
        preflight(load_config(TOY_CONFIG_PATH, ["probes.tasks=[toy_knowledge, sst2, no_such_task_xyz]",
                                                    "batch_sizes=[5000]", "n_edits=[5000]"]))
    text = str(err.value)
    assert len(err.value.problems) == 3, text
    assert "no_such_task_xyz" in text and "sst2" not in text.split("unknown")[0], text
