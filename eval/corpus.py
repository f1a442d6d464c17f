"""The preservation corpus (texts whose keys K0 AlphaEdit preserves), through ``datasets``.

A :class:`CorpusSpec` names one source; :func:`iter_corpus` streams its texts:

* ``wikipedia``: ``wikimedia/wikipedia`` at a configurable snapshot (default ``20231101.en``,
  the one the 2026 reference refactor uses; the original ``wikipedia 20200501.en`` script is gone);
* ``wikitext``: ``Salesforce/wikitext`` ``wikitext-103-raw-v1`` (empty lines dropped);
* ``files``: local ``.txt`` (one document per line) / ``.json`` / ``.jsonl`` files with a text field,
  read through ``datasets``' ``text`` / ``json`` builders (works offline);
* ``toywiki``: the toy world's ``wiki.jsonl``;
* ``realworld``: the real world's ``corpus.jsonl`` (English prose written by the real model itself,
  see :mod:`eval.realworld.corpus`).

Which documents (``sample``): ``"random"`` (default, the reference's ``FixedRandomSubsetSampler``
in ``rome/layer_stats.py``): the indices 0..N-1 of the whole source are shuffled with
``random.Random(seed)`` (seed 1 in the reference) and the first ``n_docs`` are read in that order,
so the sample is the same set of documents wherever it is computed; hub sources are then loaded
whole (``datasets`` caches them once), as the reference does. ``"first"``: the first ``n_docs``
documents in corpus order; hub sources stream (``streaming=True``), so nothing is downloaded past
the ``n_docs`` read. A source with at most ``n_docs`` documents gives the same set either way (the
statistics differ by summation order only). Offline, :class:`CorpusUnavailableError` says how to
provide the data instead.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from eval.errors import ExpectedError

logger = logging.getLogger(__name__)

CorpusKind = Literal["wikipedia", "wikitext", "files", "toywiki", "realworld"]
CorpusSample = Literal["random", "first"]
WIKIPEDIA_DATASET = "wikimedia/wikipedia"
WIKITEXT_DATASET = "Salesforce/wikitext"


class CorpusUnavailableError(ExpectedError, RuntimeError):
    """The corpus cannot be read (offline hub, missing files); the message says how to fix it."""


@dataclass(frozen=True)
class CorpusSpec:
    """One preservation corpus. ``n_docs`` caps the documents read (None: all); ``sample`` and ``seed``
    choose which (module docstring)."""

    kind: CorpusKind = "toywiki"
    snapshot: str = "20231101.en"  # wikipedia config name
    wikitext_config: str = "wikitext-103-raw-v1"
    split: str = "train"
    files: tuple[str, ...] = field(default=())
    text_field: str = "text"
    n_docs: int | None = None
    sample: CorpusSample = "random"
    seed: int = 1

    def key(self) -> str:
        """A complete cache-key string (e.g. for the key-statistics artifact)."""
        if self.kind == "wikipedia":
            src = f"{WIKIPEDIA_DATASET}:{self.snapshot}:{self.split}"
        elif self.kind == "wikitext":
            src = f"{WIKITEXT_DATASET}:{self.wikitext_config}:{self.split}"
        elif self.kind == "files":
            src = "files:" + ",".join(str(Path(f).resolve()) for f in self.files) + f":{self.text_field}"
        elif self.kind == "realworld":
            # The committed corpus may be rebuilt: its content is part of the key.
            import hashlib

            from eval.realworld.paths import CORPUS

            digest = hashlib.sha256(CORPUS.read_bytes()).hexdigest()[:16] if CORPUS.is_file() else "missing"
            src = f"realworld:{digest}"
        else:
            src = self.kind
        order = f"random-seed{self.seed}" if self.sample == "random" else "first"
        return f"{src}:n={self.n_docs}:{order}"


def iter_corpus(spec: CorpusSpec) -> Iterator[str]:
    """The sampled corpus texts (non-empty ones only), at most ``spec.n_docs`` of them, in sample order."""
    if spec.sample not in ("random", "first"):
        raise ValueError(f"CorpusSpec.sample must be 'random' or 'first', got {spec.sample!r}")
    if spec.sample == "random":
        return (t for t in _random_subset(spec) if isinstance(t, str) and t.strip())
    texts = (t for t in _raw_texts(spec) if isinstance(t, str) and t.strip())
    return itertools.islice(texts, spec.n_docs)


def sample_indices(n_total: int, n_docs: int | None, seed: int) -> list[int]:
    """The reference's fixed random subset: ``range(n_total)`` shuffled by ``random.Random(seed)``,
    the first ``n_docs`` (all when None)."""
    order = list(range(n_total))
    random.Random(seed).shuffle(order)
    return order[:n_docs]


def _random_subset(spec: CorpusSpec) -> Iterator[str]:
    if spec.kind in ("wikipedia", "wikitext"):
        ds = _hub_dataset(spec, streaming=False)
        for i in sample_indices(len(ds), spec.n_docs, spec.seed):
            yield ds[i][spec.text_field]
        return
    texts = list(_raw_texts(spec))
    for i in sample_indices(len(texts), spec.n_docs, spec.seed):
        yield texts[i]


#: ``datasets.load_dataset`` is not thread-safe (its file resolution runs tqdm's ``thread_map``, whose
#: lock handling races: ``AttributeError: type object 'tqdm' has no attribute '_lock'``), and a sweep's
#: models read their corpora in parallel driver threads: one load at a time.
_LOAD_LOCK = threading.Lock()


def _load_dataset(datasets, *args, **kwargs):
    with _LOAD_LOCK:
        return datasets.load_dataset(*args, **kwargs)


def _hub_dataset(spec: CorpusSpec, streaming: bool):
    import datasets

    if spec.kind == "wikipedia":
        args: tuple[str, ...] = (WIKIPEDIA_DATASET, spec.snapshot)
    elif spec.kind == "wikitext":
        args = (WIKITEXT_DATASET, spec.wikitext_config)
    else:
        raise ValueError(f"unknown corpus kind {spec.kind!r}; use wikipedia, wikitext, files or toywiki")
    try:
        return _load_dataset(datasets, *args, split=spec.split, streaming=streaming)
    except (ConnectionError, OSError, FileNotFoundError, ValueError) as exc:
        raise CorpusUnavailableError(
            f"cannot read {'/'.join(args)} split {spec.split!r} ({type(exc).__name__}: {exc}). It comes from the "
            "Hugging Face Hub: go online (unset HF_DATASETS_OFFLINE / HF_HUB_OFFLINE), or save the texts as .jsonl "
            "with a 'text' field and use kind='files'.") from exc


def _raw_texts(spec: CorpusSpec) -> Iterator[str]:
    import datasets

    if spec.kind == "toywiki":
        from eval.toyworld.paths import WIKI

        if not WIKI.is_file():
            raise CorpusUnavailableError(f"toy wiki {WIKI} not found; restore the toy world artifacts "
                                         "(`git checkout -- eval/toyworld/artifacts` or `python -m eval.toyworld build`)")
        spec = CorpusSpec(kind="files", files=(str(WIKI),), text_field="text", n_docs=spec.n_docs, sample="first")
    elif spec.kind == "realworld":
        from eval.realworld.paths import CORPUS

        if not CORPUS.is_file():
            raise CorpusUnavailableError(f"real-world corpus {CORPUS} not found; restore it with "
                                         "`git checkout -- eval/realworld/artifacts`")
        spec = CorpusSpec(kind="files", files=(str(CORPUS),), text_field="text", n_docs=spec.n_docs, sample="first")
    if spec.kind == "files":
        yield from _file_texts(spec, datasets)
        return
    for row in _hub_dataset(spec, streaming=True):
        yield row[spec.text_field]


def _file_texts(spec: CorpusSpec, datasets) -> Iterator[str]:
    if not spec.files:
        raise CorpusUnavailableError("corpus kind 'files' needs at least one path in `files`")
    paths = [Path(f) for f in spec.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CorpusUnavailableError(f"corpus files not found: {missing}")
    suffixes = {p.suffix for p in paths}
    if suffixes <= {".txt"}:
        builder, text_field = "text", "text"
    elif suffixes <= {".json", ".jsonl"}:
        builder, text_field = "json", spec.text_field
    else:
        raise CorpusUnavailableError(f"corpus files must all be .txt or all .json/.jsonl, got {sorted(suffixes)}")
    ds = _load_dataset(datasets, builder, data_files=[str(p) for p in paths], split="train", streaming=True)
    for row in ds:
        if text_field not in row:
            raise CorpusUnavailableError(f"{spec.files}: rows have no field {text_field!r} "
                                         f"(fields: {sorted(row)}); set text_field")
        yield row[text_field]
