"""Read one symbol of a run from its audit trail (ClickHouse, FINAL) into infra.chart's ChartInput, and
write chart pages. The thin shell around infra.chart: queries and files here, drawing there."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from infra.chart import ChartInput, PositionRecord, SignalRecord, chart_html, chart_range
from schemas import interval_ms
from infra.clickhouse import AuditStore


class RunNotFound(LookupError):
    """The run / symbol has no records in the store; the message says what exists."""


def _q(store: AuditStore, sql: str, **params) -> list[tuple]:
    return store.query(sql, parameters=params)[1]


def load_chart_input(store: AuditStore, symbol: str, run: str, start: int | None = None,
                     end: int | None = None) -> ChartInput:
    db = store.database
    ivs = _q(store, f"SELECT `interval`, count() FROM {db}.klines FINAL WHERE symbol = {{s:String}} "
                    "GROUP BY `interval` ORDER BY 2 DESC", s=symbol)
    if not ivs:
        have = [r[0] for r in _q(store, f"SELECT DISTINCT symbol FROM {db}.klines ORDER BY symbol")]
        raise RunNotFound(f"run {run} has no klines of {symbol}" + (f" (it has {', '.join(have)})" if have else ""))
    interval = ivs[0][0]
    tfs = sorted((r[0] for r in _q(store, f"SELECT DISTINCT timeframe FROM {db}.signals WHERE symbol = {{s:String}}",
                                   s=symbol)), key=interval_ms)
    base_ms = interval_ms(interval)
    htf_factor = max((interval_ms(t) // base_ms for t in tfs), default=1)
    first, last = _q(store, f"SELECT min(open_time), max(open_time) FROM {db}.klines FINAL WHERE symbol = {{s:String}} "
                            "AND `interval` = {i:String}", s=symbol, i=interval)[0]
    trade_rows = _q(store, f"SELECT position_id, signal_id, side, qty, entry_price, stop, target, opened_at, status, "
                           f"closed_at, exit_price, exit_reason, realized_pnl, fees, confidence, pattern "
                           f"FROM {db}.positions FINAL WHERE symbol = {{s:String}} ORDER BY opened_at, position_id",
                    s=symbol)
    trades = [PositionRecord(*r) for r in trade_rows]
    lo, hi, notes = chart_range(first, last + base_ms, start, end, [p.opened_at for p in trades],
                                base_ms * htf_factor)
    kl = _q(store, f"SELECT open_time, open, high, low, close, volume FROM {db}.klines FINAL WHERE symbol = {{s:String}} "
                   "AND `interval` = {i:String} AND open_time >= {lo:Int64} AND open_time < {hi:Int64} ORDER BY open_time",
            s=symbol, i=interval, lo=lo, hi=hi)
    a = np.asarray(kl, dtype=np.float64).reshape(-1, 6)
    m1 = {"open_time": a[:, 0].astype(np.int64), "open": a[:, 1], "high": a[:, 2], "low": a[:, 3], "close": a[:, 4],
          "volume": a[:, 5]}
    bar_times, events = {}, {}
    for tf in tfs:
        rows = _q(store, f"SELECT open_time, events FROM {db}.signals FINAL WHERE symbol = {{s:String}} "
                         "AND timeframe = {t:String} AND open_time < {hi:Int64} ORDER BY open_time", s=symbol, t=tf, hi=hi)
        bar_times[tf] = np.asarray([r[0] for r in rows], dtype=np.int64)
        events[tf] = [(r[0], orjson.loads(r[1])) for r in rows if r[1] != "{}"]
    ids = sorted({p.signal_id for p in trades if p.opened_at < hi})
    signals = {}
    if ids:
        for r in _q(store, f"SELECT signal_id, timeframe, open_time, features, confidence, model_version, side, entry, "
                           f"stop, target FROM {db}.signals FINAL WHERE signal_id IN {{ids:Array(String)}}", ids=ids):
            signals[r[0]] = SignalRecord(r[0], r[1], r[2], tuple(r[3]), r[4], r[5], r[6], r[7], r[8], r[9])
    from processors.smc import FEATURE_NAMES
    return ChartInput(symbol=symbol, run=run, interval_ms=base_ms, htf_factor=htf_factor, start=lo, end=hi, m1=m1,
                      bar_times=bar_times, events=events, trades=trades, signals=signals,
                      feature_names=tuple(FEATURE_NAMES), notes=notes)


def chart_file_name(symbol: str) -> str:
    return f"chart_{symbol}.html"


def write_report_charts(store: AuditStore, out: Path, run: str, symbols: list[str]) -> dict[str, str]:
    """A chart page per symbol into the report directory, sharing one plotly.min.js written beside them
    (a report of 18 symbols would otherwise carry 18 copies of its 3.5 MB). -> {symbol: file name}."""
    written = {}
    for sym in symbols:
        page = chart_html(load_chart_input(store, sym, run), plotlyjs="directory")
        (out / chart_file_name(sym)).write_text(page)
        written[sym] = chart_file_name(sym)
    if written:
        from plotly.offline import get_plotlyjs
        (out / "plotly.min.js").write_text(get_plotlyjs())
    return written


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The headless browser for --png and the page test: Debian's `chromium` package, or a Chrome."""
    import os
    import shutil
    given = os.environ.get("SMC_CHROMIUM")
    if given:
        return shutil.which(given)
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def chromium_args(browser: str, *extra: str) -> list[str]:
    """Headless, no first-run or background traffic; root needs --no-sandbox (containers, CI)."""
    import os
    args = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--mute-audio", "--no-default-browser-check"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    return args + list(extra)


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 900, timeout: float = 120.0) -> None:
    """A PNG of a chart page as headless Chromium renders it (after 5 s of page time for plotly)."""
    import subprocess
    import tempfile
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("--png needs Chromium: apt-get install -y chromium (or set SMC_CHROMIUM)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(chromium_args(browser, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                                     "--virtual-time-budget=5000", f"--screenshot={png.resolve()}",
                                     page.resolve().as_uri()),
                       check=True, capture_output=True, timeout=timeout)
    if not png.exists():
        raise RuntimeError(f"Chromium wrote no screenshot to {png}")
