"""Sweep configuration: a YAML file validated into frozen dataclasses, expanded into run cells.

Every problem of a config is reported at once (``SweepConfigError`` lists them all), and single
keys can be overridden from the command line (``--set eval_every=100``,
``--set models.0.num_gpus=1``, ``--set methods=[memit]``).

Validation derives from the dataclasses below (:mod:`alphaedit.fields`): each field's type,
``Literal`` names (methods, datasets, presets from their registries) and ``Annotated`` bounds are
the one statement of what a value may be; the hyper-parameter overrides are checked by building
:class:`alphaedit.hparams.EditHparams` for every preset and method of the grid.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from alphaedit.fields import NonEmpty, Range, from_raw
from alphaedit.hparams import METHODS, PRESETS, EditHparams, HparamsError, hparams_for
from cluster.placement import TaskPlacement
from eval.errors import ExpectedError
from storage.hashing import config_hash

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The demo: AlphaEdit vs MEMIT on the embedded real model (SmolLM2-135M) and real facts.
DEFAULT_CONFIG_PATH = REPO_ROOT / "jobs" / "configs" / "default.yaml"
#: The same sweep on the toy world (fast; what the unit and integration tests run).
TOY_CONFIG_PATH = REPO_ROOT / "jobs" / "configs" / "toy.yaml"
TOY_DIR = REPO_ROOT / "eval" / "toyworld" / "artifacts"
DATASETS = ("counterfact", "zsre")
#: Field types whose values come from the registries (one source: the tuples above and PRESETS).
Method = Literal[METHODS]  # type: ignore[valid-type]
Dataset = Literal[DATASETS]  # type: ignore[valid-type]
Preset = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]


class SweepConfigError(ExpectedError, ValueError):
    """A sweep config is invalid; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(f"invalid sweep config {source}:\n  - " + "\n  - ".join(self.problems))

    def brief(self) -> str:
        """The message for a terminal: one line when there is one problem, else one line per problem."""
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}"
        return str(self)


