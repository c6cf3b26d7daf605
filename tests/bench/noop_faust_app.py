"""The Faust ceiling for the processors benchmark: a no-op agent over `<ns>.klines`.

Same Faust settings (processors.app.app_config) and consumer guards as processors/app.py, and batching by
SMC_NOOP_BATCHING: `ready` (processors.faust_batches.ReadyBatches of BATCH_MAX, as the processors) or `take_events` (faust's, BATCH_MAX within
NOOP_WITHIN s), but no decoding, no state table, no signals: it only counts. It writes
the same kind of stats file as the processors worker ({klines, signals, rejects, batches}, every 0.5 s, to
SMC_STATS_FILE), plus exact wall-clock stamps of the first and last batch (t_first, t_last, first_batch),
so the benchmark can time consumption without the 0.5 s granularity of the file; with SMC_NOOP_LATENCY=1 also
every kline's latency from its CreateTime to the agent (lat_ms), the floor under the processors' live latency.

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
from processors.app import BATCH_MAX, app_config  # noqa: E402
from processors.faust_batches import ReadyBatches  # noqa: E402
from processors.gc_tuning import freeze_startup_objects  # noqa: E402
from schemas import topic_name  # noqa: E402


NOOP_WITHIN = 0.02
BATCHINGS = ("ready", "take_events")
TRANSPORTS = ("kafka", "confluent")   # faust broker URL schemes: aiokafka, librdkafka


def create_noop_app(settings: Settings, batching: str = "ready", transport: str = "kafka") -> faust.App:
    if batching not in BATCHINGS:
        raise ValueError(f"SMC_NOOP_BATCHING={batching!r}: expected one of {BATCHINGS}")
    if transport not in TRANSPORTS:
        raise ValueError(f"SMC_NOOP_TRANSPORT={transport!r}: expected one of {TRANSPORTS}")
    config = app_config(settings)
    if transport == "kafka":
        faust_guards.install()   # the same consumer code path as the processors (the guards patch aiokafka's)
    else:                        # faust's librdkafka driver (issue 17: measured against aiokafka)
        config["broker"] = f"confluent://{settings.kafka_bootstrap}"
    app = faust.App(topic_name(f"bench-noop-{batching}-{transport}", settings.namespace), **config)
    klines = app.topic(topic_name("klines", settings.namespace), key_type=bytes, value_type=bytes,
                       value_serializer="raw", key_serializer="raw", partitions=settings.partitions)
    stats = {"klines": 0, "signals": 0, "rejects": 0, "batches": 0, "t_first": 0.0, "t_last": 0.0, "first_batch": 0}
    lat = stats["lat_ms"] = [] if os.environ.get("SMC_NOOP_LATENCY") else None

    @app.agent(klines, concurrency=1)
    async def count_klines(stream):
        ready = ReadyBatches(stream, BATCH_MAX) if batching == "ready" else None
        batches = ready if ready is not None else stream.take_events(BATCH_MAX, within=NOOP_WITHIN)
        async for batch in batches:
            if ready is not None:
                await ready.ack(batch)
            now = time.time()
            if lat is not None:   # kline produced (its CreateTime) -> handed to this agent, ms
                lat.extend(round(now * 1000 - e.message.timestamp * 1000, 2) for e in batch)
            if not stats["t_first"]:
                stats["t_first"] = now
                stats["first_batch"] = len(batch)
            stats["t_last"] = now
            stats["klines"] += len(batch)
            stats["batches"] += 1

    @app.task
    async def _settle_gc():     # as `python -m processors worker` does
        freeze_startup_objects()

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
    app = create_noop_app(load_settings(), os.environ.get("SMC_NOOP_BATCHING", "ready"),
                          os.environ.get("SMC_NOOP_TRANSPORT", "kafka"))
    logging.getLogger("faust").setLevel(args.loglevel.upper())
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
