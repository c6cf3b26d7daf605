"""Training / evaluation samples from recorded klines, with the processors' own feature code.

Per symbol and period: `processors.smc.compute_batch(bars, SmcConfig(interval_ms, htf_factor=5))` (base
timeframe rows, HTF trend included, i.e. exactly what `SymbolState` -> `KlineProcessor` produces bar by
bar; on 1m bars the HTF is 5m). Data: the real Binance USD-M perpetual 1m sets in ingest/recorded.

Candidates = bars whose setup side is long or short: those are the only bars the executor trades
(a flat signal is skipped before the confidence is even looked at), so the model is trained on, and
judged on, the population it will size. Flat bars are NOT labelled (a flat bar has no stop/target,
and mixing in a different population would only blur the probability the executor needs). The first
`warmup` bars of every series are dropped (ATR/RSI seeds, no swings/structure yet).

Labels: models.labels (the executor's trade: its exits, costs, tick rounding and funding). Symbols the
executor does not trade (missing from the real exchangeInfo snapshot) are not labelled either.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl

from processors.scoring import HeuristicScorer
from processors.smc import FEATURE_NAMES, SmcConfig, compute_batch

from executor.funding import FundingHistory

from .labels import REASONS, LabelConfig, simulate_trades

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
INTERVALS = {"1m": MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS, "1h": HOUR_MS}
REPO = Path(__file__).resolve().parent.parent
RECORDED = REPO / "ingest" / "recorded"
# by period: the three shipped sets (2023-07, 2025-02, 2025-05) and any `smc data download` put here
PERPS_1M = {p.stem.removeprefix("perps_1m_"): p for p in sorted(RECORDED.glob("perps_1m_*.parquet"))}
FUNDING = {p.stem.removeprefix("funding_"): p for p in sorted(RECORDED.glob("funding_*.parquet"))}
DEFAULT_WARMUP = 100


def smc_config(interval_ms: int = MINUTE_MS, htf_factor: int = 5) -> SmcConfig:
    """HTF = htf_factor x the base interval: 1m -> 5m (the product's M1 with M5 context)."""
    return SmcConfig(interval_ms=interval_ms, htf_factor=htf_factor)


def interval_ms_of(interval: str) -> int:
    if interval not in INTERVALS:
        raise ValueError(f"interval {interval!r}: expected one of {sorted(INTERVALS)}")
    return INTERVALS[interval]


def tick_of(symbol: str, price: float) -> float | None:
    """The symbol's real PRICE_FILTER tick (executor's bundled exchangeInfo), None = the executor does not trade it."""
    inst = _book().get(symbol, price)
    return None if inst is None else float(inst.tick_size)


_BOOK = None


def _book():
    global _BOOK
    if _BOOK is None:
        from executor.instruments import InstrumentBook
        _BOOK = InstrumentBook.default()
    return _BOOK


def load_klines(path: str | Path, symbols: list[str] | tuple[str, ...] | None = None) -> pl.DataFrame:
    df = pl.read_parquet(path)
    if "volume" not in df.columns and "quote_volume" in df.columns:
        df = df.rename({"quote_volume": "volume"})
    if "symbol" not in df.columns:
        df = df.with_columns(pl.lit("BTCUSDT").alias("symbol"))
    if symbols:
        df = df.filter(pl.col("symbol").is_in(list(symbols)))
    return df.select(["symbol", "open_time", "open", "high", "low", "close", "volume"]).sort(["symbol", "open_time"])


def load_many(paths, symbols=None) -> pl.DataFrame:
    """Several kline files (e.g. two periods) as one frame; a (symbol, open_time) present twice is an error."""
    df = pl.concat([load_klines(p, symbols) for p in paths]).sort(["symbol", "open_time"])
    dup = df.select(["symbol", "open_time"]).is_duplicated()
    if dup.any():
        row = df.filter(dup).row(0, named=True)
        raise ValueError(f"open_time {row['open_time']} of {row['symbol']} appears in more than one file")
    return df


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def symbol_features(bars: pl.DataFrame, cfg: SmcConfig) -> pl.DataFrame:
    """The processors' base-timeframe outputs for one symbol's bars (sorted by open_time)."""
    return compute_batch(bars.sort("open_time"), cfg, htf=True)


def candidates_from_frame(frame: pl.DataFrame, symbol: str, cfg: SmcConfig, label_cfg: LabelConfig,
                          warmup: int = DEFAULT_WARMUP, source: str = "",
                          funding: FundingHistory | None = None) -> pl.DataFrame:
    """Labelled setup bars of one symbol's compute_batch frame (empty when the executor does not trade it)."""
    side_s = frame["setup_side"].to_numpy()
    side = np.where(side_s == "long", 1, np.where(side_s == "short", -1, 0)).astype(np.int8)
    idx = np.flatnonzero(side != 0)
    idx = idx[idx >= warmup]
    tick = tick_of(symbol, float(frame["close"][-1])) if frame.height else None
    if tick is None:
        idx = idx[:0]
        tick = 1.0
    lab = simulate_trades(symbol, idx, side[idx], frame["setup_entry"].to_numpy()[idx],
                          frame["setup_stop"].to_numpy()[idx], frame["setup_target"].to_numpy()[idx],
                          frame["open_time"].to_numpy(), frame["open"].to_numpy(), frame["high"].to_numpy(),
                          frame["low"].to_numpy(), frame["close"].to_numpy(), cfg.interval_ms, tick, label_cfg, funding)
    keep = lab["valid"]
    rows = idx[keep]
    sub = frame[rows.tolist()] if len(rows) else frame.head(0)
    feats = sub.select(FEATURE_NAMES).to_numpy().astype(np.float64) if len(rows) else np.zeros((0, len(FEATURE_NAMES)))
    heur = HeuristicScorer().score(feats) if len(rows) else np.zeros(0)
    risk = lab["risk"][keep]
    out = pl.DataFrame({
        "symbol": [symbol] * len(rows), "source": [source] * len(rows),
        "bar_index": rows.astype(np.int64),
        "t0": sub["open_time"].to_numpy().astype(np.int64) if len(rows) else np.zeros(0, np.int64),
        "t1": lab["t1"][keep],
        "side": side[rows].astype(np.int8),
        "entry": lab["entry_r"][keep], "stop": lab["stop_r"][keep], "target": lab["target_r"][keep],
        "atr": sub["atr"].to_numpy() if len(rows) else np.zeros(0),
        "fill": lab["fill"][keep], "exit_price": lab["exit_price"][keep],
        "reason": [REASONS[int(x)] for x in lab["reason"][keep]],
        "bars_held": lab["bars_held"][keep], "pnl": lab["pnl"][keep], "r": lab["r"][keep],
        "gross_r": lab["gross"][keep] / risk if len(rows) else np.zeros(0),
        "fee_r": lab["fees"][keep] / risk if len(rows) else np.zeros(0),
        "slippage_r": lab["slippage"][keep] / risk if len(rows) else np.zeros(0),
        "funding_r": lab["funding"][keep] / risk if len(rows) else np.zeros(0),
        "stop_pct": risk / lab["entry_r"][keep] if len(rows) else np.zeros(0),
        "net_ret": lab["pnl"][keep] / lab["fill"][keep] if len(rows) else np.zeros(0),
        "label": lab["label"][keep].astype(np.int8),
        "heuristic": heur,
    }, schema_overrides={"symbol": pl.Utf8, "source": pl.Utf8, "reason": pl.Utf8})
    fdf = pl.DataFrame({n: feats[:, i] for i, n in enumerate(FEATURE_NAMES)}, schema={n: pl.Float64 for n in FEATURE_NAMES})
    return pl.concat([out, fdf], how="horizontal")


def build_dataset(klines: pl.DataFrame, cfg: SmcConfig | None = None, label_cfg: LabelConfig = LabelConfig(),
                  warmup: int = DEFAULT_WARMUP, source: str = "", symbols: list[str] | None = None,
                  funding: FundingHistory | None = None, log=None) -> pl.DataFrame:
    """All labelled candidates of all symbols, sorted by (t0, symbol)."""
    cfg = cfg or smc_config()
    parts = []
    for (sym,), bars in klines.group_by(["symbol"], maintain_order=True):
        if symbols and sym not in symbols:
            continue
        frame = symbol_features(bars, cfg)
        part = candidates_from_frame(frame, sym, cfg, label_cfg, warmup, source, funding)
        if log is not None:
            log(f"  {source} {sym}: {bars.height} bars -> {part.height} labelled setups"
                + ("" if part.height else " (not in the executor's exchangeInfo: not traded)"))
        parts.append(part)
    if not parts:
        raise ValueError("no symbols to build a dataset from")
    return pl.concat(parts).sort(["t0", "symbol"])


def xy(ds: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return ds.select(FEATURE_NAMES).to_numpy().astype(np.float64), ds["label"].to_numpy().astype(np.int64)
