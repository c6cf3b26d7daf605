"""The candle chart (infra/chart.py, `smc chart`, the report's chart pages) from a small REAL run: 2 real 1m
perps for one day through `smc backtest` (the main job's code in process, heuristic scorer so it trades),
into the real embedded ClickHouse. What the chart draws is checked against the run's own records (the
signals' events, the 5m signals, the positions), and the page is opened in headless Chromium: it renders,
with no JavaScript error and no network request. Chromium: `apt-get install -y chromium` (skipped without)."""
from __future__ import annotations

import re
import socket
import subprocess
import threading
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from infra.backtest import run_backtest_in_process
from infra.chart import MAX_CANDLES, ChartRangeError, build_figure, chart_html, chart_range
from infra.chart_data import chromium_args, find_chromium, load_chart_input
from infra.clickhouse import AuditStore
from infra.pipeline import RECORDED, plan_backtest

SYMBOLS = ["BTCUSDT", "SOLUSDT"]


@pytest.fixture(scope="module")
def run(chdb_dsn, tmp_path_factory):
    from infra.settings import load_settings
    d = tmp_path_factory.mktemp("chart")
    ns = f"chart-{uuid.uuid4().hex[:8]}"
    s = load_settings(env={}).with_(clickhouse_dsn=chdb_dsn, model_path="", namespace=ns, data_dir=str(d))
    plan = plan_backtest([str(RECORDED / "perps_1m_2025-05.parquet")], SYMBOLS, "2025-05-20", "2025-05-21", None, 0, "1m")
    res = run_backtest_in_process(s, plan, report_dir=str(d / "report"))
    assert res.summary["trades"] > 10, "the slice should trade"
    return ns, AuditStore(chdb_dsn, database=res.database), Path(res.report_dir), chdb_dsn


def _script_sources(page: str) -> list[str]:
    return re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", page)


def _traces(fig, kind):
    return [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("kind") == kind]


def _events(store, symbol):
    _, rows = store.query(f"SELECT timeframe, open_time, events FROM {store.database}.signals FINAL "
                          "WHERE symbol = {s:String} AND events != '{}' ORDER BY timeframe, open_time", {"s": symbol})
    return [(tf, t, orjson.loads(e)) for tf, t, e in rows]


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_chart_holds_the_runs_zones_swings_and_breaks(run, symbol):
    ns, store, _, _ = run
    ci = load_chart_input(store, symbol, ns)          # the whole day fits: M1 and M5 drawn
    fig, _ = build_figure(ci)
    evs = _events(store, symbol)
    assert evs
    for kind in ("fvg", "ob"):
        want = Counter((tf, e[kind]["dir"], e[kind]["top"], e[kind]["bottom"], t) for tf, t, e in evs if kind in e)
        got = Counter((tr.meta["timeframe"], tr.meta["dir"], top, bottom, created)
                      for tr in _traces(fig, kind + "_hover") for top, bottom, created, _ in tr.customdata)
        assert want and got == want, kind
        # mitigated: the recorded mitigation events name each mitigated zone (by creating bar) exactly once
        mitig = Counter((tf, m["dir"], m["top"], m["bottom"], t) for tf, t, e in evs for m in e.get(kind + "_mitigated", ()))
        got_m = Counter((tr.meta["timeframe"], tr.meta["dir"], top, bottom, mt)
                        for tr in _traces(fig, kind + "_hover") for top, bottom, _, mt in tr.customdata if mt)
        assert got_m == mitig, kind
    for kind in ("bos", "choch", "sweep"):
        want = Counter((tf, x["dir"], x["level"], t) for tf, t, e in evs
                       for x in ([e[kind]] if kind in ("bos", "choch") and kind in e else e.get(kind, []) if kind == "sweep" else []))
        got = Counter((tr.meta["timeframe"], d, lv, at) for tr in _traces(fig, kind) for d, lv, at in tr.customdata)
        assert got == want, kind
    want = Counter((tf, float(e[k]["level"])) for tf, _, e in evs for k in ("swing_high", "swing_low") if k in e)
    got = Counter((tr.meta["timeframe"], float(y)) for tr in _traces(fig, "swing") for y in tr.y)
    assert want and got == want


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_chart_holds_the_runs_trades_with_their_signal(run, symbol):
    ns, store, _, _ = run
    fig, _ = build_figure(load_chart_input(store, symbol, ns))
    _, rows = store.query(f"SELECT position_id, opened_at, entry_price, closed_at, exit_price, stop, target, signal_id "
                          f"FROM {store.database}.positions FINAL WHERE symbol = {{s:String}}", {"s": symbol})
    assert rows
    (entries,), (exits,) = _traces(fig, "entry"), _traces(fig, "exit")
    assert sorted(map(tuple, entries.customdata)) == sorted((r[0], r[1], r[2], r[5], r[6]) for r in rows)
    assert sorted(map(tuple, exits.customdata)) == sorted((r[0], r[3], r[4]) for r in rows if r[3])
    _, sig = store.query(f"SELECT signal_id, confidence FROM {store.database}.signals FINAL WHERE signal_id IN "
                         "{ids:Array(String)}", {"ids": [r[7] for r in rows]})
    conf = dict(sig)
    for (pid, *_), text in zip(entries.customdata, entries.hovertext):
        sid = next(r[7] for r in rows if r[0] == pid)
        assert sid in text and f"confidence {conf[sid]:.4f}" in text and "market_structure" in text


