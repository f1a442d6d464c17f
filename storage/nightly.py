"""Nightly regression checks: compare a nightly sweep's metrics with a baseline, record the verdict.

The comparison is pure (no database): :func:`compare` takes tonight's :class:`Observation` rows,
the baseline rows and the :class:`Thresholds` (per-metric direction and tolerance) and returns one
:class:`Check` per metric; :func:`verdict` turns them into pass/fail. :func:`select_baseline`
picks the baseline night from the verdict history. The SQL side (:func:`observations`,
:func:`run_cells`, :func:`history`, :func:`record`) works on an open DuckDB connection of a
results file at the current schema (``nightly_verdicts``, ``nightly_checks``, ``sweep_tags``).

Rules, in one place:

* Baseline: the last **passing** nightly of the same tag, of a night no later than tonight, other
  than tonight's sweep. Metrics it lacks (and every metric when there is no such night) take the
  pinned value of the thresholds file (``baseline: {method: {metric: value}}``), if any.
* Direction: ``higher`` is better (efficacy, specificity, probe accuracy, ...), ``lower`` is better
  (seconds), ``both`` means any change beyond the tolerance is bad.
* Tolerance: absolute in the metric's units, or with ``relative: true`` a fraction of
  ``|baseline|``. A change beyond it in the bad direction is a ``regression``; beyond it in the
  good direction ``improved``; a baseline metric absent tonight is ``missing``; a non-finite value
  is a regression. ``regression`` and ``missing`` fail the night, and so do failed run cells.
"""

from __future__ import annotations

import fnmatch
import html
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from eval.errors import ExpectedError
from storage import names
from storage import sql as sqlh
from storage.names import CheckStatus, NightlyStatus
from storage.schema import migrate, utc_now

log = logging.getLogger(__name__)

Direction = Literal["higher", "lower", "both"]
DIRECTIONS: tuple[str, ...] = ("higher", "lower", "both")
FAILING: frozenset[CheckStatus] = frozenset({CheckStatus.REGRESSION, CheckStatus.MISSING})
THRESHOLDS_SOURCE = "thresholds"  # nightly_checks.baseline_source of a pinned baseline
METRIC_SECONDS_PER_EDIT = "seconds_per_edit"


class ThresholdsError(ExpectedError, ValueError):
    """A thresholds file is invalid; the message lists every problem."""


# --- the rules -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """How one metric is judged: which way is better and how much change is tolerated."""

    direction: Direction = "higher"
    tolerance: float = 0.0  # allowed change in the bad direction (metric units, or a fraction)
    relative: bool = False  # tolerance is a fraction of |baseline|
    check: bool = True  # False: report the metric, never fail on it

    def allowed(self, baseline: float) -> float:
        """The tolerance in the metric's units for this baseline."""
        return self.tolerance * abs(baseline) if self.relative else self.tolerance


@dataclass(frozen=True)
class Thresholds:
    """A parsed thresholds file: rules by metric pattern, a default rule, pinned baseline values."""

    rules: tuple[tuple[str, Rule], ...] = ()  # (metric name or fnmatch pattern, rule), file order
    default: Rule = Rule()
    baseline: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (method, metric) -> value
    source: str = "<inline>"

    def rule_for(self, metric: str) -> Rule:
        """The rule of ``metric``: an exact name first, then the first matching pattern, then the default."""
        for pattern, rule in self.rules:
            if pattern == metric:
                return rule
        for pattern, rule in self.rules:
            if fnmatch.fnmatchcase(metric, pattern):
                return rule
        return self.default


