"""Benchmark of the editing core (prints figures; asserts nothing about time).

    python -m jobs.bench_core                                   # the toy world
    python -m jobs.bench_core --model ~/.cache/alphaedit/models/smollm2-135m-instruct   # the real model
    python -m jobs.bench_core --model DIR --edits 10 --reference-edits 2 --docs 32 --eval-records 20  # quick

With ``--model`` naming the installed real model (eval/realworld) the preset, dataset and corpus
default to the real world's (``smollm2``, its counterfact.json and corpus.jsonl); otherwise to the
toy world's. Every figure is measured in this one run, on this machine:

1. Key statistics over ``--docs`` documents: ours (one forward per batch hooking every edited layer,
   stopped after the last one; fp32 and ``--stats-dtype``) against the reference procedure (one full
   forward per edited layer, output layer included). Over ``--full-docs`` (default: the whole
   corpus): the projectors P = Û Ûᵀ of the ``--stats-dtype`` statistics against the fp32 ones
   (||P - P_fp32||_F / ||P_fp32||_F, kept fractions), and those of FastMEMIT key budgets
   (``--budgets`` x d_k keys) against the full ones.
2. Targets z for ``--edits`` requests: ours (all requests optimized together, fp32 and ``--v-dtype``)
   against the reference's per-request fp32 ``compute_z`` (full forward of every prompt and the
   output layer at every position in every step), run on ``--reference-edits`` requests and given
   per 100 edits; the keys and the closed-form solve of the same AlphaEdit batch.
   Keys of the same requests, layer by layer as the editor computes them (ours: one pass per row
   batch stopped after the layer, each context template's shared tokens run once) against the
   reference procedure (one full-depth forward, output layer included, of every request/context
   template prompt per layer), the reference on ``--keys-reference-edits`` requests, per 100 edits.
3. Quality of the two edits (fp32 and ``--v-dtype`` targets, same keys, statistics and projectors):
   efficacy, generalization and specificity of the edited records, and the final z losses.
4. Rewrite evaluation (probability tests of ``--eval-records`` CounterFact records on the unedited
   model, fp32): ours (oneDNN linears, the default) and ours with PyTorch's own linears, against one
   forward per (prompt, target) pair with the full output layer (the previous implementation), per
   100 records, and the largest score differences.

The last line is one JSON object with every figure (stats_speedup, targets_speedup,
targets_s_per_edit, keys_speedup, keys_s_per_100_edits, eval_s_per_100_records (fp32), ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from alphaedit import compute_key_stats, compute_targets, preset, spec_for
from alphaedit.editor import compute_deltas
from alphaedit.hooks import add_at_positions, capture
from alphaedit.models import load_model, resolve_device
from alphaedit.projector import kept_fraction, null_space_projector
from alphaedit.prompts import request_prompts, subject_prompts
from alphaedit.state import apply_deltas, restore_weights, snapshot_weights
from alphaedit.templates import flat_templates, sample_context_templates
from alphaedit.tokens import encode, pad_id, right_pad
from eval.cli import add_log_level, cli_edge

REPO = Path(__file__).resolve().parents[1]

TOY_DIR = REPO / "eval" / "toyworld" / "artifacts"
REAL_DIR = REPO / "eval" / "realworld" / "artifacts"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Timer:
        _sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        _sync(self.device)
        self.s = time.perf_counter() - self.t0


@cli_edge(level="warning")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or HF id (default: the toy world's model)")
    p.add_argument("--preset", default=None, help="hparams preset (default: smollm2 for the real model, else toy)")
    p.add_argument("--dataset", default=None, help="CounterFact JSON (default: the model's world's)")
    p.add_argument("--corpus", default=None, help="statistics corpus, JSONL with a 'text' field")
    p.add_argument("--docs", type=int, default=64, help="corpus documents for the statistics benchmark")
    p.add_argument("--budgets", default="1,2,4", help="FastMEMIT key budgets, multiples of d_k ('' to skip)")
    p.add_argument("--edits", type=int, default=100, help="requests for the targets benchmark (one batch)")
    p.add_argument("--reference-edits", type=int, default=5,
                   help="requests run through the per-request reference compute_z (timed, given per 100)")
    p.add_argument("--keys-reference-edits", type=int, default=20,
                   help="requests whose keys the reference procedure computes (timed, given per 100)")
    p.add_argument("--full-docs", type=int, default=100_000,
                   help="corpus documents for the projectors (fp32 vs low dtype, FastMEMIT, the quality section)")
    p.add_argument("--eval-records", type=int, default=100, help="CounterFact records for the evaluation benchmark")
    p.add_argument("--eval-reference-records", type=int, default=25,
                   help="records scored by one forward per pair (timed, given per 100 records)")
    p.add_argument("--v-dtype", default="bfloat16", help="targets dtype compared with fp32")
    p.add_argument("--stats-dtype", default="bfloat16", help="statistics forward dtype compared with fp32")
    p.add_argument("--eval-dtype", default="bfloat16", help="opt-in scoring dtype compared with the exact fp32")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override an EditHparams field (JSON value), e.g. --set v_lr=0.5")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    p.add_argument("--skip", default="", help="comma list of sections to skip: stats,targets,quality,keys,eval")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    add_log_level(p, "warning")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    real = args.model is not None and Path(args.model).expanduser().is_dir() and (REAL_DIR / "counterfact.json").exists()
    model_path = str(Path(args.model).expanduser()) if args.model else str(TOY_DIR / "model")
    world = REAL_DIR if real else TOY_DIR
    dataset = args.dataset or str(world / "counterfact.json")
    corpus = args.corpus or str(world / ("corpus.jsonl" if real else "wiki.jsonl"))
    hp = preset(args.preset or ("smollm2" if real else "toy"))
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value[:1] in "[{0123456789-tfn\"" else value
    hp = hp.replace(**overrides) if overrides else hp
    device = resolve_device(args.device)
    model, tok = load_model(model_path, device)
    spec = spec_for(model)
    figures: dict[str, object] = {"device": str(device), "threads": torch.get_num_threads(), "model": model_path,
                                  "preset": args.preset or ("smollm2" if real else "toy"), "layers": list(hp.layers),
                                  "v_dtype": args.v_dtype, "stats_dtype": args.stats_dtype}
    print(f"device {device}, threads {torch.get_num_threads()}, model {model_path}, layers {list(hp.layers)}, "
          f"dataset {dataset}, corpus {corpus}")

    projectors = None
    if "stats" not in skip:
        projectors = bench_stats(model, tok, spec, hp, corpus, args, device, figures)
    records = json.loads(Path(dataset).read_text())
    if "targets" not in skip:
        if "quality" in skip:
            projectors = None
        elif projectors is None:
            from alphaedit.editor import preservation_stats, projectors_from_stats
            texts = read_texts(corpus, args.full_docs)
            projectors = projectors_from_stats(preservation_stats(model, tok, texts, hp, spec), hp, device)
        bench_targets(model, tok, spec, hp, records, args, device, figures, projectors)
    if "keys" not in skip:
        bench_keys(model, tok, spec, hp, records, args, device, figures)
    if "eval" not in skip:
        bench_eval(model, tok, dataset, args, device, figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))
    return 0


# --- 1. statistics ---------------------------------------------------------------------------------

def read_texts(path: str, n: int) -> list[str]:
    texts = []
    with open(path) as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) >= n:
                break
    return texts


@torch.no_grad()
def full_pass_stats(model, tok, texts, spec, layer, kw):
    """The reference's per-layer statistics: a complete forward (output layer included) per batch."""
    from alphaedit.models import key_dim
    from alphaedit.stats import SecondMoment, _batches

    device = next(model.parameters()).device
    acc = SecondMoment.zeros(key_dim(model, spec, layer), kw["accumulate_on"])
    name = spec.mlp_out_name(layer)
    for batch in _batches(texts, kw["batch_size"]):
        ids, mask = right_pad(encode(tok, batch, max_length=kw["max_length"]), pad_id(tok), device)
        with capture(model, inputs_of=[name]) as store:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        acc.add(store["in:" + name][mask.bool()])
    return acc


