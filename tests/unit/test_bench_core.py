"""jobs.bench_core on the toy world, keys and evaluation sections: the figures are there, and ours
equal the reference procedures they are timed against (no assertion about time)."""

from __future__ import annotations

import json

from jobs import bench_core


def test_keys_and_eval_sections_report_their_figures(tmp_path, capsys):
    out = tmp_path / "figures.json"
    code = bench_core.main(["--skip", "stats,targets", "--edits", "4", "--keys-reference-edits", "2",
                            "--eval-records", "4", "--eval-reference-records", "2", "--threads", "1",
                            "--json", str(out)])
    assert code == 0
    figures = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    assert figures["keys_edits"] == 4 and figures["keys_reference_edits"] == 2
    for name in ("keys_speedup", "keys_s_per_100_edits", "keys_reference_s_per_100_edits", "eval_s_per_100_records",
                 "eval_torch_linear_s_per_100_records", "eval_reference_s_per_100_records"):
        assert figures[name] > 0, name
    assert figures["keys_max_rel_diff"] < 1e-4  # ours (stopped early, shared template tokens) = full-depth passes
    assert figures["eval_max_nll_diff"] < 1e-4  # tree-packed scoring = one forward per pair
    assert figures["eval_onednn_max_nll_diff"] < 1e-4
