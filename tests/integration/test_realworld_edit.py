"""The installed real model (SmolLM2-135M) edits 5 real facts through the library's path.

Needs `python -m eval.realworld install` (make setup and CI run it); fails, naming the command, when
the model is missing. Key statistics come from the first 300 documents of the real-world corpus.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def real():
    from alphaedit import hparams_for
    from alphaedit.editor import preservation_stats
    from alphaedit.models import load_model
    from eval.corpus import CorpusSpec, iter_corpus
    from eval.datasets import load_counterfact
    from eval.realworld.paths import COUNTERFACT, require_model

    torch.manual_seed(0)
    model, tok = load_model(str(require_model()))
    hp = hparams_for("smollm2", "alphaedit", mom2_n_samples=300)
    stats = preservation_stats(model, tok, iter_corpus(CorpusSpec(kind="realworld")), hp)
    records = load_counterfact(COUNTERFACT, limit=5).records
    return model, tok, hp, stats, records


def test_alphaedit_edits_five_real_facts_and_keeps_their_neighbours(real) -> None:
    from alphaedit import Editor
    from eval.rewrite import counterfact_probability_scores

    model, tok, hp, stats, records = real
    before = counterfact_probability_scores(model, tok, records)
    assert float(before.efficacy.mean()) <= 0.2  # the model believes the true objects
    editor = Editor(model, tok, hp, "alphaedit", stats=stats)
    try:
        report = editor.edit([r.request for r in records])
        after = counterfact_probability_scores(model, tok, records)
    finally:
        editor.restore()
    assert report.n_requests == 5
    assert float(after.efficacy.mean()) >= 0.8, after.efficacy
    drop = float(before.specificity.mean()) - float(after.specificity.mean())
    assert drop <= 0.05, (before.specificity, after.specificity)
    # restore() gives the base model back: the scores are the unedited ones again
    again = counterfact_probability_scores(model, tok, records)
    assert torch.equal(again.efficacy, before.efficacy)
