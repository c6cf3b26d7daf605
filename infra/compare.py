"""`smc compare RUN RUN ...`: several runs' reports on one page: their metadata, tearsheet figures, equity
curves and per-block / per-tier tables side by side. A run is a report directory (with summary.json) or
a run name under reports/. Everything comes from the reports' summary.json: nothing is recomputed."""
from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path

import orjson

from infra.settings import REPO_ROOT
from infra.tearsheet_html import STYLE, cell

# the figures compared, in the page's order: (label, summary key)
FIGURES = (("trades", "trades"), ("net PnL (USDT)", "net_pnl"), ("return", "return_pct"), ("CAGR", "cagr_pct"),
           ("buy-and-hold, same symbols and period", "benchmark_return_pct"), ("max drawdown", "max_drawdown_pct"),
           ("drawdown duration", "drawdown_duration_days"), ("Sharpe", "sharpe"), ("Sortino", "sortino"),
           ("Calmar", "calmar"), ("win rate", "win_rate"), ("profit factor", "profit_factor"),
           ("expectancy (USDT)", "expectancy"), ("expectancy (R)", "expectancy_r"), ("average win", "avg_win"),
           ("average loss", "avg_loss"), ("best trade", "best_trade"), ("worst trade", "worst_trade"),
           ("longest losing streak", "longest_losing_streak"), ("SQN", "sqn"), ("exposure", "exposure_pct"),
           ("fees (USDT)", "fees"), ("funding (USDT)", "funding"))


class CompareError(ValueError):
    """A run that cannot be compared, said in one line."""


def resolve_run(name: str, reports: Path = REPO_ROOT / "reports") -> Path:
    """A report directory: `name` itself, or reports/<name>. -> the summary.json path."""
    for d in (Path(name), reports / name):
        if (d / "summary.json").is_file():
            return d / "summary.json"
    raise CompareError(f"run {name!r}: no summary.json in {name} nor in {reports / name} "
                       "(give a report directory or a run name under reports/)")


