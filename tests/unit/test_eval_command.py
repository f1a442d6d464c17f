"""jobs/evaluate.py on a hand-made checkpoint of a tiny model: pre/post rows agree with direct calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from eval import datasets as ds
from eval.edited import edited_weights, read_checkpoint
from eval.rewrite import counterfact_metrics, zsre_metrics
from jobs import evaluate
from storage import names
from tests.unit.test_core_support import tiny_model, tiny_tokenizer
from tests.unit.test_eval_support import FIXTURES

EDITED = "transformer.h.2.mlp.c_proj.weight"


def _checkpoint(tmp_path: Path, requests: list[dict]) -> tuple[Path, dict[str, torch.Tensor]]:
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=0)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.manual_seed(3)
    deltas = {EDITED: 0.3 * torch.randn_like(dict(model.named_parameters())[EDITED])}
    save_file(deltas, str(ckpt / "deltas.safetensors"))
    (ckpt / "requests.json").write_text(json.dumps(requests))
    (ckpt / "run.json").write_text(json.dumps({"model": str(model_dir), "method": "alphaedit", "n_edits": 3,
                                               "batch_size": 3, "dtype": "float32"}))
    return ckpt, deltas


def _rows(out: dict, phase: str) -> dict[str, float]:
    return {r["metric"]: r["value"] for r in out["rows"][phase]}


def test_evaluate_zsre_checkpoint_matches_direct_computation(tmp_path: Path, capsys) -> None:
    zsre = ds.load_zsre(FIXTURES / "zsre_3.json").records
    ckpt, deltas = _checkpoint(tmp_path, [r.to_counterfact() for r in zsre])
    out_json = tmp_path / "out.json"
    assert evaluate.main([str(ckpt), "--probes", "none", "--json", str(out_json)]) == 0
    assert "efficacy" in capsys.readouterr().out
    out = json.loads(out_json.read_text())
    assert out["dataset"] == names.DATASET_ZSRE
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=0)
    pre = {r.metric: r.value for r in zsre_metrics(model, tok, zsre)}
    with edited_weights(model, deltas):
        post = {r.metric: r.value for r in zsre_metrics(model, tok, zsre)}
    assert _rows(out, "pre") == pytest.approx(pre) and _rows(out, "post") == pytest.approx(post)


def test_evaluate_counterfact_checkpoint(tmp_path: Path) -> None:
    records = json.loads((FIXTURES / "counterfact_3.json").read_text())
    ckpt, deltas = _checkpoint(tmp_path, records)
    out_json = tmp_path / "out.json"
    evaluate.main([str(ckpt), "--probes", "none", "--no-pre", "--no-generation", "--json", str(out_json)])
    out = json.loads(out_json.read_text())
    assert "pre" not in out["rows"] and out["dataset"] == names.DATASET_COUNTERFACT
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=0)
    typed = ds.counterfact_from_requests(records, Path("requests.json")).records
    with edited_weights(model, deltas):
        direct = {r.metric: r.value for r in counterfact_metrics(model, tok, typed, generation=False)}
    assert _rows(out, "post") == pytest.approx(direct)


def test_edited_weights_restore_on_error_and_incomplete_checkpoint(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=0)
    base = dict(model.named_parameters())[EDITED].detach().clone()
    with pytest.raises(RuntimeError), edited_weights(model, {EDITED: torch.ones_like(base)}):
        assert not torch.equal(dict(model.named_parameters())[EDITED], base)
        raise RuntimeError("boom")
    assert torch.equal(dict(model.named_parameters())[EDITED], base)
    with pytest.raises(FileNotFoundError, match="deltas.safetensors"):
        read_checkpoint(tmp_path)


def test_zsre_conversion_command(tmp_path: Path) -> None:
    out = tmp_path / "req.json"
    evaluate.main(["--zsre-to-counterfact", str(FIXTURES / "zsre_3.json"), str(out)])
    from alphaedit.requests import requests_from_counterfact

    reqs = requests_from_counterfact(json.loads(out.read_text()))  # what jobs/edit.py does with --dataset
    assert [r.target_new for r in reqs] == [" Illinois Institute of Technology", " Lecanorales", " Treyarch"]


def test_non_finite_deltas_are_refused_not_scored(tmp_path: Path, capsys) -> None:
    """Was: NaN deltas scored as 0.00. Now exit 1 with one line naming the weight, and no JSON written."""
    records = json.loads((FIXTURES / "counterfact_3.json").read_text())
    ckpt, deltas = _checkpoint(tmp_path, records)
    deltas[EDITED][0, 0] = float("nan")
    save_file(deltas, str(ckpt / "deltas.safetensors"))
    out_json = tmp_path / "out.json"
    assert evaluate.main([str(ckpt), "--probes", "none", "--no-generation", "--json", str(out_json)]) == 1
    err = capsys.readouterr().err
    assert "NaN/Inf" in err and EDITED in err and "Traceback" not in err
    assert not out_json.exists()


def test_not_a_checkpoint_is_exit_2(tmp_path: Path, capsys) -> None:
    assert evaluate.main([str(tmp_path), "--probes", "none"]) == 2
    err = capsys.readouterr().err
    assert "not a complete checkpoint folder" in err and "Traceback" not in err


def test_one_entry_point_for_the_sweep_and_the_command(tmp_path: Path, monkeypatch) -> None:
    """The sweep's evaluation task and jobs/evaluate.py give the same rows (both are eval.suite), and
    generation records' probability metrics are scored once, not a second time and dropped."""
    import numpy as np

    import eval.rewrite
    from cluster.workers import EvalRequest, evaluate_checkpoint

    records = json.loads((FIXTURES / "counterfact_3.json").read_text())
    ckpt, deltas = _checkpoint(tmp_path, records)
    scored: list[int] = []
    real = eval.rewrite.counterfact_probability_scores

    def counting(model, tok, recs, **kw):
        scored.append(len(recs))
        return real(model, tok, recs, **kw)

    monkeypatch.setattr(eval.rewrite, "counterfact_probability_scores", counting)
    req = EvalRequest(run_id="r", edits_done=3, dataset="counterfact", records=tuple(records), probe_tasks=(),
                      probe_limit=None, probe_batch_size=8, generation_records=2, seed=0)
    out = evaluate_checkpoint(str(tmp_path / "model"), {k: v.numpy() for k, v in deltas.items()}, req)
    assert scored == [3], scored  # was [3, 2]: the generation records' probabilities again
    task_rows = {r["metric"]: r["value"] for r in out["metrics"]}
    assert {r["metric"]: r["n_cases"] for r in out["metrics"]}["fluency"] == 2
    out_json = tmp_path / "out.json"
    assert evaluate.main([str(ckpt), "--probes", "none", "--no-pre", "--no-generation", "--json", str(out_json)]) == 0
    cli_rows = _rows(json.loads(out_json.read_text()), "post")
    assert cli_rows == pytest.approx({k: v for k, v in task_rows.items() if k in cli_rows})
    assert set(task_rows) - set(cli_rows) == {"fluency"} and np.isfinite(task_rows["fluency"])
