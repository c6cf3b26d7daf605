"""The Faust ceiling for the processors benchmark: a no-op agent over `<ns>.klines`.

Same Faust settings (processors.app.app_config), consumer guards and batching (take_events of BATCH_MAX within
BATCH_WITHIN) as processors/app.py, but no decoding, no state table, no signals: it only counts. It writes
the same kind of stats file as the processors worker ({klines, signals, rejects, batches}, every 0.5 s, to
SMC_STATS_FILE), plus exact wall-clock stamps of the first and last batch (t_first, t_last, first_batch),
so the benchmark can time consumption without the 0.5 s granularity of the file.

    SMC_NAMESPACE=... SMC_STATS_FILE=... python tests/bench/noop_faust_app.py worker --loglevel warning
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import faust  # noqa: E402
import orjson  # noqa: E402

from infra.settings import Settings, load_settings  # noqa: E402
from processors import faust_guards  # noqa: E402
from processors.app import BATCH_MAX, BATCH_WITHIN, app_config  # noqa: E402
from schemas import topic_name  # noqa: E402


def create_noop_app(settings: Settings) -> faust.App:
    faust_guards.install()   # the same consumer code path as the processors
    app = faust.App(topic_name("bench-noop", settings.namespace), **app_config(settings))
    klines = app.topic(topic_name("klines", settings.namespace), key_type=bytes, value_type=bytes,
                       value_serializer="raw", key_serializer="raw", partitions=settings.partitions)
    stats = {"klines": 0, "signals": 0, "rejects": 0, "batches": 0, "t_first": 0.0, "t_last": 0.0, "first_batch": 0}

    @app.agent(klines, concurrency=1)
    async def count_klines(stream):
        async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN):
            now = time.time()
            if not stats["t_first"]:
                stats["t_first"] = now
                stats["first_batch"] = len(batch)
            stats["t_last"] = now
            stats["klines"] += len(batch)
            stats["batches"] += 1

    stats_file = os.environ.get("SMC_STATS_FILE")
    if stats_file:
        @app.timer(0.5)
        async def _dump_stats():
            tmp = stats_file + ".tmp"
            with open(tmp, "wb") as fh:
                fh.write(orjson.dumps(stats))
            os.replace(tmp, stats_file)

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="noop_faust_app")
    ap.add_argument("command", choices=["worker"])
    ap.add_argument("--loglevel", default="warning")
    args = ap.parse_args(argv)
    app = create_noop_app(load_settings())
    logging.getLogger("faust").setLevel(args.loglevel.upper())
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