def _parse_rule(raw: Any, where: str, problems: list[str], base: Rule | None = None) -> Rule:
    base = base or Rule()
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping like {{direction: higher, tolerance: 2.0}}, got {raw!r}")
        return base
    unknown = sorted(set(raw) - {"direction", "tolerance", "relative", "check"})
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown} (known: direction, tolerance, relative, check)")
    direction = raw.get("direction", base.direction)
    if direction not in DIRECTIONS:
        problems.append(f"{where}.direction: must be one of {list(DIRECTIONS)}, got {direction!r}")
        direction = base.direction
    tolerance = raw.get("tolerance", base.tolerance)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not tolerance >= 0:
        problems.append(f"{where}.tolerance: must be a number >= 0, got {tolerance!r}")
        tolerance = base.tolerance
    flags = {}
    for key in ("relative", "check"):
        value = raw.get(key, getattr(base, key))
        if not isinstance(value, bool):
            problems.append(f"{where}.{key}: must be true or false, got {value!r}")
            value = getattr(base, key)
        flags[key] = value
    return Rule(direction=direction, tolerance=float(tolerance), **flags)


def parse_thresholds(raw: Any, source: str = "<inline>") -> Thresholds:
    """Validate a thresholds mapping (see ``jobs/configs/nightly_thresholds.yaml``); list every problem."""
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise ThresholdsError(f"{source}: must be a YAML mapping with default/metrics/baseline keys")
    unknown = sorted(set(raw) - {"version", "default", "metrics", "baseline"})
    if unknown:
        problems.append(f"unknown key(s) {unknown} (known: version, default, metrics, baseline)")
    if raw.get("version", 1) != 1:
        problems.append(f"version: this code reads version 1, got {raw.get('version')!r}")
    default = _parse_rule(raw.get("default", {}), "default", problems)
    rules = []
    metrics = raw.get("metrics", {}) or {}
    if not isinstance(metrics, Mapping):
        problems.append("metrics: must map a metric name or pattern to a rule")
        metrics = {}
    for pattern, rule in metrics.items():
        rules.append((str(pattern), _parse_rule(rule, f"metrics.{pattern}", problems, default)))
    baseline: dict[tuple[str, str], float] = {}
    pinned = raw.get("baseline", {}) or {}
    if not isinstance(pinned, Mapping):
        problems.append("baseline: must map a method to {metric: value}")
        pinned = {}
    for method, values in pinned.items():
        if not isinstance(values, Mapping):
            problems.append(f"baseline.{method}: must map a metric to a number")
            continue
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                problems.append(f"baseline.{method}.{metric}: must be a finite number, got {value!r}")
                continue
            baseline[(str(method), str(metric))] = float(value)
    if problems:
        raise ThresholdsError(f"invalid thresholds file {source}:\n  - " + "\n  - ".join(problems))
    return Thresholds(rules=tuple(rules), default=default, baseline=baseline, source=source)


def load_thresholds(path: str | Path) -> Thresholds:
    """Read and validate a thresholds YAML file."""
    p = Path(path)
    if not p.is_file():
        raise ThresholdsError(f"thresholds file {p} not found; pass --thresholds PATH")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ThresholdsError(f"thresholds file {p} is not valid YAML: {exc}".replace("\n", " ")) from None
    return parse_thresholds(raw or {}, str(p))


# --- comparison (pure) -----------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """One metric of one run cell: ``cell`` is model/dataset/b<batch>/n<edits>."""

    cell: str
    method: str
    metric: str
    value: float

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.cell, self.method, self.metric)


@dataclass(frozen=True)
class Check:
    """One row of the regression table."""

    cell: str
    method: str
    metric: str
    baseline: float | None
    baseline_source: str | None
    value: float | None
    delta: float | None
    direction: Direction
    tolerance: float | None
    status: CheckStatus

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    def as_row(self, sweep_id: str) -> dict[str, Any]:
        return {"sweep_id": sweep_id, "cell": self.cell, "method": self.method, "metric": self.metric,
                "baseline": self.baseline, "baseline_source": self.baseline_source, "value": self.value,
                "delta": self.delta, "direction": self.direction, "tolerance": self.tolerance,
                "status": self.status.value}


def judge(value: float, baseline: float, rule: Rule) -> tuple[CheckStatus, float, float]:
    """Status, delta and absolute tolerance of ``value`` against ``baseline`` under ``rule``."""
    tol = rule.allowed(baseline)
    delta = value - baseline
    if not rule.check:
        return CheckStatus.INFO, delta, tol
    if not math.isfinite(value):
        return CheckStatus.REGRESSION, delta, tol
    worse = {"higher": -delta, "lower": delta, "both": abs(delta)}[rule.direction]
    if worse > tol:
        return CheckStatus.REGRESSION, delta, tol
    if rule.direction != "both" and -worse > tol:
        return CheckStatus.IMPROVED, delta, tol
    return CheckStatus.OK, delta, tol


