"""lm-eval runs the toy world's probe tasks on the shipped model, offline, above chance."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_probe_tasks_score_above_chance() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.probes import run_probes
    from eval.toyworld.paths import MODEL_DIR, task_configs

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    rows = run_probes(model, tok, task_configs(), batch_size=64)
    acc = {r.task: r.value for r in rows if r.metric == "acc"}
    n = {r.task: r.n_samples for r in rows if r.metric == "acc"}
    assert n == {"toy_knowledge": 500, "toy_acceptability": 400}
    # chance: 0.25 (4 choices) and 0.5 (pairs)
    assert acc["toy_knowledge"] >= 0.8, acc
    assert acc["toy_acceptability"] >= 0.8, acc
