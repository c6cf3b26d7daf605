"""Train the LightGBM confidence model: purged CV -> number of rounds + out-of-fold predictions ->
isotonic calibration (fitted on out-of-fold predictions only) -> final model on all training samples.

Deterministic: fixed seed, deterministic=True, force_col_wise, num_threads fixed (1). Same data + same
seed -> same model text -> same content hash (models/lgbm_smc.json "content_hash", "version").
The most recent `holdout_days` are never seen: training samples must END (label window t1) before the
holdout start.
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

from .cv import purged_splits
from .dataset import (DEFAULT_WARMUP, FULL_1H, HOUR_MS, REPO, WIDE_1H, build_dataset, file_sha256, load_klines, smc_config,
                      xy)
from .labels import LabelConfig

DAY_MS = 86_400_000


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


def train_model(ds: pl.DataFrame, cfg: TrainConfig = TrainConfig(), log=print) -> dict:
    """-> {"booster", "model_text", "content_hash", "calibration", "cv", "oof_raw", "oof_cal", "rounds"}."""
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


def holdout_start_ms(frames: list[pl.DataFrame], holdout_days: float) -> int:
    end = max(int(f["open_time"].max()) for f in frames if f.height)
    return (end - int(holdout_days * DAY_MS)) // HOUR_MS * HOUR_MS


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


def run_train(data: str | Path = FULL_1H, symbols: list[str] | None = None, holdout_days: float = 120,
              holdout_data: str | Path | None = WIDE_1H, seed: int = 7, out: str | Path = "models",
              label_cfg: LabelConfig = LabelConfig(), warmup: int = DEFAULT_WARMUP, n_splits: int = 5,
              embargo_hours: int = 24, max_rounds: int = 300, log=print) -> dict:
    t_start = time.perf_counter()
    kl = load_klines(data, symbols)
    frames = [kl] + ([load_klines(holdout_data)] if holdout_data else [])
    hs = holdout_start_ms(frames, holdout_days)
    cfg = smc_config()
    ds = build_dataset(kl, cfg, label_cfg, warmup, source=Path(data).name)
    train_ds = ds.filter(pl.col("t1") < hs)
    log(f"dataset: {ds.height} setups, {train_ds.height} before the holdout start "
        f"({time.strftime('%Y-%m-%d %H:%M', time.gmtime(hs / 1000))} UTC); base rate {train_ds['label'].mean():.4f}")
    tcfg = TrainConfig(seed=seed, n_splits=n_splits, embargo_ms=embargo_hours * HOUR_MS, max_rounds=max_rounds)
    res = train_model(train_ds, tcfg, log=log)
    meta = {
        "training": {
            "data": {"file": Path(data).name, "sha256": file_sha256(data),
                     "holdout_file": Path(holdout_data).name if holdout_data else None,
                     "holdout_sha256": file_sha256(holdout_data) if holdout_data else None},
            "symbols": sorted(train_ds["symbol"].unique().to_list()),
            "window": {"from_ms": int(train_ds["t0"].min()), "to_ms": int(train_ds["t1"].max()),
                       "from": _iso(int(train_ds["t0"].min())), "to": _iso(int(train_ds["t1"].max()))},
            "holdout_start_ms": hs, "holdout_start": _iso(hs), "holdout_days": holdout_days,
            "n_samples": train_ds.height, "base_rate": float(train_ds["label"].mean()),
            "mean_r": float(train_ds["r"].mean()), "seed": seed,
            "smc_config": cfg.to_dict(), "warmup_bars": warmup,
            "candidates": "bars whose setup side is long or short (flat bars are never traded and not labelled)",
        },
        "label": {"rule": label_cfg.describe(), **label_cfg.to_dict()},
        "reproduce": (f"python -m models train --data {_rel(data)} --holdout-data {_rel(holdout_data)} "
                      f"--holdout-days {holdout_days:g} --seed {seed} --out {_rel(out)}"
                      + (f" --symbols {','.join(symbols)}" if symbols else "")),
    }
    txt, js = write_model(out, res, meta)
    res["train_seconds"] = time.perf_counter() - t_start
    res["paths"] = (txt, js)
    res["dataset"] = ds
    res["holdout_start_ms"] = hs
    log(f"wrote {txt} ({txt.stat().st_size / 1024:.0f} KiB, {res['booster'].num_trees()} trees) and {js}; "
        f"version lgbm-{res['content_hash'][:8]}; {res['train_seconds']:.1f} s")
    return res


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _rel(p) -> str:
    if p is None:
        return '""'
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)
