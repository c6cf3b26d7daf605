"""Out-of-sample evaluation of the confidence model against the heuristic fallback and the baselines.

Out-of-sample = the setups of the model's out-of-sample files (metadata training.data.out_of_sample,
default the 2025-05 USD-M perps), which no choice of the training saw. The model is scored through
processors.scoring.LightGBMScorer (the production path), the heuristic through HeuristicScorer. Per
scorer: AUC, log loss / Brier vs the constant training base rate, reliability (calibration), the
executor's tiers with bootstrap CIs of hit rate and mean R, and (models.baselines) the trades it would
take (> 0.60), or every setup when it takes none, against random entries with the same exits (20 seeds),
always-flat and buy-and-hold of the same basket.

Outputs (default reports/model/): index.html (embedded PNGs), summary.txt, summary.json; a rich table.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import polars as pl

from processors.scoring import HeuristicScorer, LightGBMScorer
from processors.smc import FEATURE_NAMES
from schemas.tiers import tier_intervals

from .baselines import SymbolBars, bootstrap_mean_ci, evidence
from .dataset import REPO, load_klines, tick_of
from .labels import LabelConfig, simulate_trades
from .train import metrics

def auc_se(a: float, y: np.ndarray) -> float:
    """Hanley & McNeil (1982) standard error of an AUC."""
    n1, n0 = int(np.sum(y == 1)), int(np.sum(y == 0))
    if not n1 or not n0 or not np.isfinite(a):
        return float("nan")
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return float(np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0)))


# the executor's tiers (schemas.tiers, strict >) as (name, lo, hi]: ">0.85", "0.70-0.85", "0.60-0.70", "<=0.60"
TIERS = tier_intervals()


def tier_table(p: np.ndarray, y: np.ndarray, r: np.ndarray, n_boot: int = 1000) -> list[dict]:
    """Executor tiers (strict >, schemas.tiers): count, hit rate, mean / total R, bootstrap 95 % CIs."""
    rows = []
    for name, lo, hi in TIERS:
        m = (p > lo) & (p <= hi) if np.isfinite(hi) else (p > lo)
        if not np.isfinite(lo):
            m = p <= hi
        n = int(m.sum())
        hit, mr = bootstrap_mean_ci(y[m].astype(np.float64), n_boot, 11), bootstrap_mean_ci(r[m], n_boot, 12)
        rows.append({"tier": name, "n": n, "hit_rate": float(y[m].mean()) if n else float("nan"),
                     "hit_rate_ci": [hit["lo"], hit["hi"]],
                     "mean_r": float(r[m].mean()) if n else float("nan"), "mean_r_ci": [mr["lo"], mr["hi"]],
                     "total_r": float(r[m].sum())})
    return rows


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-count bins of the predicted probability (scores concentrate in a narrow range)."""
    if len(p) == 0:
        return []
    order = np.argsort(p, kind="stable")
    out = []
    for ix in np.array_split(order, min(bins, len(p))):
        out.append({"lo": float(p[ix].min()), "hi": float(p[ix].max()), "n": int(len(ix)),
                    "mean_pred": float(p[ix].mean()), "observed": float(y[ix].mean())})
    return out


def decile_r(p: np.ndarray, r: np.ndarray, q: int = 10) -> list[dict]:
    """Mean realized R per score quantile (ranking usefulness independent of calibration)."""
    if len(p) < q:
        return []
    order = np.argsort(p, kind="stable")
    return [{"q": k + 1, "n": int(len(ix)), "score_mean": float(p[ix].mean()), "mean_r": float(r[ix].mean()),
             "hit_rate": float(np.mean(r[ix] > 0))} for k, ix in enumerate(np.array_split(order, q))]


def make_simulator(label_cfg: LabelConfig, funding, interval_ms: int, bars: dict[str, SymbolBars]):
    """models.baselines' simulator: the label simulation (the executor's exits and costs) on one set's bars."""
    def simulate(sym, idx, side, entry, stop, target):
        b = bars[sym]
        return simulate_trades(sym, idx, side, entry, stop, target, b.open_time, b.open, b.high, b.low, b.close,
                               interval_ms, tick_of(sym, float(b.close[-1])), label_cfg, funding)
    return simulate