def bench_stats(model, tok, spec, hp, corpus, args, device, figures) -> dict[int, torch.Tensor]:
    """Timing on ``--docs`` documents; projectors over ``--full-docs`` (fp32, the low dtype, FastMEMIT
    budgets). Returns the fp32 projectors of the full statistics (used by the quality section)."""
    texts = read_texts(corpus, args.docs)
    layers = list(hp.layers)
    kw = dict(max_length=hp.mom2_max_length, batch_size=hp.mom2_batch_size, accumulate_on=device)
    compute_key_stats(model, tok, texts[:4], spec, layers, **kw)  # warm-up
    with Timer(device) as t:
        ours = compute_key_stats(model, tok, texts, spec, layers, **kw)
    with Timer(device) as t_low:
        compute_key_stats(model, tok, texts, spec, layers, forward_dtype=args.stats_dtype, **kw)
    with Timer(device) as t_ref:
        ref = {layer: full_pass_stats(model, tok, texts, spec, layer, kw) for layer in layers}
    n_keys = ours[layers[0]].count
    diff = max(float((ours[la].sum_kkT - ref[la].sum_kkT).norm() / ref[la].sum_kkT.norm()) for la in layers)
    print(f"stats: {len(texts)} docs, {n_keys} keys/layer, layers {layers}: ours one pass fp32 {t.s:.2f}s, "
          f"{args.stats_dtype} {t_low.s:.2f}s; reference per-layer full passes fp32 {t_ref.s:.2f}s; "
          f"speed-up {t_ref.s / t.s:.2f}x (fp32), {t_ref.s / t_low.s:.2f}x ({args.stats_dtype}); "
          f"max relative |Σkkᵀ ours - reference| {diff:.1e}")
    figures.update(stats_docs=len(texts), stats_keys_per_layer=n_keys, stats_ours_s=t.s, stats_ours_low_s=t_low.s,
                   stats_reference_s=t_ref.s, stats_speedup=t_ref.s / t.s, stats_speedup_low=t_ref.s / t_low.s,
                   stats_keys_per_s=n_keys / t.s)

    full_texts = read_texts(corpus, args.full_docs)
    with Timer(device) as t_full:
        full = compute_key_stats(model, tok, full_texts, spec, layers, **kw)
    with Timer(device) as t_full_low:
        full_low = compute_key_stats(model, tok, full_texts, spec, layers, forward_dtype=args.stats_dtype, **kw)
    n_full = full[layers[0]].count
    print(f"projectors over {len(full_texts)} docs ({n_full} keys/layer; one pass fp32 {t_full.s:.2f}s, "
          f"{args.stats_dtype} {t_full_low.s:.2f}s), threshold {hp.nullspace_threshold} ({hp.threshold_mode}):")
    overlap, kept, kept_low, projectors = {}, {}, {}, {}
    for la in layers:
        p32 = null_space_projector(full[la].mean(), hp.nullspace_threshold, hp.threshold_mode)
        p16 = null_space_projector(full_low[la].mean(), hp.nullspace_threshold, hp.threshold_mode)
        projectors[la] = p32
        overlap[la] = float((p16 - p32).norm() / p32.norm().clamp_min(1e-30))
        kept[la], kept_low[la] = kept_fraction(p32), kept_fraction(p16)
        print(f"  layer {la}: kept fraction fp32 {kept[la]:.4f}, {args.stats_dtype} {kept_low[la]:.4f}; "
              f"||P_{args.stats_dtype} - P_fp32||_F / ||P_fp32||_F = {overlap[la]:.2e}")
    figures.update(stats_full_docs=len(full_texts), stats_full_keys=n_full, stats_full_fp32_s=t_full.s,
                   stats_full_low_s=t_full_low.s, projector_rel_diff_low=overlap, kept_fraction_fp32=kept,
                   kept_fraction_low=kept_low)
    from alphaedit.stats import key_budget
    fast = {}
    for m in [float(x) for x in args.budgets.split(",") if x.strip()]:
        budget = key_budget(model, spec, layers, m)
        if budget >= n_full:
            print(f"  FastMEMIT budget {m:g} x d_k = {budget} keys >= the {n_full} keys of the corpus: skipped")
            continue
        with Timer(device) as tb:
            part = compute_key_stats(model, tok, full_texts, spec, layers, max_keys=budget, **kw)
        diffs = {}
        for la in layers:
            pb = null_space_projector(part[la].mean(), hp.nullspace_threshold, hp.threshold_mode)
            diffs[la] = (float((pb - projectors[la]).norm() / projectors[la].norm().clamp_min(1e-30)), kept_fraction(pb))
        fast[m] = {"keys": budget, "seconds": tb.s, "rel_diff": {la: d for la, (d, _) in diffs.items()},
                   "kept_fraction": {la: k for la, (_, k) in diffs.items()}}
        print(f"  FastMEMIT budget {m:g} x d_k = {budget} keys ({tb.s:.2f}s): ||P_budget - P_full||_F / ||P_full||_F "
              + ", ".join(f"L{la} {d:.3f} (kept {k:.3f})" for la, (d, k) in diffs.items()))
    figures["fastmemit"] = fast
    return {la: p.to(device=device, dtype=torch.float32) for la, p in projectors.items()}