def load_run(name: str, reports: Path = REPO_ROOT / "reports") -> dict:
    path = resolve_run(name, reports)
    try:
        doc = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise CompareError(f"run {name!r}: {path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("summary"), dict):
        raise CompareError(f"run {name!r}: {path} is not a run report's summary.json (no \"summary\")")
    doc["label"] = (doc.get("run") or {}).get("namespace") or path.parent.name
    return doc


def figure_rows(docs: list[dict]) -> list[dict]:
    """One row per figure, one column per run (as the page shows them; missing figures say n/a)."""
    rows = []
    for label, key in FIGURES:
        row = {"figure": label}
        for i, d in enumerate(docs):
            s = d["summary"]
            v = cell(key, s[key]) if key in s else "n/a"
            if key == "sharpe" and "sharpe_n" in s:
                v += f" ({s['sharpe_n']} x {s['sharpe_sampling']})"
            row[f"{i + 1}. {d['label']}"] = v
        rows.append(row)
    for label, part in (("mean R per trade [95 % CI]", "strategy"), ("random entries, same exits: mean R [CI]", "random"),
                        ("strategy - random: mean R [CI]", "strategy_minus_random")):
        row = {"figure": label}
        for i, d in enumerate(docs):
            b = (d["summary"].get("baselines") or {}).get(part)
            row[f"{i + 1}. {d['label']}"] = f"{b['mean']:+.2f} [{b['lo']:+.2f}, {b['hi']:+.2f}]" if b else "n/a"
        rows.append(row)
    return rows


def group_rows(docs: list[dict], group: str) -> list[dict]:
    """Per group (building block, tier): trades and mean PnL [95 % CI] of each run side by side."""
    names: list[str] = []
    for d in docs:
        for r in d.get("groups", {}).get(group, []):
            if r["group"] not in names:
                names.append(r["group"])
    rows = []
    for name in names:
        row = {group: name}
        for i, d in enumerate(docs):
            r = next((x for x in d.get("groups", {}).get(group, []) if x["group"] == name), None)
            row[f"{i + 1}. {d['label']}"] = (
                "–" if r is None else f"{r['trades']} trades, mean {cell('mean_pnl', r['pnl'] / r['trades'])}"
                + (f" [{cell('ci_lo', r['ci_lo'])}, {cell('ci_hi', r['ci_hi'])}]" if "ci_lo" in r else ""))
        rows.append(row)
    return rows


def _equity_png(docs: list[dict]) -> str | None:
    curves = [(d["label"], d.get("equity")) for d in docs]
    if not any(c for _, c in curves):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for i, (label, c) in enumerate(curves):
        if not c:
            continue
        start = c[0][1]
        ax.plot([datetime.fromtimestamp(t / 1000, timezone.utc) for t, _ in c], [(e / start - 1) * 100 for _, e in c],
                lw=1.1, label=f"{i + 1}. {label}")
    ax.axhline(0, color="grey", lw=.6, ls="--")
    ax.set_ylabel("return %")
    ax.set_title("Equity curves (return from each run's start equity)")
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p><i>none</i></p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _meta_rows(docs: list[dict]) -> list[dict]:
    def one(d, key):
        run = d.get("run") or {}
        if key == "period":
            p = run.get("period") or d["summary"].get("period")
            return " .. ".join(x[:16].replace("T", " ") for x in p) if p else "?"
        if key == "symbols":
            return ", ".join(run["symbols"]) if run.get("symbols") else str(d["summary"].get("symbols", "?"))
        if key == "code":
            return run["code"]["commit"][:12] + (" (dirty)" if run["code"].get("dirty") else "") if run.get("code") else "?"
        if key == "settings_changed":
            return "; ".join(f"{k}={v!r}" for k, v in run[key].items()) if run.get(key) is not None else "?"
        v = run.get(key)
        return ", ".join(v) if isinstance(v, list) else "?" if v is None else str(v)
    keys = (("period (UTC)", "period"), ("symbols", "symbols"), ("interval", "interval"), ("scorer", "scorer"),
            ("model versions", "model_versions"), ("engine", "engine"), ("code", "code"),
            ("settings changed", "settings_changed"))
    rows = [{"run": label, **{f"{i + 1}. {d['label']}": one(d, key) for i, d in enumerate(docs)}} for label, key in keys]
    changed = [(d.get("run") or {}).get("settings_changed") or {} for d in docs]
    differ = sorted(k for k in set().union(*changed) if k not in _PER_RUN and len({repr(c.get(k)) for c in changed}) > 1)
    rows.append({"run": "settings that differ between these runs",
                 **{f"{i + 1}. {d['label']}": "; ".join(f"{k}={c[k]!r}" if k in c else f"{k}=(default)" for k in differ) or "none"
                    for i, (d, c) in enumerate(zip(docs, changed))}})
    return rows


# settings every run sets for itself: not a difference between runs worth showing
_PER_RUN = {"namespace", "data_dir", "clickhouse_dsn", "replay_end"}


def render(docs: list[dict]) -> str:
    png = _equity_png(docs)
    img = (f'<img src="data:image/png;base64,{png}">' if png else
           "<p><i>no equity curves stored in these reports (made before smc compare existed: rerun them)</i></p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>SMC-Quant: {len(docs)} runs compared</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}img{{max-width:100%}}{STYLE}</style></head>
<body><h1>SMC-Quant: {len(docs)} runs side by side</h1><h2>Runs</h2>{_table(_meta_rows(docs))}
<h2>Figures</h2>{_table(figure_rows(docs))}<h2>Equity</h2>{img}
<h2>Per building block (mean net PnL per trade, USDT, 95 % bootstrap CI)</h2>{_table(group_rows(docs, "block"))}
<h2>Per confidence tier</h2>{_table(group_rows(docs, "tier"))}
<h2>Long / short</h2>{_table(group_rows(docs, "side"))}</body></html>"""


def compare_runs(names: list[str], out_dir: Path, reports: Path = REPO_ROOT / "reports") -> Path:
    """Write out_dir/index.html comparing the runs; -> its path. CompareError for a run that is not there."""
    if len(names) < 2:
        raise CompareError(f"compare needs at least two runs, got {len(names)}")
    docs = [load_run(n, reports) for n in names]
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "index.html"
    page.write_text(render(docs))
    return page