def test_m5_candles_are_the_runs_htf_bars(run):
    ns, store, _, _ = run
    fig, _ = build_figure(load_chart_input(store, "BTCUSDT", ns))
    m5 = next(t for t in fig.data if t.type == "candlestick" and t.name.startswith("5m"))
    _, rows = store.query(f"SELECT open_time, open, high, low, close FROM {store.database}.signals FINAL "
                          "WHERE symbol = 'BTCUSDT' AND timeframe = '5m' ORDER BY open_time")
    rec = np.asarray(rows, dtype=np.float64)
    assert len(m5.x) == len(rec) > 200
    assert (np.asarray(m5.x).astype("datetime64[ms]").astype(np.int64) == rec[:, 0]).all()
    for j, k in enumerate(("open", "high", "low", "close"), start=1):
        assert np.array_equal(np.asarray(getattr(m5, k)), rec[:, j]), k


def test_a_range_draws_only_that_range(run):
    ns, store, _, _ = run
    lo, hi = 1747742400000, 1747756800000            # 2025-05-20 12:00 .. 16:00
    ci = load_chart_input(store, "BTCUSDT", ns, lo, hi)
    fig, _ = build_figure(ci)
    m1 = next(t for t in fig.data if t.type == "candlestick" and t.name.startswith("1m"))
    t = np.asarray(m1.x).astype("datetime64[ms]").astype(np.int64)
    assert len(t) == 240 and t.min() == lo and t.max() == hi - 60_000
    entries = _traces(fig, "entry")[0].customdata
    _, rows = store.query(f"SELECT count() FROM {store.database}.positions FINAL WHERE symbol = 'BTCUSDT' "
                          f"AND opened_at < {hi} AND closed_at >= {lo}")
    assert len(entries) == rows[0][0] > 0


def test_a_long_range_draws_m5_only_and_says_so(run, monkeypatch):
    import infra.chart
    ns, store, _, _ = run
    monkeypatch.setattr(infra.chart, "MAX_CANDLES", 1000)     # the day's 1440 M1 bars are then "too many"
    fig, notes = build_figure(load_chart_input(store, "BTCUSDT", ns))
    names = {t.name for t in fig.data}
    assert "5m candles" in names and "1m candles" not in names and not any(n.startswith("1m ") for n in names)
    assert any("1,440 1m bars" in n and "5m candles" in n for n in notes), notes
    assert _traces(fig, "entry") and any(t.meta["timeframe"] == "5m" for t in _traces(fig, "fvg_hover"))
    monkeypatch.setattr(infra.chart, "MAX_CANDLES", 100)      # and 288 M5 bars: refused, with what to do
    with pytest.raises(ChartRangeError, match="narrow it with --start/--end"):
        build_figure(load_chart_input(store, "BTCUSDT", ns, 1747699200000, 1747785600000))


def test_chart_range_caps_long_runs():
    day, period = 86_400_000, 300_000
    lo, hi, notes = chart_range(0, 60 * day, None, None, [10 * day], period)
    assert (hi - lo) // period == MAX_CANDLES and lo == 10 * day - 3_600_000 and notes
    lo, hi, notes = chart_range(0, day, 1000, 3 * 3_600_000 + 1, [], period)
    assert (lo, hi, notes) == (0, 3 * 3_600_000 + period, [])       # whole M5 buckets
    with pytest.raises(ChartRangeError):
        chart_range(0, day, 2 * day, None, [], period)


