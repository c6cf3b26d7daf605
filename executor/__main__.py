"""`python -m executor run [--until-idle] [--idle-s S] [--broker paper|binance] [--live]`
   `python -m executor flatten SYMBOL|*`   (operator command to the running executor)
   `python -m executor resume`             (new entries again after a halt: auth/ban/repeated exchange errors)

Settings come from the environment (SMC_*, see infra.settings) and the executor's own knobs from
SMC_EXEC_* (see executor.config). Live trading needs BOTH SMC_LIVE_TRADING=1 and --live, plus
BINANCE_API_KEY / BINANCE_API_SECRET in the environment; otherwise the Binance broker uses the
testnet URL (settings.binance_trade_url).
"""
from __future__ import annotations

import argparse
import logging
import sys

from infra.logs import setup_logging
from infra.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m executor")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="consume signals, trade, produce orders/fills/positions/equity")
    run.add_argument("--until-idle", action="store_true", help="stop when no signal arrived for --idle-s seconds")
    run.add_argument("--idle-s", type=float, default=5.0)
    run.add_argument("--broker", choices=("paper", "binance"), default=None)
    run.add_argument("--live", action="store_true", help="real money: also needs SMC_LIVE_TRADING=1")
    fl = sub.add_parser("flatten", help="close the positions of a symbol (or *) at their next bar")
    fl.add_argument("symbol")
    sub.add_parser("resume", help="allow new entries again after the executor halted trading")
    args = ap.parse_args(argv)
    settings = load_settings()
    setup_logging("executor", logging.INFO, run=settings.namespace)   # text, or JSON lines (SMC_LOG_FORMAT=json)
    if args.cmd in ("flatten", "resume"):
        from executor.service import send_command
        from infra.kafka_io import BrokerUnavailable, require_broker
        try:
            require_broker(settings)     # seconds, not the admin client's 30 s timeout
        except BrokerUnavailable as exc:
            print(f"executor {args.cmd}: {exc}", file=sys.stderr)
            return 2
        send_command(settings, {"cmd": "flatten", "symbol": args.symbol} if args.cmd == "flatten" else {"cmd": "resume"})
        return 0
    if args.broker:
        settings = settings.with_(broker=args.broker)
    if args.live and not settings.live_trading:
        print("--live needs SMC_LIVE_TRADING=1 as well", file=sys.stderr)
        return 2
    from executor.brokers.base import BrokerError
    from executor.service import run_executor
    from infra.kafka_io import BrokerUnavailable
    try:
        stats = run_executor(settings, until_idle=args.until_idle, idle_s=args.idle_s, live=args.live,
                             install_signals=True)
    except BrokerUnavailable as exc:   # before any work: the topics could not even be listed
        print(f"executor run: {exc}", file=sys.stderr)
        return 2
    except BrokerError as exc:         # the broker could not be built: keys, URL, settings beyond the bound
        print(f"executor run: {exc}", file=sys.stderr)
        return 2
    print(f"executor: {stats.signals} signals, {stats.orders} order records, {stats.rejects} rejects, "
          f"{stats.batches} transactions, {stats.signals_per_s:.0f} signals/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
