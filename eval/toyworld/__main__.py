"""``python -m eval.toyworld {build,check}``: build the toy world, or verify the shipped one."""

from __future__ import annotations

import argparse
import sys
import time

from eval.cli import add_log_level, cli_edge
from eval.toyworld.build import MIN_RECALL, ArtifactMismatchError, build, measure_recall, verify_files
from eval.toyworld.paths import ARTIFACTS_DIR
from eval.toyworld.train import TrainSpec
from eval.toyworld.world import WorldSpec


def _print_recall(rec: dict) -> None:
    print(f"{'':<22}{'recall':>8}")
    for rel, value in rec["per_relation"].items():
        print(f"relation {rel:<13}{value:>8.4f}")
    for form, value in rec["per_form"].items():
        print(f"form {form:<17}{value:>8.4f}")
    print(f"{'overall':<22}{rec['overall']:>8.4f}   ({rec['n_prompts']} prompts, threshold {MIN_RECALL})")


@cli_edge
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.toyworld", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="generate datasets, train tokenizer + model, write artifacts (20-30 min)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=str(ARTIFACTS_DIR))
    b.add_argument("--max-steps", type=int, default=TrainSpec.max_steps)
    sub.add_parser("check", help="verify shipped artifacts against the manifest and re-measure recall")
    add_log_level(parser)
    args = parser.parse_args(argv)

    if args.cmd == "build":
        from pathlib import Path

        manifest = build(Path(args.out), WorldSpec(seed=args.seed),
                         TrainSpec(seed=args.seed, max_steps=args.max_steps))
        _print_recall(manifest["recall"])
        print("probes:", manifest["probes"])
        print(f"build took {manifest['build_seconds']} s; artifacts in {args.out}")
        return 0 if manifest["recall"]["overall"] >= MIN_RECALL else 1

    t0 = time.time()
    try:
        manifest = verify_files()
    except ArtifactMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"toy world: {len(manifest['files'])} files match manifest.json "
          f"({manifest['counts']['subjects']} subjects, {manifest['counts']['facts']} facts, "
          f"model {manifest['model']['parameters']:,} parameters)")
    rec = measure_recall()
    _print_recall(rec)
    print(f"manifest says {manifest['recall']['overall']:.4f}; probes at build: {manifest['probes']}")
    print(f"checked in {time.time() - t0:.1f} s")
    return 0 if rec["overall"] >= MIN_RECALL else 1


if __name__ == "__main__":
    sys.exit(main())
