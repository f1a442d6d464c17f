"""The plan of one run cell: its records, what each evaluation scores (and the key of its unedited
evaluation), its batches and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.config import ModelConfig, RunCell, SweepConfig
from cluster.workers import EvalRequest
from storage.artifacts import UneditedEvalKey

if TYPE_CHECKING:
    from eval.corpus import CorpusSpec


@dataclass
class CellData:
    """The records of one cell: what the editor edits and what the evaluation scores.

    ``skipped``/``read``: malformed records skipped (``on_bad_record: skip``) among the ``read``
    records of the file it took to find ``n_edits`` valid ones."""

    edit_records: list[dict[str, Any]]
    eval_records: list[dict[str, Any]]
    snippets: str | None = None
    tfidf: tuple[str, str] | None = None
    skipped: int = 0
    read: int = 0


@dataclass(frozen=True)
class BadRecord:
    index: int  # position in the file's JSON list
    case_id: Any
    problems: tuple[str, ...]

    def describe(self) -> str:
        return f"record #{self.index} (case_id={self.case_id!r}): {'; '.join(self.problems)}"


@dataclass(frozen=True)
class RecordScan:
    """The first ``n`` valid records of a dataset file (typed), the malformed ones met on the way."""

    path: Path
    raw: list[dict[str, Any]]  # the valid raw records, in file order
    typed: list[Any]  # their eval.datasets records (CounterFactRecord / ZsreRecord)
    bad: list[BadRecord]
    read: int  # records of the file looked at
    total: int  # records in the file


def scan_records(dataset: str, source: str, n: int, on_bad_record: str = "fail") -> RecordScan:
    """Validate the records of ``dataset``'s file ``source`` in order: with ``fail`` the first ``n``
    (every bad one among them is listed), with ``skip`` until ``n`` valid ones are found."""
    from alphaedit.requests import InvalidRequestError
    from eval.datasets import CounterFactRecord, ZsreRecord, read_json_list, resolve_data_file
    from eval.schemas import counterfact_problems, zsre_problems

    path = Path(resolve_data_file(source))
    records = read_json_list(path)
    raw: list[dict[str, Any]] = []
    typed: list[Any] = []
    bad: list[BadRecord] = []
    read = 0
    for index, rec in enumerate(records):  # the checks and builds of eval.datasets' loaders, record by record
        if (len(raw) if on_bad_record == "skip" else read) >= n:
            break
        read += 1
        if dataset == "counterfact":
            case_id = rec.get("case_id", f"#{index}") if isinstance(rec, dict) else f"#{index}"
            problems = counterfact_problems(rec)
        else:
            case_id, problems = index, zsre_problems(rec)
        if not problems:
            try:
                typed.append(CounterFactRecord.from_json(rec) if dataset == "counterfact"
                             else ZsreRecord.from_json(rec, index))
                raw.append(rec)
                continue
            except (InvalidRequestError, KeyError, TypeError) as exc:
                problems = [f"record: {exc}"]
        bad.append(BadRecord(index, case_id, tuple(problems)))
    return RecordScan(path, raw, typed, bad, read, len(records))


def cell_data(cell: RunCell, on_bad_record: str = "fail") -> CellData:
    """The first ``n_edits`` records of the cell's dataset (validated by the eval loaders); with
    ``on_bad_record="skip"`` the first ``n_edits`` valid ones (the malformed ones counted)."""
    from eval.datasets import DatasetFormatError

    path = cell.model.dataset_path(cell.dataset)
    scan = scan_records(cell.dataset, path, cell.n_edits, on_bad_record)
    if scan.bad and on_bad_record != "skip":
        raise DatasetFormatError(f"{scan.path}: {scan.bad[0].describe()}. Fix the record, or run with "
                                 "--on-bad-record skip to skip and count malformed records.")
    if cell.dataset == "counterfact":
        edit = eval_ = scan.raw
    else:
        edit = [r.to_counterfact() for r in scan.typed]
        eval_ = [dict(r.to_json(), case_id=r.case_id) for r in scan.typed]
    if len(edit) < cell.n_edits:
        raise ValueError(f"{path}: only {len(edit)} valid records, the cell asks for n_edits={cell.n_edits}")
    m = cell.model
    snippets = m.resolve(m.attribute_snippets) if m.attribute_snippets else None
    tfidf = (m.resolve(m.tfidf_vocab), m.resolve(m.idf)) if m.tfidf_vocab and m.idf else None
    return CellData(edit, eval_, snippets, tfidf, skipped=len(scan.bad), read=scan.read)


def eval_request(cfg: SweepConfig, cell: RunCell, run_id: str, data: CellData, edits_done: int) -> EvalRequest:
    """What to score at ``edits_done``: the records edited so far (all of them before editing)."""
    records = data.eval_records[: edits_done if edits_done > 0 else cell.n_edits]
    if cfg.metrics.max_records:
        records = records[: cfg.metrics.max_records]
    drift_corpus = drift_corpus_spec(cell.model, cfg.metrics.drift_prompts) if cfg.metrics.drift_prompts else None
    return EvalRequest(run_id=run_id, edits_done=edits_done, dataset=cell.dataset, records=tuple(records),
                       probe_tasks=cfg.probes.tasks, probe_limit=cfg.probes.limit,
                       probe_batch_size=cfg.probes.batch_size, generation_records=cfg.metrics.generation_records,
                       snippets_source=data.snippets, tfidf_sources=data.tfidf, seed=cell.seed,
                       zsre_answer_tokens=cfg.metrics.zsre_answer_tokens, drift_corpus=drift_corpus,
                       drift_layer=cell.hparams().layers[-1])


def _file_sha256(path: str) -> str:
    """sha256 of one file (cached per path, size and modification time; the hash of :mod:`cluster.keys`)."""
    from cluster.keys import _folder_sha256

    p = Path(path)
    stat = p.stat()
    return _folder_sha256(str(p.parent), ((p.name, stat.st_size, stat.st_mtime_ns),))


def drift_corpus_spec(model: ModelConfig, n_docs: int) -> CorpusSpec:
    """The documents Fig. 5's drift is measured on: the first ``n_docs`` of the model's preservation corpus
    (streamed; no random sample of a whole hub corpus). The sweep and ``jobs.drift`` both use it."""
    from dataclasses import replace

    from cluster.keys import corpus_spec

    return replace(corpus_spec(model, n_docs), sample="first")


def unedited_key(model: ModelConfig, req: EvalRequest, device: str, dtype: str = "float32") -> UneditedEvalKey:
    """The artifact key of the unedited evaluation ``req`` asks for (``req.edits_done`` 0) on ``device``
    (``"cpu"``/``"cuda"``): cells whose requests give the same key get the same rows, so the evaluation
    is computed once (per sweep, and across sweeps on one artifact store). Inputs that do not change
    the numbers are normalised away: the seed, snippets and TF-IDF files without generation metrics,
    the drift block without drift documents."""
    from cluster.keys import model_revision
    from eval.suite import evaluation_code_version
    from storage.hashing import canonical_json, sha256_hex

    generation = req.dataset == "counterfact" and req.generation_records > 0 and bool(req.records)
    drift = req.drift_corpus is not None
    return UneditedEvalKey(
        model_id=model.path, revision=model_revision(model), dataset=req.dataset,
        records=sha256_hex(canonical_json(list(req.records)).encode("utf-8")), n_records=len(req.records),
        generation_records=req.generation_records if generation else 0, seed=req.seed if generation else 0,
        snippets=_file_sha256(req.snippets_source) if generation and req.snippets_source else None,
        tfidf=(sha256_hex("".join(_file_sha256(f) for f in req.tfidf_sources).encode())
               if generation and req.tfidf_sources else None),
        zsre_answer_tokens=req.zsre_answer_tokens, probe_tasks=tuple(req.probe_tasks), probe_limit=req.probe_limit,
        probe_batch_size=req.probe_batch_size, drift_corpus=req.drift_corpus.key() if drift else None,
        drift_layer=req.drift_layer if drift else None, device=device, dtype=dtype, code=evaluation_code_version())


@dataclass(frozen=True)
class CellPlan:
    """The stream of one cell: its batches, where it is evaluated and where it is checkpointed."""

    batches: tuple[tuple[int, int, int], ...]  # (step, first edit, end edit)
    eval_points: tuple[int, ...]  # edits_done values evaluated (0 = unedited)
    checkpoint_at: tuple[int, ...]  # edits_done values after which the editor stores its state
    keep: tuple[int, ...]  # checkpoints never deleted: evaluation points and the last one


def plan_cell(cell: RunCell, checkpoint_every: int) -> CellPlan:
    """Batches of ``cell``; a checkpoint every ``checkpoint_every`` batches, at evaluations and at the end."""
    batches = tuple((step, start, min(start + cell.batch_size, cell.n_edits))
                    for step, start in enumerate(range(0, cell.n_edits, cell.batch_size)))
    ends = [end for _, _, end in batches]
    evals = tuple(p for p in cell.checkpoints() if p == 0 or p in ends)
    keep = {p for p in evals if p > 0} | {cell.n_edits}
    every = {end for i, end in enumerate(ends) if (i + 1) % checkpoint_every == 0}
    return CellPlan(batches, evals, tuple(sorted(every | keep)), tuple(sorted(keep)))


def editor_actor_name(sweep_id: str, model_name: str, index: int = 0) -> str:
    """Ray actor name of a model's ``index``-th editor in a sweep (``ray.get_actor(name)`` finds it)."""
    return f"editor:{sweep_id}:{model_name}:{index}"
