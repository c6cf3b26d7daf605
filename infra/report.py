"""The run report: read the audit trail from ClickHouse, compute metrics, draw plots, write HTML.

Every number comes from the audit trail (positions, equity, decisions, signals, rejects with FINAL),
so the report and `smc query` can never disagree.
"""
from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from infra.clickhouse import AuditStore
from infra.performance import ClosedPosition, Trade, drawdown_series, group_pnl, random_entry_evidence, summarize
from schemas.tiers import tier_name, tier_names


def load_trades(store: AuditStore) -> list[Trade]:
    _, rows = store.query(
        f"SELECT symbol, side, opened_at, closed_at, realized_pnl, fees, funding, confidence, pattern, exit_reason, "
        f"position_id, qty, entry_price, exit_price, stop, target "
        f"FROM {store.database}.positions FINAL WHERE status = 'closed' ORDER BY closed_at, position_id")
    return [Trade(*r) for r in rows]


def load_bars(store: AuditStore) -> tuple[str, dict]:
    """The run's klines of its base interval (the most frequent one): (interval, symbol -> SymbolBars)."""
    from models.baselines import SymbolBars
    _, ivs = store.query(f"SELECT `interval`, count() AS n FROM {store.database}.klines FINAL GROUP BY `interval` ORDER BY n DESC")
    if not ivs:
        return "", {}
    interval = ivs[0][0]
    _, kl = store.query(f"SELECT symbol, open_time, open, high, low, close FROM {store.database}.klines FINAL "
                        f"WHERE `interval` = '{interval}' ORDER BY symbol, open_time")
    by: dict[str, list] = {}
    for r in kl:
        by.setdefault(r[0], []).append(r[1:])
    bars = {}
    for sym, rs in by.items():
        a = np.asarray(rs, dtype=np.float64)
        bars[sym] = SymbolBars(a[:, 0].astype(np.int64), a[:, 1], a[:, 2], a[:, 3], a[:, 4])
    return interval, bars


def load_baselines(store: AuditStore, interval: str, bars: dict, cfg, seeds: int = 20) -> dict | None:
    """Random entries with the same exits (and always-flat, buy-and-hold) for the run's closed trades,
    on the run's own klines (load_bars), with the executor's costs and exit rules (cfg: the ExecutorConfig
    from the environment, SMC_EXEC_*)."""
    from models.dataset import interval_ms_of
    _, rows = store.query(
        f"SELECT symbol, side, qty, entry_price, stop, target, realized_pnl FROM {store.database}.positions FINAL "
        "WHERE status = 'closed' ORDER BY opened_at, position_id")
    if not rows or not bars:
        return None
    ev = random_entry_evidence([ClosedPosition(*r) for r in rows], bars, interval_ms_of(interval), cfg.paper,
                               cfg.exits, seeds, funding=cfg.funding)
    if ev is not None:
        ev["interval"] = interval
    return ev


def run_shadow_trades(store: AuditStore) -> dict[str, np.ndarray] | None:
    """Shadow trades (infra.performance.shadow_trades) of the run's setups, with the executor's exits,
    costs and real funding from the environment (SMC_EXEC_*)."""
    from executor.config import config_from_env
    from infra.performance import SignalSeries, shadow_trades
    from models.labels import LabelConfig
    _, rows = store.query(
        f"SELECT symbol, timeframe, open_time, open, high, low, close, side, entry, stop, target, confidence "
        f"FROM {store.database}.signals FINAL ORDER BY symbol, timeframe, open_time")
    if not rows:
        return None
    by: dict[tuple[str, str], list] = {}
    for r in rows:
        by.setdefault((r[0], r[1]), []).append(r[2:])
    series = []
    for (sym, tf), rs in by.items():
        cols = list(zip(*rs))
        o, h, lo, c, entry, stop, target, conf = (np.asarray(cols[k], dtype=np.float64) for k in (1, 2, 3, 4, 6, 7, 8, 9))
        side = np.array([1 if x == "long" else -1 if x == "short" else 0 for x in cols[5]], dtype=np.int8)
        series.append(SignalSeries(sym, tf, np.asarray(cols[0], np.int64), o, h, lo, c, side, entry, stop, target, conf))
    cfg = config_from_env(1.0)
    return shadow_trades(series, LabelConfig(cfg.exits, cfg.paper, cfg.strategy.target_r_multiple), cfg.funding)


