"""Hidden-state drift (the paper's Fig. 5) of the checkpoints a finished or stopped sweep stored.

    python -m jobs.drift --db results/table1.duckdb [--artifact-root results/artifacts] [--prompts 200]

For sweeps that ran without ``metrics.drift_prompts``: every evaluation point of every run in the
results file whose checkpoint is in the artifact store is evaluated again through the one evaluation
entry point (:func:`eval.suite.evaluate_edited`, a plan of drift only: the first ``--prompts``
preservation-corpus documents at the run's last edited layer), and the ``drift_*`` rows (dataset
``preserved``) are written through the results file's writer, beside the rows already there (the
unedited model's at ``edits_done = 0``), with the 2-D PCA points of the same states (table ``drift_points``,
on the unedited states' basis: the report's Fig. 5 scatter). The file must not be held by a running sweep. Exit status 0,
1 when a run's checkpoint or model is missing (the rows of the others are written), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from eval.cli import add_log_level, cli_edge

logger = logging.getLogger("jobs.drift")


@cli_edge
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.drift", description=__doc__.splitlines()[0])
    p.add_argument("--db", type=Path, required=True, help="results file (.duckdb) of the sweep")
    p.add_argument("--artifact-root", type=Path, default=Path("results/artifacts"),
                   help="the sweep's artifact store (default results/artifacts)")
    p.add_argument("--prompts", type=int, default=200, help="preservation documents compared (default 200)")
    add_log_level(p)
    args = p.parse_args(argv)
    if args.prompts < 2:
        print("error: --prompts must be at least 2 (a spread needs two documents)", file=sys.stderr)
        return 2
    if not args.db.is_file():
        print(f"error: {args.db} does not exist", file=sys.stderr)
        return 2

    import torch

    from alphaedit.hparams import EditHparams
    from alphaedit.models import load_model
    from cluster.config import ModelConfig
    from cluster.plan import drift_corpus_spec
    from cluster.workers import StoredDeltas, drift_texts
    from eval.suite import EvalPlan, drift_point_rows, evaluate_edited
    from jobs.progress import new_bar
    from storage.writer import ResultWriter

    writer = ResultWriter(args.db)
    failed = 0
    try:
        runs = writer.query("SELECT run_id, dataset, config, config_hash FROM runs ORDER BY run_id")
        points = writer.query("SELECT run_id, list(DISTINCT edits_done ORDER BY edits_done) AS pts FROM metrics m "
                              "JOIN runs r USING (run_id) WHERE m.dataset = r.dataset GROUP BY 1")
        pts = dict(zip(points["run_id"].to_list(), points["pts"].to_list(), strict=True))
        loaded: dict[str, tuple] = {}
        bar = new_bar(runs.height, "runs", "run")
        for run_id, dataset, config, chash in runs.iter_rows():
            bar.update(1)
            cfg = json.loads(config)
            model_cfg = ModelConfig(**{k: v for k, v in cfg["model"].items() if k in ModelConfig.__dataclass_fields__})
            hp = EditHparams.from_dict(cfg["hparams"])
            path = model_cfg.resolve(model_cfg.path)
            if path not in loaded:
                loaded[path] = load_model(path, "cpu")
            model, tok = loaded[path]
            texts = drift_texts(drift_corpus_spec(model_cfg, args.prompts))
            plan = EvalPlan(dataset=dataset, records=(), drift_texts=texts, drift_layer=hp.layers[-1])
            rows, points = [], []
            for edits_done in pts.get(run_id, []):
                try:
                    deltas = {} if edits_done == 0 else {
                        k: torch.from_numpy(v)
                        for k, v in StoredDeltas(str(args.artifact_root), run_id, chash, int(edits_done)).load().items()}
                except Exception as exc:  # noqa: BLE001 - a missing checkpoint skips that point, named
                    logger.error("%s at %d edits: no stored checkpoint (%s)", run_id, edits_done, exc)
                    failed += 1
                    continue
                result = evaluate_edited(model, tok, plan, deltas)
                rows += [{"run_id": run_id, "edits_done": int(edits_done), "dataset": r.dataset, "metric": r.metric,
                          "value": r.value, "n_cases": r.n_cases} for r in result.rows]
                points += drift_point_rows(run_id, int(edits_done), result.drift_points)
            writer.write(metrics=rows, drift_points=points)
            logger.info("%s: drift at %s edits", run_id, pts.get(run_id, []))
        bar.close()
    finally:
        writer.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
