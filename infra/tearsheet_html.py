"""HTML of the tearsheet parts of a report (and `smc compare`): run metadata, headline figures, the
per-group tables with CIs, the monthly returns and the sortable, filterable trade list. One number
format per kind of value (cell): percentages with %, ratios with 2 decimals, USDT with 2 decimals,
prices with up to 8 significant digits, times in UTC. Self-contained: the only script is inline."""
from __future__ import annotations

import html
import math
from datetime import datetime, timezone

_TIME_COLS = {"opened_at", "closed_at", "drawdown_peak_at", "drawdown_trough_at", "drawdown_recovered_at"}
_FRACTION_COLS = {"win_rate"}                  # stored as a fraction, shown as a percentage
_USDT_COLS = {"pnl", "mean_pnl", "ci_lo", "ci_hi", "fees", "funding", "net_pnl", "start_equity", "final_equity",
              "expectancy", "avg_win", "avg_loss", "best_trade", "worst_trade"}
_PRICE_COLS = {"entry_price", "exit_price", "stop", "target", "qty"}
_DAY_COLS = {"drawdown_duration_days", "longest_underwater_days", "period_days"}
_R_COLS = {"r", "expectancy_r"}


def cell(col: str, v) -> str:
    """A value as the page shows it, by what the column holds."""
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if col in _TIME_COLS:
        return datetime.fromtimestamp(v / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
    if col in _FRACTION_COLS:
        return f"{v * 100:.2f} %"
    if col.endswith("_pct"):
        return f"{v:.2f} %"
    if col in _PRICE_COLS:
        return f"{v:.8g}"
    if col in _R_COLS:
        return f"{v:+.2f} R"
    if col in _DAY_COLS:
        return f"{v:.2f} d"
    if isinstance(v, int):
        return f"{v:,}"
    if col in _USDT_COLS:
        return f"{v:,.2f}"
    if col in ("minutes", "avg_minutes_held"):
        return f"{v:,.0f} min"
    return f"{v:,.2f}"


def table(rows: list[dict], attrs: str = "") -> str:
    if not rows:
        return "<p><i>none</i></p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(k, v))}</td>" for k, v in r.items()) + "</tr>"
                   for r in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def metadata(run: dict, summary: dict) -> str:
    """The run's metadata on top of the page (what is not known is said so)."""
    e = html.escape
    period = run.get("period") or summary.get("period")
    if period:
        period = [datetime.fromisoformat(p).strftime("%Y-%m-%d %H:%M:%S") for p in period]
    rows = [("period (UTC, end exclusive)", e(" .. ".join(period)) if period else "unknown"),
            ("symbols", e(", ".join(run["symbols"])) if run.get("symbols") else e(str(summary.get("symbols", "?")))),
            ("interval / HTF", e(f"{run.get('interval', '?')} / {run.get('htf', '?')}")),
            ("scorer", e(str(run.get("scorer", "?")))),
            ("model version (signals)", e(", ".join(run.get("model_versions", [])) or "none")),
            ("strategy version (signals)", e(", ".join(run.get("strategy_versions", [])) or "none")),
            ("engine", e(str(run.get("engine", "?")))), ("namespace", e(str(run.get("namespace", "?"))))]
    changed = run.get("settings_changed")
    rows.append(("settings changed from the defaults",
                 "<br>".join(e(f"{k} = {v!r}") for k, v in changed.items()) if changed else
                 ("none" if changed is not None else "not recorded")))
    files = run.get("data_files")
    rows.append(("data files", "<br>".join(e(f"{f['path']} ({f['bytes']:,} bytes) sha256 {f['sha256']}")
                                           for f in files) if files else "not recorded"))
    code = run.get("code")
    rows.append(("code version", e(f"git {code['commit']}" + (" + uncommitted changes" if code.get("dirty") else ""))
                 if code else "not recorded"))
    wall = run.get("wall_s")
    rows.append(("wall time (run, before the report)", f"{wall:,.1f} s" if wall is not None else "not recorded"))
    if run.get("report_s") is not None:
        rows.append(("report time", f"{run['report_s']:,.1f} s"))
    return "<h2>Run</h2>" + _kv(rows)