def baseline_values(
    cells: Iterable[tuple[str, str]],
    thresholds: Thresholds,
    db_baseline: Sequence[Observation] = (),
    db_source: str | None = None,
) -> dict[tuple[str, str, str], tuple[float, str]]:
    """Baseline value and source per (cell, method, metric), for tonight's (cell, method) pairs.

    Values of the baseline nightly (``db_baseline``, labelled ``db_source``) win; the thresholds
    file's pinned values fill in what it lacks.
    """
    wanted = set(cells)
    out: dict[tuple[str, str, str], tuple[float, str]] = {}
    for cell, method in sorted(wanted):
        for (m, metric), value in thresholds.baseline.items():
            if m == method:
                out[(cell, method, metric)] = (value, THRESHOLDS_SOURCE)
    for obs in db_baseline:
        if (obs.cell, obs.method) in wanted:
            out[obs.key] = (obs.value, db_source or "database")
    return out


def compare(
    current: Sequence[Observation],
    cells: Iterable[tuple[str, str]],
    thresholds: Thresholds,
    db_baseline: Sequence[Observation] = (),
    db_source: str | None = None,
) -> list[Check]:
    """The regression table: every metric of tonight or of the baseline, judged by its rule.

    ``cells`` are tonight's (cell, method) pairs (from ``runs``, finished or not), so a run that
    failed shows its baseline metrics as ``missing``.
    """
    cells = set(cells) | {(o.cell, o.method) for o in current}
    base = baseline_values(cells, thresholds, db_baseline, db_source)
    now = {o.key: o.value for o in current}
    checks = []
    for key in sorted(set(now) | set(base)):
        cell, method, metric = key
        rule = thresholds.rule_for(metric)
        value = now.get(key)
        if key not in base:
            checks.append(Check(cell, method, metric, None, None, value, None, rule.direction, None,
                                CheckStatus.INFO if not rule.check else CheckStatus.NEW))
            continue
        b, src = base[key]
        if value is None:
            status = CheckStatus.MISSING if rule.check else CheckStatus.INFO
            checks.append(Check(cell, method, metric, b, src, None, None, rule.direction, rule.allowed(b), status))
            continue
        status, delta, tol = judge(value, b, rule)
        checks.append(Check(cell, method, metric, b, src, value, delta, rule.direction, tol, status))
    return checks


@dataclass(frozen=True)
class Verdict:
    status: NightlyStatus
    n_checks: int
    n_failed: int
    message: str | None


def verdict(checks: Sequence[Check], sweep_exit_code: int = 0) -> Verdict:
    """Pass when no check failed and the sweep finished every cell; the message says why not."""
    failed = [c for c in checks if c.failed]
    reasons = []
    if sweep_exit_code != 0:
        reasons.append(f"the sweep exited with code {sweep_exit_code} (failed run cells: see runs.error)")
    if failed:
        shown = ", ".join(f"{c.method} {c.metric} ({c.status.value})" for c in failed[:6])
        reasons.append(f"{len(failed)} metric(s) beyond tolerance: {shown}{' ...' if len(failed) > 6 else ''}")
    status = NightlyStatus.FAIL if reasons else NightlyStatus.PASS
    return Verdict(status, len(checks), len(failed), "; ".join(reasons) or None)


@dataclass(frozen=True)
class NightRecord:
    """One row of ``nightly_verdicts`` as far as baseline selection needs it."""

    sweep_id: str
    tag: str
    night: date
    status: str
    checked_at: datetime


def select_baseline(history: Iterable[NightRecord], *, tag: str, night: date, exclude: str) -> NightRecord | None:
    """The last passing nightly of ``tag`` on or before ``night``, other than sweep ``exclude``."""
    candidates = [h for h in history
                  if h.tag == tag and h.status == NightlyStatus.PASS and h.sweep_id != exclude and h.night <= night]
    return max(candidates, key=lambda h: (h.night, h.checked_at), default=None)


