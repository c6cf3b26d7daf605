"""The candle chart of one symbol of a run: M1 and M5 candles, the SMC geometry and the trades (plotly).

Pure: a ChartInput (the run's records for one symbol, read by infra.chart_data) -> geometry -> a plotly
figure -> one HTML page. No I/O here.

Where each drawn thing comes from (nothing is recomputed that the run recorded):
* M1 candles: the run's klines. M5 candles: aggregated from them by the processors' own
  processors.smc.batch.aggregate_htf (the one definition of the HTF bar); the tests check them
  against the run's 5m signal records.
* Geometry: the `events` of the run's signal records, per timeframe (what the engine emitted, bar
  by bar). An event names bars by the engine's bar index; the k-th signal record of a symbol and
  timeframe is the engine's bar k (one record per processed bar, flat or not), so index -> time is
  the k-th record's open_time.
  - FVG: a box [bottom, top] from the gap candle (the bar before the one completing it) to the
    close of the bar mitigating it (`fvg_mitigated`, matched by creating index and direction), or to
    the chart's end when none did. The engine keeps at most max_open_fvgs (20) open zones and drops
    the oldest unreported, so an "open" zone may also be a dropped one: the hover says so.
  - Order block: a box from the OB candle (`ob.time`) to the close of the bar mitigating it
    (`ob_mitigated`, matched by candle index and direction), or to the chart's end.
  - Swings: markers at the pivot (its time and level), hover with the bar that confirmed it; a swing
    a later, more extreme one superseded is drawn hollow.
  - BOS / CHoCH: the broken level, from its swing pivot to the close of the breaking bar.
  - Liquidity sweeps: the swept level (a tracked swing level, `count` equal ones merged) from its
    pivot to the sweeping bar, and a marker there. A tracked level that was never swept is shown by its
    swing marker only: the engine records no event when a close breaks one, so where it ends is unknown.
* Trades: the run's positions (entry/exit price and time, stop and target as recorded on the
  position); the hover adds the signal that opened it (features, confidence, tier, pattern).

Large runs: a chart draws [start, end) only. M1 is drawn when the range holds at most MAX_CANDLES M1
bars, else M5 only (the page says so); a range over MAX_CANDLES M5 bars is refused (ChartRangeError).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from schemas.tiers import tier_name
from processors.smc.engine import timeframe_label   # the signals' timeframe names ("1m", "5m")
from schemas import interval_ms

MAX_CANDLES = 6_000          # per timeframe: plotly stays fluid on 2 cores up to about this many candles


class ChartRangeError(ValueError):
    """The requested range cannot be charted (empty, or too long to stay responsive); says what to do."""


@dataclass(frozen=True)
class SignalRecord:
    """The parts of a signal record a chart shows (schemas.signal.Signal)."""
    signal_id: str
    timeframe: str
    open_time: int
    features: tuple[float, ...]
    confidence: float
    model_version: str
    side: str
    entry: float
    stop: float
    target: float


@dataclass(frozen=True)
class PositionRecord:
    """The parts of a position record a chart shows (schemas.trading.Position, its last version)."""
    position_id: str
    signal_id: str
    side: str
    qty: float
    entry_price: float
    stop: float
    target: float
    opened_at: int
    status: str
    closed_at: int
    exit_price: float
    exit_reason: str
    realized_pnl: float
    fees: float
    confidence: float
    pattern: str


@dataclass
class ChartInput:
    """One symbol of one run, as recorded. m1: arrays open_time/open/high/low/close/volume (the klines of
    the charted range, whole M5 buckets). bar_times[tf]: open_time of every signal record of tf from the
    run's start up to the range's end, in order (the engine's bar index -> time). events[tf]: (open_time,
    events dict) of the records with events, same span. trades: positions overlapping the range."""
    symbol: str
    run: str
    interval_ms: int
    htf_factor: int
    start: int
    end: int
    m1: dict
    bar_times: dict[str, np.ndarray]
    events: dict[str, list[tuple[int, dict]]]
    trades: list[PositionRecord] = field(default_factory=list)
    signals: dict[str, SignalRecord] = field(default_factory=dict)
    feature_names: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Zone:
    kind: str          # fvg | ob
    timeframe: str
    dir: int
    top: float
    bottom: float
    x0: int
    x1: int
    created: int       # open time of the bar the engine emitted it on
    mitigated: int     # open time of the mitigating bar, 0 when none in the records up to the chart's end


@dataclass(frozen=True)
class Swing:
    timeframe: str
    side: int          # 1 high, -1 low
    time: int
    level: float
    confirmed: int
    superseded: bool


@dataclass(frozen=True)
class Level:
    kind: str          # bos | choch | sweep
    timeframe: str
    dir: int
    level: float
    x0: int            # the swing pivot's open time
    x1: int            # the breaking / sweeping bar's close
    at: int            # the breaking / sweeping bar's open time
    detail: str = ""


@dataclass
class Geometry:
    zones: list[Zone] = field(default_factory=list)
    swings: list[Swing] = field(default_factory=list)
    levels: list[Level] = field(default_factory=list)


def geometry(ci: ChartInput) -> Geometry:
    """Every zone, swing, break and sweep of the records that overlaps [ci.start, ci.end)."""
    g = Geometry()
    for tf, evs in ci.events.items():
        times = ci.bar_times.get(tf, np.zeros(0, dtype=np.int64))
        step = interval_ms(tf)

        def at(i: int, times=times) -> int:
            return int(times[i]) if 0 <= i < len(times) else 0

        open_fvg: dict[tuple[int, int], tuple] = {}
        open_ob: dict[tuple[int, int], tuple] = {}
        superseded: set[int] = set()
        swings = []
        for t, ev in evs:
            for m in ev.get("fvg_mitigated", ()):
                z = open_fvg.pop((m["created"], m["dir"]), None)
                if z is not None:
                    g.zones.append(Zone("fvg", tf, z[0], z[1], z[2], z[3], t + step, z[4], t))
            for m in ev.get("ob_mitigated", ()):
                z = open_ob.pop((m["index"], m["dir"]), None)
                if z is not None:
                    g.zones.append(Zone("ob", tf, z[0], z[1], z[2], z[3], t + step, z[4], t))
            for kind in ("bos", "choch"):
                b = ev.get(kind)
                if b:
                    g.levels.append(Level(kind, tf, b["dir"], b["level"], at(b["pivot"]) or t, t + step, t))
            ob = ev.get("ob")
            if ob:
                open_ob[(ob["index"], ob["dir"])] = (ob["dir"], ob["top"], ob["bottom"], ob["time"], t)
            for s in ev.get("sweep", ()):
                g.levels.append(Level("sweep", tf, s["dir"], s["level"], at(s["pivot"]) or t, t + step, t,
                                      f"{s['side']} side, {s['count']} equal level(s)"))
            f = ev.get("fvg")
            if f:
                idx = int(np.searchsorted(times, t))   # this bar's engine index
                open_fvg[(idx, f["dir"])] = (f["dir"], f["top"], f["bottom"], at(idx - 1) or t, t)
            for key, side in (("swing_high", 1), ("swing_low", -1)):
                s = ev.get(key)
                if s:
                    if s.get("supersedes") is not None:
                        superseded.add(s["supersedes"])
                    swings.append((side, s["pivot"], s["time"], s["level"], t))
        for z in list(open_fvg.values()):
            g.zones.append(Zone("fvg", tf, z[0], z[1], z[2], z[3], ci.end, z[4], 0))
        for z in list(open_ob.values()):
            g.zones.append(Zone("ob", tf, z[0], z[1], z[2], z[3], ci.end, z[4], 0))
        g.swings += [Swing(tf, side, tm, lv, conf, p in superseded) for side, p, tm, lv, conf in swings]
    g.zones = [z for z in g.zones if z.x1 > ci.start and z.x0 < ci.end]
    g.zones.sort(key=lambda z: (z.x0, z.timeframe, z.kind))
    g.swings = [s for s in g.swings if ci.start <= s.time < ci.end]
    g.levels = [lv for lv in g.levels if lv.x1 > ci.start and lv.x0 < ci.end]
    return g


def chart_range(first: int, end: int, start: int | None, stop: int | None, trade_times: list[int],
                period: int) -> tuple[int, int, list[str]]:
    """[start, end) to draw, on whole HTF buckets (period ms), and a note when it is not what was asked.
    Nothing asked: the run's span [first, end) if it fits in MAX_CANDLES HTF bars, else that many bars
    from an hour before the first trade (from the start when there is none)."""
    notes = []
    lo = first if start is None else max(start, first)
    hi = end if stop is None else min(stop, end)
    lo, hi = lo - lo % period, -(-hi // period) * period
    if start is None and stop is None and (hi - lo) // period > MAX_CANDLES:
        t0 = min(trade_times) - 3_600_000 if trade_times else lo
        lo2 = max(lo, t0 - t0 % period)
        hi2 = min(hi, lo2 + MAX_CANDLES * period)
        notes.append(f"the run spans {_iso(lo)} .. {_iso(hi)} UTC, more than {MAX_CANDLES:,} HTF bars: this chart shows "
                     f"{_iso(lo2)} .. {_iso(hi2)}; `smc chart SYMBOL --run RUN --start ISO --end ISO` draws any other stretch")
        lo, hi = lo2, hi2
    if hi <= lo:
        raise ChartRangeError(f"the range {_iso(lo)} .. {_iso(hi)} UTC is empty or outside the run "
                              f"({_iso(first)} .. {_iso(end)} UTC)")
    return lo, hi, notes


def htf_candles(ci: ChartInput) -> dict:
    """The M5 (HTF) bars of the range, by the processors' aggregation (the bucket still open at the end
    of the data is left out, as the processors leave it)."""
    from processors.smc.batch import aggregate_htf
    bars, _ = aggregate_htf(ci.m1, ci.interval_ms, ci.htf_factor)
    keep = (bars["open_time"] >= ci.start) & (bars["open_time"] < ci.end)
    return {k: v[keep] for k, v in bars.items()}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _x(ms) -> np.ndarray:
    """Epoch ms -> datetime64 (plotly writes ISO strings, read as UTC)."""
    return np.asarray(ms, dtype="int64").astype("datetime64[ms]")


_DIR = {1: "bull", -1: "bear"}
_ZONE_COLOR = {("fvg", 1): "46,160,67", ("fvg", -1): "209,36,47", ("ob", 1): "31,111,235", ("ob", -1): "219,109,40"}


def _boxes(zones: list[Zone], lo: int, hi: int):
    xs, ys = [], []
    for z in zones:
        x0, x1 = max(z.x0, lo), min(z.x1, hi)   # drawn inside the chart's range; the hover keeps the times
        xs += [x0, x1, x1, x0, x0, None]
        ys += [z.bottom, z.bottom, z.top, z.top, z.bottom, None]
    return [None if v is None else np.datetime64(v, "ms") for v in xs], ys


def _segments(items, y_of, x0_of, x1_of):
    xs, ys = [], []
    for it in items:
        xs += [np.datetime64(x0_of(it), "ms"), np.datetime64(x1_of(it), "ms"), None]
        y = y_of(it)
        ys += [y, y, None]
    return xs, ys


def _signal_text(sig: SignalRecord | None, names: tuple[str, ...]) -> str:
    if sig is None:
        return "signal: not in the records"
    feats = "<br>".join(f"&nbsp;&nbsp;{html.escape(n)} = {v:.4f}" for n, v in zip(names, sig.features))
    return (f"signal {html.escape(sig.signal_id)} ({sig.timeframe})<br>confidence {sig.confidence:.4f} "
            f"(tier {tier_name(sig.confidence)}, {html.escape(sig.model_version)})<br>"
            f"setup {sig.side} entry {sig.entry:.6g} stop {sig.stop:.6g} target {sig.target:.6g}<br>features:<br>{feats}")


def build_figure(ci: ChartInput):
    """-> (plotly Figure, notes shown with it). Raises ChartRangeError for an empty or too long range."""
    import plotly.graph_objects as go
    notes = list(ci.notes)
    m1 = {k: v[(ci.m1["open_time"] >= ci.start) & (ci.m1["open_time"] < ci.end)] for k, v in ci.m1.items()}
    m5 = htf_candles(ci)
    htf, base = timeframe_label(ci.interval_ms * ci.htf_factor), timeframe_label(ci.interval_ms)
    if len(m1["open_time"]) == 0:
        raise ChartRangeError(f"{ci.symbol}: no {base} klines of run {ci.run} in {_iso(ci.start)} .. {_iso(ci.end)} UTC")
    if len(m5["open_time"]) > MAX_CANDLES:
        raise ChartRangeError(f"{ci.symbol}: {_iso(ci.start)} .. {_iso(ci.end)} holds {len(m5['open_time']):,} {htf} "
                              f"bars, more than {MAX_CANDLES:,} (the most a chart draws and stays responsive): "
                              "narrow it with --start/--end")
    draw_base = len(m1["open_time"]) <= MAX_CANDLES
    if not draw_base:
        notes.append(f"{len(m1['open_time']):,} {base} bars in this range (more than {MAX_CANDLES:,}): {htf} candles "
                     f"and {htf} geometry only; narrow the range with --start/--end for {base}")
    geo = geometry(ci)
    base_tf = base
    fig = go.Figure()

    def candles(bars, name, visible):
        fig.add_trace(go.Candlestick(x=_x(bars["open_time"]), open=bars["open"], high=bars["high"], low=bars["low"],
                                     close=bars["close"], name=name, legendgroup=name, visible=visible,
                                     increasing_line_color="#1a7f37", decreasing_line_color="#d1242f",
                                     increasing_fillcolor="#1a7f37", decreasing_fillcolor="#d1242f"))
    if draw_base:
        candles(m1, f"{base} candles", True)
    candles(m5, f"{htf} candles", True if not draw_base else "legendonly")

    timeframes = [tf for tf in ci.events if draw_base or tf != base_tf]
    for tf in timeframes:
        vis = True
        for kind in ("fvg", "ob"):
            for d in (1, -1):
                zs = [z for z in geo.zones if z.timeframe == tf and z.kind == kind and z.dir == d]
                if not zs:
                    continue
                rgb = _ZONE_COLOR[(kind, d)]
                name = f"{tf} {kind.upper()} {_DIR[d]}"
                xs, ys = _boxes(zs, ci.start, ci.end)
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", fill="toself", name=name, legendgroup=name,
                                         fillcolor=f"rgba({rgb},{0.10 if tf == base_tf else 0.16})",
                                         line=dict(color=f"rgba({rgb},0.55)", width=0.6 if tf == base_tf else 1.2),
                                         hoverinfo="skip", visible=vis,
                                         meta={"kind": kind, "timeframe": tf, "dir": d}))
                fig.add_trace(go.Scatter(
                    x=_x([max(z.x0, ci.start) for z in zs]), y=[z.top for z in zs], mode="markers", name=name, legendgroup=name,
                    showlegend=False, visible=vis, marker=dict(size=4, color=f"rgba({rgb},0.9)"),
                    customdata=[[z.top, z.bottom, z.created, z.mitigated] for z in zs],
                    meta={"kind": kind + "_hover", "timeframe": tf, "dir": d},
                    hovertext=[f"{tf} {kind.upper()} {_DIR[d]} [{z.bottom:.6g}, {z.top:.6g}]<br>emitted at {_iso(z.created)}"
                               + (f"<br>mitigated at {_iso(z.mitigated)}" if z.mitigated else
                                  "<br>not mitigated in the records (open, or dropped from the engine's capped book)")
                               for z in zs], hoverinfo="text"))
        sw = sorted((s for s in geo.swings if s.timeframe == tf), key=lambda s: s.superseded)   # legend: a filled one
        if sw:
            name = f"{tf} swings"
            fig.add_trace(go.Scatter(
                x=_x([s.time for s in sw]), y=[s.level for s in sw], mode="markers", name=name, legendgroup=name,
                meta={"kind": "swing", "timeframe": tf},
                marker=dict(symbol=["triangle-down" if s.side == 1 else "triangle-up" for s in sw], size=8 if tf != base_tf else 6,
                            color=["#8250df" if not s.superseded else "rgba(0,0,0,0)" for s in sw],
                            line=dict(color="#8250df", width=1)),
                hovertext=[f"{tf} swing {'high' if s.side == 1 else 'low'} {s.level:.6g}<br>confirmed at {_iso(s.confirmed)}"
                           + ("<br>superseded by a more extreme one" if s.superseded else "") for s in sw],
                hoverinfo="text"))
        for kind, color, dash in (("bos", "#0969da", "solid"), ("choch", "#bf3989", "solid"), ("sweep", "#9a6700", "dot")):
            lv = [x for x in geo.levels if x.timeframe == tf and x.kind == kind]
            if not lv:
                continue
            name = f"{tf} {kind.upper() if kind != 'sweep' else 'liquidity sweeps'}"
            xs, ys = _segments(lv, lambda x: x.level, lambda x: max(x.x0, ci.start), lambda x: min(x.x1, ci.end))
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, legendgroup=name, hoverinfo="skip",
                                     line=dict(color=color, width=1 if tf == base_tf else 1.6, dash=dash)))
            fig.add_trace(go.Scatter(
                x=_x([x.at for x in lv]), y=[x.level for x in lv], mode="markers", name=name, legendgroup=name,
                showlegend=False, meta={"kind": kind, "timeframe": tf},
                marker=dict(symbol="x-thin" if kind == "sweep" else "line-ew", size=9, color=color, line=dict(width=2, color=color)),
                customdata=[[x.dir, x.level, x.at] for x in lv],
                hovertext=[f"{tf} {kind.upper()} {_DIR[x.dir]} level {x.level:.6g} at {_iso(x.at)}"
                           + (f"<br>{x.detail}" if x.detail else "") for x in lv], hoverinfo="text"))

    trades = [p for p in ci.trades if p.opened_at < ci.end and (p.status == "open" or p.closed_at >= ci.start)]
    if trades:
        end_of = lambda p: p.closed_at if p.status == "closed" else ci.end   # noqa: E731
        for what, y_of, color in (("stop", lambda p: p.stop, "#d1242f"), ("target", lambda p: p.target, "#1a7f37")):
            xs, ys = _segments(trades, y_of, lambda p: p.opened_at, end_of)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"trade {what}s", legendgroup="trades",
                                     hoverinfo="skip", line=dict(color=color, width=1.2, dash="dash")))
        closed = [p for p in trades if p.status == "closed"]
        xs, ys = [], []
        for p in closed:
            xs += [np.datetime64(p.opened_at, "ms"), np.datetime64(p.closed_at, "ms"), None]
            ys += [p.entry_price, p.exit_price, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="trade path", legendgroup="trades", showlegend=False,
                                 hoverinfo="skip", line=dict(color="#57606a", width=1, dash="dot")))
        fig.add_trace(go.Scatter(
            x=_x([p.opened_at for p in trades]), y=[p.entry_price for p in trades], mode="markers", name="entries",
            legendgroup="trades", meta={"kind": "entry"},
            marker=dict(symbol=["triangle-up" if p.side == "long" else "triangle-down" for p in trades], size=12,
                        color=["#1a7f37" if p.side == "long" else "#d1242f" for p in trades],
                        line=dict(color="black", width=1)),
            customdata=[[p.position_id, p.opened_at, p.entry_price, p.stop, p.target] for p in trades],
            hovertext=[f"<b>{p.side} entry</b> {p.entry_price:.6g} x {p.qty:g} at {_iso(p.opened_at)}<br>stop {p.stop:.6g} "
                       f"target {p.target:.6g}<br>pattern {html.escape(p.pattern or '(none)')}<br>"
                       + _signal_text(ci.signals.get(p.signal_id), ci.feature_names) for p in trades],
            hoverinfo="text"))
        fig.add_trace(go.Scatter(
            x=_x([p.closed_at for p in closed]), y=[p.exit_price for p in closed], mode="markers", name="exits",
            legendgroup="trades", meta={"kind": "exit"},
            marker=dict(symbol="x", size=10, color=["#1a7f37" if p.realized_pnl >= 0 else "#d1242f" for p in closed],
                        line=dict(color="black", width=1)),
            customdata=[[p.position_id, p.closed_at, p.exit_price] for p in closed],
            hovertext=[f"<b>exit ({html.escape(p.exit_reason)})</b> {p.exit_price:.6g} at {_iso(p.closed_at)}<br>"
                       f"net PnL {p.realized_pnl:+.4f} USDT (fees {p.fees:.4f})" for p in closed], hoverinfo="text"))
    else:
        notes.append("no trades in this range")
    # the view opens on the candles (as a trading chart autoscales); zones far away are a zoom-out away
    lows = m1["low"] if draw_base else m5["low"]
    highs = m1["high"] if draw_base else m5["high"]
    pad = (float(highs.max()) - float(lows.min())) * 0.08 or float(highs.max()) * 0.001
    fig.update_layout(
        title=f"{ci.symbol} · run {ci.run} · {_iso(ci.start)} .. {_iso(ci.end)} UTC",
        xaxis=dict(type="date", rangeslider=dict(visible=False), range=list(_x([ci.start, ci.end]))),
        yaxis=dict(title="price", fixedrange=False, range=[float(lows.min()) - pad, float(highs.max()) + pad]),
        hovermode="closest", dragmode="zoom", template="plotly_white", height=760,
        legend=dict(orientation="h", yanchor="top", y=-0.08), margin=dict(l=60, r=20, t=50, b=40))
    return fig, notes


# #t=<epoch ms> in the page's address zooms to an hour around that time (the trade list links there)
_ZOOM_JS = """var gd=document.getElementById('{plot_id}');function z(){var m=/t=(\\d+)/.exec(location.hash);
if(m){var t=+m[1];Plotly.relayout(gd,{'xaxis.range':[new Date(t-1800000).toISOString(),
new Date(t+1800000).toISOString()],'yaxis.autorange':true});}}z();window.addEventListener('hashchange',z);"""


def chart_html(ci: ChartInput, plotlyjs: bool | str = True) -> str:
    """One page: the figure, and notes on what it shows. plotlyjs: True embeds plotly.js (one
    self-contained file); "directory" refers to plotly.min.js beside the page (a report's charts
    share one copy). Never a CDN: the pages open without internet."""
    import plotly.io as pio
    if plotlyjs not in (True, "directory"):
        raise ValueError("plotly.js is embedded or beside the page, never fetched")
    fig, notes = build_figure(ci)
    div = pio.to_html(fig, include_plotlyjs=plotlyjs, full_html=False, post_script=_ZOOM_JS,
                      config={"scrollZoom": True, "displaylogo": False, "responsive": True})
    what = ("Boxes: FVG (green bull / red bear) and order blocks (blue bull / orange bear) from creation to "
            "mitigation or the chart's end; purple triangles: swings (hollow: superseded); lines: BOS, CHoCH, "
            "swept liquidity levels; triangles: entries, crosses: exits, dashed: stop and target. Click a legend "
            "entry to hide or show it; drag to zoom, double-click to reset.")
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(ci.symbol)} chart, run "
            f"{html.escape(ci.run)}</title><style>body{{font-family:system-ui,sans-serif;margin:1em}}</style></head><body>"
            f"<p>{html.escape(what)}</p>" + (f"<ul>{notes_html}</ul>" if notes else "") + div + "</body></html>")
