"""`python -m processors worker`: run the stream processors as a Faust worker (SIGTERM stops it cleanly)."""
from __future__ import annotations

import argparse
import logging
import sys

from infra.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m processors")
    ap.add_argument("command", choices=["worker"])
    ap.add_argument("--config", default=None, help="optional TOML settings file")
    ap.add_argument("--loglevel", default="warning")
    args = ap.parse_args(argv)
    import faust
    from processors.app import create_app
    settings = load_settings(args.config)
    app = create_app(settings)
    logging.getLogger("faust").setLevel(args.loglevel.upper())
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