def _evidence_for(ds: pl.DataFrame, taken: np.ndarray, bars, label_cfg, funding, seeds, log) -> dict:
    sub = ds.filter(pl.Series(taken))
    rr = (np.abs(sub["target"].to_numpy() - sub["entry"].to_numpy())
          / np.abs(sub["entry"].to_numpy() - sub["stop"].to_numpy()))
    sim = make_simulator(label_cfg, funding, bars["_interval"], bars["symbols"])
    ev = evidence(sub["r"].to_numpy(), sub["symbol"].to_numpy(), sub["side"].to_numpy().astype(np.int64),
                  sub["stop_pct"].to_numpy(), rr, bars["symbols"], sim, seeds=seeds,
                  taker_fee=label_cfg.paper.taker_fee, slippage_bps=label_cfg.paper.slippage_bps,
                  progress=(lambda m: log("    " + m)) if log else None)
    ev["costs_r"] = {k: float(sub[c].mean()) for k, c in (("gross", "gross_r"), ("fees", "fee_r"),
                                                           ("slippage", "slippage_r"), ("funding", "funding_r"))}
    ev["exit_reasons"] = {k: int(v) for k, v in sorted(zip(*np.unique(sub["reason"].to_numpy(), return_counts=True)))}
    return ev


def evaluate_sets(scorer: LightGBMScorer, sets: dict[str, pl.DataFrame], train_base_rate: float | None = None,
                  bars: dict | None = None, label_cfg: LabelConfig = LabelConfig(), funding=None,
                  baseline_seeds: int = 20, log=None) -> dict:
    heur = HeuristicScorer()
    res = {}
    for name, ds in sets.items():
        X = ds.select(FEATURE_NAMES).to_numpy().astype(np.float64)
        y = ds["label"].to_numpy().astype(np.int64)
        r = ds["r"].to_numpy()
        entry = {"n": ds.height, "symbols": int(ds["symbol"].n_unique()), "base_rate": float(y.mean()),
                 "mean_r_all": float(r.mean()), "mean_r_all_ci": list(bootstrap_mean_ci(r, 1000, 13).values())[2:],
                 "from": int(ds["t0"].min()), "to": int(ds["t1"].max())}
        for sname, sc in (("model", scorer), ("heuristic", heur)):
            p = sc.score(X)
            m = metrics(y, p)
            m["auc_se"] = auc_se(m["auc"], y)
            taken = p > 0.60
            entry[sname] = {**m, "tiers": tier_table(p, y, r), "reliability": reliability(p, y),
                            "deciles": decile_r(p, r), "score_min": float(p.min()), "score_max": float(p.max()),
                            "score_mean": float(p.mean()),
                            "trades_over_0_60": {"n": int(taken.sum()),
                                                 "hit_rate": float(y[taken].mean()) if taken.any() else float("nan"),
                                                 "mean_r": float(r[taken].mean()) if taken.any() else float("nan")}}
            entry[sname]["_p"] = p
            if bars is not None and name in bars and taken.any():
                if log:
                    log(f"  baselines for the {sname}'s {int(taken.sum())} trades (> 0.60) of {name}")
                entry[sname]["baselines"] = _evidence_for(ds, taken, bars[name], label_cfg, funding, baseline_seeds, log)
        if bars is not None and name in bars:
            if log:
                log(f"  baselines for every setup of {name} ({ds.height}: what trading all of them would do)")
            entry["all_setups_baselines"] = _evidence_for(ds, np.ones(ds.height, bool), bars[name], label_cfg,
                                                          funding, baseline_seeds, log)
        entry["model"]["auc_raw"] = metrics(y, scorer.raw(X))["auc"]
        if train_base_rate is not None:   # the no-skill forecast: the training base rate for every setup
            entry["constant_base_rate"] = {"p": train_base_rate, **metrics(y, np.full(len(y), train_base_rate))}
        # the constant at this set's own base rate: not a forecast (it knows the outcome frequency), a bound
        entry["constant_own_base_rate"] = {"p": float(y.mean()), **metrics(y, np.full(len(y), float(y.mean())))}
        entry["_y"], entry["_r"] = y, r
        res[name] = entry
    return res


def oos_sets(meta: dict, funding=None, log=None, files: list[str] | None = None) -> tuple[dict, dict, object]:
    """The out-of-sample setups per file named in the metadata, each file's bars (for the baselines) and
    the funding schedule (the real settlements recorded next to the files)."""
    from .train import build_periods, funding_for
    tr = meta["training"]
    lab = meta["label"]
    label_cfg = label_config_of(lab)
    interval = meta.get("interval", "1m")
    warm = int(tr.get("warmup_bars", 100))
    paths = [REPO / f for f in (files or [d["file"] for d in tr["data"]["out_of_sample"]])]
    if funding is None:
        funding, _ = funding_for(paths)
    sets, bars = {}, {}
    for p in paths:
        name = f"oos_{p.stem}"
        sets[name] = build_periods([p], interval, label_cfg, warm, funding, log or (lambda *_: None))
        kl = load_klines(p)
        bars[name] = {"symbols": {sym: SymbolBars(*(g[c].to_numpy() for c in ("open_time", "open", "high", "low", "close")))
                                  for (sym,), g in kl.group_by(["symbol"], maintain_order=True)},
                      "_interval": int(tr["smc_config"]["interval_ms"])}
    return sets, bars, funding


