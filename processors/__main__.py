"""`python -m processors [worker]`: run the stream processors as a Faust worker (SIGTERM stops it cleanly).

SMC_DEBUG_LOGGERS=aiokafka.consumer,faust.tables.recovery turns on DEBUG for just those loggers (the rest
stays at --loglevel): the way to look inside a rebalance without drowning in every library's debug output.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from infra.logs import apply_format
from infra.settings import load_settings
from schemas import topic_name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m processors")
    ap.add_argument("command", nargs="?", choices=["worker"], default="worker",
                    help="worker (the default and only command): run the stream processors until SIGTERM")
    ap.add_argument("--config", default=None, help="optional TOML settings file")
    ap.add_argument("--loglevel", default="warning")
    args = ap.parse_args(argv)
    import faust
    from processors.app import create_app
    from processors.diagnostics import install_sigusr1_dump
    from processors.gc_tuning import freeze_startup_objects
    from infra.kafka_io import TopicMismatch, ensure_exact_topics, ensure_topics
    settings = load_settings(args.config)
    app = create_app(settings)
    # topics before tables: every topic and changelog exists, with its partitions, before Faust subscribes
    try:
        ensure_topics(settings, ["klines", "signals", "dlq"])
        ensure_exact_topics(settings, {n: p for n, p in app.smc_changelogs.items()}, {"cleanup.policy": "compact"})
        ensure_exact_topics(settings, {topic_name("klines", settings.namespace): settings.partitions})
    except TopicMismatch as exc:
        print(f"processors worker: {exc}", file=sys.stderr)
        return 2
    debug_loggers = [n for n in os.environ.get("SMC_DEBUG_LOGGERS", "").split(",") if n]
    level = args.loglevel.upper()

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, _level: int) -> None:
            # Faust's hook once its handlers exist: SMC_LOG_FORMAT=json gives them the JSON formatter
            apply_format(logger, "worker", settings.namespace)
            logger.setLevel(level)
            for name in debug_loggers:
                logging.getLogger(name).setLevel(logging.DEBUG)

    logging.getLogger("faust").setLevel(level)

    @app.task
    async def _diagnostics():   # `kill -USR1 <pid>` logs where every coroutine waits
        install_sigusr1_dump(asyncio.get_running_loop())

    @app.task
    async def _settle_gc():     # short full GC passes: the start-up objects are never garbage
        logging.getLogger("smc.processors").info("gc: %d start-up objects frozen", freeze_startup_objects())

    if settings.metrics_port:   # /metrics from the stats the agent keeps (processors/metrics.py), /health, /ready
        from infra.metrics import serve
        from processors.metrics import collector, probes
        try:
            serve(settings.metrics_port, collector(lambda: app.smc_stats), settings.metrics_addr,
                  probes(lambda: app.smc_stats, app.smc_refreshed))
        except OSError as exc:
            print(f"processors worker: cannot serve metrics on {settings.metrics_addr}:{settings.metrics_port} "
                  f"(SMC_METRICS_PORT): {exc.strerror}", file=sys.stderr)
            return 2

    worker = Worker(app, loglevel="debug" if debug_loggers else args.loglevel, quiet=True, redirect_stdouts=False)
    if not sys.stdout.isatty():   # a log file: no progress spinner, whose cursor codes would land in it
        worker.spinner = None
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
