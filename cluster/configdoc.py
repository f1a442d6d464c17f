"""The reference page of every config key, generated from the config dataclasses (``docs/config.md``).

    python -m cluster.configdoc            # rewrite docs/config.md
    python -m cluster.configdoc --check    # exit 1 when docs/config.md is out of date

Types and defaults come from the dataclasses (:class:`cluster.config.SweepConfig` and the classes
of its fields, :class:`alphaedit.hparams.EditHparams`); the meaning of a key is the comment on its
line or the comment lines just above it (``# --- section ---`` lines head a group), else the
class docstring's paragraph that starts with the key in backquotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import re
import sys
import tokenize
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alphaedit.fields import NonEmpty, Range
from alphaedit.hparams import PRESETS, EditHparams
from cluster.config import (
    LATER_METRIC_FIELDS,
    LOCATION_FIELDS,
    MODEL_PLACEMENT_FIELDS,
    PLACEMENT_FIELDS,
    MetricConfig,
    ModelConfig,
    ProbeConfig,
    SweepConfig,
)
from cluster.placement import TaskPlacement
from eval.cli import add_log_level, cli_edge

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "config.md"


#: Meanings of the keys whose dataclass line has no comment (the source's comments win where they exist).
MEANINGS: dict[tuple[str, str], str] = {
    ("SweepConfig", "models"): "the models to edit; every other list below is crossed with each.",
    ("SweepConfig", "methods"): "edit methods (`alphaedit.methods`; README's Methods table).",
    ("SweepConfig", "datasets"): "edit datasets; each model names its files (`models.N.counterfact`, `.zsre`).",
    ("SweepConfig", "batch_sizes"): "edits per batch (one closed-form solve per batch).",
    ("SweepConfig", "n_edits"): "edits per run cell (the stream of sequential batches).",
    ("SweepConfig", "seeds"): "seeds; a seed picks the cell's records and sampled templates.",
    ("SweepConfig", "probes"): "general-capability probes at each evaluation point.",
    ("SweepConfig", "metrics"): "how much rewrite evaluation runs at each evaluation point.",
    ("SweepConfig", "results"): "the results DuckDB file, relative to the repository root or absolute (the default is "
                                "also `--db`'s in `storage.query` and `jobs.report`).",
    ("SweepConfig", "artifact_root"): "the artifact store: key statistics, projectors, checkpoints.",
    ("SweepConfig", "sweep_id"): "the sweep's id (null: `sweep-<first 10 hex of the config hash>`).",
    ("SweepConfig", "eval_placement"): "where the evaluation tasks (rewrite metrics, probes) run.",
    ("SweepConfig", "stats_shards"): "Ray tasks the key statistics of a model are split into (sums merge exactly).",
    ("ModelConfig", "name"): "the model's name in run ids and the `runs.model` column.",
    ("ModelConfig", "preset"): "hyper-parameter preset ([EditHparams](#edithparams), `alphaedit/hparams.py`).",
    ("ModelConfig", "counterfact"): "CounterFact records file (JSON), relative to the repository or absolute.",
    ("ModelConfig", "zsre"): "zsRE records file (JSON), relative to the repository or absolute.",
    ("ModelConfig", "num_gpus"): "GPUs of the model's editor actor and, unless placed otherwise, of its tasks.",
    ("ModelConfig", "num_cpus"): "CPUs of the model's editor actor and, unless placed otherwise, of its tasks.",
    ("ModelConfig", "revision"): "model revision; part of the key-statistics cache key.",
    ("ModelConfig", "tfidf_vocab"): "TF-IDF vocabulary for CounterFact consistency (with `idf`).",
    ("ModelConfig", "idf"): "IDF vector for CounterFact consistency (with `tfidf_vocab`).",
    ("ProbeConfig", "tasks"): "lm-eval task names (local tasks: `toy_*`, `real_*`; or lm-eval's own).",
    ("ProbeConfig", "limit"): "items per task (null: all).",
    ("ProbeConfig", "batch_size"): "prompts per forward pass of a probe.",
    ("TaskPlacement", "num_cpus"): "CPUs per task (null: the model's `num_cpus`).",
    ("TaskPlacement", "num_gpus"): "GPUs per task (null: the model's `num_gpus`).",
    ("EditHparams", "v_lr"): "Adam learning rate of the target optimization.",
    ("EditHparams", "kl_factor"): "weight of the KL term that keeps the subject's essence prompt unchanged.",
    ("EditHparams", "template_prefixes"): "first words of the sampled context templates.",
    ("EditHparams", "template_samples_per_prefix"): "templates sampled per prefix.",
    ("EditHparams", "template_top_k"): "top-k sampling of the template generation.",
    ("EditHparams", "prune_function"): "PRUNE's restraint function F (see `prune_alpha`).",
    ("EditHparams", "rect_eps"): "ε in RECT's relative-change score |Δ| / (|W| + ε).",
}


def field_comments(cls: type) -> dict[str, tuple[str, str]]:
    """{field: (section, comment)} from the source of dataclass ``cls``: the comment lines just above
    a field and the comment on its line, joined; ``section`` is the last ``# --- title ---`` line."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, tuple[str, str]] = {}
    section, above = "", []
    for no, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        m = re.match(r"^    (\w+):", line)
        if stripped.startswith("#"):
            text = comments.get(no, "")
            head = re.match(r"^-+\s*(.*?)\s*-*$", text)
            if head:
                section, above = head.group(1), []
            else:
                above.append(text)
        elif m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            trailing = comments.get(no, "") if "#" in line else ""
            out[m.group(1)] = (section, " ".join([*above, trailing]).strip())
            above = []
        elif not stripped or stripped.startswith(('"""', "def ", "@")):
            above = []
    return out


