"""python -m ingest {live,replay,audit} — settings from SMC_* env / --config (infra.settings).

  python -m ingest live   [--symbols BTCUSDT,ETHUSDT] [--interval 1m] [--per-shard 50]
                          [--rotate-after 84600] [--grace 10] [--reconcile 900] [--refresh 3600]
                          [--since T] [--max-backfill 72]      # resumes from the klines topic
  python -m ingest replay --files ingest/recorded/klines_1h.parquet --interval 1h
                          [--symbols BTCUSDT,ETHUSDT] [--start 2026-05-01] [--end 2026-06-01]
                          [--speed 0 (as fast as possible) | 60 (one minute per second)] [--no-progress]
  python -m ingest audit  [--topics klines,signals,orders,fills,positions,equity,dlq] [--until-idle [--idle 5]]

SIGTERM / SIGINT stop `live` and `audit` cleanly (connections closed, producer flushed, offsets committed).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading


def _csv(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ingest", description="SMC-Quant market-data ingest")
    p.add_argument("--config", help="TOML settings file (else SMC_* environment variables)")
    p.add_argument("--namespace", help="topic namespace (overrides SMC_NAMESPACE)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    live = sub.add_parser("live", help="live Binance kline ingest (WebSocket shards + REST gap backfill)")
    live.add_argument("--symbols", help="restrict the universe to these symbols (comma separated)")
    live.add_argument("--interval", help="kline interval (default: settings.interval)")
    live.add_argument("--per-shard", type=int, help="symbols per connection (default settings.symbols_per_shard)")
    live.add_argument("--rotate-after", type=float, default=23.5 * 3600, help="connection rotation age, s")
    live.add_argument("--grace", type=float, default=10.0, help="silence grace before backfill, s")
    live.add_argument("--reconcile", type=float, default=900.0, help="universe reconcile period, s")
    live.add_argument("--refresh", type=float, default=3600.0, help="universe refresh period, s")
    live.add_argument("--since", help="bars before this time (ms or ISO) are not wanted; symbols with no bar in "
                                      "the klines topic start here (default: the last closed bar)")
    live.add_argument("--max-backfill", type=float, default=72.0,
                      help="hours: resume from the klines topic at most this far back (default 72)")

    rep = sub.add_parser("replay", help="replay recorded klines (Parquet/CSV) into the klines topic")
    rep.add_argument("--files", nargs="+", required=True)
    rep.add_argument("--symbols", help="comma separated (default: every symbol in the files)")
    rep.add_argument("--start", help="first open_time (ms or ISO 8601, UTC)")
    rep.add_argument("--end", help="end open_time, exclusive (ms or ISO 8601, UTC)")
    rep.add_argument("--interval", default="1m", help="interval of the files (1m default; 1h for klines_1h*)")
    rep.add_argument("--speed", type=float, default=0.0, help="0 = as fast as possible; S = S x real time")
    rep.add_argument("--symbol", help="symbol for files without a symbol column or name")
    rep.add_argument("--no-progress", action="store_true")

    aud = sub.add_parser("audit", help="sink topics into the ClickHouse audit trail")
    aud.add_argument("--topics", default="klines,dlq")
    aud.add_argument("--until-idle", action="store_true", help="stop once caught up (batch job)")
    aud.add_argument("--idle", type=float, default=5.0)
    return p


def _settings(args):
    from infra.settings import load_settings
    s = load_settings(args.config)
    if args.namespace is not None:
        s = s.with_(namespace=args.namespace)
    return s


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = _settings(args)
    from infra.logs import setup_logging     # text, or JSON lines with SMC_LOG_FORMAT=json
    setup_logging("sink" if args.cmd == "audit" else "ingest", logging.DEBUG if args.verbose else logging.INFO,
                  run=settings.namespace)
    from infra.kafka_io import BrokerUnavailable
    try:
        return _run(args, settings)
    except BrokerUnavailable as exc:   # the topics could not even be listed: one line, not a traceback
        print(f"ingest {args.cmd}: {exc}", file=sys.stderr)
        return 2


def _run(args, settings) -> int:

    if args.cmd == "replay":
        from ingest.replay import ReplayError, replay
        try:
            st = replay(settings, args.files, _csv(args.symbols), args.start, args.end, args.interval,
                        args.speed, progress=not args.no_progress, symbol=args.symbol)
        except ReplayError as exc:
            print(f"replay: {exc}", file=sys.stderr)
            return 2
        print(f"replayed {st.produced} klines of {st.symbols} symbols ({st.rejected} rejected to dlq) "
              f"in {st.seconds:.1f} s")
        return 0

    if args.cmd == "audit":
        from ingest.audit_sink import run
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        st = run(settings, _csv(args.topics), until_idle=args.until_idle, idle_seconds=args.idle, stop=stop)
        print(f"audit: consumed {st.consumed}, inserted {st.inserted}, rejected {st.rejected}")
        return 0

    from ingest.replay import parse_time
    from ingest.service import LiveIngest
    svc = LiveIngest(settings, interval=args.interval, symbols=_csv(args.symbols), per_shard=args.per_shard,
                     rotate_after_s=args.rotate_after, grace_ms=int(args.grace * 1000),
                     reconcile_s=args.reconcile, refresh_s=args.refresh, start_ms=parse_time(args.since),
                     max_backfill_s=args.max_backfill * 3600)

    if settings.metrics_port:   # /metrics, /health, /ready on port + 2 (the worker has the port, the executor + 1)
        from infra.metrics import serve
        from ingest.metrics import collector, probes
        try:
            serve(settings.metrics_port + 2, collector(svc.figures), settings.metrics_addr,
                  probes(svc.figures, svc.heartbeat))
        except OSError as exc:
            print(f"ingest live: cannot serve metrics on {settings.metrics_addr}:{settings.metrics_port + 2} "
                  f"(SMC_METRICS_PORT + 2): {exc.strerror}", file=sys.stderr)
            return 2

    async def run_live():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await svc.run(stop)

    from ingest.service import IngestFatal
    try:
        asyncio.run(run_live())
    except IngestFatal as exc:
        print(f"ingest live: stopped on a fault it cannot handle: {exc}", file=sys.stderr)
        return 1
    logging.getLogger("smc.ingest").info("stopped: %s", svc.snapshot()["ingest"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
