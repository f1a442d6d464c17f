"""The HTML report from a small hand-made results file: plots, Table 1 values, missing and failed data."""

from __future__ import annotations

import base64
import io
import re
import shlex
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from jobs.report import main as report_main
from jobs.report import parse_args as report_parse_args
from storage import names
from storage.report import paper, report_hint, write_report
from storage.report.data import UnknownSweepError
from storage.writer import ResultWriter, RunSpec

CF, ZSRE = names.DATASET_COUNTERFACT, names.DATASET_ZSRE
EFF, GEN, SPE, FLU, CONS = (names.METRIC_EFFICACY, names.METRIC_GENERALIZATION, names.METRIC_SPECIFICITY,
                            names.METRIC_FLUENCY, names.METRIC_CONSISTENCY)
FAILED_ERROR = "CUDA out of memory at batch 3 (tried to allocate 2.00 GiB)"

# run_id -> (sweep, model, method, dataset, batch, n_edits, {edits_done: {metric: value}})
RUNS: dict[str, tuple] = {
    "ae-cf": ("s1", "gpt2-xl", "alphaedit", CF, 100, 200, {
        0: {EFF: 20.0, GEN: 22.0, SPE: 80.0, FLU: 620.0},
        100: {EFF: 98.0, GEN: 90.0, SPE: 72.0, FLU: 610.0},
        200: {EFF: 97.25, GEN: 88.5, SPE: 70.75, FLU: 601.5},  # no consistency: a metric not computed
    }),
    "memit-cf": ("s1", "gpt2-xl", "memit", CF, 100, 200, {
        0: {EFF: 24.0, GEN: 22.0, SPE: 80.0, FLU: 620.0, CONS: 30.0},
        100: {EFF: 95.0, GEN: 85.0, SPE: 62.0, FLU: 520.0, CONS: 25.0},
        200: {EFF: 91.5, GEN: 80.25, SPE: 55.5, FLU: 480.0, CONS: 21.0},
    }),
    "ae-zsre": ("s1", "gpt2-xl", "alphaedit", ZSRE, 100, 200, {
        0: {EFF: 22.0, GEN: 31.0, SPE: 24.0},
        200: {EFF: 93.5, GEN: 85.0, SPE: 25.5},
    }),
    "toy-failed": ("s1", "toy-gpt2", "alphaedit", CF, 50, 200, {  # fails after 100 edits
        0: {EFF: 10.0, GEN: 11.0, SPE: 90.0},
        100: {EFF: 60.0, GEN: 50.0, SPE: 85.0},
    }),
    "other-sweep": ("s2", "gpt2-xl", "rome", CF, 100, 200, {200: {EFF: 12.34}}),
}


def make_results_db(path: Path) -> Path:
    """A small results file: 4 runs in sweep s1 (one failed, one without consistency), 1 in s2."""
    with ResultWriter(path) as w:
        for run_id, (sweep, model, method, ds, bs, n, _) in RUNS.items():
            w.register_runs([RunSpec(run_id=run_id, sweep_id=sweep, model=model, method=method, dataset=ds,
                                     batch_size=bs, n_edits=n, seed=0,
                                     config={"model": {"name": model, "preset": "toy" if "toy" in model else model}})])
            w.set_status(run_id, "running")
        metrics = [{"run_id": rid, "edits_done": e, "dataset": spec[3], "metric": m, "value": v, "n_cases": 10}
                   for rid, spec in RUNS.items() for e, vals in spec[6].items() for m, v in vals.items()]
        probes = [{"run_id": rid, "edits_done": e, "task": names.PROBE_TOY_KNOWLEDGE, "metric": "acc", "value": v}
                  for rid, pts in {"ae-cf": {0: 0.8, 100: 0.79, 200: 0.78}, "memit-cf": {0: 0.8, 100: 0.7, 200: 0.6},
                                   "toy-failed": {100: 0.5}}.items()  # the toy model has no unedited probe
                  for e, v in pts.items()]
        timings = [
            {"run_id": "ae-cf", "stage": names.STAGE_KEY_STATS, "step": 0, "seconds": 12.0, "items": 5000},
            *({"run_id": rid, "stage": names.STAGE_EDIT_BATCH, "step": s, "seconds": 3.0, "items": 100}
              for rid in ("ae-cf", "memit-cf") for s in (0, 1)),
            {"run_id": "toy-failed", "stage": names.STAGE_EDIT_BATCH, "step": 0, "seconds": 1.5},
        ]
        w.write(metrics=metrics, probes=probes, timings=timings)
        for run_id in RUNS:
            if run_id == "toy-failed":
                w.set_status(run_id, "failed", error=FAILED_ERROR)
            else:
                w.set_status(run_id, "finished")
    return path


