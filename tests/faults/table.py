"""The closing-note table of the fault tier: ``python -m tests.faults.table OBSERVATIONS.json > docs/faults.md``
(or ``FAULTS_TABLE=docs/faults.md python -m pytest -m faults``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def shown(text: str, tmp: Path | str | None = None, width: int = 160) -> str:
    """``text`` for the table: a test's temporary folder as <tmp>, repository paths relative, cut at ``width``."""
    if tmp is not None:
        text = text.replace(str(tmp), "<tmp>")
    text = text.replace(f"{REPO}/", "")
    return text if len(text) <= width else text[: width - 3] + "..."


def _cell(text: object) -> str:
    if text is None or text == "":
        return "-"
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(observations: Sequence[dict]) -> str:
    lines = ["# Fault-injection cases", "",
             "Generated from a real run of the fault tier (`FAULTS_TABLE=docs/faults.md python -m pytest -m faults`; "
             "`tests/faults/`). Columns: the case and what was given; *exit*: the command's exit code (`-9`: "
             "killed), or `cell <status>` for the cases run on the sweep's in-process path; the first line on "
             "stderr that is not a log record (for SIGINT/SIGTERM the last line, the `--resume` command), or the "
             "cell's `runs.error`; *rows*: runs+metrics+probes+timings+artifacts rows of the results file before "
             "and after. For the refused inputs the test also asserts the results file and the artifact store "
             "byte-identical afterwards; for signals and damaged artifacts, *before* is at the fault and *after* "
             "after `--resume` (the resumed rows equal an undisturbed run's); *seconds*: the command's wall time "
             "on a busy 2-core machine (mostly imports).", "",
             "| case | input | exit | first line of stderr | rows before | rows after | seconds |",
             "|---|---|---|---|---|---|---|"]
    for o in observations:  # in the order the tests ran
        lines.append("| " + " | ".join(_cell(o.get(k, "")) for k in
                                        ("case", "input", "exit", "first_line", "rows_before", "rows_after",
                                         "seconds")) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(json.loads(open(sys.argv[1]).read())), end="")
