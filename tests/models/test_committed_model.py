"""The committed models/lgbm_smc.{txt,json}: contract with processors.scoring, batch == streaming scores."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from models.dataset import PERPS_1M, REPO, load_klines, smc_config, symbol_features
from processors.core import KlineProcessor, MemoryTables
from processors.scoring import LightGBMScorer
from processors.smc import FEATURE_NAMES
from schemas import Kline, decode_signal, encode_kline

MODEL = REPO / "models" / "lgbm_smc.txt"
MIN = 60_000


@pytest.fixture(scope="module")
def scorer():
    return LightGBMScorer(MODEL)


def test_metadata(scorer):
    meta = json.loads(MODEL.with_suffix(".json").read_text())
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == meta["content_hash"]
    assert scorer.version == meta["version"] == f"lgbm-{meta['content_hash'][:8]}"
    assert scorer.booster.num_trees() <= 300 and MODEL.stat().st_size < 2_000_000
    x, y = np.array(meta["calibration"]["x"]), np.array(meta["calibration"]["y"])
    assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0) and 0 <= y.min() and y.max() <= 1
    tr = meta["training"]
    assert meta["interval"] == "1m" and meta["htf"] == "5m" and "USD-M" in meta["market"]
    assert tr["smc_config"]["interval_ms"] == MIN and tr["smc_config"]["htf_factor"] == 5
    # the data it names are the repo's files, byte for byte; nothing out-of-sample was trained on
    for d in tr["data"]["train"] + tr["data"]["out_of_sample"] + tr["data"]["funding"]:
        assert hashlib.sha256((REPO / d["file"]).read_bytes()).hexdigest() == d["sha256"], d["file"]
    train_files = {d["file"] for d in tr["data"]["train"]}
    assert not train_files & {d["file"] for d in tr["data"]["out_of_sample"]}
    assert "perps_1m_2025-05" in str(tr["data"]["out_of_sample"]) and "perps_1m_2025-05" not in str(train_files)
    oos = meta["out_of_sample"]["oos_perps_1m_2025-05"]
    assert oos["n"] > 10_000 and 0 < oos["model"]["auc"] < 1 and "all_setups_baselines" in oos
    assert oos["all_setups_baselines"]["random"]["seeds"] >= 20
    for k in ("label", "cv", "libraries", "reproduce", "params", "code_version"):
        assert k in meta


def test_batch_and_streaming_scores_are_identical(scorer):
    kl = load_klines(PERPS_1M["2025-05"], ["BTCUSDT", "DOGEUSDT"]).group_by("symbol", maintain_order=True).head(300)
    cfg = smc_config(MIN, 5)
    want = {}
    for (sym,), bars in kl.group_by(["symbol"], maintain_order=True):
        f = symbol_features(bars, cfg)
        conf = scorer.score(f.select(FEATURE_NAMES).to_numpy())
        want.update({(sym, t): c for t, c in zip(f["open_time"].to_list(), conf)})
    proc = KlineProcessor(scorer, "test", interval="1m", htf_factor=5)
    tables = MemoryTables()
    got = {}
    rows = kl.sort(["open_time", "symbol"]).iter_rows(named=True)
    recs = [(r["symbol"].encode(), encode_kline(Kline(symbol=r["symbol"], interval="1m", open_time=r["open_time"],
                                                       close_time=r["open_time"] + MIN - 1, open=r["open"],
                                                       high=r["high"], low=r["low"], close=r["close"],
                                                       volume=r["volume"], source="replay")))
            for r in rows]
    for i in range(0, len(recs), 7):                                      # small, uneven batches
        res = proc.process(recs[i:i + 7], tables)
        assert not res.rejects
        tables.apply(res)
        for _, raw in res.signals:
            s = decode_signal(raw)
            if s.timeframe == "1m":
                assert s.model_version == scorer.version
                got[(s.symbol, s.open_time)] = s.confidence
    assert len(got) == len(want) == 600
    diff = max(abs(got[k] - want[k]) for k in want)
    assert diff <= 1e-12, diff


def test_the_shipped_model_was_trained_by_this_code():
    """The metadata's code_version (sha256 over the feature, label, exit, cost, sizing and training code)
    equals the code here: a change to any of it must ship a model retrained by it (the training is
    deterministic, so an unchanged model text is the proof that the change did not alter the model)."""
    from models.train import code_version
    meta = json.loads(MODEL.with_suffix(".json").read_text())
    now = code_version()
    assert meta["code_version"]["files"] == now["files"]
    assert meta["code_version"]["sha256"] == now["sha256"], (
        "the model code changed since lgbm_smc was trained: retrain with the command in lgbm_smc.json "
        "'reproduce' (about 4 minutes) and commit models/lgbm_smc.{txt,json}")
