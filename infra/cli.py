"""`smc`: the one command users run. Subcommands wrap the parts; `smc run` is the main job."""
from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from infra.pipeline import DEFAULT_DAYS, DEFAULT_INTERVAL
from infra.settings import REPO_ROOT, load_settings


def _interval_of(files: list[str] | None, given: str | None) -> str:
    if given:
        return given
    if not files:
        return DEFAULT_INTERVAL
    name = " ".join(files)
    m = re.search(r"[-_](\d+[mhdw])\b|[-_](\d+[mhdw])[-_.]", name)
    return (m.group(1) or m.group(2)) if m else "1m"


def cmd_run(args) -> int:
    from infra.pipeline import PipelineError, plan_backtest, run_backtest
    console = Console()
    settings = load_settings(args.config)
    if args.scorer == "heuristic":
        settings = settings.with_(model_path="")
    if args.live_data:
        from infra.live import run_live
        return run_live(settings, console, trade_live=args.live,
                        symbols=args.symbols.split(",") if args.symbols else None)
    files = args.files or None
    interval = _interval_of(files, args.interval)
    try:
        plan = plan_backtest(files, args.symbols.split(",") if args.symbols else None, args.start, args.end,
                             None if args.full else args.days, None if args.full else args.top, interval)
        period = " .. ".join(datetime.fromtimestamp(t / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
                             for t in (plan.start, plan.end))
        console.print(f"[bold]Backtest[/] {len(plan.symbols)} symbols x {interval} (HTF {settings.htf_factor} x {interval}), "
                      f"{period} UTC, {plan.klines:,} klines ({', '.join(Path(f).name for f in plan.files)}); "
                      f"scorer: {'heuristic' if not settings.model_path else settings.model_path}")
        res = run_backtest(settings, plan, explicit_broker="SMC_KAFKA_BOOTSTRAP" in os.environ, console=console,
                           report_dir=args.report_dir, progress=not args.no_progress)
    except PipelineError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    total = sum(res.timings.values())
    console.print(f"pipeline: {res.counts}  timings: " + ", ".join(f"{k}={v:.1f}s" for k, v in res.timings.items())
                  + f"  ({res.plan.klines / max(res.timings.get('processors_s', 1e-9), 1e-9):,.0f} klines/s through Faust,"
                    f" {total:.0f}s in all)")
    return 0


# --- smc backtest (issue 16): the main job's code in one process ------------------------------------
def cmd_backtest(args) -> int:
    from infra.backtest import run_backtest_in_process
    from infra.pipeline import PipelineError, plan_backtest
    console = Console()
    settings = load_settings(args.config)
    if args.scorer == "heuristic":
        settings = settings.with_(model_path="")
    interval = _interval_of(args.files, args.interval)
    try:
        plan = plan_backtest(args.files or None, args.symbols.split(",") if args.symbols else None, args.start,
                             args.end, args.days, args.top, interval)
        console.print(f"[bold]Backtest (in process)[/] {len(plan.symbols)} symbols x {interval}, {plan.klines:,} klines; "
                      f"scorer: {'heuristic' if not settings.model_path else settings.model_path}")
        res = run_backtest_in_process(settings, plan, console=console, report_dir=args.report_dir,
                                      audit=not args.no_audit, engine_form=args.engine)
    except PipelineError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    total = res.timings["total_s"]
    console.print(f"backtest: {res.counts}  timings: " + ", ".join(f"{k}={v:.1f}s" for k, v in res.timings.items())
                  + f"  ({plan.klines / max(total, 1e-9):,.0f} klines/s end to end)")
    return 0


def cmd_sweep(args) -> int:
    from pathlib import Path
    from infra.pipeline import PipelineError, plan_backtest
    from infra.sweep import run_sweep, write_report
    console = Console()
    settings = load_settings(args.config).with_(model_path="" if args.scorer == "heuristic" else load_settings(args.config).model_path)
    interval = _interval_of(args.files, args.interval)
    try:
        plan = plan_backtest(args.files or None, args.symbols.split(",") if args.symbols else None, args.start,
                             args.end, args.days, args.top, interval)
        res = run_sweep(settings, plan, workers=args.workers, windows=args.windows)
    except PipelineError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    out = write_report(res, plan, Path(args.report_dir or REPO_ROOT / "reports" / f"sweep-{plan.start}-{plan.end}"))
    console.print(f"sweep: {len(res.configs)} configurations x {len(plan.symbols)} symbols, {plan.klines:,} klines, "
                  f"{res.seconds:.0f} s; chosen {res.configs[res.chosen]} (hourly Sharpe {res.sharpes[res.chosen]:.4f}, "
                  f"{res.trades[res.chosen]} trades)")
    for w in res.walk_forward:
        console.print(f"  walk-forward window {w['window']}: chosen {w['config']} IS Sharpe {w['is_sharpe']:.4f} -> "
                      f"OOS Sharpe {w['oos_sharpe']:.4f}, OOS return {w['oos_return']:.4%}")
    console.print(f"deflated Sharpe ratio {res.dsr:.3f}; PBO (CSCV) {res.pbo:.3f}; OOS mean hourly return "
                  f"{res.oos_mean:.2e} (95% CI {res.oos_ci[0]:.2e} .. {res.oos_ci[1]:.2e}); report {out}/index.html")
    return 0
# --- end smc backtest ----------------------------------------------------------------------------------


def cmd_query(args) -> int:
    from rich.table import Table
    from infra.clickhouse import AuditStore
    settings = load_settings(args.config)
    store = AuditStore(settings.clickhouse_dsn, database=args.db)
    sql = args.sql if args.sql != "-" else sys.stdin.read()
    try:
        cols, rows = store.query(sql)
    except Exception as exc:   # the server's message says what is wrong with the SQL
        Console(stderr=True).print(f"[red]query failed:[/] {str(exc).splitlines()[0][:500]}")
        return 2
    if args.format == "csv":
        import csv
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
        return 0
    t = Table(*cols)
    for r in rows[: args.limit]:
        t.add_row(*[str(v) for v in r])
    Console().print(t)
    if len(rows) > args.limit:
        Console().print(f"({len(rows) - args.limit} more rows)")
    return 0


def cmd_broker(args) -> int:
    from infra import local_broker
    return local_broker.main([args.action, "--port", str(args.port)])


def cmd_replay_topic(args) -> int:
    from infra.topic_replay import replay_and_diff
    settings = load_settings(args.config)
    report = replay_and_diff(settings.with_(namespace=args.source, interval=args.interval), start=args.start,
                             end=args.end, into=args.into)
    Console().print(report.render())
    return 0 if report.identical else 1


def cmd_htf_bars(args) -> int:
    from datetime import datetime, timezone
    from rich.table import Table
    from infra.table_view import htf_bars
    from confluent_kafka import KafkaException
    settings = load_settings(args.config).with_(namespace=args.source)
    try:
        bars = htf_bars(settings, set(args.symbols.split(",")) if args.symbols else None)
    except KafkaException as exc:
        Console(stderr=True).print(f"[red]cannot read from Kafka at {settings.kafka_bootstrap}:[/] {exc.args[0].str()}; "
                                   "a run's topics live on its broker (`smc broker start` starts the local one)")
        return 2
    if not bars:
        Console(stderr=True).print(f"no HTF bars in namespace {args.source!r} (is it a run's namespace?)")
        return 1
    t = Table("symbol", "open (UTC)", "open", "high", "low", "close", "volume", "bars",
              title=f"HTF bars of the processors' windowed table, namespace {args.source!r}")
    for symbol in sorted(bars):
        for b in bars[symbol][-args.last:]:
            t.add_row(symbol, datetime.fromtimestamp(b["open_time"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M"),
                      *(f"{b[k]:.6g}" for k in ("open", "high", "low", "close", "volume")),
                      f"{b['bars']}/{settings.htf_factor}")
    Console().print(t)
    return 0


def _delegate(module: str):
    def run(args) -> int:
        import runpy
        sys.argv = [module] + args.rest
        runpy.run_module(module, run_name="__main__")
        return 0
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="smc", description="SMC-Quant: SMC/ICT signals on Binance USDT-M perpetuals, "
                                 "Kafka + Faust + LightGBM + ClickHouse")
    ap.add_argument("--config", help="optional TOML settings file (else SMC_* environment variables)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="the main job: replay recorded klines through the whole pipeline and report")
    r.add_argument("--files", nargs="*", help="recorded klines (Parquet/CSV); default: ingest/recorded/perps_1m_2025-05.parquet "
                   "(18 Binance USD-M perpetuals, 1m)")
    r.add_argument("--symbols", help="comma-separated symbols (default: all symbols of the files, or --top)")
    r.add_argument("--top", type=int, default=None,
                   help="only the N symbols with the most notional in the day BEFORE the period (point in time)")
    r.add_argument("--days", type=float, default=DEFAULT_DAYS,
                   help=f"the last N days of the data (default {DEFAULT_DAYS:g}: the main job in ~3 min on 2 cores)")
    r.add_argument("--start", help="period start (ISO date or ms)")
    r.add_argument("--end", help="period end, exclusive (ISO date or ms)")
    r.add_argument("--interval", help="bar interval of the files (default: from the file name, e.g. 1m)")
    r.add_argument("--full", action="store_true", help="all symbols and the whole period of the files")
    r.add_argument("--scorer", choices=["model", "heuristic"], default="model",
                   help="model: models/lgbm_smc.txt (default); heuristic: the spec's fallback score")
    r.add_argument("--report-dir", help="where the HTML/PNG report goes (default reports/<run>)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--live-data", action="store_true", help="run live on Binance market data instead of recorded files")
    r.add_argument("--live", action="store_true", help="with --live-data and --broker binance: trade on the REAL exchange")
    r.set_defaults(fn=cmd_run)

    bt = sub.add_parser("backtest", help="research: the main job's code (processors, executor, paper broker) in one "
                        "process, no broker; the same records as `smc run` on the same data")
    bt.add_argument("--files", nargs="*", help="recorded klines (Parquet/CSV); default: ingest/recorded/perps_1m_2025-05.parquet")
    bt.add_argument("--symbols", help="comma-separated symbols (default: all symbols of the files, or --top)")
    bt.add_argument("--top", type=int, default=None,
                    help="the N symbols with the most notional the day before the period (point in time)")
    bt.add_argument("--days", type=float, default=30, help="the last N days of the data (default 30)")
    bt.add_argument("--start", help="period start (ISO date or ms)")
    bt.add_argument("--end", help="period end, exclusive (ISO date or ms)")
    bt.add_argument("--interval", help="bar interval of the files (default: from the file name, e.g. 1m)")
    bt.add_argument("--scorer", choices=["model", "heuristic"], default="model")
    bt.add_argument("--report-dir", help="where the HTML/PNG report goes (default reports/<run>)")
    bt.add_argument("--engine", choices=["batch", "stream"], default="batch",
                    help="SMC columns from the numba batch engine (default; clean input) or the stream processors")
    bt.add_argument("--no-audit", action="store_true", help="count the records only: no ClickHouse, no report")
    bt.set_defaults(fn=cmd_backtest)

    sw = sub.add_parser("sweep", help="research: a grid over the executor's knobs, walk-forward, deflated Sharpe, PBO")
    for name, kw in (("--files", dict(nargs="*")), ("--symbols", {}), ("--top", dict(type=int, default=6)),
                     ("--days", dict(type=float, default=14)), ("--start", {}), ("--end", {}), ("--interval", {}),
                     ("--scorer", dict(choices=["model", "heuristic"], default="heuristic")), ("--report-dir", {}),
                     ("--workers", dict(type=int, default=2)), ("--windows", dict(type=int, default=4))):
        sw.add_argument(name, **kw)
    sw.set_defaults(fn=cmd_sweep)

    q = sub.add_parser("query", help="run SQL against the audit trail (chDB or server, from SMC_CLICKHOUSE_DSN)")
    q.add_argument("sql", help="SQL text, or - for standard input")
    q.add_argument("--db", default="smc_latest",
                   help="database (default smc_latest: views on the last finished run; a run's own is smc_<namespace>)")
    q.add_argument("--format", choices=["table", "csv"], default="table")
    q.add_argument("--limit", type=int, default=200)
    q.set_defaults(fn=cmd_query)

    b = sub.add_parser("broker", help="the local Kafka (KRaft) broker for machines without Docker")
    b.add_argument("action", choices=["start", "stop", "status", "fetch"])
    b.add_argument("--port", type=int, default=9092)
    b.set_defaults(fn=cmd_broker)

    t = sub.add_parser("replay-topic", help="replay a run's klines into an isolated namespace and diff the signals")
    t.add_argument("--source", required=True, help="namespace of the run to replay (e.g. bt-20261125-093000)")
    t.add_argument("--start", help="first bar open time to diff (ISO or ms)")
    t.add_argument("--end", help="end of the diffed range, exclusive (ISO or ms)")
    t.add_argument("--into", help="namespace of the replay (default <source>.replay-<n>)")
    t.add_argument("--interval", default=DEFAULT_INTERVAL,
                   help="bar interval when the run's saved settings are not found (they carry it)")
    t.set_defaults(fn=cmd_replay_topic)

    h = sub.add_parser("htf-bars", help="the M5 (HTF) bars a run's processors keep in their windowed table")
    h.add_argument("--source", required=True, help="namespace of the run (e.g. bt-20261125-093000)")
    h.add_argument("--symbols", help="comma-separated symbols (default: all)")
    h.add_argument("--last", type=int, default=3, help="windows per symbol, newest last (default 3)")
    h.set_defaults(fn=cmd_htf_bars)

    for name, module, helptext in [("ingest", "ingest", "live ingest / file replay / audit sink (python -m ingest)"),
                                   ("worker", "processors", "the Faust stream processors (python -m processors worker)"),
                                   ("executor", "executor", "the executor service (python -m executor)"),
                                   ("model", "models", "train / evaluate the LightGBM model (python -m models)")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(fn=_delegate(module))

    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
