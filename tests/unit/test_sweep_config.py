"""Sweep config: validation reports every problem at once; overrides; the grid."""

from __future__ import annotations

import pytest
import yaml

from cluster.config import (
    DEFAULT_CONFIG_PATH,
    TOY_CONFIG_PATH,
    SweepConfigError,
    apply_override,
    load_config,
    parse_config,
)


def raw_default() -> dict:
    return yaml.safe_load(TOY_CONFIG_PATH.read_text())


def test_toy_config_is_the_toy_sweep() -> None:
    cfg = load_config(TOY_CONFIG_PATH)
    assert cfg.methods == ("alphaedit", "memit") and cfg.n_edits == (1000,) and cfg.batch_sizes == (100,)
    assert cfg.eval_every == 200
    cells = list(cfg.cells())
    assert len(cells) == 2
    assert cells[0].checkpoints() == [0, 200, 400, 600, 800, 1000]
    assert len({c.run_id("s") for c in cells}) == 2


def test_every_problem_is_reported_at_once() -> None:
    raw = raw_default()
    raw["methods"] = ["alphaedit", "rome2"]
    raw["batch_sizes"] = [0]
    raw["eval_every"] = -1
    raw["models"][0]["preset"] = "nope"
    raw["hparams_overrides"] = [{"l2": 1.0, "not_a_field": 3}]
    raw["typo_key"] = 1
    with pytest.raises(SweepConfigError) as err:
        parse_config(raw, "test.yaml")
    text = str(err.value)
    for needle in ("rome2", "batch_sizes", "eval_every", "models.0.preset", "not_a_field", "typo_key"):
        assert needle in text, needle
    assert len(err.value.problems) == 6


def test_overrides_of_single_keys() -> None:
    cfg = load_config(TOY_CONFIG_PATH, ["n_edits=[20, 40]", "batch_sizes=[10]", "models.0.num_gpus=1", "probes.limit=5",
                                            "methods=[memit]"])
    assert cfg.n_edits == (20, 40) and cfg.models[0].num_gpus == 1 and cfg.probes.limit == 5
    assert cfg.methods == ("memit",)
    assert len(list(cfg.cells())) == 2
    raw: dict = {"a": {"b": 1}}
    apply_override(raw, "a.c=[1, 2]")
    assert raw == {"a": {"b": 1, "c": [1, 2]}}
    with pytest.raises(SweepConfigError):
        apply_override(raw, "novalue")


def test_config_hash_changes_with_content() -> None:
    a = load_config(TOY_CONFIG_PATH)
    b = load_config(TOY_CONFIG_PATH, ["seeds=[1]"])
    assert a.hash == load_config(TOY_CONFIG_PATH).hash and a.hash != b.hash
    # where results and artifacts are stored is not content: the sweep id survives a move
    moved = load_config(TOY_CONFIG_PATH, ["results=/elsewhere/r.duckdb", "artifact_root=/elsewhere/art"])
    assert moved.hash == a.hash and moved.results == "/elsewhere/r.duckdb"


def test_grid_expands_all_axes() -> None:
    cfg = load_config(TOY_CONFIG_PATH, ["batch_sizes=[10, 20]", "seeds=[0, 1, 2]", "datasets=[counterfact, zsre]",
                                            "hparams_overrides=[{}, {l2: 1.0}]"])
    cells = list(cfg.cells())
    assert len(cells) == 2 * 2 * 3 * 2 * 2
    assert {c.hparams().l2 for c in cells} == {cfg.cells().__next__().hparams().l2, 1.0}
    assert len({c.run_id("s") for c in cells}) == len(cells)


@pytest.mark.parametrize("name,layers", [("gpt2-xl", (13, 14, 15, 16, 17)), ("gpt-j", (3, 4, 5, 6, 7, 8)),
                                         ("llama3-8b", (4, 5, 6, 7, 8))])
def test_real_model_configs_carry_the_papers_setting(name: str, layers: tuple[int, ...]) -> None:
    cfg = load_config(DEFAULT_CONFIG_PATH.parent / f"{name}.yaml")
    assert cfg.n_edits == (2000,) and cfg.batch_sizes == (100,) and set(cfg.datasets) == {"counterfact", "zsre"}
    assert set(cfg.methods) == {"alphaedit", "memit"} and cfg.models[0].num_gpus == 1
    cells = list(cfg.cells())
    assert len(cells) == 4 and all(c.hparams().layers == layers for c in cells)
    assert cells[0].checkpoints() == [0, 500, 1000, 1500, 2000]


