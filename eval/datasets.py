"""Dataset loaders: CounterFact / multi-CounterFact, zsRE, attribute snippets + TF-IDF, the toy world.

Every loader validates each record with :mod:`eval.schemas` and yields typed, frozen records.
A malformed record raises :class:`DatasetFormatError` naming the file, the case id and the field;
with ``on_error="skip"`` it is skipped instead and counted in :attr:`LoadedDataset.skipped`
(report it with :func:`skipped_rows`).

Sources are a local path, or one of the reference names (``"mcf"``, ``"cf"``, ``"zsre"``,
``"attribute_snippets"``, ``"tfidf_vocab"``, ``"idf"``) resolved into a local cache and fetched
once from the public URL (``REMOTE_ROOT`` + file name, as the reference code does). Offline, the
error says which URL to fetch and where to put the file.

Sample selection follows the reference code: the first ``limit`` records in file order.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from alphaedit.requests import EditRequest, InvalidRequestError
from eval.errors import ExpectedError
from eval.rows import METRIC_SKIPPED_RECORDS, MetricRow
from eval.schemas import attribute_snippets_problems, counterfact_problems, zsre_problems

logger = logging.getLogger(__name__)

REMOTE_ROOT = "https://memit.baulab.info/data/dsets"
MIRROR_ROOT = "https://rome.baulab.info/data/dsets"
#: Reference short names -> file names under ``REMOTE_ROOT``.
REMOTE_FILES: dict[str, str] = {
    "mcf": "multi_counterfact.json",
    "cf": "counterfact.json",
    "zsre": "zsre_mend_eval.json",
    "attribute_snippets": "attribute_snippets.json",
    "tfidf_vocab": "tfidf_vocab.json",
    "idf": "idf.npy",
}
#: zsRE's unused ``target_true`` in the reference code.
ZSRE_NO_TRUE_TARGET = "<|endoftext|>"

OnError = Literal["raise", "skip"]
T = TypeVar("T")


class DatasetFormatError(ExpectedError, ValueError):
    """A record is malformed; the message names the file, the case id and the field."""


class DatasetUnavailableError(FileNotFoundError):
    """A data file is neither on disk nor downloadable; the message says where to put it."""


# --- sources ------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$ALPHAEDIT_DATA_DIR``, else ``~/.cache/alphaedit/data``."""
    env = os.environ.get("ALPHAEDIT_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "alphaedit" / "data"


def resolve_data_file(source: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
                      *, download: bool = True, timeout_s: float = 60.0) -> Path:
    """A local path for ``source``: an existing path, or a reference name fetched into ``cache_dir``.

    The download goes to a temporary file renamed into place, so a broken transfer leaves no
    partial file. Raises :class:`DatasetUnavailableError` when the file is missing and cannot be
    fetched (``download=False``, ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` set: then nothing is
    attempted, or the fetch fails, or an unknown name).
    """
    path = Path(source)
    if path.exists():
        return path
    name = str(source)
    if name not in REMOTE_FILES:
        raise DatasetUnavailableError(
            f"data file {path} not found; pass an existing path or one of the reference names "
            f"{sorted(REMOTE_FILES)}")
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = target / REMOTE_FILES[name]
    if dest.exists():
        return dest
    url = f"{REMOTE_ROOT}/{REMOTE_FILES[name]}"
    how = (f"download {url} (or {MIRROR_ROOT}/{REMOTE_FILES[name]}) and save it as {dest}, "
           "or pass the local path of the file instead")
    if not download:
        raise DatasetUnavailableError(f"{name}: {dest} not found and downloading is off; {how}")
    offline = [v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true", "yes")]
    if offline:  # offline means offline: no attempt, one line saying where the file goes
        raise DatasetUnavailableError(f"{name}: {dest} not found and {'/'.join(offline)} is set; {how}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    logger.info("fetching %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, tmp.open("wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetUnavailableError(f"{name}: could not fetch {url} ({exc}); {how}") from exc
    tmp.replace(dest)
    return dest


def read_json_list(path: Path) -> list[Any]:
    """The top-level JSON list in ``path`` (a clear error for anything else)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path}: not valid JSON ({exc}); expected a list of records") from exc
    if not isinstance(data, list):
        raise DatasetFormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


# --- typed records ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CounterFactRecord:
    """One (multi-)CounterFact case: the edit and its evaluation prompts (subject filled in)."""

    case_id: int
    request: EditRequest
    paraphrase_prompts: tuple[str, ...]
    neighborhood_prompts: tuple[str, ...]
    attribute_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()

    @property
    def rewrite_prompts(self) -> tuple[str, ...]:
        return (self.request.rewrite_prompt,)

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> CounterFactRecord:
        """From a validated record (see :func:`eval.schemas.counterfact_problems`)."""
        return cls(
            case_id=rec["case_id"],
            request=EditRequest.from_counterfact(rec),
            paraphrase_prompts=tuple(rec["paraphrase_prompts"]),
            neighborhood_prompts=tuple(rec["neighborhood_prompts"]),
            attribute_prompts=tuple(rec.get("attribute_prompts", ())),
            generation_prompts=tuple(rec.get("generation_prompts", ())),
        )


@dataclass(frozen=True)
class ZsreRecord:
    """One ``zsre_mend_eval.json`` case. ``case_id`` is its index in the file (as in the reference).

    The edit target is ``answers[0]`` as in the reference code (the true answer in the real file;
    a new object in the toy world, where ``pred`` is the true one).
    """

    case_id: int
    subject: str
    src: str
    rephrase: str
    answers: tuple[str, ...]
    loc: str
    loc_ans: str
    pred: str = ""
    alt: str = ""

    @property
    def target(self) -> str:
        return self.answers[0]

    @property
    def neighborhood_prompt(self) -> str:
        """``loc + "?"``, as the reference builds the neighborhood prompt."""
        return self.loc + "?"

    @classmethod
    def from_json(cls, rec: Mapping[str, Any], case_id: int) -> ZsreRecord:
        return cls(case_id=case_id, subject=rec["subject"], src=rec["src"], rephrase=rec["rephrase"],
                   answers=tuple(rec["answers"]), loc=rec["loc"], loc_ans=rec["loc_ans"],
                   pred=str(rec.get("pred") or ""), alt=str(rec.get("alt") or ""))

    def to_json(self) -> dict[str, Any]:
        """The raw zsRE record (without ``cond``)."""
        return {"subject": self.subject, "src": self.src, "pred": self.pred, "rephrase": self.rephrase,
                "alt": self.alt, "answers": list(self.answers), "loc": self.loc, "loc_ans": self.loc_ans}

    def to_counterfact(self) -> dict[str, Any]:
        """The edit as a CounterFact-layout record, for ``jobs/edit.py`` (edit towards ``answers[0]``).

        ``target_true`` is ``pred`` when it differs from the target, else the reference's
        ``<|endoftext|>``; the raw record rides along under ``"zsre"`` so that the checkpoint's
        ``requests.json`` can be scored in the zsRE format (:func:`zsre_from_requests`).
        """
        true = self.pred if self.pred and self.pred.strip() != self.target.strip() else ZSRE_NO_TRUE_TARGET
        return {
            "case_id": self.case_id,
            "requested_rewrite": {
                "prompt": self.src.replace(self.subject, "{}", 1), "subject": self.subject, "relation_id": "zsre",
                "target_new": {"str": self.target, "id": self.target},
                "target_true": {"str": true, "id": true},
            },
            "paraphrase_prompts": [self.rephrase],
            "neighborhood_prompts": [self.neighborhood_prompt],
            "attribute_prompts": [],
            "generation_prompts": [],
            "zsre": self.to_json(),
        }


@dataclass(frozen=True)
class SkippedRecord:
    case_id: Any
    problems: tuple[str, ...]


@dataclass(frozen=True)
class LoadedDataset(Generic[T]):
    """Valid records in file order, and the malformed ones skipped (``on_error="skip"`` only)."""

    path: Path
    records: tuple[T, ...]
    skipped: tuple[SkippedRecord, ...] = field(default=())


def skipped_rows(dataset_name: str, loaded: LoadedDataset[Any]) -> list[MetricRow]:
    """A ``skipped_records`` row (value = count, n_cases = records read) for the results."""
    total = len(loaded.records) + len(loaded.skipped)
    return [MetricRow(dataset_name, METRIC_SKIPPED_RECORDS, float(len(loaded.skipped)), total)]


def _validate(path: Path, raw: Sequence[Any], problems_of: Callable[[Any], list[str]],
              case_id_of: Callable[[int, Any], Any], build: Callable[[Any, Any], T],
              on_error: OnError) -> LoadedDataset[T]:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    records: list[T] = []
    skipped: list[SkippedRecord] = []
    for index, rec in enumerate(raw):
        case_id = case_id_of(index, rec)
        problems = problems_of(rec)
        if not problems:
            try:
                records.append(build(rec, case_id))
                continue
            except (InvalidRequestError, KeyError, TypeError) as exc:
                problems = [f"record: {exc}"]
        if on_error == "raise":
            raise DatasetFormatError(
                f"{path}: case_id={case_id!r} (record #{index}): " + "; ".join(problems)
                + ". Fix the record, or load with on_error='skip' to skip and count malformed records.")
        logger.warning("%s: skipping case_id=%r: %s", path, case_id, "; ".join(problems))
        skipped.append(SkippedRecord(case_id, tuple(problems)))
    return LoadedDataset(path, tuple(records), tuple(skipped))


def load_counterfact(source: str | os.PathLike[str] = "mcf", *, limit: int | None = None,
                     on_error: OnError = "raise", cache_dir: str | os.PathLike[str] | None = None,
                     download: bool = True) -> LoadedDataset[CounterFactRecord]:
    """The first ``limit`` records of a (multi-)CounterFact file, validated and typed."""
    path = resolve_data_file(source, cache_dir, download=download)
    raw = read_json_list(path)[:limit]
    return _validate(path, raw, counterfact_problems,
                     lambda i, r: r.get("case_id", f"#{i}") if isinstance(r, dict) else f"#{i}",
                     lambda r, _cid: CounterFactRecord.from_json(r), on_error)


def load_zsre(source: str | os.PathLike[str] = "zsre", *, limit: int | None = None,
              on_error: OnError = "raise", cache_dir: str | os.PathLike[str] | None = None,
              download: bool = True) -> LoadedDataset[ZsreRecord]:
    """The first ``limit`` records of a ``zsre_mend_eval.json``-layout file; case id = index."""
    path = resolve_data_file(source, cache_dir, download=download)
    raw = read_json_list(path)[:limit]
    return _validate(path, raw, zsre_problems, lambda i, _r: i, ZsreRecord.from_json, on_error)


def counterfact_from_requests(records: Sequence[Mapping[str, Any]], path: Path,
                              on_error: OnError = "raise") -> LoadedDataset[CounterFactRecord]:
    """Typed records from a checkpoint's ``requests.json`` content (CounterFact layout)."""
    return _validate(path, records, counterfact_problems, lambda i, r: r.get("case_id", f"#{i}"),
                     lambda r, _cid: CounterFactRecord.from_json(r), on_error)


def zsre_from_requests(records: Sequence[Mapping[str, Any]], path: Path,
                       on_error: OnError = "raise") -> LoadedDataset[ZsreRecord]:
    """zsRE records carried under ``"zsre"`` by :meth:`ZsreRecord.to_counterfact` requests."""
    missing = [r.get("case_id") for r in records if "zsre" not in r]
    if missing:
        raise DatasetFormatError(f"{path}: case_id={missing[0]!r}: field 'zsre' missing; these requests were "
                                 "not made from zsRE records (see ZsreRecord.to_counterfact)")
    return _validate(path, [r["zsre"] for r in records], zsre_problems,
                     lambda i, _r: records[i].get("case_id", i), ZsreRecord.from_json, on_error)


# --- consistency inputs -------------------------------------------------------------------------

Snippets = dict[str, dict[str, tuple[str, ...]]]  # relation_id -> target_id -> texts


def load_attribute_snippets(source: str | os.PathLike[str] = "attribute_snippets", *,
                            cache_dir: str | os.PathLike[str] | None = None, download: bool = True) -> Snippets:
    """``snips[relation_id][target_id]`` -> the snippet texts, as the reference indexes them."""
    path = resolve_data_file(source, cache_dir, download=download)
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for index, rec in enumerate(read_json_list(path)):
        problems = attribute_snippets_problems(rec)
        if problems:
            raise DatasetFormatError(f"{path}: record #{index}: " + "; ".join(problems))
        texts = tuple(s["text"] for s in rec["samples"])
        bucket = out.setdefault(rec["relation_id"], {})
        bucket[rec["target_id"]] = bucket.get(rec["target_id"], ()) + texts
    return out


def fit_tfidf(snippets: Sequence[Mapping[str, Any]]) -> tuple[dict[str, int], Any]:
    """(tfidf_vocab, idf) fitted on every snippet text, as the reference code rebuilds them when its
    files are missing: the inputs :func:`load_tfidf` reads back (the embedded worlds' builders write them)."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [sample["text"] for rec in snippets for sample in rec["samples"]]
    vec = TfidfVectorizer()
    vec.fit(texts)
    vocab = {term: int(col) for term, col in sorted(vec.vocabulary_.items())}
    return vocab, np.asarray(vec.idf_, dtype=np.float64)


def load_tfidf(vocab_source: str | os.PathLike[str] = "tfidf_vocab", idf_source: str | os.PathLike[str] = "idf",
               *, cache_dir: str | os.PathLike[str] | None = None, download: bool = True):
    """sklearn ``TfidfVectorizer(vocabulary=tfidf_vocab.json)`` with ``idf_`` from ``idf.npy``.

    Built as the reference does (``fit([""])`` then assign ``idf_``); the shapes are checked.
    """
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    vocab_path = resolve_data_file(vocab_source, cache_dir, download=download)
    idf_path = resolve_data_file(idf_source, cache_dir, download=download)
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    idf = np.load(idf_path)
    if not isinstance(vocab, dict) or idf.ndim != 1 or len(vocab) != idf.shape[0]:
        raise DatasetFormatError(
            f"{vocab_path} / {idf_path}: expected a {{term: column}} vocabulary and a 1-D idf array of the same "
            f"length, got {len(vocab) if isinstance(vocab, dict) else type(vocab).__name__} terms and idf shape "
            f"{idf.shape}")
    vec = TfidfVectorizer(vocabulary=vocab)
    vec.fit([""])
    vec.idf_ = idf
    return vec


# --- the toy world ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ToyWorldData:
    """The toy world's datasets, consistency inputs and model folder."""

    counterfact: LoadedDataset[CounterFactRecord]
    zsre: LoadedDataset[ZsreRecord]
    snippets: Snippets
    tfidf: Any  # sklearn TfidfVectorizer
    model_dir: Path


def load_toyworld(limit: int | None = None, artifacts_dir: Path | None = None) -> ToyWorldData:
    """The toy world's CounterFact and zsRE records (first ``limit``), snippets, TF-IDF and model dir."""
    from eval.toyworld import paths

    root = paths.require_artifacts(artifacts_dir or paths.ARTIFACTS_DIR)
    return ToyWorldData(
        counterfact=load_counterfact(root / paths.COUNTERFACT.name, limit=limit),
        zsre=load_zsre(root / paths.ZSRE.name, limit=limit),
        snippets=load_attribute_snippets(root / paths.ATTRIBUTE_SNIPPETS.name),
        tfidf=load_tfidf(root / paths.TFIDF_VOCAB.name, root / paths.IDF.name),
        model_dir=root / paths.MODEL_DIR.name,
    )
