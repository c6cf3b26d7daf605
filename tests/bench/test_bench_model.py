"""Confidence-model benchmarks (prints only; nothing about speed is asserted).

Run: pytest -m bench -s tests/bench/test_bench_model.py
* training time of `python -m models train` on the shipped 1m perps (setups + purged CV + final fit + OOS report);
* LightGBMScorer per-row cost: one call per row vs one call per batch of 300 / 3000 rows, as ratios
  measured in the same run (the processors score one batch of bars per Kafka batch);
* optional compiled path (lleaves, if importable) on the same rows.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from models.dataset import PERPS_1M, load_klines, smc_config, symbol_features
from processors.scoring import LightGBMScorer
from processors.smc import FEATURE_NAMES

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "lgbm_smc.txt"


def _rows(n: int) -> np.ndarray:
    kl = load_klines(PERPS_1M["2025-05"], ["BTCUSDT"]).head(n + 200)
    return np.ascontiguousarray(symbol_features(kl, smc_config(60_000, 5)).select(FEATURE_NAMES).to_numpy()[200:200 + n])


def _per_row(fn, X: np.ndarray, batch: int, repeat: int = 3) -> float:
    """Best-of-`repeat` seconds per row scoring X in chunks of `batch` rows."""
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        for i in range(0, len(X), batch):
            fn(X[i:i + batch])
        best = min(best, (time.perf_counter() - t) / len(X))
    return best


@pytest.mark.bench
def test_bench_training_time(tmp_path):
    from models.train import run_train
    t = time.perf_counter()
    res = run_train(out=tmp_path, report_dir=None, log=lambda *_: None)
    dt = time.perf_counter() - t
    print(f"\ntraining on the shipped USD-M 1m perps (2023-07 + 2025-02, {res['dataset'].height} setups, "
          f"{res['booster'].num_trees()} trees): {dt:.1f} s wall; model hash {res['content_hash'][:8]}")


@pytest.mark.bench
def test_bench_scoring_single_vs_batch():
    sc = LightGBMScorer(MODEL)
    X = _rows(3000)
    sc.score(X[:10])                                           # warm-up
    single = _per_row(sc.score, X[:300], 1)
    b300 = _per_row(sc.score, X, 300)
    b3000 = _per_row(sc.score, X, 3000)
    print(f"\nLightGBMScorer.score ({sc.booster.num_trees()} trees), per row: single-row call {single * 1e6:.1f} us, "
          f"batch of 300 {b300 * 1e6:.2f} us, batch of 3000 {b3000 * 1e6:.2f} us; "
          f"single/batch300 = {single / b300:.1f}x, single/batch3000 = {single / b3000:.1f}x")
    raw = _per_row(sc.raw, X, 3000)
    print(f"raw booster.predict, batch of 3000: {raw * 1e6:.2f} us/row (calibration np.interp adds "
          f"{(b3000 - raw) * 1e6:+.2f} us/row)")
    try:
        import lleaves  # noqa: F401
    except ImportError:
        print("lleaves not installed: compiled path skipped")
        return
    import tempfile
    m = lleaves.Model(model_file=str(MODEL))
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        try:
            m.compile(cache=str(Path(d) / "m.o"))
        except Exception as exc:  # noqa: BLE001 - e.g. lleaves 1.3 vs llvmlite >= 0.45 (no legacy pass manager)
            print(f"lleaves could not compile ({type(exc).__name__}: {exc}): compiled path skipped")
            return
        ct = time.perf_counter() - t
    pred = lambda x: m.predict(x, n_jobs=1)  # noqa: E731
    same = float(np.max(np.abs(pred(X) - sc.raw(X))))
    ls = _per_row(pred, X[:300], 1)
    l3000 = _per_row(pred, X, 3000)
    print(f"lleaves (compile {ct:.1f} s): single-row {ls * 1e6:.1f} us, batch of 3000 {l3000 * 1e6:.2f} us/row; "
          f"max |diff| vs LightGBM {same:.2e}; LightGBM/lleaves single = {single / ls:.1f}x, batch = {b3000 / l3000:.1f}x")
