"""The processors' functional core: a batch of kline records in, signals and rejects out. No I/O.

The Faust agent (processors/app.py) and the reference run over files both call `KlineProcessor`, so
the streaming path and its checks share one implementation. Per-symbol state objects stay cached in
memory between batches; their serialized bytes (what the Faust table and its changelog hold) are
the source of truth after a restart or a rebalance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import orjson

from processors.scoring import Scorer
from processors.smc import BadBar, Bar, SmcConfig, SymbolState
from schemas.signal import SCHEMA_VERSION as SIGNAL_SCHEMA_VERSION
from schemas import (SchemaError, Signal, decode_kline, interval_ms,
                     make_signal_id)


@dataclass
class BatchResult:
    signals: list[tuple[str, bytes]] = field(default_factory=list)      # (symbol, Signal bytes)
    rejects: list[tuple[str, bytes | None, bytes | None]] = field(default_factory=list)  # (reason, key, raw)
    states: dict[str, bytes] = field(default_factory=dict)              # symbol -> new state bytes
    klines: int = 0


def _signal_fields(symbol: str, out, confidence: float, model_version: str, strategy_version: str) -> dict:
    """A Signal's fields from an engine output, in Signal's field order (so dumping the dict gives the same
    bytes as encoding the dataclass; tests/processors/test_core.py checks that on real outputs)."""
    tf = out.timeframe
    setup = out.setup
    return {
        "signal_id": make_signal_id(symbol, tf, out.open_time, strategy_version),
        "strategy_version": strategy_version, "symbol": symbol, "timeframe": tf,
        "open_time": out.open_time, "close_time": out.open_time + interval_ms(tf) - 1,
        "open": out.open, "high": out.high, "low": out.low, "close": out.close, "volume": out.volume,
        "atr": out.atr if out.atr == out.atr else 0.0,  # NaN during warm-up; JSON has no NaN
        "events": out.events, "features": list(out.features), "confidence": round(float(confidence), 12),
        "model_version": model_version, "side": setup.side, "entry": setup.entry, "stop": setup.stop,
        "target": setup.target, "v": SIGNAL_SCHEMA_VERSION}


def signal_from_output(symbol: str, out, confidence: float, model_version: str, strategy_version: str) -> Signal:
    return Signal(**_signal_fields(symbol, out, confidence, model_version, strategy_version))


def signal_bytes(symbol: str, out, confidence: float, model_version: str, strategy_version: str) -> bytes:
    """encode_signal(signal_from_output(...)) without the frozen dataclass in between (the hot path)."""
    return orjson.dumps(_signal_fields(symbol, out, confidence, model_version, strategy_version))


class KlineProcessor:
    def __init__(self, scorer: Scorer, strategy_version: str, interval: str = "1m", htf_factor: int = 5,
                 config: SmcConfig | None = None) -> None:
        self.scorer = scorer
        self.strategy_version = strategy_version
        self.interval = interval
        step = interval_ms(interval)
        self.config = config or SmcConfig(interval_ms=step, htf_factor=htf_factor)
        self._cache: dict[str, tuple[bytes | None, SymbolState]] = {}

    def _state(self, symbol: str, stored: bytes | None) -> SymbolState:
        cached = self._cache.get(symbol)
        if cached is not None and cached[0] is stored:
            return cached[1]
        state = SymbolState.from_bytes(stored) if stored else SymbolState(self.config)
        self._cache[symbol] = (stored, state)
        return state

    def forget(self, symbols: Iterable[str] | None = None) -> None:
        """Drop cached objects (after a rebalance the table's bytes are the truth)."""
        if symbols is None:
            self._cache.clear()
        else:
            for s in symbols:
                self._cache.pop(s, None)

    def process(self, records: Iterable[tuple[bytes | None, bytes]], get_state: Callable[[str], bytes | None]) -> BatchResult:
        result = BatchResult()
        outputs: list[tuple[str, object]] = []
        touched: dict[str, SymbolState] = {}
        for key, raw in records:
            result.klines += 1
            try:
                k = decode_kline(raw)
            except SchemaError as exc:
                result.rejects.append((str(exc), key, raw))
                continue
            if key is not None and key != k.symbol.encode():
                # per-symbol order holds only when the key is the symbol (one partition per symbol)
                result.rejects.append((f"Kline.symbol={k.symbol!r}: message key {key!r} is not the symbol", key, raw))
                continue
            if k.interval != self.interval:
                result.rejects.append((f"Kline.interval={k.interval!r}: this processor runs on {self.interval} bars", key, raw))
                continue
            state = touched.get(k.symbol) or self._state(k.symbol, get_state(k.symbol))
            last = state.base.last_time
            if last is not None and k.open_time <= last:
                what = "duplicate" if k.open_time == last else "out-of-order"
                result.rejects.append((f"Kline.open_time={k.open_time}: {what} bar (last processed {last}); state not rewound", key, raw))
                continue
            try:
                outs = state.update(Bar(k.open_time, k.open, k.high, k.low, k.close, k.volume))
            except BadBar as exc:
                result.rejects.append((f"Kline: {exc}", key, raw))
                continue
            touched[k.symbol] = state
            outputs.extend((k.symbol, o) for o in outs)
        if outputs:
            feats = np.array([o.features for _, o in outputs], dtype=np.float64)
            conf = self.scorer.score(feats)
            for (symbol, out), c in zip(outputs, conf):
                result.signals.append((symbol, signal_bytes(symbol, out, c, self.scorer.version, self.strategy_version)))
        for symbol, state in touched.items():
            blob = state.to_bytes()
            result.states[symbol] = blob
            self._cache[symbol] = (blob, state)
        return result
