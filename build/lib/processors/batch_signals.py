"""Signals from the batch engine: the same records the stream processors emit, computed over a whole
series at once (research, reference runs, and the proof that the Faust path equals the batch path)."""
from __future__ import annotations

import numpy as np
import orjson
import polars as pl

from processors.scoring import Scorer
from processors.smc import FEATURE_NAMES, SmcConfig, compute_batch_all
from schemas import Signal, interval_ms, make_signal_id


def batch_signals(bars: pl.DataFrame, symbol: str, scorer: Scorer, strategy_version: str,
                  config: SmcConfig) -> list[Signal]:
    """Every signal of one symbol's bars (columns open_time, open, high, low, close, volume), per timeframe
    in open_time order: the base timeframe first, then the higher one."""
    out: list[Signal] = []
    for tf, frame in compute_batch_all(bars, config).items():
        if frame.is_empty():
            continue
        feats = frame.select(list(FEATURE_NAMES)).to_numpy().astype(np.float64)
        conf = scorer.score(feats)
        step = interval_ms(tf)
        cols = frame.select(["open_time", "open", "high", "low", "close", "volume", "atr", "events",
                             "setup_side", "setup_entry", "setup_stop", "setup_target"]).rows()
        for (t, o, h, l, c, v, atr, events, side, entry, stop, target), f, p in zip(cols, feats, conf):
            out.append(Signal(
                signal_id=make_signal_id(symbol, tf, t, strategy_version), strategy_version=strategy_version,
                symbol=symbol, timeframe=tf, open_time=t, close_time=t + step - 1, open=o, high=h, low=l, close=c,
                volume=v, atr=atr if atr == atr else 0.0, events=orjson.loads(events), features=f.tolist(),
                confidence=round(float(p), 12), model_version=scorer.version, side=side, entry=entry, stop=stop,
                target=target))
    return out