def load_shadow(store: AuditStore) -> list[dict] | None:
    """The shadow trades by tier, overall and per timeframe: count, hit rate, mean / total R with
    bootstrap CIs (models.evaluate.tier_table)."""
    from models.evaluate import tier_table
    sh = run_shadow_trades(store)
    if sh is None:
        return None
    out = []
    for tf in ["all", *sorted(set(sh["timeframe"].tolist()))]:
        m = np.ones(sh["r"].size, bool) if tf == "all" else sh["timeframe"] == tf
        for row in tier_table(sh["confidence"][m], sh["label"][m], sh["r"][m]):
            out.append({"timeframe": tf, **row})
    return out


def load_equity(store: AuditStore) -> tuple[np.ndarray, np.ndarray]:
    _, rows = store.query(f"SELECT ts, equity FROM {store.database}.equity FINAL ORDER BY ts")
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    ts, eq = zip(*rows)
    return np.asarray(ts, dtype=np.int64), np.asarray(eq, dtype=np.float64)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(trades: list[Trade], ts: np.ndarray, eq: np.ndarray, start_equity: float, out: Path,
           benchmark: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    images = {}
    times = [datetime.fromtimestamp(t / 1000, timezone.utc) for t in ts]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if len(times):
        a1.plot(times, eq, color="#1f6feb", lw=1.2)
        a2.fill_between(times, drawdown_series(np.concatenate([[start_equity], eq]))[1:] * 100, 0, color="#d1242f", alpha=.5)
    if benchmark is not None and benchmark[0].size:   # buy-and-hold of the run's symbols (tearsheet.buy_and_hold_curve)
        a1.plot([datetime.fromtimestamp(t / 1000, timezone.utc) for t in benchmark[0]], benchmark[1], color="#9a6700",
                lw=.9, alpha=.8, label="buy-and-hold, same symbols")
        a1.plot([], [], color="#1f6feb", lw=1.2, label="strategy")
        a1.legend(loc="best", fontsize=8)
    a1.axhline(start_equity, color="grey", lw=.6, ls="--")
    a1.set_ylabel("equity (USDT)")
    a1.set_title("Equity curve")
    a2.set_ylabel("drawdown %")
    fig.autofmt_xdate()
    images["equity"] = _png(fig)
    plt.close(fig)

    def bars(rows, title, name, top=25):
        rows = rows[:top] if len(rows) <= top else rows[:top // 2] + rows[-top // 2:]
        fig, ax = plt.subplots(figsize=(10, max(2.5, 0.28 * len(rows) + 1)))
        vals = [r["pnl"] for r in rows]
        ax.barh([r["group"] for r in rows], vals, color=["#1a7f37" if v >= 0 else "#d1242f" for v in vals])
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlabel("net PnL (USDT)")
        images[name] = _png(fig)
        plt.close(fig)

    bars(group_pnl(trades, lambda t: t.symbol), "PnL by symbol", "by_symbol")
    bars(group_pnl(trades, lambda t: t.pattern or "(none)"), "PnL by SMC pattern", "by_pattern")
    bars(group_pnl(trades, lambda t: tier_name(t.confidence)), "PnL by confidence tier", "by_tier")
    bars(sorted(group_pnl(trades, lambda t: f"{datetime.fromtimestamp(t.opened_at / 1000, timezone.utc).hour:02d}h"),
                key=lambda r: r["group"]), "PnL by entry hour (UTC)", "by_hour", top=24)
    for name, b64 in images.items():
        (out / f"{name}.png").write_bytes(base64.b64decode(b64))
    return images


def _fmt(v, key: str = "") -> str:
    from infra.tearsheet_html import cell
    return cell(key, v)


def build_report(store: AuditStore, out_dir: str | Path, start_equity: float, plan=None,
                 console: Console | None = None, meta: dict | None = None) -> dict:
    """meta: the run's metadata (infra.run_meta.run_meta), shown on top and kept in summary.json "run"."""
    from executor.config import config_from_env
    from infra import tearsheet
    from models.baselines import bootstrap_mean_ci, buy_and_hold
    from models.dataset import interval_ms_of
    import time
    began = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trades = load_trades(store)
    ts, eq = load_equity(store)
    start = plan.start if plan else (int(ts.min()) if ts.size else 0)
    end = plan.end if plan else (int(ts.max()) if ts.size else 0)
    summary = summarize(trades, ts, eq, start_equity, start, end)
    summary.update(tearsheet.figures(trades, ts, eq, start_equity, start, end))
    db = store.database
    summary["signals"] = store.count("signals")
    summary["setups"] = store.count("signals", "side != 'flat'")
    summary["klines"] = store.count("klines")
    summary["rejects"] = store.count("rejects")
    _, reasons = store.query(f"SELECT action, reason, count() FROM {db}.decisions FINAL GROUP BY action, reason ORDER BY 3 DESC")
    summary["decisions"] = {f"{a}:{r}": int(n) for a, r, n in reasons}
    if plan is not None:
        summary["symbols"] = len(plan.symbols)
        summary["period"] = [datetime.fromtimestamp(plan.start / 1000, timezone.utc).isoformat(),
                             datetime.fromtimestamp(plan.end / 1000, timezone.utc).isoformat()]
    interval, bars = load_bars(store)
    cfg = config_from_env(1.0)   # the executor's costs and exit rules, as the run had them (SMC_EXEC_*)
    held = [s for s in (plan.symbols if plan else sorted(bars)) if s in bars]
    summary["benchmark_return_pct"] = (buy_and_hold(bars, held, cfg.paper.taker_fee, cfg.paper.slippage_bps)["return_pct"]
                                       if held else float("nan"))
    bench = tearsheet.buy_and_hold_curve(bars, held, start_equity, interval_ms_of(interval) if interval else 60_000,
                                         cfg.paper.taker_fee, cfg.paper.slippage_bps)
    summary["monthly_returns"] = tearsheet.monthly_returns(ts, eq, start_equity)
    summary["rolling_sharpe"] = tearsheet.rolling_sharpe_series(ts, eq, start_equity, start, end)

    def ci(x):
        return bootstrap_mean_ci(x, n_boot=1000, seed=0)
    order = {name: i for i, name in enumerate(tier_names())}
    groups = {"symbol": group_pnl(trades, lambda t: t.symbol),
              "pattern": group_pnl(trades, lambda t: t.pattern or "(none)"),
              "tier": sorted(group_pnl(trades, lambda t: tier_name(t.confidence), ci), key=lambda r: order[r["group"]]),
              "side": group_pnl(trades, lambda t: t.side, ci),
              "block": group_pnl(trades, lambda t: tearsheet.blocks_of(t.pattern) or ["(none)"], ci),
              "exit_reason": group_pnl(trades, lambda t: t.exit_reason)}
    summary["baselines"] = load_baselines(store, interval, bars, cfg)
    summary["shadow_by_tier"] = load_shadow(store)
    # --- sizing per tier (issue 15): risk intended vs taken, how often the cap bound ---
    from infra.sizing_report import load_entry_sizing, sizing_by_tier
    summary["sizing_by_tier"] = sizing_by_tier(load_entry_sizing(store))
    trade_rows = tearsheet.trade_rows(trades, bars, interval_ms_of(interval) if interval else 60_000)
    run = dict(meta or {})
    _, mv = store.query(f"SELECT DISTINCT model_version FROM {db}.signals FINAL ORDER BY model_version")
    _, sv = store.query(f"SELECT DISTINCT strategy_version FROM {db}.signals FINAL ORDER BY strategy_version")
    run.update(model_versions=[r[0] for r in mv], strategy_versions=[r[0] for r in sv])
    images = _plots(trades, ts, eq, start_equity, out, bench)
    images.update(_rolling_sharpe_png(summary["rolling_sharpe"], out))
    # --- candle charts per traded symbol (issue 18): infra/chart.py, one page each, linked below ---
    from infra.chart_data import write_report_charts
    charts = write_report_charts(store, out, out.name, sorted({t.symbol for t in trades}))
    run["report_s"] = time.monotonic() - began   # the report's own time (the run's is wall_s)
    curve = [[start, start_equity]] + tearsheet.downsample_curve(ts, eq)   # for `smc compare`
    (out / "summary.json").write_bytes(orjson.dumps({"summary": summary, "groups": groups, "trades": trade_rows,
                                                     "run": run, "equity": curve,
                                                     "benchmark_equity": tearsheet.downsample_curve(*bench)},
                                                    option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    (out / "index.html").write_text(_html(summary, groups, trade_rows, images, run, charts))
    _print(console or Console(), summary, groups, out)
    return summary


def _rolling_sharpe_png(series: dict, out: Path) -> dict[str, str]:
    """The trailing Sharpe as a PNG (nothing with fewer than two full windows)."""
    if len(series["points"]) < 2:
        return {}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t, v = zip(*series["points"])
    fig, ax = plt.subplots(figsize=(10, 2.8))
    ax.plot([datetime.fromtimestamp(x / 1000, timezone.utc) for x in t], v, color="#8250df", lw=1.1)
    ax.axhline(0, color="grey", lw=.6, ls="--")
    ax.set_title(f"Rolling Sharpe ({series['window']} x {series['sampling']} returns, annualised)")
    fig.autofmt_xdate()
    b64 = _png(fig)
    plt.close(fig)
    (out / "rolling_sharpe.png").write_bytes(base64.b64decode(b64))
    return {"rolling_sharpe": b64}


def _table_html(rows: list[dict]) -> str:
    from infra.tearsheet_html import table
    return table(rows)


def _charts_html(charts: dict[str, str]) -> str:
    """Links to the per-symbol candle charts (interactive, offline: plotly.min.js beside them)."""
    if not charts:
        return ""
    links = " · ".join(f'<a href="{html.escape(f)}">{html.escape(s)}</a>' for s, f in charts.items())
    return (f"<h2>Charts: trades on price with the SMC zones</h2><p>{links}</p><p><small>M1/M5 candles, FVG and "
            "order-block zones, swings, BOS/CHoCH, sweeps, entries/exits with stop and target; "
            "<code>smc chart SYMBOL --run RUN --start ISO --end ISO</code> draws any other stretch.</small></p>")


def _html(summary: dict, groups: dict, trade_rows: list[dict], images: dict[str, str], run: dict,
          charts: dict | None = None) -> str:
    from infra import tearsheet_html as th
    dec = _table_html([{"decision": k, "count": v} for k, v in summary.get("decisions", {}).items()])
    imgs = "".join(f'<h2>{html.escape(n.replace("_", " "))}</h2><img src="data:image/png;base64,{b}">' for n, b in images.items())
    grp = th.group_tables(groups) + "".join(f"<h2>PnL by {html.escape(k)}</h2>{_table_html(v)}" for k, v in groups.items()
                                            if k not in ("side", "block", "tier"))
    base = baseline_text(summary.get("baselines"))
    grp = (f"<h2>Baselines: random entries with the same exits</h2><p>{html.escape(base)}</p>" if base else "") + grp
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>SMC-Quant run report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}img{{max-width:100%}}{th.STYLE}</style></head>
<body><h1>SMC-Quant run report</h1><p><b>{html.escape(verdict(summary))}</b></p>{th.metadata(run, summary)}{_charts_html(charts or {})}
<h2>Tearsheet</h2>{th.headline(summary)}{th.monthly(summary.get("monthly_returns", []))}<h2>Decisions</h2>{dec}
{shadow_html(summary.get("shadow_by_tier"))}
<h2>Sizing by risk tier (intended vs taken, % of equity; how often the position cap bound)</h2>{_table_html(summary.get("sizing_by_tier", []))}{imgs}{grp}
{th.trade_list(trade_rows, charts)}</body></html>"""


def shadow_html(rows: list[dict] | None) -> str:
    """The shadow-trade table: what every setup of the run was worth, tier by tier, traded or not."""
    if not rows:
        return ""
    fmt = [{"timeframe": r["timeframe"], "tier": r["tier"], "setups": r["n"],
            "hit rate": f"{r['hit_rate']:.1%} [{r['hit_rate_ci'][0]:.1%}, {r['hit_rate_ci'][1]:.1%}]" if r["n"] else "-",
            "mean R": f"{r['mean_r']:+.3f} [{r['mean_r_ci'][0]:+.3f}, {r['mean_r_ci'][1]:+.3f}]" if r["n"] else "-",
            "total R": f"{r['total_r']:+.1f}"} for r in rows]
    return ("<h2>Shadow trades: every setup as the executor would trade it, taken or not (95 % bootstrap CIs; "
            "one trade per setup, no position limit or sizing)</h2>" + _table_html(fmt))


def baseline_text(b: dict | None) -> str:
    """One paragraph: the run's mean R per trade vs random entries, always-flat and buy-and-hold, with CIs."""
    if not b:
        return ""
    st, rd, df = b["strategy"], b["random"], b["strategy_minus_random"]
    return (f"mean R per trade {st['mean']:+.3f} [95 % CI {st['lo']:+.3f}, {st['hi']:+.3f}] over {st['n']} trades; "
            f"random entries with the same exits, costs, side mix and stop distances ({rd['seeds']} seeds, "
            f"{b.get('interval', '')} bars of this run): {rd['mean']:+.3f} [{rd['lo']:+.3f}, {rd['hi']:+.3f}]; "
            f"difference {df['mean']:+.3f} [{df['lo']:+.3f}, {df['hi']:+.3f}]; always flat 0 R; buy-and-hold of the "
            f"traded symbols {b['buy_and_hold']['return_pct']:+.2f} %")


def verdict(summary: dict) -> str:
    """Say plainly why a run did not trade, when it did not."""
    dec = summary.get("decisions", {})
    if summary.get("trades", 0) == 0 and summary.get("setups", 0) > 0 and dec.get("skip:below_threshold", 0):
        return (f"No trades: all {summary['setups']} setups scored <= 0.60, the lowest risk tier. The shipped model is "
                "calibrated and finds no edge in these setups after fees (models/README.md). "
                "`smc run --scorer heuristic` trades on the spec's heuristic score instead. The shadow trades "
                "below show what every setup would have done, tier by tier.")
    return ""


def _print(console: Console, summary: dict, groups: dict, out: Path) -> None:
    t = Table(title="Run summary", show_header=False)
    for k in ("symbols", "klines", "signals", "setups", "trades", "net_pnl", "return_pct", "win_rate", "profit_factor",
              "max_drawdown_pct", "cagr_pct", "benchmark_return_pct", "sharpe", "sortino", "sqn", "expectancy",
              "exposure_pct", "fees", "funding", "rejects"):
        if k in summary:
            label = f"sharpe ({summary.get('sharpe_n', 0)} x {summary.get('sharpe_sampling', '1d')})" if k == "sharpe" else k
            t.add_row(label, _fmt(summary[k], k))
    console.print(t)
    if summary.get("decisions"):
        d = Table(title="Decisions")
        d.add_column("action:reason")
        d.add_column("count", justify="right")
        for k, v in list(summary["decisions"].items())[:10]:
            d.add_row(k, str(v))
        console.print(d)
    base = baseline_text(summary.get("baselines"))
    if base:
        console.print(f"baselines: {base}")
    shadow = [r for r in summary.get("shadow_by_tier") or [] if r["timeframe"] == "all" and r["n"]]
    if shadow:
        console.print("shadow trades (every setup, taken or not): " + "; ".join(
            f"{r['tier']}: {r['n']} setups, hit {r['hit_rate']:.1%}, mean R {r['mean_r']:+.3f} "
            f"[{r['mean_r_ci'][0]:+.3f}, {r['mean_r_ci'][1]:+.3f}]" for r in shadow))
    if summary.get("sizing_by_tier"):
        z = Table(title="Sizing by risk tier (% of equity)")
        for col in ("tier", "entries", "cap bound", "intended", "taken", "taken/intended"):
            z.add_column(col, justify="right")
        for r in summary["sizing_by_tier"]:
            z.add_row(f"{r['tier_risk_pct']:g} %", str(r["entries"]), f"{r['cap_bound']} ({r['cap_bound_pct']:.0f} %)",
                      f"{r['risk_intended_pct']:.3f}", f"{r['risk_taken_pct']:.3f}", f"{r['taken_over_intended']:.2f}")
        console.print(z)
    note = verdict(summary)
    if note:
        console.print(f"[yellow]{note}[/]")
    console.print(f"report: [link=file://{out / 'index.html'}]{out / 'index.html'}[/] (+ PNGs, summary.json)")