def label_config_of(lab: dict) -> LabelConfig:
    from executor.brokers.paper import PaperConfig
    from executor.exits import ExitRules
    return LabelConfig(exits=ExitRules(**lab["exits"]),
                       paper=PaperConfig(slippage_bps=float(lab["slippage_bps"]), taker_fee=float(lab["taker_fee"])),
                       target_r_multiple=float(lab.get("target_r_multiple", 0.0)))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(res: dict, meta: dict) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figs = {}
    names = list(res)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for s, c in (("model", "C0"), ("heuristic", "C1")):
            rel = res[name][s]["reliability"]
            ax.plot([b["mean_pred"] for b in rel], [b["observed"] for b in rel], "o-", color=c, label=s)
        ax.axhline(res[name]["base_rate"], color="grey", lw=0.8, ls="--", label="base rate")
        ax.set(title=f"reliability: {name}", xlabel="predicted win probability", ylabel="observed win rate",
               xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=8)
    figs["reliability"] = _png(fig)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for s, c in (("model", "C0"), ("heuristic", "C1")):
            ax.hist(res[name][s]["_p"], bins=50, range=(0, 1), alpha=0.6, color=c, label=s)
        for t in (0.60, 0.70, 0.85):
            ax.axvline(t, color="k", lw=0.7, ls=":")
        ax.set(title=f"scores: {name}", xlabel="confidence", ylabel="setups")
        ax.legend(fontsize=8)
    figs["scores"] = _png(fig)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for k, (s, c) in enumerate((("model", "C0"), ("heuristic", "C1"))):
            d = res[name][s]["deciles"]
            ax.bar(np.arange(1, len(d) + 1) + (k - 0.5) * 0.4, [x["mean_r"] for x in d], width=0.4, color=c, label=s)
        ax.axhline(0, color="k", lw=0.7)
        ax.set(title=f"mean realized R by score decile: {name}", xlabel="score decile (1 = lowest)", ylabel="mean R")
        ax.legend(fontsize=8)
    figs["deciles"] = _png(fig)
    gain = meta.get("feature_importance_gain", {})
    if gain:
        fig, ax = plt.subplots(figsize=(7, 4))
        items = sorted(gain.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
        ax.set(title="feature importance (total gain)", xlabel="gain")
        figs["importance"] = _png(fig)
    return figs


def _clean(res: dict) -> dict:
    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if not k.startswith("_")}
        if isinstance(d, list):
            return [strip(v) for v in d]
        return d
    return strip(res)


def summary_text(res: dict, meta: dict) -> str:
    tr = meta["training"]
    lines = [f"model {meta.get('version')} ({meta.get('num_trees')} trees, {meta.get('rounds')} rounds); market: "
             f"{meta.get('market')}; interval {meta.get('interval')} (HTF {meta.get('htf')})",
             f"trained on {', '.join(d['file'] for d in tr['data']['train'])} ({tr['n_samples']} setups, "
             f"{tr['window']['from']} .. {tr['window']['to']}); out-of-sample: "
             f"{', '.join(d['file'] for d in tr['data']['out_of_sample'])}",
             f"label: {meta['label']['rule']}",
             f"CV inside the training periods (purged; chose rounds + calibration, so optimistic): OOF AUC "
             f"{meta['cv']['oof_raw']['auc']:.4f}, walk-forward AUC {meta['cv']['walk_forward_auc']}",
             f"reproduce: {meta.get('reproduce')}", ""]
    for name, e in res.items():
        lines.append(f"== {name}: {e['n']} setups, {e['symbols']} symbols, base rate {e['base_rate']:.4f}, "
                     f"mean R of all setups {e['mean_r_all']:+.4f}")
        for s in ("model", "heuristic"):
            m = e[s]
            t = m["trades_over_0_60"]
            lines.append(f"  {s:9s} AUC {m['auc']:.4f} (±{m['auc_se']:.4f} s.e.)  logloss {m['log_loss']:.4f}  Brier {m['brier']:.4f}  "
                         f"scores [{m['score_min']:.3f}, {m['score_max']:.3f}] mean {m['score_mean']:.3f}  "
                         f"conf>0.60: n={t['n']} hit={t['hit_rate']:.3f} meanR={t['mean_r']:+.3f}")
            for row in m["tiers"]:
                lines.append(f"    tier {row['tier']:10s} n={row['n']:6d} hit={row['hit_rate']:.3f} "
                             f"[{row['hit_rate_ci'][0]:.3f}, {row['hit_rate_ci'][1]:.3f}] "
                             f"meanR={row['mean_r']:+.3f} [{row['mean_r_ci'][0]:+.3f}, {row['mean_r_ci'][1]:+.3f}] "
                             f"totalR={row['total_r']:+.1f}")
            if "baselines" in m:
                lines += _baseline_lines(f"{s} trades > 0.60", m["baselines"])
            d = m["deciles"]
            if s == "heuristic" and "constant_base_rate" in e:
                c = e["constant_base_rate"]
                lines.append(f"  constant  p={c['p']:.4f} (training base rate): logloss {c['log_loss']:.4f}  Brier {c['brier']:.4f}")
                o = e["constant_own_base_rate"]
                lines.append(f"  constant  p={o['p']:.4f} (this set's own base rate, hindsight): logloss {o['log_loss']:.4f}  "
                             f"Brier {o['brier']:.4f}")
            if d:
                lines.append(f"    mean R, lowest vs highest score decile: {d[0]['mean_r']:+.3f} vs {d[-1]['mean_r']:+.3f}")
        if "all_setups_baselines" in e:
            lines += _baseline_lines("every setup", e["all_setups_baselines"])
        lines.append("")
    return "\n".join(lines)