class _Page(HTMLParser):
    """Collects Table 1 cells, figures, images and run rows of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str, str, str, str], tuple[str, str]] = {}  # (ds, model, method, kind, metric)
        self.table_metrics: dict[str, list[str]] = {}
        self.figures: list[str] = []
        self.images: list[str] = []
        self.run_rows: dict[str, str] = {}
        self._dataset = self._row = self._cell = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table" and "table1" in (a.get("class") or ""):
            self._dataset = a["data-dataset"]
            self.table_metrics[self._dataset] = []
        elif tag == "tr" and self._dataset and "data-kind" in a:
            self._row = (self._dataset, a["data-model"], a["data-method"], a["data-kind"])
        elif tag == "td" and self._row and "data-metric" in a:
            self._cell = (*self._row, a["data-metric"], a.get("class", ""))
            self._text = []
            if a["data-metric"] not in self.table_metrics[self._dataset]:
                self.table_metrics[self._dataset].append(a["data-metric"])
        elif tag == "figure":
            self.figures.append(a["data-plot"])
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "tr" and "data-run-id" in a:
            self.run_rows[a["data-run-id"]] = a.get("class", "")

    def handle_data(self, data: str) -> None:
        if self._cell:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell:
            *key, cls = self._cell
            self.cells[tuple(key)] = (cls, "".join(self._text).strip())
            self._cell = None
        elif tag == "table":
            self._dataset = self._row = None


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results_db(tmp_path_factory.mktemp("report") / "results.duckdb")


@pytest.fixture(scope="module")
def s1_html(db: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    index = write_report(db, tmp_path_factory.mktemp("out") / "report", sweep_id="s1",
                         preface_html='<div id="regressions">nightly regressions: none</div>')
    return index.read_text(encoding="utf-8")


def test_report_has_expected_plots_and_they_are_inline_pngs(s1_html: str) -> None:
    page = _parse(s1_html)
    assert page.figures == [
        "metric-efficacy", "metric-generalization", "metric-specificity", "metric-fluency", "metric-consistency",
        "tradeoff", "probe-toy_knowledge-acc", "timings",
    ]
    assert len(page.images) == len(page.figures)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "PNG" and img.width > 200 and img.height > 100
    assert not re.search(r"https?://", s1_html), "the report must not reference any network resource"


def test_table1_values_match_the_database_and_the_paper(s1_html: str) -> None:
    cells = _parse(s1_html).cells
    ours = {m: cells[(CF, "gpt2-xl", "alphaedit", "ours", m)] for m in (EFF, GEN, SPE, FLU)}
    assert ours == {EFF: ("value", "97.25"), GEN: ("value", "88.50"), SPE: ("value", "70.75"), FLU: ("value", "601.50")}
    assert cells[(CF, "gpt2-xl", "memit", "ours", CONS)] == ("value", "21.00")
    # the unedited model: mean over the runs at edits_done = 0
    assert cells[(CF, "gpt2-xl", "unedited", "unedited", EFF)] == ("value", "22.00")
    # the paper's numbers beside ours (GPT2-XL block of Table 1)
    assert cells[(CF, "gpt2-xl", "alphaedit", "paper", EFF)] == ("value", "99.50")
    assert cells[(CF, "gpt2-xl", "alphaedit", "paper", CONS)] == ("value", "39.38")
    assert cells[(CF, "gpt2-xl", "memit", "paper", EFF)] == ("value", "94.70")
    assert cells[(CF, "gpt2-xl", "unedited", "paper", SPE)] == ("value", "78.53")
    assert cells[(ZSRE, "gpt2-xl", "alphaedit", "ours", EFF)] == ("value", "93.50")
    assert cells[(ZSRE, "gpt2-xl", "alphaedit", "paper", GEN)] == ("value", "86.11")
    # no paper numbers for a model the paper did not use
    assert not [k for k in cells if k[1] == "toy-gpt2" and k[3] == "paper"]


def test_table1_layout_per_dataset(s1_html: str) -> None:
    page = _parse(s1_html)
    assert page.table_metrics == {CF: [EFF, GEN, SPE, FLU, CONS], ZSRE: [EFF, GEN, SPE]}
    assert "<th>Consis.</th>" in s1_html and "<th>Eff.</th>" in s1_html


def test_missing_metric_and_failed_run_are_shown_as_such_never_zero(s1_html: str) -> None:
    page = _parse(s1_html)
    cells = page.cells
    assert cells[(CF, "gpt2-xl", "alphaedit", "ours", CONS)] == ("missing", "missing")
    for m in (EFF, GEN, SPE, FLU, CONS):
        assert cells[(CF, "toy-gpt2", "alphaedit", "ours", m)] == ("failed", "failed")
    assert not [k for k, (_, text) in cells.items() if k[3] != "paper" and text in ("0", "0.00")]
    # status and error of the failed run are visible
    assert "run-failed" in page.run_rows["toy-failed"] and "run-finished" in page.run_rows["ae-cf"]
    assert FAILED_ERROR in s1_html
    attention = s1_html[s1_html.index('id="failed-runs"'):]
    assert "toy-failed" in attention[:2000]
    # plots name their empty panels
    assert re.search(r'data-plot="metric-consistency".*?missing data: toy-gpt2 · counterfact', s1_html, re.S)
    assert re.search(r'data-plot="probe-toy_knowledge-acc".*?missing data: toy-gpt2: no unedited baseline',
                     s1_html, re.S)


def test_sweep_filter_and_preface(db: Path, s1_html: str, tmp_path: Path) -> None:
    assert "other-sweep" not in s1_html and "12.34" not in s1_html
    assert s1_html.index('id="regressions"') < s1_html.index('id="table1"')
    everything = write_report(db, tmp_path).read_text(encoding="utf-8")
    assert "other-sweep" in everything
    assert _parse(everything).cells[(CF, "gpt2-xl", "rome", "ours", EFF)] == ("value", "12.34")


def test_unknown_sweep_is_an_error_naming_the_sweeps(db: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownSweepError, match=r"'nope'.*'s1', 's2'"):
        write_report(db, tmp_path / "r", sweep_id="nope")
    assert report_main(["--db", str(db), "--sweep", "nope", "--out", str(tmp_path / "r")]) == 1
    assert report_main(["--db", str(tmp_path / "absent.duckdb"), "--out", str(tmp_path / "r")]) == 1


def test_cli_writes_into_an_existing_folder_atomically(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "existing"
    out.mkdir()
    (out / "index.html").write_text("old")
    assert report_main(["--db", str(db), "--sweep", "s1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]
    assert (out / "index.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_report_hint_is_a_command_the_cli_accepts(tmp_path: Path) -> None:
    db = tmp_path / "my results" / "results.duckdb"
    hint = report_hint(db, "sweep 1")
    argv = shlex.split(hint)
    assert argv[:3] == ["python", "-m", "jobs.report"]
    args = report_parse_args(argv[3:])
    assert (args.db, args.sweep) == (str(db), "sweep 1")
    assert Path(args.out) == db.parent / "report-sweep_1"
    assert "--sweep" not in report_hint(db, None)


def test_paper_table_is_complete_and_models_resolve() -> None:
    for model in paper.PAPER_MODELS:
        for method in (paper.UNEDITED, "memit", "alphaedit", "rome", "rect"):
            assert set(paper.PAPER_TABLE1[(model, CF, method)]) == {EFF, GEN, SPE, FLU, CONS}
            assert set(paper.PAPER_TABLE1[(model, ZSRE, method)]) == {EFF, GEN, SPE}
    assert paper.paper_row("llama3-8b", CF, "AlphaEdit") == {EFF: 98.90, GEN: 94.22, SPE: 67.88, FLU: 622.49,
                                                             CONS: 32.40}
    assert paper.paper_model_key("EleutherAI/gpt-j-6B") == "gpt-j"
    assert paper.paper_model_key("meta-llama/Meta-Llama-3-8B-Instruct") == "llama3-8b"
    assert paper.paper_model_key("/models/gpt2-xl/") == "gpt2-xl"
    assert paper.paper_model_key("my-model", '{"model": {"path": "x", "preset": "gpt-j"}}') == "gpt-j"
    assert paper.paper_model_key("toy-gpt2", {"model": {"path": "eval/toyworld/artifacts/model", "preset": "toy"}}) is None


def test_report_of_a_file_without_runs_says_so(tmp_path: Path) -> None:
    ResultWriter(tmp_path / "empty.duckdb").close()
    html = write_report(tmp_path / "empty.duckdb", tmp_path / "r").read_text(encoding="utf-8")
    assert "<img" not in html
    for what in ("no runs", "no rewrite metrics recorded", "no probes recorded", "no timings recorded"):
        assert f'<span class="missing">{what}</span>' in html


def test_time_per_stage_counts_each_second_once_and_checkpoint_items_are_bytes(tmp_path: Path) -> None:
    """targets and solve are inside edit_batch: the bar splits edit_batch, it does not add them on top."""
    from storage.reader import ResultsReader
    from storage.report.plots import stage_bars

    db = tmp_path / "t.duckdb"
    with ResultWriter(db) as w:
        w.register_runs([RunSpec(run_id="r", sweep_id="s", model="m", method="alphaedit", dataset=CF, batch_size=10,
                                 n_edits=20, seed=0, config={})])
        w.write(timings=[
            *({"run_id": "r", "stage": names.STAGE_EDIT_BATCH, "step": s, "seconds": 10.0, "items": 10} for s in (0, 1)),
            *({"run_id": "r", "stage": names.STAGE_TARGETS, "step": s, "seconds": 6.0, "items": 10} for s in (0, 1)),
            *({"run_id": "r", "stage": names.STAGE_SOLVE, "step": s, "seconds": 3.0, "items": 10} for s in (0, 1)),
            {"run_id": "r", "stage": names.STAGE_CHECKPOINT, "step": 1, "seconds": 0.5, "items": 3_000_000},
            {"run_id": "r", "stage": names.STAGE_REWRITE_EVAL, "step": 1, "seconds": 4.0, "items": 20},
        ])
    with ResultsReader(db) as r:
        timings = r.canned("stage_timings")
    keys, labels, widths = stage_bars(timings)
    assert keys == [("m", "alphaedit", 10)]
    got = dict(zip(labels, (row[0] for row in widths), strict=True))
    assert got == {"targets (in edit_batch)": 12.0, "solve (in edit_batch)": 6.0, "edit_batch: rest": 2.0,
                   names.STAGE_CHECKPOINT: 0.5, names.STAGE_REWRITE_EVAL: 4.0}
    assert sum(got.values()) == 20.0 + 0.5 + 4.0  # not 20 + 12 + 6 + ...
    ckpt = timings.filter(timings["stage"] == names.STAGE_CHECKPOINT).to_dicts()[0]
    assert ckpt["bytes"] == 3_000_000 and ckpt["items"] is None and ckpt["seconds_per_item"] is None
    html = write_report(db, tmp_path / "rep").read_text(encoding="utf-8")
    head = re.search(r'<table class="timings"><thead><tr>(.*?)</tr>', html).group(1)
    assert "<th>part_of</th>" in head and "<th>bytes</th>" in head


def test_layout_grid_of_figures_no_repeated_captions_and_full_errors(s1_html: str) -> None:
    """Figures sit in a grid over the page width (wide ones span a row), the title is in the image
    only (a caption names missing data, nothing else), and the runs table wraps errors in full."""
    assert re.search(r"\.plots \{[^}]*display: grid", s1_html)
    grids = re.findall(r'<div class="plots">(.*?)</div>', s1_html, re.S)
    assert sum(g.count("<figure") for g in grids) == s1_html.count("<figure") == 8
    widths = {pid: cls for cls, pid in re.findall(r'<figure class="([^"]+)" id="plot-[^"]+" data-plot="([^"]+)"', s1_html)}
    assert widths["metric-efficacy"] == "plot wide"  # three panels (gpt2-xl x 2 datasets, toy-gpt2): a whole row
    assert widths["metric-fluency"] == "plot"
    for alt, rest in re.findall(r'<img alt="([^"]+)" src="[^"]+">(.*?)</figure>', s1_html, re.S):
        assert alt not in rest, f"caption repeats the title {alt!r}"
        assert not rest or rest.startswith('<figcaption><span class="missing">missing data:')
    row = re.search(r'<tr class="run-error run-failed" data-error-of="toy-failed"><th class="error-label">error</th>'
                    r'<td class="error" colspan="(\d+)">(.*?)</td></tr>', s1_html, re.S)
    assert row and row.group(2) == FAILED_ERROR  # in full, on its own row spanning the table
    runs_head = re.search(r'<table class="runs"><thead><tr>(.*?)</tr>', s1_html).group(1)
    assert int(row.group(1)) + 1 == runs_head.count("<th>")
    assert s1_html.count('class="run-error') == 1  # only the failed run has an error row
    css = re.search(r"td\.error \{([^}]*)\}", s1_html).group(1)
    assert "pre-wrap" in css and "max-width" not in css and "overflow-wrap: anywhere" in css
    assert '<div class="table-wrap"><table class="runs">' in s1_html


def test_tradeoff_has_one_point_per_evaluation_point(db: Path) -> None:
    from storage.reader import ResultsReader
    from storage.report.plots import tradeoff_plot, tradeoff_points

    with ResultsReader(db) as r:
        curves = r.canned("degradation_curve", sweep_id="s1")
        runs = r.canned("run_status", sweep_id="s1")
    pts = tradeoff_points(curves)
    ae = pts.filter((pts["method"] == "alphaedit") & (pts["dataset"] == CF) & (pts["model"] == "gpt2-xl"))
    assert ae.select("edits_done", "x", "y").rows() == [(0, 80.0, 20.0), (100, 72.0, 98.0), (200, 70.75, 97.25)]
    zsre = pts.filter(pts["dataset"] == ZSRE)
    assert zsre.select("edits_done", "x", "y").rows() == [(0, 24.0, 22.0), (200, 25.5, 93.5)]
    assert pts.height == 3 + 3 + 2 + 2  # ae-cf, memit-cf, ae-zsre, toy-failed
    plot = tradeoff_plot(curves, runs)
    assert plot is not None and plot.plot_id == "tradeoff"
    assert tradeoff_plot(curves.filter(curves["metric"] != SPE), runs) is None