def _docstring_meanings(cls: type) -> dict[str, str]:
    """Paragraph parts of the class docstring that start with ```name```: (e.g. TaskPlacement's)."""
    doc = inspect.getdoc(cls) or ""
    found = {}
    for m in re.finditer(r"``(\w+)``:\s*(.*?)(?=\s*``\w+``:|\n\n|$)", doc, re.S):
        found[m.group(1)] = " ".join(m.group(2).split())
    return found


def type_text(tp: Any) -> str:
    """A type annotation in words: bounds of ``Annotated`` fields, ``Literal`` choices, ``list of``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        inner, extras = type_text(args[0]), []
        for meta in args[1:]:
            if isinstance(meta, Range):
                extras += [f"{sym} {v:g}" for sym, v in (("≥", meta.ge), (">", meta.gt), ("≤", meta.le)) if v is not None]
            elif isinstance(meta, NonEmpty):
                extras.append("non-empty")
        return f"{inner} ({', '.join(extras)})" if extras else inner
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [a for a in args if a is not type(None)]
        text = " or ".join(type_text(a) for a in parts)
        return f"{text} or null" if len(parts) < len(args) else text
    if origin is tuple:
        return f"list of {type_text(args[0])}" if len(args) == 2 and args[1] is Ellipsis else "list"
    if origin in (Mapping, dict) or (origin is not None and isinstance(origin, type) and issubclass(origin, Mapping)):
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(tp):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "see below"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float):
        return f"`{value:g}`"
    return "`null`" if value is None else f"`{value!r}`".replace("|", "\\|")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def class_table(cls: type, prefix: str, notes: Mapping[str, str] | None = None) -> str:
    """A markdown table of the fields of dataclass ``cls``: key (with ``prefix``), type, default, meaning."""
    hints = typing.get_type_hints(cls, include_extras=True)
    comments, doc = field_comments(cls), _docstring_meanings(cls)
    lines, last_section = [], None
    header = "| key | type | default | meaning |\n|---|---|---|---|"
    for f in dataclasses.fields(cls):
        section, meaning = comments.get(f.name, ("", ""))
        if section != last_section and section:
            lines += ["", f"*{section}*", "", header]
        elif last_section is None:
            lines.append(header)
        last_section = section
        meaning = meaning or doc.get(f.name, "") or MEANINGS.get((cls.__name__, f.name), "")
        meaning = re.sub(r"``([^`]+)``", r"`\1`", meaning)
        extra = (notes or {}).get(f.name)
        if extra:
            meaning = f"{meaning.rstrip('.')}. {extra}" if meaning else extra
        lines.append(f"| `{prefix}{f.name}` | {type_text(hints[f.name])} | {_default(f)} | {_cell(meaning)} |")
    return "\n".join(lines)


def _intro(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n")[0].replace("\n", " ") if doc and not doc.startswith(cls.__name__ + "(") else ""


def config_reference() -> str:
    """The whole ``docs/config.md`` page."""
    not_hashed = "Not part of the sweep hash (changing it keeps the sweep id)."
    sweep_notes = {name: not_hashed for name in LOCATION_FIELDS + PLACEMENT_FIELDS}
    sweep_notes["hparams_overrides"] = ("Each mapping overrides [EditHparams](#edithparams) keys of every cell's "
                                        "preset; one run cell per mapping (`-h<i>` in the run id).")
    metric_notes = {name: f"Hashed only when not `{value!r}`." for name, value in LATER_METRIC_FIELDS.items()}
    model_notes = {name: not_hashed for name in MODEL_PLACEMENT_FIELDS}
    sections = [
        ("SweepConfig", "Top-level keys of a sweep YAML (`jobs/configs/*.yaml`); `--set key=value` overrides one "
                        "(`--set models.0.num_gpus=1`, `--set methods=[memit]`).", class_table(SweepConfig, "", sweep_notes)),
        ("ModelConfig", "One entry of `models:`.", class_table(ModelConfig, "models.N.", model_notes)),
        ("ProbeConfig", "`probes:`: the general-capability probes (lm-eval tasks) at each evaluation point.",
         class_table(ProbeConfig, "probes.")),
        ("MetricConfig", _intro(MetricConfig) + " (`metrics:`)", class_table(MetricConfig, "metrics.", metric_notes)),
        ("TaskPlacement", "`stats_placement:` and `eval_placement:`. " + _intro(TaskPlacement),
         class_table(TaskPlacement, "stats_placement.")),
        ("EditHparams", "Edit hyper-parameters: an entry of `hparams_overrides:` (or `--set hparams_overrides=[{l2: 1.0}]`). "
                        "The defaults below are the dataclass's; each model's `preset` (" +
                        ", ".join(f"`{p}`" for p in sorted(PRESETS)) + ") sets its own values first "
                        "(`alphaedit/hparams.py`).", class_table(EditHparams, "")),
    ]
    parts = ["# Config keys", "",
             "Generated by `python -m cluster.configdoc` from the dataclasses in `cluster/config.py`, "
             "`cluster/placement.py` and `alphaedit/hparams.py` (a unit test checks it is up to date): every key "
             "with its type, default and meaning.", ""]
    parts += [f"- [{name}](#{name.lower()})" for name, _, _ in sections]
    for name, intro, table in sections:
        parts += ["", f"## {name}", "", intro, "", table]
    return "\n".join(parts) + "\n"


@cli_edge(level="warning")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 when docs/config.md differs from the dataclasses")
    add_log_level(p, "warning")
    args = p.parse_args(argv)
    page = config_reference()
    if args.check:
        current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.is_file() else ""
        if current != page:
            print(f"{DOC_PATH} is out of date: run python -m cluster.configdoc", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.write_text(page, encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