def test_report_links_a_chart_per_traded_symbol(run):
    ns, store, report, _ = run
    index = (report / "index.html").read_text()
    _, syms = store.query(f"SELECT DISTINCT symbol FROM {store.database}.positions FINAL WHERE status = 'closed'")
    assert syms
    for (sym,) in syms:
        page = (report / f"chart_{sym}.html").read_text()
        assert f'href="chart_{sym}.html"' in index
        assert _script_sources(page) == ["plotly.min.js"]                 # the copy beside it, no CDN
    assert (report / "plotly.min.js").stat().st_size > 1_000_000


def test_smc_chart_command(run, tmp_path, monkeypatch, capsys):
    from infra.cli import main
    ns, store, _, dsn = run
    monkeypatch.setenv("SMC_CLICKHOUSE_DSN", dsn)
    out = tmp_path / "btc.html"
    assert main(["chart", "BTCUSDT", "--run", ns, "--start", "2025-05-20T12:00", "--end", "2025-05-20T14:00",
                 "--out", str(out)]) == 0
    page = out.read_text()
    assert _script_sources(page) == [] and len(page) > 3_000_000     # plotly.js inside: one offline file
    capsys.readouterr()
    for argv, says in ((["chart", "BTCUSDT", "--run", "no-such-run"], "no run 'no-such-run'"),
                       (["chart", "ETHUSDT", "--run", ns], "has no klines of ETHUSDT"),
                       (["chart", "BTCUSDT", "--run", ns, "--start", "2025-06-02"], "outside the run"),
                       (["chart", "BTCUSDT", "--run", ns, "--start", "2025-05-20T05", "--end", "2025-05-20T04"],
                        "--end must be after --start")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err


# --- headless Chromium: renders, no JavaScript error, no network request ---------------------------------
# the browser's own service calls (component updater, account check) that no flag turns off in headless
# mode; everything else reaching the proxy trap is a request the page made
_BROWSER_OWN = (b"update.googleapis.com", b"accounts.google.com")


def _open_headless(page: Path, profile: Path) -> tuple[str, list[str], list[bytes]]:
    """-> (DOM after 5 s of page time, console lines, requests that reached the proxy trap)."""
    browser = find_chromium()
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(16)
    seen: list[bytes] = []

    def accept():
        while True:
            try:
                conn, _ = trap.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                seen.append(conn.recv(300))
            except OSError:
                seen.append(b"?")
            conn.close()
    threading.Thread(target=accept, daemon=True).start()
    try:
        r = subprocess.run(chromium_args(
            browser, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            f"--proxy-server=http://127.0.0.1:{trap.getsockname()[1]}", "--proxy-bypass-list=<-loopback>",
            "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
            "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()), capture_output=True, timeout=120)
    finally:
        trap.close()
    console = [ln for ln in r.stderr.decode(errors="replace").splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    return r.stdout.decode(errors="replace"), console, [s for s in seen if not any(h in s for h in _BROWSER_OWN)]


needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason="Chromium not installed (apt-get install -y chromium, or set SMC_CHROMIUM)")


@needs_chromium
def test_the_probe_sees_errors_and_requests(tmp_path):
    """The check below can fail: a page with a JS error, an image and a CDN script is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><script>noSuchFunction();</script><img src="http://example.invalid/x.png">'
                   '<script src="https://cdn.plot.ly/plotly-2.35.2.min.js"></script></body></html>')
    _, console, requests = _open_headless(bad, tmp_path / "profile")
    assert any("noSuchFunction" in ln for ln in console)
    assert any(b"example.invalid" in r for r in requests) and any(b"cdn.plot.ly" in r for r in requests)


@needs_chromium
@pytest.mark.parametrize("where", ["smc chart", "report"])
def test_page_renders_in_headless_chromium_offline(run, tmp_path, where):
    ns, store, report, _ = run
    if where == "smc chart":
        page = tmp_path / "chart.html"
        page.write_text(chart_html(load_chart_input(store, "SOLUSDT", ns, 1747742400000, 1747756800000)))
    else:
        page = report / "chart_BTCUSDT.html"
    dom, console, requests = _open_headless(page, tmp_path / "profile")
    assert 'class="main-svg"' in dom and 'class="trace boxes"' in dom, "plotly drew no candles"
    assert dom.count('class="trace scatter') >= 10, "plotly drew too few zone / marker traces"
    assert console == [], console
    assert requests == [], requests