# --- 2. targets --------------------------------------------------------------------------------------

def reference_compute_z(model, tok, spec, request, templates, hp) -> torch.Tensor:
    """The reference's compute_z for one request, fp32: every step a full forward of the T rewriting
    prompts and the KL prompt, δ added at the lookup token of block L, the output layer at every
    position; Adam, the clamp and the early stop as in the reference (plus ENCORE's most-probable
    stop when ``hp`` asks for it, so that both sides optimize the same thing)."""
    layer = hp.layers[-1]
    flat = flat_templates(templates)
    device = next(model.parameters()).device
    tgt = encode(tok, [request.target_new], add_special_tokens=False)[0]
    rw = subject_prompts(tok, request_prompts([request], flat), [request.subject] * len(flat), hp.fact_token)
    kl = subject_prompts(tok, [hp.kl_prompt], [request.subject], hp.fact_token)
    rows = [p.ids + tgt[:-1] for p in rw] + [kl[0].ids]
    ids, mask = right_pad(rows, pad_id(tok), device)
    lookups = torch.tensor([p.lookup for p in rw] + [kl[0].lookup], device=device)
    n_t = len(flat)
    lab_rows = torch.tensor([t for t in range(n_t) for _ in tgt], device=device)
    lab_pos = torch.tensor([len(rw[t].ids) - 1 + j for t in range(n_t) for j in range(len(tgt))], device=device)
    lab_tok = torch.tensor(tgt * n_t, device=device)
    d = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    delta = torch.zeros(d, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    flags = [(q, q.requires_grad) for q in model.parameters()]
    for q, _ in flags:
        q.requires_grad_(False)
    h0 = log_p0 = None
    try:
        for it in range(hp.v_num_grad_steps):
            with add_at_positions(model, spec.block_name(layer), torch.arange(len(rows), device=device), lookups,
                                  lambda: delta[None].expand(len(rows), -1)) as block:
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (rows, seq, V)
            if h0 is None:
                h0 = block["clean"][0, lookups[0]].detach().float()
            log_probs = torch.log_softmax(logits.float(), dim=2)  # the reference: every position
            nll = -log_probs[lab_rows, lab_pos, lab_tok].sum() / n_t / len(tgt)
            log_p = log_probs[n_t, lookups[n_t]]
            if log_p0 is None:
                log_p0 = log_p.detach()
            kl_term = (log_p.exp() * (log_p - log_p0)).sum()
            loss = nll + hp.kl_factor * kl_term + hp.v_weight_decay * delta.norm() / h0.norm() ** 2
            stop = float(loss.detach()) < hp.v_early_stop_loss
            if hp.v_stop_most_probable:  # ENCORE's rule, when the compared configuration uses it
                stop = stop or bool((log_probs[lab_rows, lab_pos].argmax(-1) == lab_tok).all())
            if stop or it == hp.v_num_grad_steps - 1:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                max_norm = hp.clamp_norm_factor * h0.norm()
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    finally:
        for q, flag in flags:
            q.requires_grad_(flag)
    return h0 + delta.detach()


def edit_quality(model, tok, spec, hp, requests, records, templates, projectors) -> tuple[dict, dict]:
    """AlphaEdit batch (targets + keys + solve) applied, CounterFact probability tests, restored."""
    from eval.datasets import CounterFactRecord
    from eval.rewrite import counterfact_probability_scores

    batch = compute_deltas(model, tok, requests, hp, "alphaedit", templates, spec=spec, projectors=projectors,
                           prev_keys={la: torch.zeros_like(p) for la, p in projectors.items()})
    names = list(batch.deltas)
    snap = snapshot_weights(model, names)
    try:
        apply_deltas(model, batch.deltas)
        cf = [CounterFactRecord.from_json(r) for r in records]
        s = counterfact_probability_scores(model, tok, cf)
    finally:
        restore_weights(model, snap)
    q = {"efficacy": float(s.efficacy.nanmean()) * 100, "generalization": float(s.generalization.nanmean()) * 100,
         "specificity": float(s.specificity.nanmean()) * 100, "z_loss": float(batch.targets.loss.mean()),
         "z_nll": float(batch.targets.nll.mean()), "z_steps": float(batch.targets.steps.float().mean()),
         "most_probable": float(batch.targets.most_probable.float().mean()) * 100}
    return q, {**batch.seconds, "z": batch.targets.z}


def bench_targets(model, tok, spec, hp, records, args, device, figures, projectors) -> None:
    from alphaedit import requests_from_counterfact

    recs = records[: args.edits]
    requests = requests_from_counterfact(recs)
    with Timer(device) as tt:
        templates = sample_context_templates(model, tok, hp.template_prefixes, hp.template_samples_per_prefix,
                                             hp.template_length, hp.template_top_k, hp.template_seed)
    print(f"targets: {len(requests)} edits, {hp.v_num_grad_steps} steps, lr {hp.v_lr}, early stop "
          f"{hp.v_early_stop_loss}, most-probable stop {hp.v_stop_most_probable}; templates {tt.s:.2f}s")
    compute_targets(model, tok, spec, requests[:2], templates, hp.replace(v_num_grad_steps=2))  # warm-up
    hp32, hp_low = hp.replace(v_dtype="float32"), hp.replace(v_dtype=args.v_dtype)
    per100 = 100 / len(requests)
    ours, seconds = {}, {}
    if projectors is not None:
        for label, h in (("fp32", hp32), (args.v_dtype, hp_low)):
            q, sec = edit_quality(model, tok, spec, h, requests, recs, templates, projectors)
            ours[label], seconds[label] = q, sec
            print(f"  ours {label}: targets {sec['targets'] * per100:.2f}s/100 edits ({sec['targets'] / len(requests):.3f}"
                  f" s/edit); keys {sec['keys']:.2f}s and solve {sec['solve']:.2f}s for the batch; z loss "
                  f"{q['z_loss']:.4f} (nll {q['z_nll']:.4f}), mean steps {q['z_steps']:.1f}, target most probable "
                  f"{q['most_probable']:.1f}%; edited: efficacy {q['efficacy']:.2f} generalization "
                  f"{q['generalization']:.2f} specificity {q['specificity']:.2f}")
    else:
        for label, h in (("fp32", hp32), (args.v_dtype, hp_low)):
            with Timer(device) as t:
                r = compute_targets(model, tok, spec, requests, templates, h)
            ours[label] = {"z_loss": float(r.loss.mean()), "z_steps": float(r.steps.float().mean())}
            seconds[label] = {"targets": t.s, "z": r.z}
            print(f"  ours {label}: targets {t.s * per100:.2f}s/100 edits, z loss {ours[label]['z_loss']:.4f}")
    k = min(args.reference_edits, len(requests))
    z_ref = []
    with Timer(device) as t_ref:
        for r in requests[:k]:
            z_ref.append(reference_compute_z(model, tok, spec, r, templates, hp32))
    z_ref_t = torch.stack(z_ref)
    ref_per100 = t_ref.s * 100 / max(k, 1)
    z32, zlow = seconds["fp32"]["z"][:k], seconds[args.v_dtype]["z"][:k]
    rel32 = float((z32 - z_ref_t).norm() / z_ref_t.norm())
    rel_low = float((zlow - z_ref_t).norm() / z_ref_t.norm())
    t32, tlow = seconds["fp32"]["targets"] * per100, seconds[args.v_dtype]["targets"] * per100
    print(f"  reference per-request fp32 compute_z: {t_ref.s:.2f}s for {k} requests = {ref_per100:.2f}s/100 edits")
    print(f"  targets speed-up vs reference: fp32 {ref_per100 / t32:.2f}x, {args.v_dtype} {ref_per100 / tlow:.2f}x; "
          f"{args.v_dtype} {tlow / 100:.3f} s/edit; relative |z - z_reference| fp32 {rel32:.1e}, {args.v_dtype} {rel_low:.1e}")
    figures.update(
        targets_edits=len(requests), targets_reference_edits=k, targets_reference_s_per_100=ref_per100,
        targets_fp32_s_per_100=t32, targets_low_s_per_100=tlow, targets_speedup=ref_per100 / tlow,
        targets_speedup_fp32=ref_per100 / t32, targets_s_per_edit=tlow / 100, targets_fp32_s_per_edit=t32 / 100,
        targets_rel_z_fp32_vs_reference=rel32, targets_rel_z_low_vs_reference=rel_low,
        targets_rel_z_low_vs_fp32=float((seconds[args.v_dtype]["z"] - seconds["fp32"]["z"]).norm()
                                        / seconds["fp32"]["z"].norm()),
        quality={label: q for label, q in ours.items()},
    )
    if "keys" in seconds["fp32"]:
        figures.update(keys_s_per_batch=seconds["fp32"]["keys"], solve_s_per_batch=seconds["fp32"]["solve"])


# --- keys ------------------------------------------------------------------------------------------

@torch.no_grad()
def reference_keys(model, tok, spec, requests, templates, layers, batch_rows, fact_token) -> dict[int, torch.Tensor]:
    """The reference procedure (``compute_ks`` per layer): for every layer a full-depth forward,
    output layer included, of every request/context-template prompt, the key read at the subject's
    last token, averaged within each template group, then over the groups. Layer -> (u, d_k)."""
    flat = flat_templates(templates)
    prompts = subject_prompts(tok, request_prompts(requests, flat), [r.subject for r in requests for _ in flat],
                              fact_token)
    device = next(model.parameters()).device
    sizes = [len(g) for g in templates]
    out = {}
    for layer in layers:
        name, rows = spec.mlp_out_name(layer), []
        for s in range(0, len(prompts), batch_rows):
            chunk = prompts[s : s + batch_rows]
            ids, mask = right_pad([p.ids for p in chunk], pad_id(tok), device)
            with capture(model, inputs_of=[name]) as store:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            rows.append(store["in:" + name][torch.arange(len(chunk)), torch.tensor([p.lookup for p in chunk])].float())
        k = torch.cat(rows).view(len(requests), len(flat), -1)  # (u, T, d_k)
        out[layer] = torch.stack([g.mean(1) for g in k.split(sizes, dim=1)]).mean(0)  # (u, d_k)
    return out


def bench_keys(model, tok, spec, hp, records, args, device, figures) -> None:
    from alphaedit import requests_from_counterfact
    from alphaedit.keys import subject_representations

    requests = requests_from_counterfact(records[: args.edits])
    layers = list(hp.layers)
    templates = sample_context_templates(model, tok, hp.template_prefixes, hp.template_samples_per_prefix,
                                         hp.template_length, hp.template_top_k, hp.template_seed)
    subject_representations(model, tok, spec, requests[:2], templates, [layers[0]], layers[-1])  # warm-up
    ours = {}
    with Timer(device) as t:
        for layer in layers:  # as the editor does: one call per layer (the model changes between them)
            ours[layer] = subject_representations(model, tok, spec, requests, templates, [layer], layers[-1],
                                                  hp.prompt_batch_size, hp.fact_token).keys[layer]
    k = min(args.keys_reference_edits, len(requests))
    with Timer(device) as t_ref:
        ref = reference_keys(model, tok, spec, requests[:k], templates, layers, hp.prompt_batch_size, hp.fact_token)
    diff = max(float((ours[la][:k] - ref[la]).norm() / ref[la].norm()) for la in layers)
    per100, ref_per100 = t.s * 100 / len(requests), t_ref.s * 100 / k
    print(f"keys: {len(requests)} edits x {len(flat_templates(templates))} context templates, layers {layers}: ours "
          f"{t.s:.2f}s = {per100:.2f}s/100 edits; reference full-depth pass per prompt per layer (on {k} edits) "
          f"{t_ref.s:.2f}s = {ref_per100:.2f}s/100 edits; speed-up {ref_per100 / per100:.2f}x; "
          f"max relative |K ours - reference| {diff:.1e}")
    figures.update(keys_edits=len(requests), keys_s_per_100_edits=per100, keys_reference_edits=k,
                   keys_reference_s_per_100_edits=ref_per100, keys_speedup=ref_per100 / per100,
                   keys_max_rel_diff=diff)


# --- 4. evaluation ------------------------------------------------------------------------------------

@torch.no_grad()
def per_pair_scores(model, tok, prompts, targets, batch_size=64) -> torch.Tensor:
    """The previous score_targets: one padded row per pair, the output layer at every position."""
    p_ids, t_ids = encode(tok, prompts), encode(tok, targets, add_special_tokens=False)
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), batch_size):
        ps, ts = p_ids[s : s + batch_size], t_ids[s : s + batch_size]
        ids, mask = right_pad([a + b for a, b in zip(ps, ts, strict=True)], pad_id(tok), device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        for row, (a, b) in enumerate(zip(ps, ts, strict=True)):
            pos = torch.arange(len(a) - 1, len(a) - 1 + len(b), device=device)
            logp = torch.log_softmax(logits[row, pos].float(), dim=-1)
            out.append(-logp.gather(1, torch.tensor(b, device=device)[:, None])[:, 0].mean().cpu())
    return torch.stack(out)


def bench_eval(model, tok, dataset, args, device, figures) -> None:
    from alphaedit.scoring import score_targets
    from eval.datasets import load_counterfact
    from eval.rewrite import counterfact_probability_scores

    records = load_counterfact(dataset, limit=args.eval_records).records
    prompts = [p for r in records for p in (*r.rewrite_prompts, *r.paraphrase_prompts, *r.neighborhood_prompts)]
    news = [r.request.target_new for r in records for _ in (*r.rewrite_prompts, *r.paraphrase_prompts,
                                                            *r.neighborhood_prompts)]
    trues = [r.request.target_true for r in records for _ in (*r.rewrite_prompts, *r.paraphrase_prompts,
                                                              *r.neighborhood_prompts)]
    counterfact_probability_scores(model, tok, records[:2])  # warm-up
    with Timer(device) as t:
        counterfact_probability_scores(model, tok, records)
    n = len(prompts)
    exact = score_targets(model, tok, prompts + prompts, news + trues).nll
    with Timer(device) as t_torch:
        plain = score_targets(model, tok, prompts + prompts, news + trues, onednn=False).nll
    flips_torch = float(((exact[:n] < exact[n:]) != (plain[:n] < plain[n:])).float().mean())
    print(f"eval fp32 with PyTorch's own linears (onednn=False): {t_torch.s * 100 / len(records):.2f}s/100 records, "
          f"max |NLL - oneDNN NLL| {float((plain - exact).abs().max()):.1e}, outcomes that differ {flips_torch * 100:.2f}%")
    figures.update(eval_torch_linear_s_per_100_records=t_torch.s * 100 / len(records),
                   eval_onednn_max_nll_diff=float((plain - exact).abs().max()), eval_onednn_flipped_tests=flips_torch)
    with Timer(device) as t_low:
        low = score_targets(model, tok, prompts + prompts, news + trues, dtype=args.eval_dtype).nll
    flips = float(((exact[:n] < exact[n:]) != (low[:n] < low[n:])).float().mean())
    print(f"eval {args.eval_dtype} (opt-in): {t_low.s * 100 / len(records):.2f}s/100 records, max |NLL - fp32 NLL| "
          f"{float((low - exact).abs().max()):.1e}, probability-test outcomes that differ {flips * 100:.2f}%")
    figures.update(eval_low_s_per_100_records=t_low.s * 100 / len(records),
                   eval_low_max_nll_diff=float((low - exact).abs().max()), eval_low_flipped_tests=flips)
    k = min(args.eval_reference_records, len(records))
    n_ref = sum(1 + len(r.paraphrase_prompts) + len(r.neighborhood_prompts) for r in records[:k])
    pairs_p, pairs_t = prompts[:n_ref] * 2, news[:n_ref] + trues[:n_ref]
    ours = score_targets(model, tok, pairs_p, pairs_t).nll
    with Timer(device) as t_ref:
        ref = per_pair_scores(model, tok, pairs_p, pairs_t)
    diff = float((ours - ref).abs().max())
    per100, ref_per100 = t.s * 100 / len(records), t_ref.s * 100 / k
    print(f"eval: {len(records)} CounterFact records, {len(prompts)} prompts x 2 targets: ours {per100:.2f}s/100 "
          f"records; per-pair forwards (on {k} records) {ref_per100:.2f}s/100 records; speed-up {ref_per100 / per100:.2f}x; "
          f"max |NLL ours - per-pair| {diff:.1e}")
    figures.update(eval_records=len(records), eval_s_per_100_records=per100, eval_reference_records=k,
                   eval_reference_s_per_100_records=ref_per100, eval_speedup=ref_per100 / per100, eval_max_nll_diff=diff)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
