"""The main job: a backtest is a replay through the production pipeline (no separate engine).

    recorded klines --ingest.replay--> Kafka `klines` --Faust worker--> `signals`
        --executor (paper)--> decisions/orders/fills/positions/equity --audit sink--> ClickHouse --> report

Each run gets its own namespace (topics and consumer groups) on the broker, so runs never mix and a
finished run can be replayed and diffed later (infra.topic_replay). Everything downstream of the
klines is deterministic: the same data, config and model give the same signals, orders and PnL.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson
import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infra import kafka_io
from infra.clickhouse import AuditStore, exclusive, run_database
from infra.services import BrokerHandle, ProcessorWorker
from infra.settings import REPO_ROOT, Settings, to_env

RECORDED = REPO_ROOT / "ingest" / "recorded"
# the product's market and timeframe: real Binance USD-M perpetuals, 1m bars (M5 context from them);
# the spot / mixed 1h files (klines_1h*.parquet) are never a default
DEFAULT_FILE = RECORDED / "perps_1m_2025-05.parquet"
DEFAULT_INTERVAL = "1m"
# `bash infra/bootstrap.sh run`: the last 5 days of DEFAULT_FILE (2025-05-29 15:32 .. 06-03 15:31 UTC),
# all 18 perps, 129,600 klines: 140 s with the shipped model, 119 s with the heuristic (1,139 trades)
# on this 2-core machine shared with other jobs (load ~5; 7 days took 135 s and 214 s). Every one of
# the 18 symbols trades over the whole span (DOGEUSDT and DOTUSDT start on 2025-05-25). --days widens
# it, --full takes the whole month. README "Two commands" has the figures.
DEFAULT_DAYS = 5.0
UNIVERSE_LOOKBACK_DAYS = 1.0    # --top ranks symbols by notional over this window BEFORE the period
DAY_MS = 86_400_000
AUDIT_TOPICS = ("klines", "signals", "decisions", "orders", "fills", "positions", "equity", "alerts", "dlq")


class PipelineError(RuntimeError):
    """A bad option or an unavailable part, said plainly."""


@dataclass
class BacktestPlan:
    files: list[str]
    symbols: list[str]
    start: int
    end: int
    interval: str
    klines: int


@dataclass
class RunResult:
    namespace: str
    plan: BacktestPlan
    timings: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    report_dir: str = ""
    database: str = ""


def _ms(value: str | int | None) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    dt = datetime.fromisoformat(str(value))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def notional_by_symbol(df: pl.DataFrame) -> pl.DataFrame:
    """Traded notional (quote volume) per symbol over the rows given, largest first (ties by name)."""
    return (df.group_by("symbol").agg(pl.col("quote_volume").sum().alias("notional"))
            .sort(["notional", "symbol"], descending=[True, False]))


def select_universe(df: pl.DataFrame, at: int, top: int, lookback_ms: int) -> list[str]:
    """Point in time: the `top` symbols by notional over [at - lookback_ms, at), i.e. only bars that
    had CLOSED before `at` (close_time < at). No bar at or after `at` can change the choice
    (tests/pipeline/test_universe.py proves it with a prefix of the data). A symbol with no bar in the
    window is not chosen: it was not known to trade yet."""
    past = df.filter((pl.col("open_time") >= at - lookback_ms) & (pl.col("close_time") < at))
    if past.is_empty():
        raise PipelineError(f"--top {top}: no bars in the {lookback_ms / DAY_MS:g} day(s) before the period's start "
                            f"({_iso(at)}) to rank symbols by; start later, or name them with --symbols")
    return notional_by_symbol(past)["symbol"].head(top).to_list()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")


def plan_backtest(files: list[str] | None, symbols: list[str] | None, start: str | None, end: str | None,
                  days: float | None, top: int | None, interval: str = DEFAULT_INTERVAL,
                  lookback_days: float = UNIVERSE_LOOKBACK_DAYS) -> BacktestPlan:
    """Choose the data: explicit files / symbols / period, else the last `days` of DEFAULT_FILE.

    Symbols: `symbols` when given; else all of the files' symbols (`top` None or 0); else the `top`
    by notional over the `lookback_days` before the period's start (select_universe: point in time,
    chosen once for the whole run, so a symbol never leaves the replay while a position is open)."""
    from ingest.replay import ReplayError, load_klines
    files = [str(f) for f in (files or [DEFAULT_FILE])]
    for f in files:
        if not Path(f).exists():
            raise PipelineError(f"data file not found: {f}")
    try:
        df = load_klines(files, symbols=symbols or None, start=None, end=_ms(end), interval=interval)
    except ReplayError as exc:
        raise PipelineError(str(exc)) from None
    t0 = _ms(start)
    if t0 is None and days:
        t0 = int(df["close_time"].max()) + 1 - int(days * DAY_MS)    # the last `days` x 24 h of bars
    if t0 is None:
        t0 = int(df["open_time"].min())
    if not symbols and top:
        symbols = select_universe(df, t0, top, int(lookback_days * DAY_MS))
    df = df.filter(pl.col("open_time") >= t0)
    if symbols:
        df = df.filter(pl.col("symbol").is_in(symbols))
    if df.is_empty():
        raise PipelineError("the chosen symbols and period hold no klines")
    chosen = sorted(symbols) if symbols else sorted(df["symbol"].unique().to_list())
    return BacktestPlan(files=files, symbols=chosen, start=int(df["open_time"].min()),
                        end=int(df["open_time"].max()) + 1, interval=interval, klines=df.height)


def run_backtest(settings: Settings, plan: BacktestPlan, *, explicit_broker: bool = False, console: Console | None = None,
                 report_dir: str | None = None, database: str | None = None, progress: bool = True,
                 worker_env: dict | None = None) -> RunResult:
    from executor.service import run_executor, ensure_executor_topics
    from infra.report import build_report
    from ingest.audit_sink import AuditIncomplete, AuditSink
    from ingest.replay import replay

    console = console or Console()
    started = time.monotonic()
    base_settings = settings
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    ns = settings.namespace or f"bt-{stamp}"
    run_dir = Path(settings.data_dir) / "runs" / ns
    # replay_end / universe: the processors reject a kline dated past the plan's range or of a symbol
    # outside it (one bad record must not poison a symbol's state, nor start a symbol nobody asked for)
    settings = settings.with_(namespace=ns, interval=plan.interval, data_dir=str(run_dir), replay_end=plan.end,
                              universe=",".join(plan.symbols))
    database = database or run_database(ns)
    result = RunResult(namespace=ns, plan=plan, database=database)
    t = {}

    from infra.clickhouse import ClickHouseUnavailable, check_dsn
    try:   # before the broker: a dead DSN is said in seconds, not after the whole run
        clickhouse_found = check_dsn(settings.clickhouse_dsn)
    except ClickHouseUnavailable as exc:
        raise PipelineError(str(exc)) from None
    console.print(f"[bold]ClickHouse[/] {clickhouse_found}")
    t0 = time.monotonic()
    try:
        broker = BrokerHandle(base_settings, explicit_broker)   # the broker's data outlives the run
    except kafka_io.BrokerUnavailable as exc:
        raise PipelineError(str(exc)) from None
    except Exception as exc:
        raise PipelineError(f"no Kafka broker at {settings.kafka_bootstrap} and none could be started: {exc}") from exc
    t["broker_s"] = time.monotonic() - t0
    console.print(f"[bold]Kafka[/] {settings.kafka_bootstrap} ({broker.how}; {broker.found}); run namespace [cyan]{ns}[/]")
    worker = None
    try:
        kafka_io.ensure_topics(settings)
        ensure_executor_topics(settings)
        run_dir.mkdir(parents=True, exist_ok=True)   # what `smc replay-topic` needs to score the same way
        (run_dir / "settings.env.json").write_bytes(orjson.dumps(to_env(settings), option=orjson.OPT_INDENT_2))
        worker = ProcessorWorker(settings, extra_env=worker_env)
        t0 = time.monotonic()
        stats = replay(settings, plan.files, plan.symbols, plan.start, plan.end, plan.interval, progress=progress)
        t["replay_s"] = time.monotonic() - t0
        result.counts["klines"] = stats.produced
        with _progress(console, progress) as bar:
            task = bar.add_task("processors (Faust)", total=stats.produced)
            st = worker.wait_klines(stats.produced, on_progress=lambda s: bar.update(task, completed=s["klines"]))
        t["processors_s"] = time.monotonic() - t0
        result.counts["signals"] = st["signals"]
        result.counts["processor_rejects"] = st["rejects"]
        worker.stop()
        worker = None

        t0 = time.monotonic()
        with console.status("executor (paper broker) ..."):
            ex = run_executor(settings, until_idle=True, idle_s=1.0)
        t["executor_s"] = time.monotonic() - t0
        result.counts.update(executor_signals=ex.signals, orders=ex.orders, executor_rejects=ex.rejects)

        t0 = time.monotonic()
        with console.status("audit sink -> ClickHouse ..."), exclusive(settings.clickhouse_dsn):
            # the producers (replay, worker, executor) are done: these ends are everything the run made
            store = AuditStore(settings.clickhouse_dsn, database=database)
            store.ensure_schema()   # the run's own database: no other run's audit trail is touched
            console.print(f"[bold]ClickHouse[/] {settings.clickhouse_dsn} database [cyan]{database}[/]")
            sink = AuditSink(settings, store, topics=AUDIT_TOPICS, batch_rows=20_000)
            try:
                sink.run_to_end(sink.end_offsets())
                stored = sink.verify_complete()
            except (AuditIncomplete, TimeoutError) as exc:
                raise PipelineError(str(exc)) from None
            finally:
                sink.close()
            t["audit_s"] = time.monotonic() - t0
            result.counts["audit_rows"] = sum(sink.stats.inserted.values())
            if stats.produced and not stored.get("klines"):
                raise PipelineError(f"the run produced {stats.produced} klines and the audit trail holds none")
            out = Path(report_dir) if report_dir else REPO_ROOT / "reports" / ns
            from infra.run_meta import run_meta
            meta = run_meta(settings, plan, "kafka + faust (smc run)", time.monotonic() - started)
            result.summary = build_report(store, out, settings.equity, plan, console=console, meta=meta)
            store.point_latest()
        result.report_dir = str(out)
        result.timings = t
        return result
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not enabled, transient=False)
