"""Typed edit requests and the model registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_core_support import tiny_model  # noqa: E402

from alphaedit.models import ModelSpec, key_dim, known_model_types, model_dim, spec_for  # noqa: E402
from alphaedit.requests import EditRequest, InvalidRequestError, requests_from_counterfact  # noqa: E402

RECORD = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"},
    },
    "paraphrase_prompts": ["x"], "neighborhood_prompts": ["y"],
}


def test_request_from_counterfact_normalizes_and_roundtrips():
    r = EditRequest.from_counterfact(RECORD)
    assert r.target_new == " English" and r.target_true == " French"
    assert r.rewrite_prompt == "The mother tongue of Danielle Darrieux is"
    assert r.to_counterfact() == RECORD


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("prompt", "The mother tongue is", "prompt"),
        ("prompt", "{} and {} speak", "prompt"),
        ("subject", "  ", "subject"),
        ("target_new", "", "target_new"),
        ("target_true", "", "target_true"),
        ("target_new", " French", "target_new"),
    ],
)
def test_bad_requests_name_case_and_field(field, value, match):
    kwargs = dict(case_id=42, prompt="{} speaks", subject="Ann", target_new="English", target_true="French")
    kwargs[field] = value
    with pytest.raises(InvalidRequestError, match=match) as info:
        EditRequest(**kwargs)
    assert "42" in str(info.value)


def test_requests_from_counterfact_reports_all_errors():
    bad = {"case_id": 3, "requested_rewrite": {"prompt": "no slot", "subject": "S",
                                               "target_new": {"str": "a"}, "target_true": {"str": "b"}}}
    missing = {"case_id": 4, "requested_rewrite": {"prompt": "{} x"}}
    with pytest.raises(InvalidRequestError) as info:
        requests_from_counterfact([RECORD, bad, missing])
    assert "case_id=3" in str(info.value) and "case_id=4" in str(info.value) and "2 invalid" in str(info.value)


def test_registry_knows_the_required_types_and_explains_unknown_ones():
    assert {"gpt2", "gptj", "llama", "mistral", "qwen2"} <= set(known_model_types())
    with pytest.raises(KeyError) as info:
        spec_for("falcon")
    msg = str(info.value)
    assert "falcon" in msg and "llama" in msg and "override" in msg
    custom = spec_for("falcon", override={"mlp_out": "transformer.h.{}.mlp.dense_4h_to_h",
                                          "block": "transformer.h.{}", "final_norm": "transformer.ln_f",
                                          "lm_head": "lm_head"})
    assert isinstance(custom, ModelSpec) and custom.weight_name(3) == "transformer.h.3.mlp.dense_4h_to_h.weight"


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "llama", "mistral", "qwen2"])
def test_registry_dimensions(model_type):
    model = tiny_model(model_type, 64, width=32)
    spec = spec_for(model)
    assert key_dim(model, spec, 1) == 128 and model_dim(model, spec, 1) == 32


def test_wrong_layout_is_reported():
    model = tiny_model("gpt2", 64, width=32)
    wrong = spec_for("gptj", override=ModelSpec("gpt2", "transformer.h.{}.mlp.c_proj", "transformer.h.{}",
                                                "transformer.ln_f", "lm_head", weight_layout="out_in"))
    with pytest.raises(TypeError, match="in_out"):
        key_dim(model, wrong, 0)


def test_import_alphaedit_loads_no_ray_or_other_layers():
    code = ("import sys, alphaedit; bad = [m for m in ('ray', 'duckdb', 'lm_eval', 'polars', 'eval', 'storage', "
            "'cluster') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hparams_presets_roundtrip_and_validate():
    from alphaedit.hparams import PRESETS, EditHparams, preset

    assert {"gpt2-xl", "gpt-j", "llama3-8b", "toy"} <= set(PRESETS)
    assert preset("gpt2-xl").layers == (13, 14, 15, 16, 17) and preset("gpt-j").v_num_grad_steps == 25
    assert preset("llama3-8b").v_lr == 0.1 and preset("llama3-8b").l2 == 10.0
    for hp in PRESETS.values():
        assert EditHparams.from_dict(hp.to_dict()) == hp
    assert preset("toy").digest() != preset("toy", l2=1.0).digest()
    with pytest.raises(ValueError, match="ascending"):
        EditHparams(layers=(2, 1))
    with pytest.raises(ValueError, match="unknown EditHparams"):
        EditHparams.from_dict({"layers": [1], "lr": 3})
    with pytest.raises(KeyError, match="known"):
        preset("gpt-4")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_hparams_non_finite_numbers_are_named_errors(value):
    from alphaedit.hparams import HparamsError, preset

    with pytest.raises(HparamsError, match="EditHparams.v_lr: must be a finite number"):
        preset("toy", v_lr=value)
    with pytest.raises(HparamsError, match="EditHparams.key_budget_multiplier: must be a finite number"):
        preset("toy", key_budget_multiplier=value)


def test_hparams_every_problem_at_once_from_the_field_types():
    from alphaedit.hparams import EditHparams, HparamsError

    with pytest.raises(HparamsError) as err:
        EditHparams(layers=(3, 1), fact_token="first", v_num_grad_steps=0, prune_alpha=1.0, mom2_batch_size=2.5,
                    v_stop_most_probable="yes", stats_dtype="int8", rect_top_percent=101.0)
    fields = [p.split(":")[0] for p in err.value.problems]
    assert fields == ["EditHparams.fact_token", "EditHparams.v_num_grad_steps", "EditHparams.mom2_batch_size",
                      "EditHparams.prune_alpha", "EditHparams.rect_top_percent", "EditHparams.v_stop_most_probable",
                      "EditHparams.stats_dtype", "EditHparams.layers"], err.value.problems
    assert EditHparams(layers=[1, 2]).layers == (1, 2)
