"""Artifact store: expensive results (key statistics, projectors, checkpoints, the unedited evaluation) stored
once, verified.

An artifact is found by its **key**, a frozen dataclass holding everything that changes its
content (model id and revision, module, corpus, sample count, max length, dtype, threshold ...).
The key's digest, sha256 of its canonical JSON, names the artifact's folder::

    <root>/<kind>/<digest[:2]>/<digest>/data-<sha256 of the data>.<ext>
    <root>/<kind>/<digest[:2]>/<digest>/manifest.json     (written last)

Writes go to a temporary name and are renamed into place, data first, manifest last, so a
reader sees either no artifact or a whole one. The data file is named by its own sha256, so two
workers storing the same key at once never mix one's manifest with the other's data. Every read
checks size and sha256 against the manifest; a mismatch raises :class:`ArtifactCorruptError`
(never returns the bytes), and :meth:`ArtifactStore.get_or_compute` then recomputes.

The store never opens the results database: :meth:`ArtifactStore.put` and ``get_or_compute``
return an :class:`ArtifactRecord`, which the caller hands to
:meth:`storage.writer.ResultWriter.record_artifacts`.

Roots: a local path or ``file://`` URL (:class:`LocalBackend`), or any other fsspec URL such as
``memory://``, ``s3://bucket/prefix`` or ``gs://...`` (:class:`FsspecBackend`, needs the
filesystem's fsspec package; on object stores the rename is a copy, but the manifest-last order
and the checksum still keep half-written data from being used).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

import numpy as np

from storage import names
from storage.hashing import canonical_json, sha256_hex
from storage.schema import utc_now

log = logging.getLogger(__name__)

T = TypeVar("T")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


# --- errors ------------------------------------------------------------------------------------
class ArtifactError(Exception):
    """Base class of artifact store errors."""


class ArtifactNotFoundError(ArtifactError, LookupError):
    """No artifact is stored under the key."""


class ArtifactCorruptError(ArtifactError):
    """A stored artifact fails verification (missing data, wrong size or sha256, bad manifest)."""


# --- keys --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArtifactKey:
    """Base of artifact keys: subclass as a frozen dataclass and set ``kind``.

    Every field must be something that changes the artifact's content; the digest covers all of
    them plus ``kind`` and ``key_version`` (bump it when the way the content is computed changes).
    """

    kind: ClassVar[str] = ""
    key_version: ClassVar[int] = 1

    def spec(self) -> dict[str, Any]:
        """The key as plain JSON data: kind, key_version and every field."""
        fields = json.loads(canonical_json(self))
        return {"kind": self.kind, "key_version": self.key_version, "fields": fields}

    def digest(self) -> str:
        """sha256 hex of the canonical JSON of :meth:`spec`."""
        if not self.kind:
            raise TypeError(f"{type(self).__name__} must set the class attribute 'kind'")
        return sha256_hex(canonical_json(self.spec()).encode("utf-8"))


def _require_str(key: ArtifactKey, *fields: str) -> None:
    for f in fields:
        v = getattr(key, f)
        if not isinstance(v, str) or not v:
            raise ValueError(f"{type(key).__name__}.{f} must be a non-empty string, got {v!r}")


def _require_positive(key: ArtifactKey, *fields: str) -> None:
    for f in fields:
        v = getattr(key, f)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{type(key).__name__}.{f} must be a positive int, got {v!r}")


@dataclass(frozen=True)
class KeyStatsKey(ArtifactKey):
    """Key statistics E[k k^T] of one edited module over a preservation corpus.

    ``revision``: the model's commit hash (or a content hash of local weights); ``corpus``: a
    spec naming dataset, config and split (e.g. ``wikimedia/wikipedia:20231101.en:train``);
    ``n_samples``: corpus texts used; ``max_length``: tokens per text (None: the model's context); ``dtype``: dtype the keys
    were accumulated in; ``key_budget``: cap on the number of keys (FastMEMIT), None for all.
    """

    kind: ClassVar[str] = names.ARTIFACT_KEY_STATS
    model_id: str
    revision: str
    module: str
    corpus: str
    n_samples: int
    max_length: int | None  # None: the model's context
    dtype: str
    key_budget: int | None = None

    def __post_init__(self) -> None:
        _require_str(self, "model_id", "revision", "module", "corpus", "dtype")
        _require_positive(self, "n_samples", "max_length", "key_budget")


@dataclass(frozen=True)
class ProjectorKey(ArtifactKey):
    """Null-space projector P of one module: its statistics, eigenvalue threshold, threshold mode
    ("absolute" or "relative", :func:`alphaedit.null_space_projector`) and eigh dtype."""

    kind: ClassVar[str] = names.ARTIFACT_PROJECTOR
    key_version: ClassVar[int] = 2  # 2: the threshold mode is part of the key
    stats: KeyStatsKey
    threshold: float
    dtype: str
    mode: str = "absolute"

    def __post_init__(self) -> None:
        if not isinstance(self.stats, KeyStatsKey):
            raise TypeError(f"ProjectorKey.stats must be a KeyStatsKey, got {type(self.stats).__name__}")
        if not self.threshold >= 0:  # 0 is valid: an empty null space (P = 0), used to test the nightly check
            raise ValueError(f"ProjectorKey.threshold must be >= 0, got {self.threshold!r}")
        if self.mode not in ("absolute", "relative"):
            raise ValueError(f"ProjectorKey.mode must be 'absolute' or 'relative', got {self.mode!r}")
        _require_str(self, "dtype")


@dataclass(frozen=True)
class CheckpointKey(ArtifactKey):
    """Editor checkpoint of one run after ``edits_done`` edits (deltas of the edited layers + state)."""

    kind: ClassVar[str] = names.ARTIFACT_CHECKPOINT
    run_id: str
    config_hash: str
    edits_done: int

    def __post_init__(self) -> None:
        _require_str(self, "run_id", "config_hash")
        if not isinstance(self.edits_done, int) or self.edits_done < 0:
            raise ValueError(f"CheckpointKey.edits_done must be an int >= 0, got {self.edits_done!r}")


@dataclass(frozen=True)
class UneditedEvalKey(ArtifactKey):
    """The evaluation of the unedited model (rows of ``cluster.workers.evaluate_checkpoint`` at 0 edits).

    Everything the numbers depend on: the model (id + revision), the records scored (``records``:
    sha256 of their canonical JSON, so the dataset's content, ``n_edits``, skipped malformed records
    and ``metrics.max_records`` are all in it), the generation settings (``seed``, the snippets' and
    TF-IDF files' sha256; normalised away without generation), the probes, the drift documents
    (corpus spec) and block, the device type and dtype, and ``code``: the evaluation code's version
    (:func:`eval.suite.evaluation_code_version`).
    """

    kind: ClassVar[str] = names.ARTIFACT_UNEDITED_EVAL
    model_id: str
    revision: str
    dataset: str
    records: str  # sha256 of the records' canonical JSON
    n_records: int
    generation_records: int
    seed: int
    snippets: str | None  # sha256 of the attribute snippets file (None: no consistency)
    tfidf: str | None  # sha256 of the vocabulary and idf files
    zsre_answer_tokens: str
    probe_tasks: tuple[Any, ...]
    probe_limit: int | float | None
    probe_batch_size: int
    drift_corpus: str | None  # eval.corpus.CorpusSpec.key() of the drift documents (None: no drift)
    drift_layer: int | None
    device: str  # "cpu" | "cuda"
    dtype: str
    code: str

    def __post_init__(self) -> None:
        _require_str(self, "model_id", "revision", "dataset", "records", "device", "dtype", "code")
        if not isinstance(self.n_records, int) or self.n_records < 0:
            raise ValueError(f"UneditedEvalKey.n_records must be an int >= 0, got {self.n_records!r}")


# --- codecs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a value becomes bytes and back; ``name`` is recorded as the artifact's format."""

    name: str
    ext: str
    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


def _encode_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


def _decode_arrays(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(data)


def _encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _encode_json(value: Any) -> bytes:
    return canonical_json(value).encode("utf-8")


def _decode_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def _identity(data: bytes) -> bytes:
    return bytes(data)


#: A dict of named numpy arrays as safetensors (torch users: convert with ``.cpu().numpy()``,
#: or store ``safetensors.torch.save(...)`` output with :data:`BYTES`).
ARRAYS: Codec[Mapping[str, np.ndarray]] = Codec("arrays", "safetensors", _encode_arrays, _decode_arrays)
#: One numpy array as ``.npy`` (no pickles).
NPY: Codec[np.ndarray] = Codec("npy", "npy", _encode_npy, _decode_npy)
#: JSON-able data as canonical JSON.
JSON: Codec[Any] = Codec("json", "json", _encode_json, _decode_json)
#: Raw bytes.
BYTES: Codec[bytes] = Codec("bytes", "bin", _identity, _identity)


def _encode_rows(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8")


#: Result rows as JSON: floats round-trip exactly (``repr``) and NaN/Infinity are kept (a metric
#: may be NaN), which canonical :data:`JSON` refuses.
ROWS: Codec[Any] = Codec("json-rows", "json", _encode_rows, _decode_json)


# --- records -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArtifactRecord:
    """What the store knows about one stored artifact: a row of the ``artifacts`` table."""

    kind: str
    key: str
    spec: str
    path: str
    format: str
    sha256: str
    bytes: int
    created_at: datetime

    def as_row(self) -> dict[str, Any]:
        """The record as a dict with the ``artifacts`` columns."""
        return dataclasses.asdict(self)


class Fetched(NamedTuple, Generic[T]):
    """Result of :meth:`ArtifactStore.get_or_compute`: the value, its record, whether it was computed."""

    value: T
    record: ArtifactRecord
    computed: bool


# --- backends ----------------------------------------------------------------------------------
class Backend(Protocol):
    """Minimal file system the store needs; paths are relative to the store root, '/'-separated."""

    def url(self, rel: str) -> str: ...
    def read_bytes(self, rel: str) -> bytes: ...
    def write_bytes_atomic(self, rel: str, data: bytes) -> None: ...
    def exists(self, rel: str) -> bool: ...
    def remove_tree(self, rel: str) -> None: ...


def write_bytes_atomic(final: Path, data: bytes) -> None:
    """Write ``final`` whole or not at all: temp file beside it, fsync, ``os.replace``, fsync the folder."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some file systems do not fsync directories
        pass


class LocalBackend:
    """Local (or network-mounted) file system: temp file, fsync, ``os.replace``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def _p(self, rel: str) -> Path:
        return self.root / rel

    def url(self, rel: str) -> str:
        return str(self._p(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self._p(rel).read_bytes()

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        write_bytes_atomic(self._p(rel), data)

    def exists(self, rel: str) -> bool:
        return self._p(rel).exists()

    def remove_tree(self, rel: str) -> None:
        import shutil

        shutil.rmtree(self._p(rel), ignore_errors=True)


class FsspecBackend:
    """Any fsspec file system (``memory://``, ``s3://``, ``gs://`` ...): write temp, then move."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec
        except ImportError as e:  # pragma: no cover - fsspec comes with datasets
            raise ArtifactError(f"artifact root {url!r} needs the fsspec package: pip install fsspec") from e
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise ArtifactError(
                f"cannot open artifact root {url!r}: {e}. Install the fsspec implementation for this "
                "protocol (e.g. s3fs for s3://, gcsfs for gs://) or use a local path."
            ) from e
        self.protocol = url.split("://", 1)[0]
        self.root = root.rstrip("/")

    def _p(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def url(self, rel: str) -> str:
        return f"{self.protocol}://{self._p(rel).lstrip('/')}" if self.protocol != "memory" else f"memory://{self._p(rel)}"

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self._p(rel))

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        final = self._p(rel)
        parent, _, name = final.rpartition("/")
        tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
        self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(tmp, data)
        try:
            self.fs.mv(tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._p(rel))

    def remove_tree(self, rel: str) -> None:
        if self.fs.exists(self._p(rel)):
            self.fs.rm(self._p(rel), recursive=True)


def backend_for(root: str | os.PathLike[str]) -> Backend:
    """A backend for ``root``: a local path or ``file://`` URL, else an fsspec URL."""
    s = os.fspath(root)
    if "://" not in s:
        return LocalBackend(s)
    if s.startswith("file://"):
        return LocalBackend(s[len("file://") :])
    return FsspecBackend(s)


# --- the store ---------------------------------------------------------------------------------
class ArtifactStore:
    """Artifacts under one root, found by key, written atomically, verified on every read."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        """``root``: a local path, a ``file://`` URL or another fsspec URL (see module doc)."""
        self.root = os.fspath(root)
        self.backend = backend_for(root)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    @staticmethod
    def folder(key: ArtifactKey) -> str:
        """Folder of ``key``'s artifact, relative to the root."""
        d = key.digest()
        return f"{key.kind}/{d[:2]}/{d}"

    def exists(self, key: ArtifactKey) -> bool:
        """Whether a manifest is stored for ``key`` (the data is verified only on read)."""
        return self.backend.exists(f"{self.folder(key)}/{MANIFEST}")

    def put(self, key: ArtifactKey, value: T, codec: Codec[T] = ARRAYS) -> ArtifactRecord:  # type: ignore[assignment]
        """Encode ``value`` with ``codec`` and store it under ``key`` (replacing any stored one)."""
        data = codec.encode(value)
        sha = sha256_hex(data)
        folder = self.folder(key)
        data_rel = f"{folder}/data-{sha}.{codec.ext}"
        record = ArtifactRecord(
            kind=key.kind,
            key=key.digest(),
            spec=canonical_json(key.spec()),
            path=self.backend.url(data_rel),
            format=codec.name,
            sha256=sha,
            bytes=len(data),
            created_at=utc_now(),
        )
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "kind": record.kind,
            "key": record.key,
            "spec": key.spec(),
            "format": record.format,
            "data": data_rel.rsplit("/", 1)[1],
            "sha256": sha,
            "bytes": len(data),
            "created_at": record.created_at.isoformat(),
        }
        self.backend.write_bytes_atomic(data_rel, data)
        self.backend.write_bytes_atomic(f"{folder}/{MANIFEST}", canonical_json(manifest).encode("utf-8"))
        log.info("stored %s artifact %s (%d bytes) at %s", key.kind, record.key[:12], len(data), record.path)
        return record

    def record(self, key: ArtifactKey) -> ArtifactRecord:
        """The record of ``key``'s stored artifact, from its manifest (data not read)."""
        return self._manifest(key)[1]

    def get_bytes(self, key: ArtifactKey) -> tuple[bytes, ArtifactRecord]:
        """The verified data bytes of ``key`` and their record."""
        manifest, record = self._manifest(key)
        rel = f"{self.folder(key)}/{manifest['data']}"
        try:
            data = self.backend.read_bytes(rel)
        except FileNotFoundError as e:
            raise self._corrupt(key, record.path, "its manifest names a data file that is missing") from e
        if len(data) != record.bytes:
            raise self._corrupt(key, record.path, f"size {len(data)} bytes, manifest says {record.bytes} (truncated?)")
        sha = sha256_hex(data)
        if sha != record.sha256:
            raise self._corrupt(key, record.path, f"sha256 {sha[:16]}..., manifest says {record.sha256[:16]}...")
        return data, record

    def get(self, key: ArtifactKey, codec: Codec[T] = ARRAYS) -> T:  # type: ignore[assignment]
        """The verified, decoded value stored under ``key``.

        Raises :class:`ArtifactNotFoundError` if none is stored, :class:`ArtifactCorruptError`
        if it fails verification, :class:`ArtifactError` if it was stored in another format.
        """
        data, record = self.get_bytes(key)
        return self._decode(key, data, record, codec)

    def delete(self, key: ArtifactKey) -> None:
        """Remove ``key``'s artifact folder (no error if absent)."""
        self.backend.remove_tree(self.folder(key))
        log.info("deleted %s artifact %s", key.kind, key.digest()[:12])

    def get_valid(self, key: ArtifactKey, codec: Codec[T] = ARRAYS) -> tuple[T, ArtifactRecord] | None:  # type: ignore[assignment]
        """(value, record) stored under ``key``, or None when it is not stored or fails verification.

        A corrupt artifact is logged as a warning and deleted, never returned (the caller
        recomputes it). Raises :class:`ArtifactError` if it was stored in another format.
        """
        try:
            data, record = self.get_bytes(key)
        except ArtifactNotFoundError:
            return None
        except ArtifactCorruptError as e:
            log.warning("%s; deleting it", e)
            self.delete(key)
            return None
        return self._decode(key, data, record, codec), record

    def get_or_compute(
        self, key: ArtifactKey, compute: Callable[[], T], codec: Codec[T] = ARRAYS  # type: ignore[assignment]
    ) -> Fetched[T]:
        """The value under ``key``; if missing or corrupt, ``compute()`` it, store it and return it.

        A corrupt artifact is logged as a warning, deleted and recomputed; it is never returned.
        One stored in another format is logged and recomputed (overwritten).
        """
        try:
            got = self.get_valid(key, codec)
        except ArtifactError as e:  # another format
            log.warning("%s: recomputing", e)
            got = None
        if got is not None:
            return Fetched(got[0], got[1], False)
        log.info("%s artifact %s: computing", key.kind, key.digest()[:12])
        value = compute()
        record = self.put(key, value, codec)
        return Fetched(value, record, True)

    # --- internals -----------------------------------------------------------------------------
    @staticmethod
    def _decode(key: ArtifactKey, data: bytes, record: ArtifactRecord, codec: Codec[T]) -> T:
        if record.format != codec.name:
            raise ArtifactError(
                f"{key.kind} artifact at {record.path} is stored as {record.format!r}; "
                f"read it with the {record.format!r} codec, not {codec.name!r}"
            )
        return codec.decode(data)

    def _corrupt(self, key: ArtifactKey, where: str, why: str) -> ArtifactCorruptError:
        return ArtifactCorruptError(
            f"{key.kind} artifact at {where} is corrupt: {why}. Do not use it: delete its folder "
            f"{self.backend.url(self.folder(key))} (ArtifactStore.delete(key)) and recompute it; "
            "ArtifactStore.get_or_compute does both."
        )

    def _manifest(self, key: ArtifactKey) -> tuple[dict[str, Any], ArtifactRecord]:
        rel = f"{self.folder(key)}/{MANIFEST}"
        where = self.backend.url(rel)
        try:
            raw = self.backend.read_bytes(rel)
        except FileNotFoundError as e:
            raise ArtifactNotFoundError(f"no {key.kind} artifact stored for key {key.digest()[:12]} in {self.root}") from e
        try:
            m = json.loads(raw.decode("utf-8"))
            record = ArtifactRecord(
                kind=m["kind"],
                key=m["key"],
                spec=canonical_json(m["spec"]),
                path=self.backend.url(f"{self.folder(key)}/{m['data']}"),
                format=m["format"],
                sha256=m["sha256"],
                bytes=int(m["bytes"]),
                created_at=datetime.fromisoformat(m["created_at"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise self._corrupt(key, where, f"unreadable manifest ({type(e).__name__}: {e})") from e
        if record.key != key.digest() or m["spec"] != key.spec():
            raise self._corrupt(key, where, "its manifest belongs to a different key")
        return m, record
