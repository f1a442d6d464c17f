"""Canonical JSON and sha256 helpers: one definition of "the hash of a config" for all layers."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any


def _jsonable(obj: Any) -> Any:
    """Convert ``obj`` into plain JSON types, rejecting anything without a canonical form."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"cannot hash non-finite float {obj!r}: write it as a string or None instead")
        return obj
    if isinstance(obj, enum.Enum):
        return _jsonable(obj.value)
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"cannot hash mapping key {k!r} of type {type(k).__name__}: keys must be str")
            out[k] = _jsonable(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    raise TypeError(
        f"cannot hash value {obj!r} of type {type(obj).__name__}: convert it to str/int/float/bool/None, "
        "a list, a dict or a dataclass first"
    )


def canonical_json(obj: Any) -> str:
    """Serialize ``obj`` deterministically: sorted keys, no whitespace, tuples as lists.

    Dataclasses become dicts of their fields, enums their values, paths strings. NaN and
    infinities are rejected because JSON has no canonical spelling for them.
    """
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def config_hash(config: Any) -> str:
    """Hex sha256 of the canonical JSON of ``config`` (what ``runs.config_hash`` holds)."""
    return sha256_hex(canonical_json(config).encode("utf-8"))
