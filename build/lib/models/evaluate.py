"""Out-of-sample evaluation of the confidence model against the heuristic fallback.

Out-of-sample = setups whose signal bar opens at or after the model's `holdout_start_ms` (training
samples all END before it): (a) the 8 majors of the training file (features computed on their full
history, as a live processor would have them), (b) all symbols of the wide file (140 symbols; their
series start near the holdout start, so the first `warmup` bars are dropped). The model is scored
through processors.scoring.LightGBMScorer (the production path), the heuristic through HeuristicScorer.

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

from .dataset import RECORDED, build_dataset, load_klines, smc_config
from .labels import LabelConfig
from .train import metrics

def auc_se(a: float, y: np.ndarray) -> float:
    """Hanley & McNeil (1982) standard error of an AUC."""
    n1, n0 = int(np.sum(y == 1)), int(np.sum(y == 0))
    if not n1 or not n0 or not np.isfinite(a):
        return float("nan")
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return float(np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0)))


TIERS = (("> 0.85", 0.85, np.inf), ("0.70-0.85", 0.70, 0.85), ("0.60-0.70", 0.60, 0.70), ("<= 0.60", -np.inf, 0.60))


def tier_table(p: np.ndarray, y: np.ndarray, r: np.ndarray) -> list[dict]:
    """Executor tiers (strict >, as executor.risk): count, hit rate, mean / total R."""
    rows = []
    for name, lo, hi in TIERS:
        m = (p > lo) & (p <= hi) if np.isfinite(hi) else (p > lo)
        if not np.isfinite(lo):
            m = p <= hi
        n = int(m.sum())
        rows.append({"tier": name, "n": n, "hit_rate": float(y[m].mean()) if n else float("nan"),
                     "mean_r": float(r[m].mean()) if n else float("nan"), "total_r": float(r[m].sum())})
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


def evaluate_sets(scorer: LightGBMScorer, sets: dict[str, pl.DataFrame], train_base_rate: float | None = None) -> dict:
    heur = HeuristicScorer()
    res = {}
    for name, ds in sets.items():
        X = ds.select(FEATURE_NAMES).to_numpy().astype(np.float64)
        y = ds["label"].to_numpy().astype(np.int64)
        r = ds["r"].to_numpy()
        entry = {"n": ds.height, "symbols": int(ds["symbol"].n_unique()), "base_rate": float(y.mean()),
                 "mean_r_all": float(r.mean()),
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
        entry["model"]["auc_raw"] = metrics(y, scorer.raw(X))["auc"]
        if train_base_rate is not None:   # the no-skill forecast: the training base rate for every setup
            entry["constant_base_rate"] = {"p": train_base_rate, **metrics(y, np.full(len(y), train_base_rate))}
        entry["_y"], entry["_r"] = y, r
        res[name] = entry
    return res


def holdout_sets(meta: dict, data: str | None = None, holdout_data: str | None = None) -> dict[str, pl.DataFrame]:
    tr = meta["training"]
    hs = int(tr["holdout_start_ms"])
    lab = meta["label"]
    label_cfg = LabelConfig(horizon=int(lab["horizon"]), taker_fee=float(lab["taker_fee"]),
                            slippage_bps=float(lab["slippage_bps"]))
    cfg = smc_config(int(tr["smc_config"]["interval_ms"]), int(tr["smc_config"]["htf_factor"]))
    warm = int(tr.get("warmup_bars", 100))
    sets = {}
    majors_file = Path(data) if data else RECORDED / tr["data"]["file"]
    kl = load_klines(majors_file, tr["symbols"])
    sets["majors"] = build_dataset(kl, cfg, label_cfg, warm).filter(pl.col("t0") >= hs)
    wide = holdout_data or (RECORDED / tr["data"]["holdout_file"] if tr["data"].get("holdout_file") else None)
    if wide:
        sets[f"all_{Path(wide).stem}"] = build_dataset(load_klines(wide), cfg, label_cfg, warm).filter(
            pl.col("t0") >= hs)
    return sets


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
    lines = [f"model {meta.get('version')} ({meta.get('num_trees')} trees), holdout from "
             f"{meta['training']['holdout_start']}; label: {meta['label']['rule']}",
             f"CV (training period, purged): OOF AUC {meta['cv']['oof_raw']['auc']:.4f}, "
             f"walk-forward AUC {meta['cv']['walk_forward_auc']}", ""]
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
                             f"meanR={row['mean_r']:+.3f} totalR={row['total_r']:+.1f}")
            d = m["deciles"]
            if s == "heuristic" and "constant_base_rate" in e:
                c = e["constant_base_rate"]
                lines.append(f"  constant  p={c['p']:.4f} (training base rate): logloss {c['log_loss']:.4f}  Brier {c['brier']:.4f}")
            if d:
                lines.append(f"    mean R, lowest vs highest score decile: {d[0]['mean_r']:+.3f} vs {d[-1]['mean_r']:+.3f}")
        lines.append("")
    return "\n".join(lines)


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
                 data: str | None = None, holdout_data: str | None = None) -> dict:
    scorer = LightGBMScorer(model)
    meta = scorer.meta
    res = evaluate_sets(scorer, holdout_sets(meta, data, holdout_data), meta.get("training", {}).get("base_rate"))
    page = write_report(res, meta, out)
    print_table(res)
    print(summary_text(res, meta))
    print(f"report: {page}")
    return res
