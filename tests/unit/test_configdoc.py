"""docs/config.md is generated from the config dataclasses and up to date; the --db defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from alphaedit.hparams import EditHparams
from cluster import configdoc
from cluster.config import DEFAULT_CONFIG_PATH, MetricConfig, ModelConfig, ProbeConfig, SweepConfig
from cluster.placement import TaskPlacement
from storage import names

REPO = Path(__file__).resolve().parents[2]


def test_config_page_is_up_to_date():
    assert configdoc.DOC_PATH.read_text(encoding="utf-8") == configdoc.config_reference(), (
        "docs/config.md is out of date: run .venv/bin/python -m cluster.configdoc")
    assert configdoc.main(["--check"]) == 0


def test_every_key_is_listed_with_type_default_and_meaning():
    page = configdoc.config_reference()
    rows = {m.group(1): [c.strip() for c in m.group(2).split(" | ")]
            for m in re.finditer(r"^\| `([^`]+)` \| (.*) \|$", page, re.M)}
    prefixes = {SweepConfig: "", ModelConfig: "models.N.", ProbeConfig: "probes.", MetricConfig: "metrics.",
                TaskPlacement: "stats_placement.", EditHparams: ""}
    for cls, prefix in prefixes.items():
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            assert key in rows, f"{cls.__name__}.{f.name} missing from docs/config.md"
            type_, default, meaning = rows[key][0], rows[key][1], " | ".join(rows[key][2:])
            assert type_ and default and meaning, f"{key}: empty cell in {rows[key]}"
    assert rows["eval_every"][:2] == ["int (≥ 1)", "`200`"]
    assert rows["models.N.preset"][1] == "required" and "`smollm2`" in rows["models.N.preset"][0]
    assert rows["metrics.zsre_answer_tokens"][0] == "`clean` \\| `reference`"
    assert rows["key_budget_multiplier"][0] == "float (> 0) or null"


def test_readme_links_the_config_page():
    assert "](docs/config.md)" in (REPO / "README.md").read_text(encoding="utf-8")


def test_db_defaults_to_the_default_configs_results_file():
    from jobs.report import parse_args as report_args
    from storage.query import build_parser

    assert names.DEFAULT_RESULTS == SweepConfig.__dataclass_fields__["results"].default
    assert names.DEFAULT_RESULTS == yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())["results"]
    assert names.default_results_path() == REPO / "results" / "results.duckdb"
    assert build_parser().parse_args(["run_status"]).db == names.default_results_path()
    args = report_args([])
    assert Path(args.db) == names.default_results_path()
    assert Path(args.out) == REPO / "results" / "report-all"
    assert Path(report_args(["--sweep", "s 1"]).out) == REPO / "results" / "report-s_1"