def _baseline_lines(what: str, b: dict) -> list[str]:
    st, rd, df = b["strategy"], b["random"], b["strategy_minus_random"]
    c = b["costs_r"]
    return [f"  baselines, {what}: mean R/trade {st['mean']:+.4f} [{st['lo']:+.4f}, {st['hi']:+.4f}] (n={st['n']}); "
            f"random entries, same exits/side/stop ({rd['seeds']} seeds): {rd['mean']:+.4f} [{rd['lo']:+.4f}, "
            f"{rd['hi']:+.4f}]; difference {df['mean']:+.4f} [{df['lo']:+.4f}, {df['hi']:+.4f}]; always flat 0; "
            f"buy-and-hold basket {b['buy_and_hold']['return_pct']:+.2f} %",
            f"    per trade, in R: gross {c['gross']:+.4f} (slippage inside it {c['slippage']:.4f}), fees {c['fees']:.4f}, "
            f"funding {c['funding']:+.5f}; exits {b['exit_reasons']}"]


def write_report(res: dict, meta: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = summary_text(res, meta)
    (out / "summary.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps({"model": meta.get("version"), "sets": _clean(res)}, indent=1))
    figs = plots(res, meta)
    html = ["<html><head><meta charset='utf-8'><title>SMC confidence model: out-of-sample</title></head><body>",
            f"<h1>SMC confidence model {meta.get('version')}: out-of-sample vs heuristic</h1>",
            f"<pre>{text}</pre>"]
    for k, b64 in figs.items():
        html.append(f"<h2>{k}</h2><img src='data:image/png;base64,{b64}'/>")
    html.append("</body></html>")
    (out / "index.html").write_text("\n".join(html))
    return out / "index.html"


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title="out-of-sample: model vs heuristic")
    for c in ("set", "scorer", "n", "AUC", "logloss", "Brier", ">0.85", "0.70-0.85", "0.60-0.70", "<=0.60 hit/R"):
        t.add_column(c)
    for name, e in res.items():
        for s in ("model", "heuristic"):
            m = e[s]
            cells = [f"{r['n']} {r['hit_rate']:.2f}/{r['mean_r']:+.2f}" if r["n"] else "0" for r in m["tiers"]]
            t.add_row(name, s, str(e["n"]), f"{m['auc']:.4f}", f"{m['log_loss']:.4f}", f"{m['brier']:.4f}", *cells)
    con = Console()
    con.width = max(con.width, 150)
    con.print(t)


def run_evaluate(model: str | Path = "models/lgbm_smc.txt", out: str | Path = "reports/model",
                 files: list[str] | None = None, baseline_seeds: int = 20) -> dict:
    """Re-run the out-of-sample report of a model from its metadata (or on other `files`)."""
    scorer = LightGBMScorer(model)
    meta = scorer.meta
    sets, bars, funding = oos_sets(meta, log=print, files=files)
    res = evaluate_sets(scorer, sets, meta.get("training", {}).get("base_rate"), bars=bars,
                        label_cfg=label_config_of(meta["label"]), funding=funding,
                        baseline_seeds=baseline_seeds, log=print)
    page = write_report(res, meta, out)
    print_table(res)
    print(summary_text(res, meta))
    print(f"report: {page}")
    return res
