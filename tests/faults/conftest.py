"""The fault-injection tier (``pytest -m faults``, part of the default run): each case records what it
saw (input, exit code, first stderr line, rows before/after); ``FAULTS_TABLE=docs/faults.md`` writes them
as the closing-note table at the end of the session (``python -m tests.faults.table`` does the same)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

OBSERVATIONS: list[dict] = []
JSON_OUT = Path(os.environ.get("FAULTS_JSON", "")) if os.environ.get("FAULTS_JSON") else None


@pytest.fixture(scope="session")
def observations() -> list[dict]:
    return OBSERVATIONS


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not OBSERVATIONS:
        return
    from tests.faults.table import markdown

    if JSON_OUT:
        JSON_OUT.write_text(json.dumps(OBSERVATIONS, indent=1))
    if os.environ.get("FAULTS_TABLE"):
        Path(os.environ["FAULTS_TABLE"]).write_text(markdown(OBSERVATIONS))
