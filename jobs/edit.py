"""Single-process sequential editing driver (the Ray pipeline builds on the same library calls).

    python jobs/edit.py                                   # toy world, AlphaEdit, 200 edits in batches of 50
    python jobs/edit.py --method memit --n-edits 1000 --batch-size 50 --out runs/memit-1000
    python jobs/edit.py --model /path/to/hf-model --preset llama3-8b --dataset cf.json --corpus wiki.jsonl

Writes into ``--out`` (see docs/checkpoint-format.md):
  deltas.safetensors  one float32 tensor per edited weight, keyed by parameter name, W_edited - W_base
  requests.json       the edited requests, CounterFact records, in edit order
  timings.json        per-batch wall times by stage (targets, keys, solve, prev_keys, total)
  state.json + state.safetensors   the EditState (Σ Kp Kpᵀ, edit count) to resume or inspect
  run.json            resolved configuration, projector ranks, library versions
  metrics.json        (with --eval) quick rewrite metrics before/after, on the edited requests
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python jobs/edit.py` from any directory
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import alphaedit  # noqa: E402
from alphaedit import (  # noqa: E402
    PRESETS,
    EditHparams,
    Editor,
    EditRequest,
    hparams_for,
    method_spec,
    preservation_stats,
    projector_rank,
    projectors_from_stats,
    requests_from_counterfact,
    score_targets,
    spec_for,
)
from alphaedit.models import load_model, resolve_device  # noqa: E402
from alphaedit.stats import load_stats, save_stats  # noqa: E402

TOY_DIR = REPO / "eval" / "toyworld" / "artifacts"
log = logging.getLogger("jobs.edit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(TOY_DIR / "model"), help="HF model id or local path (default: toy world)")
    p.add_argument("--dataset", default=str(TOY_DIR / "counterfact.json"), help="CounterFact-format JSON file")
    p.add_argument("--corpus", default=str(TOY_DIR / "wiki.jsonl"),
                   help="preservation corpus: .jsonl with a 'text' field, or .txt with one document per line")
    p.add_argument("--method", choices=sorted(alphaedit.METHODS), default="alphaedit")
    p.add_argument("--preset", default=None, help=f"hparams preset {sorted(PRESETS)} (default: toy for the toy world)")
    p.add_argument("--hparams", default=None, help="JSON file of EditHparams fields overriding the preset")
    p.add_argument("--layers", default=None, help="comma-separated edited layers (overrides the preset)")
    p.add_argument("--n-edits", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--offset", type=int, default=0, help="skip this many records first")
    p.add_argument("--out", default=None, help="output folder (default: runs/edit-<method>-<n>-<bs>)")
    p.add_argument("--stats", default=None, help="key-statistics cache file (.safetensors); computed if missing")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--eval", action="store_true", help="also write quick rewrite metrics (metrics.json)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def read_corpus(path: Path):
    if not path.exists():
        raise SystemExit(f"corpus {path} not found; pass --corpus (a .jsonl with 'text' or a .txt file)")
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            yield json.loads(line)["text"] if path.suffix == ".jsonl" else line


def resolve_hparams(args: argparse.Namespace, model) -> tuple[str, EditHparams]:
    name = args.preset
    if name is None:
        if Path(args.model).resolve() == (TOY_DIR / "model").resolve():
            name = "toy"
        else:
            raise SystemExit(f"--preset is required for {args.model!r}; one of {sorted(PRESETS)} "
                             "(then adjust with --hparams / --layers)")
    hp = hparams_for(name, args.method)  # the preset + the method's published defaults on it
    if args.hparams:
        overrides = json.loads(Path(args.hparams).read_text())
        hp = EditHparams.from_dict({**hp.to_dict(), **overrides})
    if args.layers:
        hp = hp.replace(layers=tuple(int(x) for x in args.layers.split(",")))
    n_layers = model.config.num_hidden_layers
    if max(hp.layers) >= n_layers:
        raise SystemExit(f"edited layers {hp.layers} exceed the model's {n_layers} layers; pass --layers")
    return name, hp


def quick_metrics(model, tok, requests: list[EditRequest]) -> dict[str, float]:
    """CounterFact probability tests on the given requests (means over records of per-prompt successes)."""

    def success(prompts_per_req: list[list[str]], new_better: bool) -> float:
        prompts, news, trues, owner = [], [], [], []
        for i, (r, ps) in enumerate(zip(requests, prompts_per_req, strict=True)):
            for p in ps:
                prompts.append(p)
                news.append(r.target_new)
                trues.append(r.target_true)
                owner.append(i)
        if not prompts:
            return float("nan")
        s_new = score_targets(model, tok, prompts, news).nll
        s_true = score_targets(model, tok, prompts, trues).nll
        ok = (s_true > s_new) if new_better else (s_true < s_new)
        per_req = torch.zeros(len(requests)).index_add(0, torch.tensor(owner), ok.float())
        counts = torch.zeros(len(requests)).index_add(0, torch.tensor(owner), torch.ones(len(owner)))
        has = counts > 0
        return float((per_req[has] / counts[has]).mean())

    return {
        "efficacy": success([[r.rewrite_prompt] for r in requests], True),
        "generalization": success([list(r.extra.get("paraphrase_prompts", [])) for r in requests], True),
        "specificity": success([list(r.extra.get("neighborhood_prompts", [])) for r in requests], False),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    if not Path(args.model).exists() and args.model == str(TOY_DIR / "model"):
        raise SystemExit(f"toy world model not found at {args.model}; build it with `make toyworld`")
    log.info("device %s, dtype %s, model %s", device, args.dtype, args.model)
    model, tok = load_model(args.model, device, args.dtype)
    spec = spec_for(model)
    preset_name, hp = resolve_hparams(args, model)
    log.info("hparams preset %s: %s", preset_name, hp)

    records = json.loads(Path(args.dataset).read_text())
    records = records[args.offset : args.offset + args.n_edits]
    if len(records) < args.n_edits:
        log.warning("dataset has only %d records from offset %d", len(records), args.offset)
    requests = requests_from_counterfact(records)

    t0 = time.perf_counter()
    stats_path = Path(args.stats) if args.stats else None
    if stats_path is not None and stats_path.exists():
        stats = load_stats(stats_path)
        log.info("key statistics loaded from %s", stats_path)
    else:
        stats = preservation_stats(model, tok, read_corpus(Path(args.corpus)), hp, spec)
        if stats_path is not None:
            save_stats(stats, stats_path, {"model": args.model, "corpus": args.corpus, "hparams": hp.digest()})
    stats_seconds = time.perf_counter() - t0
    projectors = projectors_from_stats(stats, hp, device) if method_spec(args.method).needs_projector else None
    editor = Editor(model, tok, hp, args.method, spec=spec, stats=stats, projectors=projectors)

    pre = quick_metrics(model, tok, requests) if args.eval else None
    out = Path(args.out) if args.out else REPO / "runs" / f"edit-{args.method}-{args.n_edits}-{args.batch_size}"
    out.mkdir(parents=True, exist_ok=True)
    timings = []
    for start in range(0, len(requests), args.batch_size):
        batch = requests[start : start + args.batch_size]
        report = editor.edit(batch)
        timings.append({"batch": len(timings), "n_requests": report.n_requests, "edits_done": report.n_edits_total,
                        "seconds": report.seconds, "mean_target_loss": report.mean_target_loss,
                        "mean_target_steps": report.mean_target_steps})
        log.info("batch %d: %d edits done, %.2fs (targets %.2fs), z loss %.3f", len(timings), report.n_edits_total,
                 report.seconds["total"], report.seconds["targets"], report.mean_target_loss)

    editor.state.save(out)
    (out / "requests.json").write_text(json.dumps([r.to_counterfact() for r in requests], indent=1))
    (out / "timings.json").write_text(json.dumps({"stats_seconds": stats_seconds, "batches": timings}, indent=1))
    run = {
        "model": args.model, "model_type": spec.model_type, "method": args.method, "preset": preset_name,
        "hparams": hp.to_dict(), "n_edits": len(requests), "batch_size": args.batch_size, "offset": args.offset,
        "dataset": args.dataset, "corpus": args.corpus, "device": str(device), "dtype": args.dtype,
        "stats_keys": {str(k): v.count for k, v in stats.items()},
        "projector_rank": {str(k): projector_rank(p) for k, p in (projectors or {}).items()},
        "templates": editor.templates, "torch": torch.__version__,
    }
    (out / "run.json").write_text(json.dumps(run, indent=1))
    if args.eval:
        post = quick_metrics(model, tok, requests)
        (out / "metrics.json").write_text(json.dumps({"pre": pre, "post": post}, indent=1))
        log.info("metrics pre %s", pre)
        log.info("metrics post %s", post)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
