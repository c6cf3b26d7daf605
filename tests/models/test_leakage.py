"""No leakage: shuffled labels give AUC ~0.5 through the whole CV pipeline; features are causal on the
dataset builder's path (a prefix of the bars gives the same feature rows as the full run)."""
from __future__ import annotations

import numpy as np
import polars as pl

from models.dataset import candidates_from_frame, smc_config, symbol_features
from models.labels import LabelConfig
from models.train import TrainConfig, auc, train_model
from processors.smc import FEATURE_NAMES


def test_shuffled_labels_give_chance_auc(small_dataset):
    ds = small_dataset
    rng = np.random.default_rng(123)
    shuffled = ds.with_columns(pl.Series("label", rng.permutation(ds["label"].to_numpy())))
    res = train_model(shuffled, TrainConfig(seed=1, n_splits=4, max_rounds=40, num_threads=2), log=lambda *_: None)
    a = auc(shuffled.sort(["t0", "symbol"])["label"].to_numpy(), res["oof_raw"])   # train_model's row order
    assert shuffled.height > 5000
    print(f"shuffled-label OOF AUC {a:.4f}")
    assert 0.45 <= a <= 0.55, a
    assert 0.45 <= res["cv"]["oof_raw"]["auc"] <= 0.55


def test_real_labels_beat_shuffled_on_the_same_slice(small_dataset):
    res = train_model(small_dataset, TrainConfig(seed=1, n_splits=4, max_rounds=40, num_threads=2), log=lambda *_: None)
    assert res["cv"]["oof_raw"]["auc"] > 0.5          # sanity only: the edge is small (see models/README.md)


def test_features_never_use_later_bars(majors_klines):
    cfg = smc_config(60_000, 5)
    bars = majors_klines.filter(pl.col("symbol") == "ETHUSDT").head(3000)
    full = symbol_features(bars, cfg)
    cols = ["open_time", *FEATURE_NAMES, "setup_side", "setup_entry", "setup_stop", "setup_target", "atr", "events"]
    rng = np.random.default_rng(7)
    for cut in sorted(rng.integers(50, 3000, 6).tolist()) + [1, 2999]:
        prefix = symbol_features(bars.head(cut), cfg)
        assert prefix.select(cols).equals(full.head(cut).select(cols)), cut


def test_candidate_rows_of_a_prefix_equal_the_full_run(majors_klines):
    """Builder path: the features/setup of every labelled candidate whose label is complete inside the
    prefix are identical when the bars after the cut do not exist."""
    cfg, lab = smc_config(60_000, 5), LabelConfig()
    bars = majors_klines.filter(pl.col("symbol") == "SOLUSDT").head(2500)
    full = candidates_from_frame(symbol_features(bars, cfg), "SOLUSDT", cfg, lab, 100)
    for cut in (700, 1500, 2200):
        part = candidates_from_frame(symbol_features(bars.head(cut), cfg), "SOLUSDT", cfg, lab, 100)
        assert part.height > 0
        last_close = int(bars["open_time"][cut - 1]) + 60_000 - 1
        ref = full.filter(pl.col("t1") <= last_close)          # trades whose exit fills inside the prefix
        assert part.equals(ref), cut