def headline(s: dict) -> str:
    """The tearsheet's figures in sections, one format per kind (cell)."""
    def row(label, key):
        return (label, html.escape(cell(key, s.get(key))))
    n, sampling = s.get("sharpe_n", 0), s.get("sharpe_sampling", "1d")
    unit = {"1d": "daily", "1h": "hourly"}.get(sampling, sampling)
    few = " — few points, indicative only" if n < 30 else ""
    sharpe_label = f"Sharpe ({n} {unit} returns, x sqrt({s.get('sharpe_periods_per_year', 365):g}){few})"
    days = s.get("period_days", 0.0)
    cagr_label = f"CAGR (from {days:.2f} days{', extrapolated' if days < 365 else ''})"
    returns = [row("net PnL (USDT)", "net_pnl"), row("return", "return_pct"), row(cagr_label, "cagr_pct"),
               row("buy-and-hold of the run's symbols, same period", "benchmark_return_pct"),
               row("start equity", "start_equity"), row("final equity", "final_equity")]
    risk = [row("max drawdown", "max_drawdown_pct"), row("drawdown peak", "drawdown_peak_at"),
            row("drawdown trough", "drawdown_trough_at"),
            ("drawdown recovered", html.escape(cell("drawdown_recovered_at", s.get("drawdown_recovered_at")))
             if s.get("drawdown_recovered_at") else "not recovered" if s.get("drawdown_peak_at") else "–"),
            row("drawdown duration (peak to recovery or end)", "drawdown_duration_days"),
            row("longest time under water", "longest_underwater_days"),
            row(sharpe_label, "sharpe") if n >= 2 else (sharpe_label, "n/a"),
            row("Sortino (same returns)", "sortino") if n >= 2 else ("Sortino (same returns)", "n/a"), row("Calmar (CAGR / max DD)", "calmar")]
    trades = [row("trades", "trades"), row("win rate (net PnL > 0)", "win_rate"), row("profit factor", "profit_factor"),
              row("expectancy per trade (USDT)", "expectancy"), row("expectancy per trade (R)", "expectancy_r"),
              row("average win (USDT)", "avg_win"), row("average loss (USDT)", "avg_loss"),
              row("payoff ratio (avg win / avg loss)", "payoff_ratio"), row("best trade (USDT)", "best_trade"),
              row("worst trade (USDT)", "worst_trade"), row("longest losing streak", "longest_losing_streak"),
              row("longest winning streak", "longest_winning_streak"), row("SQN (sqrt(n) x mean R / std R)", "sqn"),
              row("average time held", "avg_minutes_held"), row("exposure (time with a position)", "exposure_pct"),
              row("fees (USDT)", "fees"), row("funding (USDT, > 0 paid)", "funding")]
    pipeline = [row("klines", "klines"), row("signals", "signals"), row("setups", "setups"), row("rejects", "rejects")]
    return ('<div class="cols">' + "".join(f"<div><h3>{t}</h3>{_kv(r)}</div>" for t, r in
            (("Returns", returns), ("Risk", risk), ("Trades", trades), ("Pipeline", pipeline))) + "</div>")


def monthly(rows: list[dict]) -> str:
    """Monthly returns (infra.tearsheet.monthly_returns) as a year x month grid, in %."""
    from infra.tearsheet import monthly_grid
    grid = [{k: v if k == "year" else "" if v is None else cell("return_pct", v) for k, v in r.items()}
            for r in monthly_grid(rows)]
    return ("<h2>Monthly returns (UTC months: each month's last equity snapshot over the previous one's; "
            "year_pct compounded)</h2>" + table(grid))


def group_tables(groups: dict) -> str:
    """Long / short, per building block and per tier with the 95 % CI of the mean PnL per trade."""
    note = ("<p>mean PnL per trade with its 95 % percentile-bootstrap CI (1,000 resamples). A trade counts in every "
            "building block its signal has (an FVG or OB with its mitigation counts once).</p>")
    parts = [("Long / short", "side"), ("Per building block", "block"), ("Per confidence tier", "tier")]
    return note + "".join(f"<h2>{t}</h2>{table(groups[k])}" for t, k in parts if k in groups)


