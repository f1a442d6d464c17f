"""Benchmark of the editing core on the toy world (prints figures; asserts nothing about time).

    python jobs/bench_core.py [--model DIR] [--corpus wiki.jsonl] [--dataset counterfact.json]
                              [--docs 2000] [--edits 100] [--device auto] [--threads N]

1. Key statistics: one pass hooking all edited layers (stopping after the last one) versus one full
   forward pass per layer (the reference code's layer_stats loop), over the same documents.
2. Target values z for ``--edits`` requests: one batched optimization versus a per-request loop
   (the reference code's compute_z), with the same hyper-parameters; reported per 100 edits.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from alphaedit import compute_key_stats, compute_targets, preset, requests_from_counterfact, spec_for  # noqa: E402
from alphaedit.models import load_model, n_layers, resolve_device  # noqa: E402
from alphaedit.templates import sample_context_templates  # noqa: E402

TOY_DIR = REPO / "eval" / "toyworld" / "artifacts"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(TOY_DIR / "model"))
    p.add_argument("--corpus", default=str(TOY_DIR / "wiki.jsonl"))
    p.add_argument("--dataset", default=str(TOY_DIR / "counterfact.json"))
    p.add_argument("--preset", default="toy")
    p.add_argument("--docs", type=int, default=2000, help="corpus documents for the statistics benchmark")
    p.add_argument("--edits", type=int, default=100, help="requests for the target benchmark")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, tok = load_model(args.model, device)
    spec = spec_for(model)
    hp = preset(args.preset)
    texts = []
    with open(args.corpus) as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) >= args.docs:
                break
    figures: dict[str, float] = {"device": str(device), "threads": torch.get_num_threads()}
    print(f"device {device}, threads {torch.get_num_threads()}, model {args.model}")

    # --- 1. statistics: single multi-layer pass vs per-layer full passes -------------------------
    kw = dict(max_length=hp.mom2_max_length, batch_size=hp.mom2_batch_size, accumulate_on=device)
    for label, layers in (("edited layers", list(hp.layers)), ("all layers", list(range(n_layers(model, spec))))):
        compute_key_stats(model, tok, texts[:50], spec, layers, **kw)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        joint = compute_key_stats(model, tok, texts, spec, layers, **kw)
        _sync(device)
        t_joint = time.perf_counter() - t0
        t0 = time.perf_counter()
        for layer in layers:  # reference: a full forward per layer, no early stop
            full_pass_stats(model, tok, texts, spec, layer, kw)
        _sync(device)
        t_per = time.perf_counter() - t0
        n_keys = joint[layers[0]].count
        print(f"stats [{label} {layers}] {len(texts)} docs, {n_keys} keys/layer: one pass {t_joint:.2f}s, "
              f"per-layer full passes {t_per:.2f}s, ratio {t_per / t_joint:.2f}x")
        figures[f"stats_{len(layers)}layers_one_pass_s"] = t_joint
        figures[f"stats_{len(layers)}layers_per_layer_s"] = t_per
        figures[f"stats_{len(layers)}layers_ratio"] = t_per / t_joint

    # --- 2. target values: batched vs per-request loop -----------------------------------------------
    records = json.loads(Path(args.dataset).read_text())[: args.edits]
    requests = requests_from_counterfact(records)
    templates = sample_context_templates(model, tok, hp.template_prefixes, hp.template_samples_per_prefix,
                                         hp.template_length, hp.template_top_k, hp.template_seed)
    compute_targets(model, tok, spec, requests[:2], templates, hp)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    batched = compute_targets(model, tok, spec, requests, templates, hp)
    _sync(device)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    singles = [compute_targets(model, tok, spec, [r], templates, hp) for r in requests]
    _sync(device)
    t_loop = time.perf_counter() - t0
    z_loop = torch.cat([s.z for s in singles])
    rel = float((batched.z - z_loop).norm() / z_loop.norm())
    per100 = 100 / len(requests)
    print(f"targets z for {len(requests)} edits: batched {t_batch * per100:.2f}s/100 edits, per-request loop "
          f"{t_loop * per100:.2f}s/100 edits, ratio {t_loop / t_batch:.2f}x (relative |z_batch - z_loop| {rel:.1e})")
    figures.update(targets_batched_s_per_100=t_batch * per100, targets_loop_s_per_100=t_loop * per100,
                   targets_ratio=t_loop / t_batch, targets_rel_diff=rel)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


@torch.no_grad()
def full_pass_stats(model, tok, texts, spec, layer, kw):
    """The reference's per-layer statistics: a complete forward for every batch, one layer hooked."""
    from alphaedit.hooks import capture
    from alphaedit.models import key_dim
    from alphaedit.stats import SecondMoment, _batches
    from alphaedit.tokens import encode, pad_id, right_pad

    device = next(model.parameters()).device
    acc = SecondMoment.zeros(key_dim(model, spec, layer), kw["accumulate_on"])
    name = spec.mlp_out_name(layer)
    for batch in _batches(texts, kw["batch_size"]):
        ids, mask = right_pad(encode(tok, batch, max_length=kw["max_length"]), pad_id(tok), device)
        with capture(model, inputs_of=[name]) as store:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        acc.add(store["in:" + name][mask.bool()])
    return acc


if __name__ == "__main__":
    raise SystemExit(main())
