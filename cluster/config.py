"""Sweep configuration: a YAML file validated into frozen dataclasses, expanded into run cells.

Every problem of a config is reported at once (``SweepConfigError`` lists them all), and single
keys can be overridden from the command line (``--set eval_every=100``,
``--set models.0.num_gpus=1``, ``--set methods=[memit]``).
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alphaedit.hparams import METHODS, PRESETS, EditHparams, hparams_for
from storage.hashing import config_hash

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The demo: AlphaEdit vs MEMIT on the embedded real model (SmolLM2-135M) and real facts.
DEFAULT_CONFIG_PATH = REPO_ROOT / "jobs" / "configs" / "default.yaml"
#: The same sweep on the toy world (fast; what the unit and integration tests run).
TOY_CONFIG_PATH = REPO_ROOT / "jobs" / "configs" / "toy.yaml"
TOY_DIR = REPO_ROOT / "eval" / "toyworld" / "artifacts"
DATASETS = ("counterfact", "zsre")


class SweepConfigError(ValueError):
    """A sweep config is invalid; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"invalid sweep config {source}:\n  - " + "\n  - ".join(self.problems))


@dataclass(frozen=True)
class ModelConfig:
    """One model of the sweep and where its pieces come from."""

    name: str
    path: str  # HF id or local path (relative paths are relative to the repository)
    preset: str
    corpus: str  # toywiki | realworld | wikipedia[:<snapshot>] | wikitext | comma-separated .jsonl/.txt paths
    counterfact: str
    zsre: str
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    revision: str = "local"
    # Consistency inputs (optional: without them CounterFact consistency is not computed).
    attribute_snippets: str | None = None
    tfidf_vocab: str | None = None
    idf: str | None = None

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
    limit: int | None = 200
    batch_size: int = 64


@dataclass(frozen=True)
class MetricConfig:
    """How much of the rewrite evaluation runs at each checkpoint."""

    max_records: int | None = None  # evaluate at most this many of the records edited so far
    generation_records: int = 20  # fluency/consistency on this many records (generation is slow)


#: SweepConfig fields that say where results go or name the sweep; they are not part of its hash.
LOCATION_FIELDS: tuple[str, ...] = ("sweep_id", "results", "artifact_root")


@dataclass(frozen=True)
class SweepConfig:
    models: tuple[ModelConfig, ...]
    methods: tuple[str, ...] = ("alphaedit", "memit")
    datasets: tuple[str, ...] = ("counterfact",)
    batch_sizes: tuple[int, ...] = (100,)
    n_edits: tuple[int, ...] = (1000,)
    seeds: tuple[int, ...] = (0,)
    hparams_overrides: tuple[Mapping[str, Any], ...] = field(default_factory=lambda: ({},))
    eval_every: int = 200  # edits between evaluations (metrics + probes); each is also a checkpoint
    checkpoint_every: int = 1  # batches between editor checkpoints (resume points; see README)
    editor_max_restarts: int = 2  # restarts of a dead editor actor per model before its cell fails
    probes: ProbeConfig = ProbeConfig()
    metrics: MetricConfig = MetricConfig()
    stats_shards: int = 2
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
        for key in LOCATION_FIELDS:
            d.pop(key, None)
        return config_hash(d)

    def cells(self) -> Iterator[RunCell]:
        """The grid: models x methods x batch sizes x n_edits x datasets x seeds x overrides."""
        for m, method, bs, n, ds, seed, (oi, over) in itertools.product(
            self.models, self.methods, self.batch_sizes, self.n_edits, self.datasets, self.seeds,
            enumerate(self.hparams_overrides),
        ):
            yield RunCell(model=m, method=method, batch_size=bs, n_edits=n, dataset=ds, seed=seed,
                          overrides=dict(over), override_index=oi, eval_every=self.eval_every)


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

    def hparams(self) -> EditHparams:
        """The model's preset + the method's published defaults on it + this cell's overrides."""
        return hparams_for(self.model.preset, self.method, **self.overrides)

    def config(self) -> dict[str, Any]:
        """Everything that determines this run's results (its config hash is over this)."""
        return {
            "model": asdict(self.model), "method": self.method, "batch_size": self.batch_size,
            "n_edits": self.n_edits, "dataset": self.dataset, "seed": self.seed,
            "hparams": self.hparams().to_dict(), "eval_every": self.eval_every,
        }

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
    cur: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(cur, list):
            cur = cur[int(part)]
        else:
            cur = cur.setdefault(part, [] if nxt.isdigit() else {})
    last = parts[-1]
    parsed = yaml.safe_load(value)
    if isinstance(cur, list):
        cur[int(last)] = parsed
    else:
        cur[last] = parsed


def _tuple(raw: Any) -> tuple:
    return tuple(raw) if isinstance(raw, list | tuple) else (raw,)