# --- presentation ----------------------------------------------------------------------------
def _num(x: float | None, signed: bool = False) -> str:
    """A table number: 3 decimals below 1, 2 up to 1e5, else 4 significant digits; no "-0"."""
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    text = f"{x:.{3 if abs(x) < 1 else 2}f}" if abs(x) < 1e5 else f"{x:.4g}"
    if float(text) == 0:
        return text.lstrip("-")
    return "+" + text if signed and x > 0 else text


def _tol(c: Check) -> str:
    if c.tolerance is None:
        return "-"
    sign = {"higher": "-", "lower": "+", "both": "±"}[c.direction]
    return f"{sign}{_num(c.tolerance)}"


def table_rows(checks: Sequence[Check]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of the regression table (a cell column only when there are several)."""
    many = len({c.cell for c in checks}) > 1
    header = (["cell"] if many else []) + ["metric", "method", "baseline", "value", "delta", "tolerance", "status"]
    rows = []
    for c in checks:
        delta = _num(c.delta, signed=True)
        status = c.status.value.upper() if c.failed else c.status.value
        rows.append(([c.cell] if many else []) + [c.metric, c.method, _num(c.baseline), _num(c.value), delta,
                                                  _tol(c), status])
    return header, rows


def format_table(checks: Sequence[Check]) -> str:
    """The regression table as fixed-width text (failing rows in capitals)."""
    header, rows = table_rows(checks)
    if not rows:
        return "(no metrics to compare)"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {"baseline", "value", "delta", "tolerance"}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if h in numeric else c.ljust(w)
                         for c, w, h in zip(cells, widths, header, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_html(checks: Sequence[Check], title: str) -> str:
    """The regression table as an HTML fragment (for a report preface)."""
    header, rows = table_rows(checks)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{"fail" if c.failed else c.status.value}">' + "".join(f"<td>{html.escape(x)}</td>" for x in r)
        + "</tr>"
        for c, r in zip(checks, rows, strict=True)
    )
    return (f"<section class=\"nightly\"><h2>{html.escape(title)}</h2>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>")


# --- the database side -----------------------------------------------------------------------
@contextmanager
def open_results(path: str | Path, wait_s: float = 30.0) -> Iterator[Any]:
    """A read-write connection to the results file ``path``, migrated to the current schema.

    Only for when no writer holds the file (after the sweep closed its writer actor); a lock held
    by another process is retried for ``wait_s`` seconds, then :class:`storage.sql.ResultsLockedError`.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = sqlh.connect(path, read_only=False)
            break
        except sqlh.ResultsLockedError:
            if time.monotonic() > deadline:
                raise
            log.info("results file %s is locked; retrying", path)
            time.sleep(1.0)
    try:
        migrate(con)
        yield con
    finally:
        con.close()


_CELL = "r.model || '/' || r.dataset || '/b' || r.batch_size || '/n' || r.n_edits"

_OBSERVATIONS_SQL = f"""
SELECT {_CELL} AS cell, r.method, m.metric, avg(m.value) AS value
FROM runs AS r JOIN metrics AS m USING (run_id)
WHERE r.sweep_id = $sweep_id AND m.edits_done = r.n_edits AND m.dataset = r.dataset
GROUP BY ALL
UNION ALL
SELECT {_CELL} AS cell, r.method, p.task || '.' || p.metric AS metric, avg(p.value) AS value
FROM runs AS r JOIN probes AS p USING (run_id)
WHERE r.sweep_id = $sweep_id AND p.edits_done = r.n_edits
GROUP BY ALL
UNION ALL
SELECT {_CELL} AS cell, r.method, '{METRIC_SECONDS_PER_EDIT}' AS metric,
       sum(t.seconds) / nullif(sum(t.items), 0) AS value
FROM runs AS r JOIN timings AS t USING (run_id)
WHERE r.sweep_id = $sweep_id AND t.stage = '{names.STAGE_EDIT_BATCH}'
GROUP BY ALL
HAVING sum(t.items) > 0
ORDER BY 1, 2, 3
"""


def observations(con: Any, sweep_id: str) -> list[Observation]:
    """Metrics, probes (``<task>.<metric>``) and edit seconds per edit of a sweep's runs at their
    final ``edits_done``, averaged over seeds (and hparams overrides) of a cell and method."""
    rows = con.execute(_OBSERVATIONS_SQL.replace("$sweep_id", "?"), [sweep_id] * 3).fetchall()
    return [Observation(cell, method, metric, float(value)) for cell, method, metric, value in rows
            if value is not None]


def run_cells(con: Any, sweep_id: str) -> list[tuple[str, str]]:
    """(cell, method) of every registered run of a sweep, finished or not."""
    rows = con.execute(f"SELECT DISTINCT {_CELL}, r.method FROM runs AS r WHERE r.sweep_id = ? ORDER BY 1, 2",
                       [sweep_id]).fetchall()
    return [(c, m) for c, m in rows]


def config_mismatch(con: Any, sweep_id: str, expected: Mapping[str, str]) -> list[str]:
    """Why the runs of ``sweep_id`` are not the cells of a config, given as {run_id: config_hash}
    (``RunCell.run_id(sweep_id)`` and the hash of ``RunCell.config()``): a run the config does not
    make, a run with another config, a cell with no run. Empty when the sweep is that config's."""
    rows = dict(con.execute("SELECT run_id, config_hash FROM runs WHERE sweep_id = ? ORDER BY run_id",
                            [sweep_id]).fetchall())
    problems = [f"run {rid} is not a cell of the config" for rid in sorted(set(rows) - set(expected))]
    problems += [f"run {rid} was run with another config (hash {rows[rid][:12]}, the config's {h[:12]})"
                 for rid, h in sorted(expected.items()) if rid in rows and rows[rid] != h]
    problems += [f"the config's cell {rid} has no run" for rid in sorted(set(expected) - set(rows))]
    return problems


def history(con: Any) -> list[NightRecord]:
    """Every row of ``nightly_verdicts``."""
    rows = con.execute(f"SELECT sweep_id, tag, night, status, checked_at FROM {names.TABLE_NIGHTLY_VERDICTS}"
                       ).fetchall()
    return [NightRecord(*r) for r in rows]


@dataclass(frozen=True)
class NightlyRecord:
    """Everything :func:`record` stores about one nightly besides its checks."""

    sweep_id: str
    tag: str
    night: date
    verdict: Verdict
    baseline_sweep_id: str | None
    thresholds: str
    sweep_exit_code: int
    config_hash: str
    git_sha: str | None = None


def record(con: Any, night: NightlyRecord, checks: Sequence[Check]) -> None:
    """Store the tag, the verdict and the checks of a nightly in one transaction (a rerun replaces them)."""
    now = utc_now()
    v = night.verdict
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"INSERT OR REPLACE INTO {names.TABLE_SWEEP_TAGS} VALUES (?, ?, ?)", [night.sweep_id, night.tag, now])
        con.execute(f"DELETE FROM {names.TABLE_NIGHTLY_CHECKS} WHERE sweep_id = ?", [night.sweep_id])
        con.execute(
            f"INSERT OR REPLACE INTO {names.TABLE_NIGHTLY_VERDICTS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [night.sweep_id, night.tag, night.night, v.status.value, night.baseline_sweep_id, night.thresholds,
             v.n_checks, v.n_failed, night.sweep_exit_code, v.message, night.config_hash, night.git_sha, now])
        cols = ("sweep_id", "cell", "method", "metric", "baseline", "baseline_source", "value", "delta",
                "direction", "tolerance", "status")
        rows = [[c.as_row(night.sweep_id)[k] for k in cols] for c in checks]
        if rows:
            con.executemany(f"INSERT INTO {names.TABLE_NIGHTLY_CHECKS} ({', '.join(cols)}) "
                            f"VALUES ({', '.join('?' * len(cols))})", rows)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    log.info("nightly %s recorded: %s (%d checks, %d failed)", night.sweep_id, v.status.value, v.n_checks, v.n_failed)