# sort on a header click, filter by words; the page's address can carry both (#q=BTCUSDT short&sort=pnl&dir=desc)
_TRADE_SCRIPT = """<script>(function(){
var t=document.getElementById('trades');if(!t)return;var f=document.getElementById('trade-filter'),
n=document.getElementById('trade-count'),b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),
heads=Array.prototype.slice.call(t.tHead.rows[0].cells);
function apply(){var q=f.value.toLowerCase().split(/\\s+/).filter(Boolean),k=0;rows.forEach(function(r){
var s=r.textContent.toLowerCase(),ok=q.every(function(w){return s.indexOf(w)>=0});r.style.display=ok?'':'none';
if(ok)k++;});n.textContent=k;}
function sortBy(i,asc){heads.forEach(function(h){h.removeAttribute('data-dir');});heads[i].setAttribute('data-dir',asc?'asc':'desc');
rows.sort(function(x,y){var a=x.cells[i].getAttribute('data-v'),c=y.cells[i].getAttribute('data-v'),
na=parseFloat(a),nc=parseFloat(c),d=(isNaN(na)||isNaN(nc))?a.localeCompare(c):na-nc;return asc?d:-d;});
rows.forEach(function(r){b.appendChild(r);});}
f.addEventListener('input',apply);
heads.forEach(function(th,i){th.style.cursor='pointer';th.addEventListener('click',function(){
sortBy(i,th.getAttribute('data-dir')!=='asc');});});
var h={};location.hash.replace(/^#/,'').split('&').forEach(function(p){var kv=p.split('=');
if(kv.length==2)h[kv[0]]=decodeURIComponent(kv[1].replace(/\\+/g,' '));});
if(h.sort){var i=heads.map(function(x){return x.textContent;}).indexOf(h.sort);if(i>=0)sortBy(i,h.dir!=='desc');}
if(h.q){f.value=h.q;apply();}})();</script>"""

TRADE_COLUMNS = ("symbol", "side", "opened_at", "closed_at", "minutes", "qty", "entry_price", "exit_price", "stop",
                 "target", "pnl", "pnl_pct", "r", "mae_pct", "mfe_pct", "fees", "funding", "confidence", "tier",
                 "blocks", "exit_reason", "pattern")


def trade_list(rows: list[dict], charts: dict[str, str] | None = None) -> str:
    """The trade list: every column sortable (click the header), rows filtered by words (all must match);
    with `charts` (symbol -> chart page), each trade links to its chart at its entry (#t=<ms>)."""
    charts = charts or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("chart", *TRADE_COLUMNS))

    def link(r):
        page = charts.get(r["symbol"])
        return (f'<td data-v=""><a href="{html.escape(page)}#t={int(r["opened_at"])}">chart</a></td>' if page
                else '<td data-v=""></td>')

    def td(c, v):
        raw = "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else repr(v) if isinstance(v, (int, float)) else str(v)
        return f'<td data-v="{html.escape(raw)}">{html.escape(cell(c, v))}</td>'
    body = "".join(f'<tr id="trade-{html.escape(r["position_id"])}">' + link(r) + "".join(td(c, r[c]) for c in TRADE_COLUMNS)
                   + "</tr>" for r in rows)
    return (f"<h2>Trades (<span id=\"trade-count\">{len(rows)}</span> of {len(rows)})</h2>"
            "<p>R = net PnL / (qty x |entry - stop|); PnL % of the entry notional; MAE / MFE: the worst / best "
            "price reached while open, % of the entry, from the run's bars. Click a header to sort.</p>"
            '<p><input id="trade-filter" placeholder="filter: e.g. BTCUSDT short FVG" size="40"></p>'
            f'<div class="scroll"><table id="trades"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
            f'{_TRADE_SCRIPT}')


STYLE = (".cols{display:flex;flex-wrap:wrap;gap:1.5em}.cols h3{margin:.3em 0}.cols table{margin:.2em 0}"
         "#trades td{white-space:nowrap}.scroll{overflow-x:auto}")
