"""Training / evaluation samples from recorded klines, with the processors' own feature code.

Per symbol: `processors.smc.compute_batch(bars, SmcConfig(interval_ms, htf_factor=5))` (base timeframe
rows, HTF trend included, i.e. exactly what `SymbolState` -> `KlineProcessor` produces bar by bar).

Candidates = bars whose setup side is long or short: those are the only bars the executor trades
(a flat signal is skipped before the confidence is even looked at), so the model is trained on, and
judged on, the population it will size. Flat bars are NOT labelled (a flat bar has no stop/target,
and mixing in a different population would only blur the probability the executor needs). The first
`warmup` bars of every series are dropped (ATR/RSI seeds, no swings/structure yet).

Labels: models.labels (triple barrier from the next bar's open, fees + slippage included).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl

from processors.scoring import HeuristicScorer
from processors.smc import FEATURE_NAMES, SmcConfig, compute_batch

from .labels import REASONS, LabelConfig, label_candidates

HOUR_MS = 3_600_000
REPO = Path(__file__).resolve().parent.parent
RECORDED = REPO / "ingest" / "recorded"
FULL_1H = RECORDED / "klines_1h_full.parquet"
WIDE_1H = RECORDED / "klines_1h.parquet"
MAJORS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "DOGEUSDT", "ADAUSDT", "LINKUSDT")
DEFAULT_WARMUP = 100


def smc_config(interval_ms: int = HOUR_MS, htf_factor: int = 5) -> SmcConfig:
    return SmcConfig(interval_ms=interval_ms, htf_factor=htf_factor)


def load_klines(path: str | Path, symbols: list[str] | tuple[str, ...] | None = None) -> pl.DataFrame:
    df = pl.read_parquet(path)
    if "volume" not in df.columns and "quote_volume" in df.columns:
        df = df.rename({"quote_volume": "volume"})
    if "symbol" not in df.columns:
        df = df.with_columns(pl.lit("BTCUSDT").alias("symbol"))
    if symbols:
        df = df.filter(pl.col("symbol").is_in(list(symbols)))
    return df.select(["symbol", "open_time", "open", "high", "low", "close", "volume"]).sort(["symbol", "open_time"])


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def symbol_features(bars: pl.DataFrame, cfg: SmcConfig) -> pl.DataFrame:
    """The processors' base-timeframe outputs for one symbol's bars (sorted by open_time)."""
    return compute_batch(bars.sort("open_time"), cfg, htf=True)


def candidates_from_frame(frame: pl.DataFrame, symbol: str, cfg: SmcConfig, label_cfg: LabelConfig,
                          warmup: int = DEFAULT_WARMUP, source: str = "") -> pl.DataFrame:
    """Labelled setup bars of one symbol's compute_batch frame."""
    side_s = frame["setup_side"].to_numpy()
    side = np.where(side_s == "long", 1, np.where(side_s == "short", -1, 0)).astype(np.int8)
    idx = np.flatnonzero(side != 0)
    idx = idx[idx >= warmup]
    lab = label_candidates(idx, side[idx], frame["setup_entry"].to_numpy()[idx], frame["setup_stop"].to_numpy()[idx],
                           frame["setup_target"].to_numpy()[idx], frame["open_time"].to_numpy(),
                           frame["open"].to_numpy(), frame["high"].to_numpy(), frame["low"].to_numpy(),
                           cfg.interval_ms, label_cfg)
    keep = lab["valid"]
    rows = idx[keep]
    sub = frame[rows.tolist()] if len(rows) else frame.head(0)
    feats = sub.select(FEATURE_NAMES).to_numpy().astype(np.float64) if len(rows) else np.zeros((0, len(FEATURE_NAMES)))
    heur = HeuristicScorer().score(feats) if len(rows) else np.zeros(0)
    out = pl.DataFrame({
        "symbol": [symbol] * len(rows), "source": [source] * len(rows),
        "bar_index": rows.astype(np.int64),
        "t0": sub["open_time"].to_numpy().astype(np.int64) if len(rows) else np.zeros(0, np.int64),
        "t1": lab["t1"][keep],
        "side": side[rows].astype(np.int8),
        "entry": sub["setup_entry"].to_numpy() if len(rows) else np.zeros(0),
        "stop": sub["setup_stop"].to_numpy() if len(rows) else np.zeros(0),
        "target": sub["setup_target"].to_numpy() if len(rows) else np.zeros(0),
        "atr": sub["atr"].to_numpy() if len(rows) else np.zeros(0),
        "fill": lab["fill"][keep], "exit_price": lab["exit_price"][keep],
        "reason": [REASONS[int(x)] for x in lab["reason"][keep]],
        "bars_held": lab["bars_held"][keep], "pnl": lab["pnl"][keep], "r": lab["r"][keep],
        "net_ret": lab["net_ret"][keep], "label": lab["label"][keep].astype(np.int8),
        "heuristic": heur,
    }, schema_overrides={"symbol": pl.Utf8, "source": pl.Utf8, "reason": pl.Utf8})
    fdf = pl.DataFrame({n: feats[:, i] for i, n in enumerate(FEATURE_NAMES)}, schema={n: pl.Float64 for n in FEATURE_NAMES})
    return pl.concat([out, fdf], how="horizontal")


def build_dataset(klines: pl.DataFrame, cfg: SmcConfig | None = None, label_cfg: LabelConfig = LabelConfig(),
                  warmup: int = DEFAULT_WARMUP, source: str = "", symbols: list[str] | None = None) -> pl.DataFrame:
    """All labelled candidates of all symbols, sorted by (t0, symbol)."""
    cfg = cfg or smc_config()
    parts = []
    for (sym,), bars in klines.group_by(["symbol"], maintain_order=True):
        if symbols and sym not in symbols:
            continue
        frame = symbol_features(bars, cfg)
        parts.append(candidates_from_frame(frame, sym, cfg, label_cfg, warmup, source))
    if not parts:
        raise ValueError("no symbols to build a dataset from")
    return pl.concat(parts).sort(["t0", "symbol"])


def xy(ds: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return ds.select(FEATURE_NAMES).to_numpy().astype(np.float64), ds["label"].to_numpy().astype(np.int64)
