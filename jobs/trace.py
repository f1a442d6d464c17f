"""Causal trace of a model's MLP states over real facts: which layers to edit (alphaedit.trace).

    python -m jobs.trace [--model DIR] [--dataset counterfact.json] [--facts 60] [--window 5]
                         [--noise 4] [--dtype bfloat16] [--out results/trace.json]

Defaults: the installed real model and the real-world CounterFact file. Only facts whose clean
p(true first token) is at least 0.1 are traced (a fact the model does not recall has nothing to
restore). Prints the mean indirect effect per layer (and the best window of 5 consecutive layers);
writes the per-fact values as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from alphaedit.models import load_model, spec_for
from alphaedit.tokens import continuation_ids
from alphaedit.trace import embedding_noise_std, trace_fact
from eval.cli import add_log_level, cli_edge
from jobs.progress import new_bar


def subject_span(tok, prompt: str, subject: str) -> tuple[list[int], tuple[int, int]]:
    """Token ids of ``prompt`` filled with ``subject`` and the subject's [start, end) positions.

    The end is the editing path's own lookup (:func:`alphaedit.prompts.subject_prompts`: the
    subject's last token + 1); the start is where the tokens of the prefix before "{}" end.
    """
    from alphaedit.prompts import subject_prompts
    from alphaedit.tokens import encode

    (sp,) = subject_prompts(tok, [prompt], [subject])
    prefix = prompt[: prompt.index("{}")].rstrip()
    start = len(encode(tok, [prefix])[0])
    return sp.ids, (min(start, sp.lookup), sp.lookup + 1)


@cli_edge(level="warning")
def main(argv: list[str] | None = None) -> int:
    from eval.realworld.paths import COUNTERFACT, require_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--dataset", default=str(COUNTERFACT))
    p.add_argument("--facts", type=int, default=60)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--noise", type=int, default=4)
    p.add_argument("--noise-scale", type=float, default=3.0)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default="results/trace.json")
    add_log_level(p, "warning")
    args = p.parse_args(argv)
    model, tok = load_model(args.model or str(require_model()), dtype=args.dtype)
    spec = spec_for(model)
    std = args.noise_scale * embedding_noise_std(model)
    records = json.loads(Path(args.dataset).read_text())
    rows = []
    bar = new_bar(args.facts, "facts traced", "fact")
    for rec in records:
        if len(rows) >= args.facts:
            break
        rw = rec["requested_rewrite"]
        ids, span = subject_span(tok, rw["prompt"], rw["subject"])
        # the first token of the true object as the model reads it after the prompt (not tok(" " + target)
        # alone, which starts with a spurious "▁" for a SentencePiece tokenizer: alphaedit.tokens)
        (cont,) = continuation_ids(tok, [rw["prompt"].format(rw["subject"])], [" " + rw["target_true"]["str"].strip()],
                                   prompt_ids=[ids])
        target = cont[0]
        res = trace_fact(model, spec, torch.tensor(ids), span, target, std, window=args.window, n_noise=args.noise)
        if res.p_clean < 0.1:
            continue
        rows.append({"case_id": rec["case_id"], "relation_id": rw["relation_id"], "p_clean": res.p_clean,
                     "p_corrupt": res.p_corrupt, "effect": [round(float(x), 5) for x in res.indirect_effect]})
        bar.update(1)
    bar.close()
    if not rows:
        print("no fact with clean p >= 0.1", file=sys.stderr)
        return 1
    effect = torch.tensor([r["effect"] for r in rows]).mean(0)
    print(f"{len(rows)} facts, clean p {sum(r['p_clean'] for r in rows) / len(rows):.3f}, corrupted p "
          f"{sum(r['p_corrupt'] for r in rows) / len(rows):.3f}; MLP window {args.window} at the subject's last token")
    print("layer  mean indirect effect")
    for layer, e in enumerate(effect.tolist()):
        print(f"{layer:>5}  {e:+.4f}  {'#' * max(0, int(e * 200))}")
    best = max(range(len(effect) - 4), key=lambda i: float(effect[i:i + 5].sum()))
    print(f"best 5 consecutive layers: {best}-{best + 4}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"window": args.window, "noise_std": std, "mean_effect": effect.tolist(),
                               "facts": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
