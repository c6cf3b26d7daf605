"""`smc`: the one command users run. Subcommands wrap the parts; `smc run` is the main job."""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from rich.console import Console

from infra.pipeline import DEFAULT_DAYS, DEFAULT_INTERVAL
from infra.settings import REPO_ROOT, SettingsError, describe, load_settings, resolve_settings


# --- user input, checked where it is read: a bad value is an argparse error (exit 2) naming the option ---
def _when(value: str) -> int:
    """--start/--end: an ISO date or datetime (UTC unless it says otherwise) or epoch milliseconds."""
    from infra.pipeline import _ms
    try:
        return _ms(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date: use an ISO date or datetime "
                                         "(2026-11-01, 2026-11-01T12:30, 2026-11-01T12:30+02:00) "
                                         "or epoch milliseconds") from None


def _days(value: str) -> float:
    """--days: a positive number of days (0 used to mean "all the data" without a word)."""
    try:
        days = float(value)
    except ValueError:
        days = float("nan")
    if not days > 0 or days == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of days (e.g. 1, 0.5, 30); "
                                         "all the data: --full (smc run) or --start/--end")
    return days


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


def cmd_compare(args) -> int:
    """`smc compare RUN RUN ...`: the runs' reports side by side on one page."""
    from infra.compare import CompareError, compare_runs
    out = Path(args.out) if args.out else \
        REPO_ROOT / "reports" / ("compare-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))
    try:
        page = compare_runs(args.runs, out)
    except CompareError as exc:
        print(f"smc compare: error: {exc}", file=sys.stderr)
        return 2
    Console().print(f"{len(args.runs)} runs compared: [link=file://{page}]{page}[/]")
    return 0


def cmd_sweep(args) -> int:
    from pathlib import Path
    from infra.pipeline import PipelineError, plan_backtest
    from infra.sweep import baseline_line, run_sweep, write_report
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
    for b in res.baselines:
        console.print(f"  random entries, same exits, {baseline_line(b)}")
    console.print(f"deflated Sharpe ratio {res.dsr:.3f}; PBO (CSCV) {res.pbo:.3f}; OOS mean hourly return "
                  f"{res.oos_mean:.2e} (95% CI {res.oos_ci[0]:.2e} .. {res.oos_ci[1]:.2e}); report {out}/index.html")
    return 0
# --- end smc backtest ----------------------------------------------------------------------------------


# --- smc chart (issue 18): one symbol of a run on price, with the SMC geometry and the trades ------------
def cmd_chart(args) -> int:
    from infra.chart import ChartRangeError, chart_html
    from infra.chart_data import RunNotFound, load_chart_input, screenshot
    from infra.clickhouse import AuditStore, exclusive, run_database
    err = Console(stderr=True)
    settings = load_settings(args.config)
    run = Path(args.run.rstrip("/")).name   # a namespace, or its report directory reports/<namespace>
    database = run_database(run)
    if args.start is not None and args.end is not None and args.end <= args.start:
        err.print("[red]error:[/] --end must be after --start", soft_wrap=True)
        return 2
    try:
        with exclusive(settings.clickhouse_dsn):
            store = AuditStore(settings.clickhouse_dsn, database=database)
            if not store.scalar(f"SELECT count() FROM system.databases WHERE name = '{database}'"):
                err.print(f"[red]error:[/] no run {run!r} in {settings.clickhouse_dsn} (database {database}); "
                          "--run takes a run's namespace, e.g. bk-20261204-013000, as `smc backtest` / `smc run` print it",
                          soft_wrap=True)
                return 2
            ci = load_chart_input(store, args.symbol.upper(), run, args.start, args.end)
        page = chart_html(ci)
    except (RunNotFound, ChartRangeError) as exc:
        err.print(f"[red]error:[/] {exc}", soft_wrap=True)
        return 2
    out = Path(args.out or REPO_ROOT / "reports" / run / f"chart_{ci.symbol}_{ci.start}_{ci.end}.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    shown = sum(p.opened_at < ci.end and (p.status == "open" or p.closed_at >= ci.start) for p in ci.trades)
    Console().print(f"chart: {out} ({shown} of the run's {len(ci.trades)} {ci.symbol} positions, "
                    f"{datetime.fromtimestamp(ci.start / 1000, timezone.utc):%Y-%m-%d %H:%M} .. "
                    f"{datetime.fromtimestamp(ci.end / 1000, timezone.utc):%Y-%m-%d %H:%M} UTC)", soft_wrap=True)
    if args.png:
        try:
            screenshot(out, Path(args.png), *args.size)
        except (FileNotFoundError, OSError, RuntimeError) as exc:
            err.print(f"[red]error:[/] {exc}", soft_wrap=True)
            return 2
        Console().print(f"png: {args.png}")
    return 0


def _size(value: str) -> tuple[int, int]:
    w, _, h = value.partition("x")
    if not (w.isdigit() and h.isdigit() and 200 <= int(w) <= 8000 and 200 <= int(h) <= 8000):
        raise argparse.ArgumentTypeError(f"{value!r}: use WIDTHxHEIGHT in pixels, e.g. 1400x900")
    return int(w), int(h)
# --- end smc chart ---------------------------------------------------------------------------------------


# --- smc lookahead-check (issue 16): full run vs prefixes, on any data, config and user feature ---------
def _feature_ref(value: str):
    """--feature module:function -> the function (bars DataFrame -> one value per bar)."""
    import importlib
    mod, _, name = value.partition(":")
    if not mod or not name:
        raise argparse.ArgumentTypeError(f"{value!r}: use module:function (e.g. mypkg.feats:next_close)")
    if os.getcwd() not in sys.path:   # the `smc` script's path does not hold the user's directory
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None
    if not callable(fn):
        raise argparse.ArgumentTypeError(f"{value!r} is not a function")
    return value, fn


def _smc_override(value: str) -> tuple[str, object]:
    """--smc KEY=VALUE: one SmcConfig field (e.g. swing_length=3), typed as its default."""
    import dataclasses
    from processors.smc import SmcConfig
    key, _, raw = value.partition("=")
    fields = {f.name: f for f in dataclasses.fields(SmcConfig)}
    if key not in fields or not raw:
        raise argparse.ArgumentTypeError(f"{value!r}: use KEY=VALUE with KEY one of {', '.join(fields)}")
    default = getattr(SmcConfig(), key)
    try:
        typed = (raw.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: {key} takes a {type(default).__name__}") from None
    return key, typed


def cmd_lookahead_check(args) -> int:
    import dataclasses
    from datetime import datetime, timezone
    from rich.progress import Progress
    from rich.table import Table
    from infra.pipeline import PipelineError, plan_backtest
    from ingest.replay import ReplayError, load_klines
    from processors.lookahead import lookahead_check, processor_factory
    from processors.scoring import load_scorer
    from processors.smc import SmcConfig
    from schemas import interval_ms
    console, err = Console(), Console(stderr=True)
    settings = load_settings(getattr(args, "config", None))
    if args.scorer == "heuristic":
        settings = settings.with_(model_path="")
    data = args.data if args.data.endswith((".parquet", ".csv")) or "/" in args.data else \
        str(REPO_ROOT / "ingest" / "recorded" / f"{args.data}.parquet")
    interval = _interval_of([data], args.interval)
    try:
        plan = plan_backtest([data], args.symbols.split(",") if args.symbols else None, args.start, args.end,
                             None if args.start else args.days, None, interval)
        df = load_klines(plan.files, plan.symbols, plan.start, plan.end, interval)
    except (PipelineError, ReplayError) as exc:
        err.print(f"[red]error:[/] {exc}")
        return 2
    bars = {sym: d.sort("open_time") for (sym,), d in df.group_by("symbol", maintain_order=True)}
    config = dataclasses.replace(SmcConfig(interval_ms=interval_ms(interval), htf_factor=settings.htf_factor),
                                 **dict(args.smc or []))
    make = processor_factory(load_scorer(settings.model_path), settings.strategy_version, interval, config)
    features = dict(args.feature or [])
    fmt = lambda t: datetime.fromtimestamp(t / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")   # noqa: E731
    console.print(f"[bold]Lookahead check[/] {len(bars)} symbols x {interval} (HTF {config.htf_factor} x), "
                  f"{fmt(plan.start)} .. {fmt(plan.end)} UTC, {df.height:,} bars; {args.cuts} cuts and {args.offsets} "
                  f"later starts per symbol (seed {args.seed}), {args.engine} engine; scorer {make().scorer.version}"
                  + (f"; features {', '.join(features)}" if features else ""))
    with Progress(console=err, disable=args.no_progress, transient=True) as progress:
        task = progress.add_task("runs", total=len(bars) * (1 + args.cuts + args.offsets))
        report = lookahead_check(bars, make, cuts=args.cuts, seed=args.seed, features=features, offsets=args.offsets,
                                 form=args.engine,
                                 on_progress=lambda what: progress.update(task, advance=1, description=what))
    if report.findings:
        t = Table("symbol", "tf", "open_time (UTC)", "field", "full", "prefix", "cut at", title=
                  f"LOOKAHEAD: {report.n_findings:,} values change when later bars are removed")
        seen: dict[tuple, int] = {}
        for f in report.findings:
            k = (f.symbol, f.timeframe, f.field)
            seen[k] = seen.get(k, 0) + 1
            if seen[k] <= args.show:
                t.add_row(f.symbol, f.timeframe, fmt(f.open_time), f.field, str(f.full)[:60], str(f.prefix)[:60],
                          fmt(f.cut_time))
        console.print(t)
    if report.warmup:
        worst: dict[tuple, object] = {}
        for w in report.warmup:
            k = (w.timeframe, w.field)
            cur = worst.get(k)
            if cur is None or (w.bars_to_agree is None) or (cur.bars_to_agree is not None and w.bars_to_agree > cur.bars_to_agree):
                worst[k] = w
        t = Table("tf", "field", "agree after (bars)", "symbol", "start offset", "compared",
                  title="warm-up sensitivity (not lookahead: values depend on the history before them)")
        for (tf, name), w in sorted(worst.items(), key=lambda kv: (kv[0][0], -(kv[1].bars_to_agree or 10**12))):
            t.add_row(tf, name, "not within" if w.bars_to_agree is None else str(w.bars_to_agree), w.symbol,
                      str(w.offset), str(w.compared))
        console.print(t)
    verdict = "clean: no value changed when later bars were removed" if report.clean else \
        f"{report.n_findings:,} lookahead finding(s)"
    console.print(f"{report.compared:,} values compared over {sum(len(c) for c in report.cuts.values())} prefixes; {verdict}")
    return 0 if report.clean else 1
# --- end smc lookahead-check ---------------------------------------------------------------------------


def _interval_name(value: str) -> str:
    from schemas import SchemaError, interval_ms
    try:
        interval_ms(value)
    except SchemaError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an interval (use e.g. 1m, 5m, 1h)") from None
    return value


def _period_name(value: str) -> str:
    from ingest.download import DownloadError, check_period
    try:
        return check_period(value)
    except DownloadError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_data_download(args) -> int:
    from ingest.download import DATA_URL, DownloadError, download
    console, err = Console(), Console(stderr=True)
    rest_url = args.rest_url or load_settings(args.config).binance_rest_url
    symbols = [s for s in args.symbols.split(",") if s.strip()]
    try:
        res = download(symbols, args.start, args.end, args.interval, args.base_url or DATA_URL, rest_url,
                       args.out, args.period, monthly=not args.daily, overwrite=args.overwrite,
                       progress=not args.no_progress)
    except DownloadError as exc:
        err.print(f"[red]error:[/] {exc}", soft_wrap=True)   # URLs and hashes stay whole
        return 1
    monthly = sum(f.kind == "monthly" for f in res.files)
    console.print(f"{len(res.files)} zips verified against their CHECKSUM ({monthly} monthly, "
                  f"{len(res.files) - monthly} daily), {res.klines.height:,} bars of {res.klines['symbol'].n_unique()} "
                  f"symbol(s), {res.funding.height:,} funding settlements")
    if res.gaps:
        from schemas import interval_ms
        step = interval_ms(args.interval)
        total = sum(g.bars for g in res.gaps)
        err.print(f"[yellow]{total:,} bar(s) missing in {len(res.gaps)} gap(s) (not filled):[/]")
        for g in res.gaps[:20]:
            err.print("  " + g.describe(step))
        if len(res.gaps) > 20:
            err.print(f"  ... and {len(res.gaps) - 20} more")
    for name, rows, digest in res.written:
        console.print(f"wrote {Path(args.out) / name}  {rows:,} rows  sha256 {digest}...")
    return 0


def cmd_config_show(args) -> int:
    """The effective settings, each with its source; secrets masked (set / not set only)."""
    flags: dict[str, tuple[object, str]] = {}
    if args.scorer == "heuristic":
        flags["model_path"] = ("", "--scorer heuristic")
    if args.interval:
        flags["interval"] = (args.interval, "--interval")
    settings, sources = resolve_settings(args.config, flags=flags)
    rows = describe(settings, sources)
    if args.format == "json":
        import orjson
        sys.stdout.write(orjson.dumps([{"setting": n, "value": v, "source": src} for n, v, src in rows],
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    width = max(len(n) for n, _, _ in rows)
    vwidth = min(60, max(len(v) for _, v, _ in rows))
    print(f"{'setting':<{width}}  {'value':<{vwidth}}  source")
    for name, value, source in rows:
        print(f"{name:<{width}}  {value:<{vwidth}}  {source}")
    return 0


def cmd_health(args) -> int:
    import time
    import orjson
    from pathlib import Path
    from infra.live import status_verdict
    path = Path(load_settings(args.config).data_dir) / "live" / "status.json"
    try:
        snap, age = orjson.loads(path.read_bytes()), time.time() - path.stat().st_mtime
    except (FileNotFoundError, orjson.JSONDecodeError):
        snap, age = None, None
    healthy, line = status_verdict(snap, age, args.max_age)
    print(line)
    return 0 if healthy else 1


@contextlib.contextmanager
def _interrupt_notice(enabled: bool) -> Iterator[None]:
    """Ctrl-C during a backtest says at once what happens next; the KeyboardInterrupt then unwinds
    through the finally blocks that stop the worker and release the broker, and main() turns it into
    exit code 130. (The live supervisor handles its own signals.)"""
    import signal
    import threading
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(_signum, _frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a second Ctrl-C cuts the clean-up short
        print("smc run: interrupted; stopping the worker and releasing the broker ...", file=sys.stderr, flush=True)
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
    from infra.kafka_io import BrokerUnavailable, require_broker, topic_size
    from infra.topic_replay import replay_and_diff
    settings = load_settings(args.config)
    source = settings.with_(namespace=args.source, interval=args.interval)
    err = Console(stderr=True)
    try:
        require_broker(settings)
    except BrokerUnavailable as exc:
        err.print(f"[red]error:[/] {exc}")
        return 2
    if topic_size(source, "klines") == 0:
        err.print(f"[red]error:[/] namespace {args.source!r} has no klines on {settings.kafka_bootstrap} "
                  "(--source takes a run's namespace, e.g. bt-20261125-093000, printed by `smc run`)")
        return 2
    report = replay_and_diff(source, start=args.start, end=args.end, into=args.into)
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


# --- delegated subcommands: `smc NAME ARGS...` is `python -m MODULE ARGS...` (its own parser, its own help) ---
_DELEGATED = {
    "ingest": ("ingest.__main__", "live ingest / file replay / audit sink (python -m ingest; smc ingest --help)"),
    "worker": ("processors.__main__", "the Faust stream processors (python -m processors [worker]; smc worker --help)"),
    "executor": ("executor.__main__", "the executor service, flatten, resume (python -m executor; smc executor --help)"),
    "model": ("models.__main__", "train / evaluate the LightGBM model (python -m models; smc model --help)"),
}


def _run_delegated(name: str, rest: list[str]) -> int:
    import importlib
    code = importlib.import_module(_DELEGATED[name][0]).main(rest)
    return int(code or 0)


def _split_delegated(argv: list[str]) -> tuple[str | None, str, list[str]] | None:
    """(--config value, subcommand, the rest verbatim) when argv names a delegated subcommand: the rest,
    --help included, goes to that module's parser untouched."""
    config, i = None, 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
        elif argv[i].startswith("--config="):
            config, i = argv[i].split("=", 1)[1], i + 1
        else:
            break
    if i < len(argv) and argv[i] in _DELEGATED:
        return config, argv[i], argv[i + 1:]
    return None


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
    r.add_argument("--days", type=_days, default=DEFAULT_DAYS,
                   help=f"the last N days of the data (default {DEFAULT_DAYS:g}: the main job in ~3 min on 2 cores)")
    r.add_argument("--start", type=_when, help="period start (ISO date/datetime, UTC, or epoch ms)")
    r.add_argument("--end", type=_when, help="period end, exclusive (ISO date/datetime, UTC, or epoch ms)")
    r.add_argument("--interval", help="bar interval of the files (default: from the file name, e.g. 1m)")
    r.add_argument("--full", action="store_true", help="all symbols and the whole period of the files")
    r.add_argument("--scorer", choices=["model", "heuristic"], default="model",
                   help="model: models/lgbm_smc.txt (default); heuristic: the spec's fallback score")
    r.add_argument("--report-dir", help="where the HTML/PNG report goes (default reports/<run>)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--live-data", action="store_true",
                   help="run live on Binance market data instead of recorded files (the paper broker unless "
                        "SMC_BROKER=binance)")
    r.add_argument("--live", action="store_true",
                   help="with --live-data: trade on the REAL exchange; also needs SMC_BROKER=binance, "
                        "SMC_LIVE_TRADING=1 and BINANCE_API_KEY / BINANCE_API_SECRET in the environment "
                        "(without --live, SMC_BROKER=binance trades on the testnet, SMC_BINANCE_TRADE_URL)")
    r.set_defaults(fn=cmd_run)

    bt = sub.add_parser("backtest", help="research: the main job's code (processors, executor, paper broker) in one "
                        "process, no broker; the same records as `smc run` on the same data")
    bt.add_argument("--files", nargs="*", help="recorded klines (Parquet/CSV); default: ingest/recorded/perps_1m_2025-05.parquet")
    bt.add_argument("--symbols", help="comma-separated symbols (default: all symbols of the files, or --top)")
    bt.add_argument("--top", type=int, default=None,
                    help="the N symbols with the most notional the day before the period (point in time)")
    bt.add_argument("--days", type=_days, default=30, help="the last N days of the data (default 30)")
    bt.add_argument("--start", type=_when, help="period start (ISO date/datetime, UTC, or epoch ms)")
    bt.add_argument("--end", type=_when, help="period end, exclusive (ISO date/datetime, UTC, or epoch ms)")
    bt.add_argument("--interval", help="bar interval of the files (default: from the file name, e.g. 1m)")
    bt.add_argument("--scorer", choices=["model", "heuristic"], default="model")
    bt.add_argument("--report-dir", help="where the HTML/PNG report goes (default reports/<run>)")
    bt.add_argument("--engine", choices=["batch", "stream"], default="batch",
                    help="SMC columns from the numba batch engine (default; clean input) or the stream processors")
    bt.add_argument("--no-audit", action="store_true", help="count the records only: no ClickHouse, no report")
    bt.set_defaults(fn=cmd_backtest)

    cp = sub.add_parser("compare", help="several runs' reports side by side on one page: metadata, figures, "
                        "equity curves, per-block and per-tier tables")
    cp.add_argument("runs", nargs="+", metavar="RUN",
                    help="a report directory (with summary.json) or a run name under reports/ (at least two)")
    cp.add_argument("--out", help="directory of the page (default reports/compare-<time>)")
    cp.set_defaults(fn=cmd_compare)

    sw = sub.add_parser("sweep", help="research: a grid over the executor's knobs, walk-forward, deflated Sharpe, PBO")
    for name, kw in (("--files", dict(nargs="*")), ("--symbols", {}), ("--top", dict(type=int, default=6)),
                     ("--days", dict(type=_days, default=14)), ("--start", {}), ("--end", {}), ("--interval", {}),
                     ("--scorer", dict(choices=["model", "heuristic"], default="heuristic")), ("--report-dir", {}),
                     ("--workers", dict(type=int, default=2)), ("--windows", dict(type=int, default=4))):
        sw.add_argument(name, **kw)
    sw.set_defaults(fn=cmd_sweep)

    la = sub.add_parser("lookahead-check", help="research: full run vs prefixes at random cuts (and later starts); "
                        "any value that changes is lookahead. Exit 0 clean, 1 findings")
    la.add_argument("--data", default="perps_1m_2025-05",
                    help="a recorded data set under ingest/recorded (name without .parquet) or a file path")
    la.add_argument("--symbols", help="comma-separated symbols (default: all of the data)")
    la.add_argument("--days", type=_days, default=1, help="the last N days of the data (default 1)")
    la.add_argument("--start", type=_when, help="period start (ISO date/datetime, UTC, or epoch ms)")
    la.add_argument("--end", type=_when, help="period end, exclusive")
    la.add_argument("--interval", help="bar interval of the data (default: from the file name)")
    la.add_argument("--cuts", type=int, default=8, help="random cut points per symbol (default 8)")
    la.add_argument("--offsets", type=int, default=2, help="later starts per symbol for the warm-up check (default 2)")
    la.add_argument("--seed", type=int, default=0, help="seed of the cut points (default 0)")
    la.add_argument("--feature", type=_feature_ref, action="append",
                    help="module:function, a user feature (polars DataFrame of one symbol's bars -> one value per "
                         "bar, or a DataFrame/dict of columns) checked the same way; repeatable")
    la.add_argument("--smc", type=_smc_override, action="append", metavar="KEY=VALUE",
                    help="an SMC engine setting (e.g. swing_length=3); repeatable")
    la.add_argument("--scorer", choices=["model", "heuristic"], default="model")
    la.add_argument("--engine", choices=["stream", "batch"], default="stream",
                    help="the processors' stream core (default) or the numba batch engine (smc backtest's default)")
    la.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file (as smc --config)")
    la.add_argument("--show", type=int, default=5, help="findings shown per (symbol, timeframe, field) (default 5)")
    la.add_argument("--no-progress", action="store_true")
    la.set_defaults(fn=cmd_lookahead_check)

    ch = sub.add_parser("chart", help="one symbol of a run as an interactive candle chart (M1/M5) with FVG/OB zones, "
                        "swings, BOS/CHoCH, sweeps and the trades: one offline HTML file")
    ch.add_argument("symbol", help="the symbol, e.g. BTCUSDT")
    ch.add_argument("--run", required=True, help="the run's namespace (e.g. bk-20261204-013000) or its report directory")
    ch.add_argument("--start", type=_when, help="from (ISO date/datetime, UTC, or epoch ms; default: the run's start)")
    ch.add_argument("--end", type=_when, help="to, exclusive (default: the run's end)")
    ch.add_argument("--out", help="the HTML file (default reports/<run>/chart_<SYMBOL>_<start>_<end>.html)")
    ch.add_argument("--png", help="also a PNG screenshot of the page, by headless Chromium (apt-get install chromium)")
    ch.add_argument("--size", type=_size, default=(1400, 900), help="--png size WIDTHxHEIGHT (default 1400x900)")
    ch.set_defaults(fn=cmd_chart)

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
    t.add_argument("--start", type=_when, help="first bar open time to diff (ISO date/datetime, UTC, or epoch ms)")
    t.add_argument("--end", type=_when, help="end of the diffed range, exclusive (ISO date/datetime, UTC, or epoch ms)")
    t.add_argument("--into", help="namespace of the replay (default <source>.replay-<n>)")
    t.add_argument("--interval", default=DEFAULT_INTERVAL,
                   help="bar interval when the run's saved settings are not found (they carry it)")
    t.set_defaults(fn=cmd_replay_topic)

    dp = sub.add_parser("data", help="fetch real market data into the recorded layout (smc data download --help)")
    dsub = dp.add_subparsers(dest="data_cmd", required=True)
    dl = dsub.add_parser("download", help="Binance USD-M klines (data.binance.vision dumps, sha256-checked) and "
                         "funding (/fapi/v1/fundingRate) -> <out>/perps_<interval>_<period>.parquet, funding_<period>.parquet")
    dl.add_argument("--symbols", required=True, help="comma-separated USD-M symbols, e.g. BTCUSDT,ETHUSDT")
    dl.add_argument("--start", type=_when, required=True, help="first open time (ISO date/datetime, UTC, or epoch ms)")
    dl.add_argument("--end", type=_when, required=True, help="end, exclusive (ISO date/datetime, UTC, or epoch ms)")
    dl.add_argument("--interval", default="1m", type=_interval_name, help="kline interval of the dumps (default 1m)")
    dl.add_argument("--base-url", help="dump server (default https://data.binance.vision)")
    dl.add_argument("--rest-url", help="USD-M REST for fundingRate (default SMC_BINANCE_REST_URL, https://fapi.binance.com)")
    dl.add_argument("--out", default=str(REPO_ROOT / "ingest" / "recorded"),
                    help="directory (default ingest/recorded, where the loaders look)")
    dl.add_argument("--period", type=_period_name,
                    help="name in the file names (default from the dates: 2025-01 for a whole month, else "
                         "2025-01-01-2025-01-03)")
    dl.add_argument("--daily", action="store_true", help="daily zips only (a month whose monthly zip is not out yet)")
    dl.add_argument("--overwrite", action="store_true", help="replace existing files of the same period")
    dl.add_argument("--no-progress", action="store_true")
    dl.set_defaults(fn=cmd_data_download)

    cf = sub.add_parser("config", help="the effective settings (smc config show --help)")
    csub = cf.add_subparsers(dest="config_cmd", required=True)
    cs = csub.add_parser("show", help="print every setting with its value and source (default, the TOML file, "
                         "an SMC_* / BINANCE_* variable, or a flag); secrets masked",
                         description="Layers, lowest first: defaults, the TOML file (--config or SMC_CONFIG), "
                         "SMC_* environment variables, flags. Secrets (BINANCE_API_KEY / BINANCE_API_SECRET) show "
                         "as set or not set, never their value; a DSN's password is masked. Exit 2 on an unknown "
                         "TOML key or a value of the wrong type.",
                         epilog="examples: smc --config smc.toml config show; SMC_PARTITIONS=3 smc config show "
                         "--format json; smc config show --scorer heuristic --interval 5m")
    cs.add_argument("--scorer", choices=["model", "heuristic"], default="model",
                    help="as `smc run --scorer`: heuristic clears model_path")
    cs.add_argument("--interval", type=_interval_name, help="as `smc run --interval`")
    cs.add_argument("--format", choices=["table", "json"], default="table")
    cs.set_defaults(fn=cmd_config_show)

    hc = sub.add_parser("health", help="one line on the live run (live/status.json); exit 0 healthy, 1 not")
    hc.add_argument("--max-age", type=float, default=30.0,
                    help="seconds the status may be old before the supervisor counts as gone (default 30)")
    hc.set_defaults(fn=cmd_health)

    h = sub.add_parser("htf-bars", help="the M5 (HTF) bars a run's processors keep in their windowed table")
    h.add_argument("--source", required=True, help="namespace of the run (e.g. bt-20261125-093000)")
    h.add_argument("--symbols", help="comma-separated symbols (default: all)")
    h.add_argument("--last", type=int, default=3, help="windows per symbol, newest last (default 3)")
    h.set_defaults(fn=cmd_htf_bars)

    for name, (_module, helptext) in _DELEGATED.items():   # listed in `smc --help`; dispatched before parsing
        sub.add_parser(name, help=helptext, add_help=False)

    argv = sys.argv[1:] if argv is None else list(argv)
    delegated = _split_delegated(argv)
    try:
        if delegated is not None:
            config, name, rest = delegated
            if config:   # the modules read their settings file from SMC_CONFIG
                os.environ["SMC_CONFIG"] = config
            return _run_delegated(name, rest)
        args = ap.parse_args(argv)
        with _interrupt_notice(args.cmd == "run" and not args.live_data):
            return args.fn(args)
    except SettingsError as exc:        # a wrong type / unknown key in the TOML file or an SMC_* variable
        print(f"smc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:           # Ctrl-C: the commands' finally blocks have stopped what they started
        print("smc: interrupted; stopped cleanly", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
