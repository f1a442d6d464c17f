"""Evaluate a checkpoint folder written by jobs/edit.py: rewrite metrics and lm-eval probes, pre and post edit.

    python -m jobs.evaluate runs/edit-alphaedit-1000-100                     # toy world: all metrics + toy probes
    python -m jobs.evaluate CKPT --no-pre --probes sst2,mmlu --probe-limit 100
    python -m jobs.evaluate CKPT --snippets attribute_snippets --tfidf-vocab tfidf_vocab --idf idf   # real CF
    python -m jobs.evaluate --zsre-to-counterfact zsre.json zsre_requests.json   # then: jobs.edit --dataset ...

The edited records are the checkpoint's requests.json (as the reference evaluates every edited case
after the last batch); requests made from zsRE records (``--zsre-to-counterfact``) are scored in the
zsRE format, all others in the CounterFact format. Post-edit numbers are computed on the base model
plus the checkpoint's deltas, in memory, by the sweep's evaluation (:func:`eval.suite.evaluate_edited`);
the base weights are restored afterwards; deltas holding NaN/Inf are refused (exit 1). Prints one
table (metric | pre | post) and writes the rows as JSON with --json. Exit 2: not a checkpoint folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from alphaedit.editor import NonFiniteError
from alphaedit.models import load_model, resolve_device
from eval import datasets as ds
from eval.cli import add_log_level, cli_edge
from eval.edited import read_checkpoint
from eval.probes import TOY_TASKS
from eval.suite import EvalPlan, evaluate_edited
from eval.toyworld import paths as toy
from storage import names

log = logging.getLogger("jobs.evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="checkpoint folder written by jobs/edit.py")
    p.add_argument("--model", default=None, help="base model (default: run.json's model)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N edited records")
    p.add_argument("--no-pre", action="store_true", help="skip the pre-edit (base model) numbers")
    p.add_argument("--no-generation", action="store_true", help="skip fluency/consistency (CounterFact)")
    p.add_argument("--snippets", default=None, help="attribute_snippets.json (path or 'attribute_snippets'); "
                   "default: the toy world's for the toy model")
    p.add_argument("--tfidf-vocab", default=None, help="tfidf_vocab.json (path or 'tfidf_vocab')")
    p.add_argument("--idf", default=None, help="idf.npy (path or 'idf')")
    p.add_argument("--probes", default=None, help="comma-separated lm-eval tasks (default: the toy tasks for "
                   "the toy model, none otherwise); 'none' for none")
    p.add_argument("--probe-limit", type=int, default=None, help="at most N documents per probe task")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="generation seed (fluency/consistency)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--json", default=None, help="write all rows (and timings) to this JSON file")
    p.add_argument("--zsre-to-counterfact", nargs=2, metavar=("ZSRE_JSON", "OUT_JSON"),
                   help="convert zsRE records into CounterFact-layout edit requests for jobs/edit.py, then exit")
    add_log_level(p, "warning")
    return p.parse_args(argv)


def convert_zsre(src: str, out: str) -> int:
    loaded = ds.load_zsre(src)
    Path(out).write_text(json.dumps([r.to_counterfact() for r in loaded.records], indent=1))
    print(f"wrote {len(loaded.records)} edit requests to {out}")
    return 0


def run_model_path(run: dict[str, Any]) -> str:
    """The base model of a checkpoint's run.json: the run cell's model entry (jobs/edit.py), resolved
    as the sweep resolves it, or a plain path (folders written before jobs/edit.py ran the sweep)."""
    from cluster.config import ModelConfig

    model = run["model"]
    if isinstance(model, dict):
        return ModelConfig(**model).resolve(model["path"])
    return str(model)


def is_toy(model: str) -> bool:
    return Path(model).exists() and Path(model).resolve() == toy.MODEL_DIR.resolve()


def consistency_inputs(args: argparse.Namespace, toy_model: bool) -> tuple[Any, Any]:
    if args.snippets or args.tfidf_vocab or args.idf:
        if not (args.snippets and args.tfidf_vocab and args.idf):
            raise SystemExit("--snippets, --tfidf-vocab and --idf go together")
        return ds.load_attribute_snippets(args.snippets), ds.load_tfidf(args.tfidf_vocab, args.idf)
    if toy_model:
        return ds.load_attribute_snippets(toy.ATTRIBUTE_SNIPPETS), ds.load_tfidf(toy.TFIDF_VOCAB, toy.IDF)
    log.warning("no attribute snippets / tf-idf given: consistency is skipped")
    return None, None


def print_table(title: str, pre: dict[str, float] | None, post: dict[str, float], n: dict[str, int]) -> None:
    print(f"\n{title}")
    print(f"{'metric':<34}{'pre':>10}{'post':>10}{'n':>7}")
    for key, value in post.items():
        before = f"{pre[key]:10.2f}" if pre is not None and key in pre else f"{'-':>10}"
        print(f"{key:<34}{before}{value:10.2f}{n[key]:7d}")


@cli_edge(level="warning")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.zsre_to_counterfact:
        return convert_zsre(*args.zsre_to_counterfact)
    if not args.checkpoint:
        print("error: pass a checkpoint folder (see --help)", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    try:
        ckpt = read_checkpoint(args.checkpoint)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model_name = args.model or run_model_path(ckpt.run)
    toy_model = is_toy(model_name)
    device = resolve_device(args.device)
    model, tok = load_model(model_name, device, ckpt.run.get("dtype", "float32"))
    deltas = ckpt.deltas(device)
    dataset = names.DATASET_ZSRE if ckpt.is_zsre else names.DATASET_COUNTERFACT
    requests = ckpt.requests[: args.limit]
    loaded = (ds.zsre_from_requests if ckpt.is_zsre else ds.counterfact_from_requests)(
        requests, ckpt.folder / "requests.json")
    snippets, vec = (None, None) if ckpt.is_zsre or args.no_generation else consistency_inputs(args, toy_model)
    tasks = ([] if args.probes == "none" else args.probes.split(",")) if args.probes else (
        list(TOY_TASKS) if toy_model else [])
    timings: dict[str, float] = {"load": time.perf_counter() - t_start}
    plan = EvalPlan(dataset=dataset, records=loaded.records,
                    generation_records=0 if args.no_generation else len(loaded.records), snippets=snippets,
                    vectorizer=vec, probe_tasks=tasks, probe_limit=args.probe_limit,
                    probe_batch_size=args.batch_size, batch_size=args.batch_size,
                    generation_batch_size=args.batch_size, seed=args.seed)
    rows: dict[str, list] = {}
    probe_rows: dict[str, list] = {}
    phases = ([] if args.no_pre else ["pre"]) + ["post"]
    from jobs.progress import stage_bar

    for phase in phases:
        progress, close_bar = stage_bar(f"evaluation ({'unedited' if phase == 'pre' else 'edited'})")  # on stderr
        try:
            result = evaluate_edited(model, tok, plan, deltas if phase == "post" else None, progress=progress)
        except NonFiniteError as exc:  # was: NaN deltas scored as a model that gets nothing right
            print(f"error: {ckpt.deltas_path}: {exc}", file=sys.stderr)
            return 1
        finally:
            close_bar()
        rows[phase], probe_rows[phase] = result.rows, result.probes
        timings[f"{phase}_rewrite"], timings[f"{phase}_probes"] = result.seconds["metrics"], result.seconds["probes"]
    timings["total"] = time.perf_counter() - t_start

    method = ckpt.run.get("method", "?")
    title = (f"{ckpt.folder.name}: {method}, {ckpt.run.get('n_edits', len(ckpt.requests))} edits in batches of "
             f"{ckpt.run.get('batch_size', '?')}, {dataset} ({len(loaded.records)} records), x100")
    as_table = {phase: {r.metric: r.value for r in rs} for phase, rs in rows.items()}
    n = {r.metric: r.n_cases for r in rows["post"]}
    for phase, prs in probe_rows.items():
        as_table[phase].update({f"probe {p.task}/{p.metric}": 100 * p.value for p in prs})
        if phase == "post":
            n.update({f"probe {p.task}/{p.metric}": p.n_samples for p in prs})
    print_table(title, as_table.get("pre"), as_table["post"], n)
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "checkpoint": str(ckpt.folder), "method": method, "dataset": dataset,
            "rows": {ph: [r.as_dict() for r in rs] for ph, rs in rows.items()},
            "probes": {ph: [p.as_dict() for p in ps] for ph, ps in probe_rows.items()},
            "timings": timings,
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
