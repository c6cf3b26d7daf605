"""Helpers for the SMC tests (imported by test modules in this directory)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

os.environ.setdefault("SMC_CREDIT", "0")

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / "ingest" / "recorded"
REF = REPO / "tests" / "data" / "smc_reference"
COLS = ["open_time", "open", "high", "low", "close", "volume"]


def load_btc_1m() -> pl.DataFrame:
    d = pl.read_parquet(RECORDED / "klines_1m_btc.parquet").rename({"quote_volume": "volume"})
    return d.sort("open_time").select(COLS)


def load_perps_1m() -> pl.DataFrame:
    """Real Binance USD-M perpetual 1m bars, 18 symbols, 2025-05 (ingest/recorded/SOURCES.md)."""
    return pl.read_parquet(RECORDED / "perps_1m_2025-05.parquet").sort(["symbol", "open_time"])


def load_1h() -> pl.DataFrame:
    return pl.read_parquet(RECORDED / "klines_1h.parquet").sort(["symbol", "open_time"])


def symbol_frame(d: pl.DataFrame, sym: str) -> pl.DataFrame:
    return d.filter(pl.col("symbol") == sym).select(COLS)


def load_eurusd() -> pl.DataFrame:
    p = pd.read_csv(REF / "EURUSD_15M.csv.gz")
    t = pd.to_datetime(p["Date"], format="%Y.%m.%d %H:%M:%S").astype("int64") // 1_000_000
    return pl.DataFrame({"open_time": t.to_numpy(), "open": p["Open"].to_numpy(), "high": p["High"].to_numpy(),
                         "low": p["Low"].to_numpy(), "close": p["Close"].to_numpy(),
                         "volume": p["Volume"].to_numpy().astype(float)})


def load_ref(name: str) -> pd.DataFrame:
    return pd.read_csv(REF / f"{name}_result_data.csv.gz")


def to_pandas_ohlc(d: pl.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({k: d[k].to_numpy() for k in ("open", "high", "low", "close", "volume")})


def run_engine(d: pl.DataFrame, engine) -> list:
    up = engine.update
    return [up(r) for r in d.rows()]


def run_symbol_state(d: pl.DataFrame, state):
    base, htf = [], []
    up = state.update
    for r in d.rows():
        out = up(r)
        base.append(out[0])
        htf.extend(out[1:])
    return base, htf


def _bits(x) -> bytes:
    """The float64 bytes of a value or array (NaN and -0.0 included: equal bytes, not equal values)."""
    return np.asarray(x, dtype=np.float64).tobytes()


def assert_outputs_equal_frame(outs: list, frame: pl.DataFrame, what: str = "") -> None:
    """Every BarOutput equals the batch row byte for byte: events as exact JSON, every float by its
    float64 bytes (the two forms share their arithmetic, so there is no tolerance to hide a difference)."""
    from processors.smc import FEATURE_NAMES
    assert len(outs) == frame.height, f"{what}: {len(outs)} outputs vs {frame.height} rows"
    ev = frame["events"].to_list()
    feats = np.ascontiguousarray(frame.select(list(FEATURE_NAMES)).to_numpy(), dtype=np.float64)
    times = frame["open_time"].to_numpy()
    num = np.ascontiguousarray(frame.select(["atr", "rsi", "setup_entry", "setup_stop", "setup_target"]).to_numpy(),
                               dtype=np.float64)
    side = frame["setup_side"].to_list()
    tf = frame["timeframe"].to_list()
    got_feats = np.array([o.features for o in outs], dtype=np.float64).reshape(-1, len(FEATURE_NAMES))
    got_num = np.array([(o.atr, o.rsi, o.setup.entry, o.setup.stop, o.setup.target) for o in outs],
                       dtype=np.float64).reshape(-1, 5)
    if got_feats.tobytes() != feats.tobytes():
        i, j = np.argwhere(got_feats.view(np.int64) != feats.view(np.int64))[0]
        raise AssertionError(f"{what} bar {i}: feature {FEATURE_NAMES[j]} {got_feats[i, j]!r} != {feats[i, j]!r} "
                             f"({int((got_feats.view(np.int64) != feats.view(np.int64)).any(axis=1).sum())} rows differ)")
    if got_num.tobytes() != num.tobytes():
        i, j = np.argwhere(got_num.view(np.int64) != num.view(np.int64))[0]
        raise AssertionError(f"{what} bar {i}: {['atr', 'rsi', 'entry', 'stop', 'target'][j]} "
                             f"{got_num[i, j]!r} != {num[i, j]!r}")
    for i, o in enumerate(outs):
        assert o.timeframe == tf[i], (what, i)
        assert o.open_time == int(times[i]), (what, i)
        assert o.events_json().decode() == ev[i], f"{what} bar {i}: events {o.events_json()} != {ev[i]}"
        assert o.setup.side == side[i], (what, i)
