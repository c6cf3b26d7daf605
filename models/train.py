"""Train the LightGBM confidence model: purged CV -> number of rounds + out-of-fold predictions ->
isotonic calibration (fitted on out-of-fold predictions only) -> final model on all training samples.

Deterministic: fixed seed, deterministic=True, force_col_wise, num_threads fixed (1). Same data + same
seed -> same model text -> same content hash (models/lgbm_smc.json "content_hash", "version").
Data: real Binance USD-M perpetual 1m klines. Training periods (default 2023-07 + 2025-02) choose
everything (rounds, calibration); the out-of-sample period (default 2025-05) is only reported on.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from processors.smc import FEATURE_NAMES

from executor.funding import FundingHistory
from executor.funding_source import load_funding_history

from .cv import purged_splits
from .dataset import (DEFAULT_WARMUP, HOUR_MS, PERPS_1M, RECORDED, REPO, build_dataset, file_sha256, interval_ms_of,
                      load_klines, smc_config, xy)
from .labels import LabelConfig

DAY_MS = 86_400_000
DEFAULT_TRAIN = (PERPS_1M["2023-07"], PERPS_1M["2025-02"])
DEFAULT_OOS = (PERPS_1M["2025-05"],)


def default_params(seed: int = 7, num_threads: int = 1) -> dict:
    return {
        "objective": "binary", "metric": "binary_logloss", "learning_rate": 0.03, "num_leaves": 15,
        "min_data_in_leaf": 200, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
        "lambda_l2": 10.0, "max_bin": 255, "seed": seed, "deterministic": True, "force_col_wise": True,
        "num_threads": num_threads, "verbose": -1,
    }


@dataclass
class TrainConfig:
    seed: int = 7
    n_splits: int = 5
    embargo_ms: int = 24 * HOUR_MS
    max_rounds: int = 300
    min_rounds: int = 20
    num_threads: int = 1
    params: dict = field(default_factory=dict)   # overrides of default_params

    def lgb_params(self) -> dict:
        p = default_params(self.seed, self.num_threads)
        p.update(self.params)
        return p


def auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def metrics(y: np.ndarray, p: np.ndarray) -> dict:
    from sklearn.metrics import brier_score_loss, log_loss
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return {"n": int(len(y)), "base_rate": float(np.mean(y)) if len(y) else float("nan"), "auc": auc(y, p),
            "log_loss": float(log_loss(y, p, labels=[0, 1])), "brier": float(brier_score_loss(y, p))}


def fit_isotonic(raw: np.ndarray, y: np.ndarray) -> dict:
    """Monotone map raw -> probability as the {"x", "y"} knots np.interp reads (clipped at the ends)."""
    from sklearn.isotonic import IsotonicRegression
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(raw, y)
    xs = np.asarray(iso.X_thresholds_, dtype=np.float64)
    ys = np.clip(np.asarray(iso.y_thresholds_, dtype=np.float64), 0.0, 1.0)
    ys = np.maximum.accumulate(ys)
    return {"x": [float(v) for v in xs], "y": [float(v) for v in ys]}


def apply_calibration(raw: np.ndarray, cal: dict) -> np.ndarray:
    x = np.asarray(cal.get("x", []), dtype=np.float64)
    if not x.size:
        return np.clip(raw, 0, 1)
    return np.clip(np.interp(raw, x, np.asarray(cal["y"], dtype=np.float64)), 0.0, 1.0)


def train_model(ds: pl.DataFrame, cfg: TrainConfig | None = None, log=print) -> dict:
    """-> {"booster", "model_text", "content_hash", "calibration", "cv", "oof_raw", "oof_cal", "rounds"}."""
    cfg = cfg if cfg is not None else TrainConfig()
    import lightgbm as lgb
    ds = ds.sort(["t0", "symbol"])
    X, y = xy(ds)
    t0 = ds["t0"].to_numpy().astype(np.int64)
    t1 = ds["t1"].to_numpy().astype(np.int64)
    params = cfg.lgb_params()
    splits = purged_splits(t0, t1, cfg.n_splits, cfg.embargo_ms)
    curves, boosters = [], []
    for k, (tr, te) in enumerate(splits):
        dtr = lgb.Dataset(X[tr], y[tr], feature_name=list(FEATURE_NAMES), free_raw_data=False)
        dte = lgb.Dataset(X[te], y[te], reference=dtr, free_raw_data=False)
        rec: dict = {}
        b = lgb.train(params, dtr, num_boost_round=cfg.max_rounds, valid_sets=[dte], valid_names=["test"],
                      callbacks=[lgb.record_evaluation(rec)])
        curves.append(np.asarray(rec["test"]["binary_logloss"]))
        boosters.append(b)
        log(f"CV fold {k + 1}/{len(splits)}: {len(tr)} train / {len(te)} test setups, best round "
            f"{int(np.argmin(curves[-1])) + 1} (log loss {float(np.min(curves[-1])):.5f})")
    mean_curve = np.mean(np.vstack(curves), axis=0)
    rounds = int(max(cfg.min_rounds, int(np.argmin(mean_curve)) + 1))
    oof = np.full(len(y), np.nan)
    folds = []
    for (tr, te), b in zip(splits, boosters):
        oof[te] = b.predict(X[te], num_iteration=rounds, num_threads=cfg.num_threads)
        folds.append({"n_train": int(len(tr)), "n_test": int(len(te)), "test_from": int(t0[te].min()),
                      "test_to": int(t1[te].max()), "auc": auc(y[te], oof[te]),
                      "purged_or_embargoed": int(len(y) - len(te) - len(tr))})
    has = ~np.isnan(oof)
    cal = fit_isotonic(oof[has], y[has])
    oof_cal = apply_calibration(oof, cal)
    # walk-forward view of the same folds (train strictly before the test fold): a stricter estimate
    wf = []
    for tr, te in purged_splits(t0, t1, cfg.n_splits, cfg.embargo_ms, walk_forward=True):
        if len(tr) < 500:
            continue
        b = lgb.train(params, lgb.Dataset(X[tr], y[tr], feature_name=list(FEATURE_NAMES)), num_boost_round=rounds)
        wf.append(auc(y[te], b.predict(X[te], num_threads=cfg.num_threads)))
    final = lgb.train(params, lgb.Dataset(X, y, feature_name=list(FEATURE_NAMES)), num_boost_round=rounds)
    text = final.model_to_string()
    digest = hashlib.sha256(text.encode()).hexdigest()
    cv = {"scheme": f"purged time-ordered {cfg.n_splits}-fold, embargo {cfg.embargo_ms // HOUR_MS} h, purge across symbols",
          "rounds": rounds, "oof_raw": metrics(y[has], oof[has]), "oof_calibrated": metrics(y[has], oof_cal[has]),
          "heuristic_auc_same_samples": auc(y, ds["heuristic"].to_numpy()),
          "folds": folds, "walk_forward_auc": [float(a) for a in wf]}
    log(f"CV: rounds={rounds} OOF AUC={cv['oof_raw']['auc']:.4f} logloss={cv['oof_calibrated']['log_loss']:.4f} "
        f"(heuristic AUC {cv['heuristic_auc_same_samples']:.4f}); walk-forward AUC {[round(a, 4) for a in wf]}")
    return {"booster": final, "model_text": text, "content_hash": digest, "calibration": cal, "cv": cv,
            "oof_raw": oof, "oof_cal": oof_cal, "rounds": rounds, "params": params}


def library_versions() -> dict:
    import lightgbm
    import sklearn
    return {"python": platform.python_version(), "lightgbm": lightgbm.__version__, "numpy": np.__version__,
            "polars": pl.__version__, "scikit-learn": sklearn.__version__}


def write_model(out_dir: str | Path, res: dict, meta_extra: dict, name: str = "lgbm_smc") -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    txt, js = out / f"{name}.txt", out / f"{name}.json"
    txt.write_text(res["model_text"])
    booster = res["booster"]
    gain = booster.feature_importance(importance_type="gain")
    meta = {
        "version": f"lgbm-{res['content_hash'][:8]}", "content_hash": res["content_hash"],
        "feature_names": list(FEATURE_NAMES), "num_trees": int(booster.num_trees()), "rounds": res["rounds"],
        "calibration": {"method": "isotonic on out-of-fold predictions (np.interp on the raw probability)",
                        **res["calibration"]},
        "params": res["params"], "cv": res["cv"],
        "feature_importance_gain": {n: float(g) for n, g in zip(FEATURE_NAMES, gain)},
        "libraries": library_versions(),
    }
    meta.update(meta_extra)
    js.write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n")
    return txt, js


def code_version() -> dict:
    """sha256 of the code a model depends on (features, labels, exits, costs, sizing, training): equal code
    -> equal hash, so the metadata stays byte-identical across commits that do not touch it."""
    files = sorted([*(REPO / "processors" / "smc").glob("*.py"), *(REPO / "models").glob("*.py"),
                    REPO / "executor" / "exits.py", REPO / "executor" / "risk.py", REPO / "executor" / "strategy.py",
                    REPO / "executor" / "brokers" / "paper.py", REPO / "executor" / "instruments.py"])
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return {"sha256": h.hexdigest(), "files": [str(f.relative_to(REPO)) for f in files]}


def market_of(paths, interval: str) -> str:
    """What the metadata may claim about the data: USD-M perps only for the recorded perps files."""
    if all(Path(p).name.startswith("perps_") for p in paths):
        return f"Binance USD-M perpetual futures (USDT-margined), real {interval} klines (ingest/recorded/SOURCES.md)"
    return "unverified market: " + ", ".join(Path(p).name for p in paths) + " (not the recorded USD-M perps files)"


def period_of(path: str | Path) -> str:
    stem = Path(path).stem
    return stem.rsplit("_", 1)[-1]


def funding_for(paths) -> tuple[FundingHistory, list[Path]]:
    """The real funding settlements recorded next to each kline file (perps_1m_<period> -> funding_<period>)."""
    files = [RECORDED / f"funding_{period_of(p)}.parquet" for p in paths]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"no recorded funding for {missing}: real funding is part of the label")
    return load_funding_history(files), files


def build_periods(paths, interval: str, label_cfg: LabelConfig, warmup: int, funding, log=print,
                  symbols: list[str] | None = None) -> pl.DataFrame:
    """One dataset per file (a period: series never run across files), concatenated, sorted by (t0, symbol)."""
    cfg = smc_config(interval_ms_of(interval), 5)
    parts = []
    for p in paths:
        t = time.perf_counter()
        log(f"building setups of {Path(p).name} ({interval}, HTF {cfg.htf_factor * cfg.interval_ms // 60_000} min)")
        ds = build_dataset(load_klines(p, symbols), cfg, label_cfg, warmup, source=Path(p).name, funding=funding,
                           log=log)
        log(f"  -> {ds.height} setups in {time.perf_counter() - t:.1f} s")
        parts.append(ds)
    return pl.concat(parts).sort(["t0", "symbol"])


def subsample(ds: pl.DataFrame, max_setups: int, seed: int) -> pl.DataFrame:
    """A seeded uniform subsample of at most `max_setups` rows (0 = all), kept in time order."""
    if not max_setups or ds.height <= max_setups:
        return ds
    keep = np.sort(np.random.default_rng(seed).choice(ds.height, size=max_setups, replace=False))
    return ds[keep.tolist()]


def run_train(train_files=DEFAULT_TRAIN, oos_files=DEFAULT_OOS, interval: str = "1m", seed: int = 7,
              out: str | Path = "models", label_cfg: LabelConfig = LabelConfig(), warmup: int = DEFAULT_WARMUP,
              n_splits: int = 5, embargo_hours: float = 6, max_rounds: int = 300, max_setups: int = 0,
              symbols: list[str] | None = None, baseline_seeds: int = 20, report_dir: str | Path | None = "reports/model",
              log=print) -> dict:
    """Train on `train_files`, choose rounds and calibration by purged CV inside them only, then report
    out-of-sample on `oos_files` (never seen by any choice) and write <out>/lgbm_smc.{txt,json}."""
    from .evaluate import evaluate_sets, oos_sets, summary_text, write_report
    t_start = time.perf_counter()
    train_files, oos_files = [Path(p) for p in train_files], [Path(p) for p in oos_files]
    both = sorted({p.resolve() for p in train_files} & {p.resolve() for p in oos_files})
    if both:
        raise ValueError(f"out-of-sample file(s) {[str(b) for b in both]} are also training files")
    funding, funding_files = funding_for(train_files + oos_files)
    train_all = build_periods(train_files, interval, label_cfg, warmup, funding, log, symbols)
    train_ds = subsample(train_all, max_setups, seed)
    log(f"training set: {train_ds.height} setups (of {train_all.height}{', seeded subsample' if train_ds.height < train_all.height else ''}), "
        f"{train_ds['symbol'].n_unique()} symbols, base rate {train_ds['label'].mean():.4f}, mean R {train_ds['r'].mean():+.4f}")
    tcfg = TrainConfig(seed=seed, n_splits=n_splits, embargo_ms=int(embargo_hours * HOUR_MS), max_rounds=max_rounds)
    res = train_model(train_ds, tcfg, log=log)
    cfg = smc_config(interval_ms_of(interval), 5)
    files = {"train": [_file_entry(p) for p in train_files], "out_of_sample": [_file_entry(p) for p in oos_files],
             "funding": [_file_entry(p) for p in funding_files]}
    meta = {
        "market": market_of(train_files + oos_files, interval),
        "interval": interval, "htf": f"{cfg.htf_factor * cfg.interval_ms // 60_000}m",
        "training": {
            "data": files, "symbols": sorted(train_ds["symbol"].unique().to_list()),
            "window": {"from": _iso(int(train_ds["t0"].min())), "to": _iso(int(train_ds["t1"].max())),
                       "from_ms": int(train_ds["t0"].min()), "to_ms": int(train_ds["t1"].max())},
            "n_samples": train_ds.height, "n_setups_before_subsample": train_all.height, "max_setups": max_setups,
            "base_rate": float(train_ds["label"].mean()), "mean_r": float(train_ds["r"].mean()), "seed": seed,
            "smc_config": cfg.to_dict(), "warmup_bars": warmup,
            "candidates": "bars whose setup side is long or short (flat bars are never traded and not labelled)",
            "selection": "rounds = argmin of the mean out-of-fold log loss of the purged CV inside the training "
                         "periods; isotonic calibration fitted on those out-of-fold predictions; the "
                         "out-of-sample period is used for nothing but the report",
        },
        "label": {"rule": label_cfg.describe(), **label_cfg.to_dict(),
                  "funding": "real settlements (executor.funding, as the engine charges them) from " + ", ".join(f.name for f in funding_files)},
        "code_version": code_version(),
        "reproduce": _reproduce(train_files, oos_files, interval, seed, out, max_setups, symbols, embargo_hours),
    }
    txt, js = write_model(out, res, meta)
    log(f"wrote {txt} ({txt.stat().st_size / 1024:.0f} KiB, {res['booster'].num_trees()} trees) and {js}; "
        f"version lgbm-{res['content_hash'][:8]}")
    # out-of-sample report, through the production scorer
    from processors.scoring import LightGBMScorer
    scorer = LightGBMScorer(txt)
    sets, bars, _ = oos_sets(scorer.meta, funding=funding, log=log)
    oos = evaluate_sets(scorer, sets, float(train_ds["label"].mean()), bars=bars, label_cfg=label_cfg,
                        funding=funding, baseline_seeds=baseline_seeds, log=log)
    from .evaluate import _clean
    meta_oos = _clean(oos)
    meta["out_of_sample"] = meta_oos
    write_model(out, res, meta)                      # the same model text; the metadata gains the OOS report
    if report_dir:
        page = write_report(oos, json.loads(js.read_text()), report_dir)
        log(f"report: {page}")
    log(summary_text(oos, json.loads(js.read_text())))
    res["train_seconds"] = time.perf_counter() - t_start
    res["paths"] = (txt, js)
    res["dataset"] = train_ds
    res["oos"] = oos
    log(f"done in {res['train_seconds']:.1f} s")
    return res


def _file_entry(p: Path) -> dict:
    return {"file": _rel(p), "sha256": file_sha256(p)}


def _reproduce(train_files, oos_files, interval, seed, out, max_setups, symbols, embargo_hours) -> str:
    cmd = (f"python -m models train --interval {interval} --data {','.join(_rel(p) for p in train_files)} "
           f"--oos-data {','.join(_rel(p) for p in oos_files)} --seed {seed} --out {_rel(out)}")
    if max_setups:
        cmd += f" --max-setups {max_setups}"
    if embargo_hours != 6:
        cmd += f" --embargo-hours {embargo_hours:g}"
    if symbols:
        cmd += f" --symbols {','.join(symbols)}"
    return cmd


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _rel(p) -> str:
    if p is None:
        return '""'
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)