def test_default_config_is_the_real_model_demo() -> None:
    from eval.probes import REAL_TASKS
    from eval.realworld.paths import MODEL_REF

    cfg = load_config(DEFAULT_CONFIG_PATH)
    (model,) = cfg.models
    assert model.path == MODEL_REF and model.preset == "smollm2" and model.corpus == "realworld"
    assert "eval/realworld/artifacts/" in model.counterfact and set(cfg.probes.tasks) <= set(REAL_TASKS)
    assert cfg.methods == ("alphaedit", "memit") and all(c.hparams().layers for c in cfg.cells())


def test_field_types_are_checked_from_the_dataclasses() -> None:
    """Types, Literal names, bounds and nested dataclasses: one problem per field, all at once."""
    raw = raw_default()
    raw["models"][0]["num_gpus"] = "one"
    raw["models"][0]["revision"] = 3
    raw["datasets"] = ["counterfact", "wikidata"]
    raw["probes"] = {"limit": "abc", "batch_size": 0}
    raw["metrics"] = {"max_records": -1, "typo": 1}
    raw["seeds"] = [0, True]
    raw["n_edits"] = []
    with pytest.raises(SweepConfigError) as err:
        parse_config(raw, "test.yaml")
    problems = err.value.problems
    expected = ["models.0.num_gpus: expected a number", "models.0.revision: expected a string",
                "datasets.1: 'wikidata' is not one of", "probes.limit: expected an integer or null, got 'abc'",
                "probes.batch_size: must be >= 1", "metrics.max_records: must be >= 0", "metrics.typo: unknown key",
                "seeds.1: expected an integer", "n_edits: must not be empty"]
    for needle in expected:
        assert any(p.startswith(needle) for p in problems), (needle, problems)
    assert len(problems) == len(expected), problems


def test_probes_limit_abc_is_rejected_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.sweep import main

    with pytest.raises(SweepConfigError, match="probes.limit: expected an integer or null, got 'abc'"):
        load_config(TOY_CONFIG_PATH, ["probes.limit=abc"])
    assert main(["--config", str(TOY_CONFIG_PATH), "--set", "probes.limit=abc"]) == 2
    err = capsys.readouterr().err
    assert "probes.limit" in err and "Traceback" not in err


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_hyper_parameters_are_named_errors(value: str) -> None:
    with pytest.raises(SweepConfigError) as err:
        load_config(TOY_CONFIG_PATH, [f"hparams_overrides=[{{v_lr: {value}, l2: 1.0}}]"])
    assert all("hparams_overrides.0.v_lr: must be a finite number" in p for p in err.value.problems)
    assert len(err.value.problems) == 2  # one per method of the toy grid, nothing about l2


def test_override_values_are_checked_with_the_config() -> None:
    """A bad hyper-parameter value fails at load time with the config's other problems, not in a cell."""
    with pytest.raises(SweepConfigError) as err:
        load_config(TOY_CONFIG_PATH, ["methods=[alphaedit]", "eval_every=0",
                                      "hparams_overrides=[{v_num_grad_steps: 0, fact_token: first}]"])
    problems = err.value.problems
    assert any(p.startswith("eval_every: must be >= 1") for p in problems)
    assert any(p.startswith("hparams_overrides.0.v_num_grad_steps: must be >= 1") for p in problems)
    assert any(p.startswith("hparams_overrides.0.fact_token: 'first' is not one of") for p in problems)


def test_bad_set_paths_and_yaml_are_config_errors(tmp_path) -> None:
    with pytest.raises(SweepConfigError, match="models.7.name"):
        load_config(TOY_CONFIG_PATH, ["models.7.name=x"])
    with pytest.raises(SweepConfigError, match="eval_every.x"):
        load_config(TOY_CONFIG_PATH, ["eval_every.x=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(SweepConfigError, match="not valid YAML"):
        load_config(bad)


def test_values_are_kept_as_written() -> None:
    """No numeric coercion: the config hash is over the values as written (sweep ids stay stable)."""
    cfg = load_config(TOY_CONFIG_PATH, ["models.0.num_gpus=1", "probes.tasks=toy_knowledge"])
    assert type(cfg.models[0].num_gpus) is int and cfg.probes.tasks == ("toy_knowledge",)
    assert cfg.to_dict()["models"][0]["num_gpus"] == 1
