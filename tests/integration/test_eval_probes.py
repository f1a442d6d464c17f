"""The lm-eval adapter scores base + deltas in memory and leaves the base weights untouched."""

from __future__ import annotations

import pytest
import torch

from eval.probes import (
    GLUE_MMLU_TASKS,
    TOY_TASKS,
    ProbeRow,
    resolve_tasks,
    run_probes,
    run_probes_with_deltas,
)
from tests.unit.test_core_support import tiny_model, tiny_tokenizer
from tests.unit.test_eval_support import FIXTURES

pytestmark = pytest.mark.integration

EDITED = "transformer.h.1.mlp.c_proj.weight"


def perplexity_task() -> dict:
    """A rolling-loglikelihood task over 4 fixture texts: its metrics move with any weight change."""
    return {
        "task": "eval_fixture_perplexity",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(FIXTURES / "probe_texts_4.jsonl")}},
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}],
        "metadata": {"version": 1.0},
    }


def _values(rows: list[ProbeRow]) -> dict[str, float]:
    return {f"{r.task}/{r.metric}": r.value for r in rows}


def test_probes_on_base_plus_deltas_restore_the_base_weights() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(1)
    deltas = {EDITED: 0.5 * torch.randn_like(base[EDITED])}

    before = run_probes(model, tok, [perplexity_task()], batch_size=4)
    edited = run_probes_with_deltas(model, tok, deltas, [perplexity_task()], batch_size=4)
    for name, p in model.named_parameters():
        assert torch.equal(p, base[name]), f"{name} changed"
    after = run_probes(model, tok, [perplexity_task()], batch_size=4)

    assert _values(before) == _values(after)
    assert all(r.n_samples == 4 for r in edited)
    assert set(_values(edited)) == {"eval_fixture_perplexity/word_perplexity",
                                    "eval_fixture_perplexity/bits_per_byte"}
    assert _values(edited) != _values(before)  # the deltas were really applied
    with torch.no_grad():
        dict(model.named_parameters())[EDITED].add_(deltas[EDITED])
    direct = run_probes(model, tok, [perplexity_task()], batch_size=4)
    for key, value in _values(direct).items():
        assert _values(edited)[key] == pytest.approx(value, rel=1e-5)


def test_weights_restored_when_lm_eval_fails() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=0)
    base = dict(model.named_parameters())[EDITED].detach().clone()
    broken = {**perplexity_task(), "dataset_kwargs": {"data_files": {"test": str(FIXTURES / "missing.jsonl")}}}
    with pytest.raises(Exception):  # noqa: B017 - whatever lm-eval raises, the weights come back
        run_probes_with_deltas(model, tok, {EDITED: torch.ones_like(base)}, [broken])
    assert torch.equal(dict(model.named_parameters())[EDITED], base)


@pytest.mark.slow  # indexing lm-eval's ~15k built-in tasks takes 15 s on 2 cores
def test_real_task_names_are_lm_eval_tasks_and_toy_names_resolve() -> None:
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    assert set(GLUE_MMLU_TASKS) <= known, set(GLUE_MMLU_TASKS) - known
    resolved = resolve_tasks(["sst2", perplexity_task()])
    assert resolved[0] == "sst2" and resolved[1]["task"] == "eval_fixture_perplexity"
    assert all(t in ("toy_knowledge", "toy_acceptability") for t in TOY_TASKS)
