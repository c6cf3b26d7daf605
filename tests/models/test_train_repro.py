"""Reproducibility, metadata contract with processors.scoring, calibration map properties."""
from __future__ import annotations

import json

import numpy as np
import pytest

from models.train import TrainConfig, apply_calibration, train_model, write_model
from processors.scoring import LightGBMScorer, ModelMismatch, load_scorer
from processors.smc import FEATURE_NAMES


@pytest.fixture(scope="module")
def slice_ds(small_dataset):
    return small_dataset.head(4000)


def _train(ds, seed=3):
    return train_model(ds, TrainConfig(seed=seed, n_splits=3, max_rounds=25, min_rounds=5), log=lambda *_: None)


def test_same_data_same_seed_same_hash(slice_ds, tmp_path):
    a, b = _train(slice_ds), _train(slice_ds)
    assert a["content_hash"] == b["content_hash"] and a["model_text"] == b["model_text"]
    assert a["calibration"] == b["calibration"]
    c = _train(slice_ds, seed=4)
    assert c["content_hash"] != a["content_hash"]                  # the seed matters (bagging/feature fraction)
    txt, js = write_model(tmp_path, a, {"training": {}})
    meta = json.loads(js.read_text())
    assert meta["version"] == f"lgbm-{a['content_hash'][:8]}"
    import hashlib
    assert hashlib.sha256(txt.read_bytes()).hexdigest() == meta["content_hash"]


def test_written_model_loads_and_scores_like_train(slice_ds, tmp_path):
    res = _train(slice_ds)
    txt, _ = write_model(tmp_path, res, {})
    sc = load_scorer(txt)
    assert isinstance(sc, LightGBMScorer) and sc.version.startswith("lgbm-")
    X = slice_ds.select(FEATURE_NAMES).to_numpy()[:500]
    want = apply_calibration(res["booster"].predict(X, num_threads=1), res["calibration"])
    assert np.array_equal(sc.score(X), want)


def test_feature_name_mismatch_is_a_startup_error(slice_ds, tmp_path):
    res = _train(slice_ds)
    txt, js = write_model(tmp_path, res, {})
    meta = json.loads(js.read_text())
    meta["feature_names"] = list(reversed(meta["feature_names"]))
    js.write_text(json.dumps(meta))
    with pytest.raises(ModelMismatch):
        LightGBMScorer(txt)
    js.unlink()
    with pytest.raises(ModelMismatch):
        LightGBMScorer(txt)


def test_calibration_map_is_monotone_and_in_unit_interval(slice_ds):
    cal = _train(slice_ds)["calibration"]
    x, y = np.array(cal["x"]), np.array(cal["y"])
    assert len(x) == len(y) >= 2
    assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0)
    assert y.min() >= 0 and y.max() <= 1
    grid = np.linspace(-0.5, 1.5, 1001)
    p = apply_calibration(grid, cal)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1


def test_an_out_of_sample_file_that_is_also_trained_on_is_refused(tmp_path):
    from models.dataset import PERPS_1M
    from models.train import market_of, run_train
    with pytest.raises(ValueError, match="also training files"):
        run_train([PERPS_1M["2025-02"]], [PERPS_1M["2025-02"]], out=tmp_path, log=lambda *_: None)
    assert market_of([PERPS_1M["2025-05"]], "1m").startswith("Binance USD-M perpetual futures")
    assert market_of(["ingest/recorded/klines_1h_full.parquet"], "1h").startswith("unverified market")