@dataclass(frozen=True)
class ModelConfig:
    """One model of the sweep and where its pieces come from."""

    name: str
    path: str  # HF id or local path (relative paths are relative to the repository)
    preset: Preset
    corpus: str  # toywiki | realworld | wikipedia[:<snapshot>] | wikitext | comma-separated .jsonl/.txt paths
    counterfact: str
    zsre: str
    num_gpus: Annotated[float, Range(ge=0)] = 0.0
    num_cpus: Annotated[float, Range(ge=0)] = 1.0
    revision: str = "local"
    # Consistency inputs (optional: without them CounterFact consistency is not computed).
    attribute_snippets: str | None = None
    tfidf_vocab: str | None = None
    idf: str | None = None
    # Where the editor actor runs (cluster/placement.py, ray_cluster.yaml); not hashed (MODEL_PLACEMENT_FIELDS).
    memory_gb: Annotated[float, Range(gt=0)] | None = None  # Ray logical memory per editor, GiB
    resources: Mapping[str, Annotated[float, Range(ge=0)]] = field(default_factory=dict)  # {editor_slot: 1}
    labels: Mapping[str, str] = field(default_factory=dict)  # node labels it needs: {node-kind: gpu}

    def resolve(self, value: str) -> str:
        """A relative local path is resolved against the repository root; ids are kept;
        ``realworld:smollm2-135m-instruct`` is the installed real model's folder (see
        :mod:`eval.realworld.paths`; a missing install raises an error naming the install command)."""
        if value.startswith("realworld:"):
            from eval.realworld import paths as real

            if value != real.MODEL_REF:
                raise ValueError(f"unknown real-world model {value!r}; the embedded one is {real.MODEL_REF!r}")
            return str(real.require_model())
        p = Path(value)
        if value.startswith("hf:") or p.is_absolute():
            return value
        candidate = REPO_ROOT / p
        return str(candidate) if candidate.exists() or "/" in value else value

    def hf_config(self) -> Any:
        """The model's Hugging Face config (``config.json`` only, no weights)."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.resolve(self.path))

    def dataset_path(self, dataset: str) -> str:
        return self.resolve(self.counterfact if dataset == "counterfact" else self.zsre)


@dataclass(frozen=True)
class ProbeConfig:
    tasks: tuple[str, ...] = ("toy_knowledge", "toy_acceptability")
    limit: PositiveInt | None = 200
    batch_size: PositiveInt = 64


@dataclass(frozen=True)
class MetricConfig:
    """How much of the rewrite evaluation runs at each checkpoint."""

    max_records: NonNegativeInt | None = None  # evaluate at most this many of the records edited so far
    generation_records: NonNegativeInt = 20  # fluency/consistency on this many records (generation is slow)
    # zsRE answer tokens: "clean" (the answer's own tokens) or "reference" (the reference code's BOS-first
    # tokens of a BOS-adding tokenizer, which cap Llama-3's zsRE numbers; eval.rewrite.zsre_answer_prefix).
    zsre_answer_tokens: Literal["clean", "reference"] = "clean"
    # The paper's Fig. 5: hidden-state drift (eval.drift) of the first N preservation-corpus documents at the
    # last edited layer, at every evaluation point (rows under dataset "preserved"); 0: off.
    drift_prompts: NonNegativeInt = 0


#: MetricConfig fields added after results were first stored: their defaults reproduce the earlier
#: evaluation, so they enter the sweep hash only when set otherwise (existing sweep ids stay valid).
LATER_METRIC_FIELDS: dict[str, Any] = {"zsre_answer_tokens": "clean", "drift_prompts": 0}


#: SweepConfig fields added later, hashed only when set otherwise than this default (sweep ids kept).
LATER_SWEEP_FIELDS: dict[str, Any] = {"on_bad_record": "fail"}

#: SweepConfig fields that say where results go or name the sweep; they are not part of its hash.
LOCATION_FIELDS: tuple[str, ...] = ("sweep_id", "results", "artifact_root")
#: Fields that say where work runs (cluster/placement.py); placement never changes a result, so they
#: are in no hash either (sweep-level, then per model).
PLACEMENT_FIELDS: tuple[str, ...] = ("stats_placement", "eval_placement")
MODEL_PLACEMENT_FIELDS: tuple[str, ...] = ("memory_gb", "resources", "labels")


@dataclass(frozen=True)
class SweepConfig:
    models: Annotated[tuple[ModelConfig, ...], NonEmpty()]
    methods: Annotated[tuple[Method, ...], NonEmpty()] = ("alphaedit", "memit")
    datasets: Annotated[tuple[Dataset, ...], NonEmpty()] = ("counterfact",)
    batch_sizes: Annotated[tuple[PositiveInt, ...], NonEmpty()] = (100,)
    n_edits: Annotated[tuple[PositiveInt, ...], NonEmpty()] = (1000,)
    seeds: Annotated[tuple[NonNegativeInt, ...], NonEmpty()] = (0,)
    hparams_overrides: Annotated[tuple[Mapping[str, Any], ...], NonEmpty()] = field(default_factory=lambda: ({},))
    eval_every: PositiveInt = 200  # edits between evaluations (metrics + probes); each is also a checkpoint
    checkpoint_every: PositiveInt = 1  # batches between editor checkpoints (resume points; see README)
    editor_max_restarts: NonNegativeInt = 2  # restarts of a dead editor actor per model before its cell fails
    probes: ProbeConfig = ProbeConfig()
    metrics: MetricConfig = MetricConfig()
    stats_shards: PositiveInt = 2
    # A malformed dataset record: "fail" (preflight lists every one, exit 2) or "skip" (the cell edits the
    # first n_edits valid records; the skipped ones are counted in metrics, metric skipped_records).
    on_bad_record: Literal["fail", "skip"] = "fail"
    # Where the statistics shards and the evaluation tasks run (cluster/placement.py); not hashed.
    stats_placement: TaskPlacement = field(default_factory=TaskPlacement)
    eval_placement: TaskPlacement = field(default_factory=TaskPlacement)
    results: str = "results/results.duckdb"
    artifact_root: str = "results/artifacts"
    sweep_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=list))

    @property
    def hash(self) -> str:
        """Hash of what the sweep computes, not of where it is stored: moving the results file or the
        artifact store keeps the sweep id (``sweep-<hash[:10]>``), so a rerun still resumes."""
        d = self.to_dict()
        for key in LOCATION_FIELDS + PLACEMENT_FIELDS:
            d.pop(key, None)
        for m in d["models"]:
            for key in MODEL_PLACEMENT_FIELDS:
                m.pop(key, None)
        for key, default in LATER_METRIC_FIELDS.items():
            if d["metrics"].get(key) == default:
                d["metrics"].pop(key)
        for key, default in LATER_SWEEP_FIELDS.items():
            if d.get(key) == default:
                d.pop(key)
        return config_hash(d)

    def cells(self) -> Iterator[RunCell]:
        """The grid: models x methods x batch sizes x n_edits x datasets x seeds x overrides."""
        for m, method, bs, n, ds, seed, (oi, over) in itertools.product(
            self.models, self.methods, self.batch_sizes, self.n_edits, self.datasets, self.seeds,
            enumerate(self.hparams_overrides),
        ):
            yield RunCell(model=m, method=method, batch_size=bs, n_edits=n, dataset=ds, seed=seed,
                          overrides=dict(over), override_index=oi, eval_every=self.eval_every,
                          zsre_answer_tokens=self.metrics.zsre_answer_tokens)


@dataclass(frozen=True)
class RunCell:
    """One sequential-editing run: a stream of ``n_edits`` edits in batches of ``batch_size``."""

    model: ModelConfig
    method: str
    batch_size: int
    n_edits: int
    dataset: str
    seed: int
    overrides: dict[str, Any]
    override_index: int
    eval_every: int
    zsre_answer_tokens: str = "clean"  # MetricConfig.zsre_answer_tokens (in config() only when not "clean")

    def hparams(self) -> EditHparams:
        """The model's preset + the method's published defaults on it + this cell's overrides."""
        return hparams_for(self.model.preset, self.method, **self.overrides)

    def config(self) -> dict[str, Any]:
        """Everything that determines this run's results (its config hash is over this)."""
        return {
            "model": {k: v for k, v in asdict(self.model).items() if k not in MODEL_PLACEMENT_FIELDS},
            "method": self.method, "batch_size": self.batch_size,
            "n_edits": self.n_edits, "dataset": self.dataset, "seed": self.seed,
            "hparams": self.hparams().to_dict(), "eval_every": self.eval_every,
        } | ({"zsre_answer_tokens": self.zsre_answer_tokens} if self.zsre_answer_tokens != "clean" else {})

    def run_id(self, sweep_id: str) -> str:
        over = f"-h{self.override_index}" if self.overrides else ""
        return (f"{sweep_id}:{self.model.name}:{self.method}:{self.dataset}:b{self.batch_size}"
                f":n{self.n_edits}:s{self.seed}{over}")

    def checkpoints(self) -> list[int]:
        """edits_done values at which metrics are taken (0 = unedited; always the last one)."""
        points = list(range(0, self.n_edits, self.eval_every)) + [self.n_edits]
        return sorted(set(points))


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """``a.b.0.c=value`` (value parsed as YAML) into the raw config dict, in place."""
    if "=" not in assignment:
        raise SweepConfigError("--set", [f"{assignment!r}: expected key=value"])
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise SweepConfigError("--set", [f"{assignment!r}: the value {value!r} is not valid YAML ({what}); close "
                                         "its brackets or quotes, e.g. --set 'n_edits=[20, 40]'"]) from None
    try:
        cur: Any = raw
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(cur, list):
                cur = cur[int(part)]
            else:
                cur = cur.setdefault(part, [] if nxt.isdigit() else {})
        last = parts[-1]
        if isinstance(cur, list):
            cur[int(last)] = parsed
        elif isinstance(cur, dict):
            cur[last] = parsed
        else:
            raise TypeError(f"{'.'.join(parts[:-1])} is {cur!r}, not a mapping or a list")
    except (IndexError, ValueError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise SweepConfigError("--set", [f"{assignment!r}: {key.strip()} does not name a config key or list "
                                         f"item ({type(exc).__name__}: {exc})"]) from None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def hparams_problems(raw: Mapping[str, Any]) -> list[str]:
    """Unknown fields and invalid values of ``hparams_overrides``, on each (valid) preset and method
    of the raw config, so they are reported with the config's other problems, before any run."""
    known = set(EditHparams.__dataclass_fields__)
    presets = list(dict.fromkeys(m.get("preset") for m in _as_list(raw.get("models", []))
                                 if isinstance(m, Mapping) and m.get("preset") in PRESETS))
    methods = [m for m in _as_list(raw.get("methods", SweepConfig.methods)) if m in METHODS]
    problems: list[str] = []
    for i, over in enumerate(_as_list(raw.get("hparams_overrides", [{}]))):
        if not isinstance(over, Mapping):
            continue  # reported by the field check
        unknown = [k for k in over if k not in known]
        problems += [f"hparams_overrides.{i}.{k}: not an EditHparams field" for k in unknown]
        if unknown:
            continue
        for preset_name, method in itertools.product(presets, methods):
            try:
                hparams_for(preset_name, method, **over)
            except HparamsError as exc:
                problems += [f"hparams_overrides.{i}.{p.removeprefix('EditHparams.')} (preset {preset_name}, "
                             f"method {method})" for p in exc.problems]
    return problems


def parse_config(raw: Mapping[str, Any], source: str = "<dict>") -> SweepConfig:
    """Validate a raw config dict against the dataclasses' fields; raise :class:`SweepConfigError`
    listing every problem (unknown keys, types, ``Literal`` names, bounds, non-finite numbers, the
    hyper-parameters each cell will use)."""
    raw = copy.deepcopy(dict(raw))
    cfg, problems = from_raw(SweepConfig, raw)
    problems += hparams_problems(raw)
    if cfg is not None:
        names = [m.name for m in cfg.models]
        if len(set(names)) != len(names):
            problems.append(f"models: names must be unique, got {names}")
        too_big = sorted({(b, n) for b in cfg.batch_sizes for n in cfg.n_edits if b > n})
        if too_big:
            problems.append("batch_sizes: " + ", ".join(f"{b} > n_edits {n}" for b, n in too_big)
                            + "; a batch cannot be larger than its cell's n_edits (it would run one batch of "
                            "n_edits stored under the larger batch size). Lower batch_sizes or raise n_edits.")
    if problems:
        raise SweepConfigError(source, problems)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(str(path), [f"file not found: {path}"])
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SweepConfigError(str(path), [f"not valid YAML: {exc}".replace("\n", " ")]) from None
    if not isinstance(raw, dict):
        raise SweepConfigError(str(path), [f"expected a mapping of config keys, got {type(raw).__name__}"])
    for assignment in overrides:
        apply_override(raw, assignment)
    return parse_config(raw, str(path))