def parse_config(raw: Mapping[str, Any], source: str = "<dict>") -> SweepConfig:
    """Validate a raw config dict; raise :class:`SweepConfigError` listing every problem."""
    raw = copy.deepcopy(dict(raw))
    problems: list[str] = []
    known = {f for f in SweepConfig.__dataclass_fields__}
    for key in raw:
        if key not in known:
            problems.append(f"{key}: unknown key (known: {sorted(known)})")

    models = []
    raw_models = raw.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        problems.append("models: must be a non-empty list")
        raw_models = []
    model_fields = set(ModelConfig.__dataclass_fields__)
    for i, m in enumerate(raw_models):
        if not isinstance(m, dict):
            problems.append(f"models.{i}: must be a mapping")
            continue
        for k in m:
            if k not in model_fields:
                problems.append(f"models.{i}.{k}: unknown key (known: {sorted(model_fields)})")
        missing = [k for k in ("name", "path", "preset", "corpus", "counterfact", "zsre") if k not in m]
        problems += [f"models.{i}.{k}: required" for k in missing]
        if m.get("preset") is not None and m.get("preset") not in PRESETS:
            problems.append(f"models.{i}.preset: {m.get('preset')!r} unknown (known: {sorted(PRESETS)})")
        for k in ("num_gpus", "num_cpus"):
            if not isinstance(m.get(k, 0), int | float) or m.get(k, 0) < 0:
                problems.append(f"models.{i}.{k}: must be a number >= 0")
        if not missing and all(k in model_fields for k in m):
            models.append(ModelConfig(**m))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        problems.append(f"models: names must be unique, got {names}")

    methods = _tuple(raw.get("methods", SweepConfig.methods))
    problems += [f"methods: {m!r} unknown (known: {sorted(METHODS)})" for m in methods if m not in METHODS]
    datasets = _tuple(raw.get("datasets", SweepConfig.datasets))
    problems += [f"datasets: {d!r} unknown (known: {list(DATASETS)})" for d in datasets if d not in DATASETS]
    ints = {}
    for key in ("batch_sizes", "n_edits", "seeds"):
        values = _tuple(raw.get(key, getattr(SweepConfig, key)))
        bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "seeds" else 1)]
        if bad or not values:
            problems.append(f"{key}: must be a non-empty list of {'non-negative' if key == 'seeds' else 'positive'}"
                            f" integers, got {list(values)}")
        ints[key] = values
    eval_every = raw.get("eval_every", SweepConfig.eval_every)
    if not isinstance(eval_every, int) or eval_every < 1:
        problems.append(f"eval_every: must be a positive integer, got {eval_every!r}")
    overrides = _tuple(raw.get("hparams_overrides", [{}]))
    hp_fields = set(EditHparams.__dataclass_fields__)
    for i, over in enumerate(overrides):
        if not isinstance(over, dict):
            problems.append(f"hparams_overrides.{i}: must be a mapping")
            continue
        problems += [f"hparams_overrides.{i}.{k}: not an EditHparams field" for k in over if k not in hp_fields]
    probes_raw = raw.get("probes", {}) or {}
    metrics_raw = raw.get("metrics", {}) or {}
    try:
        probes = ProbeConfig(**{**probes_raw, "tasks": tuple(probes_raw.get("tasks", ProbeConfig.tasks))})
    except TypeError as e:
        problems.append(f"probes: {e}")
        probes = ProbeConfig()
    try:
        metrics = MetricConfig(**metrics_raw)
    except TypeError as e:
        problems.append(f"metrics: {e}")
        metrics = MetricConfig()
    checkpoint_every = raw.get("checkpoint_every", SweepConfig.checkpoint_every)
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        problems.append(f"checkpoint_every: must be a positive integer (batches), got {checkpoint_every!r}")
    max_restarts = raw.get("editor_max_restarts", SweepConfig.editor_max_restarts)
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
        problems.append(f"editor_max_restarts: must be an integer >= 0, got {max_restarts!r}")
    stats_shards = raw.get("stats_shards", SweepConfig.stats_shards)
    if not isinstance(stats_shards, int) or stats_shards < 1:
        problems.append(f"stats_shards: must be a positive integer, got {stats_shards!r}")
    if problems:
        raise SweepConfigError(source, problems)
    return SweepConfig(
        models=tuple(models), methods=methods, datasets=datasets, batch_sizes=ints["batch_sizes"],
        n_edits=ints["n_edits"], seeds=ints["seeds"], hparams_overrides=overrides, eval_every=eval_every,
        probes=probes, metrics=metrics, stats_shards=stats_shards, checkpoint_every=checkpoint_every,
        editor_max_restarts=max_restarts,
        results=raw.get("results", SweepConfig.results), artifact_root=raw.get("artifact_root", SweepConfig.artifact_root),
        sweep_id=raw.get("sweep_id"),
    )


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(str(path), [f"file not found: {path}"])
    raw = yaml.safe_load(path.read_text()) or {}
    for assignment in overrides:
        apply_override(raw, assignment)
    return parse_config(raw, str(path))
