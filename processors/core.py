"""The processors' functional core: a batch of kline records in, signals and rejects out. No I/O.

The Faust agent (processors/app.py) and the reference run over files both call `KlineProcessor`, so
the streaming path and its checks share one implementation. It reads two tables through a `Tables`
view: per symbol the engines' state bytes, and per (symbol, M5 bucket) the M5 bar under construction
(the window). Per-symbol state objects stay cached in memory between batches; the stored bytes (what
the Faust tables and their changelogs hold) are the source of truth after a restart or a rebalance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Protocol

import numpy as np
import orjson

from processors.scoring import Scorer
from processors.smc import BadBar, Bar, SmcConfig, SymbolState
from processors.smc.htf import window_from_bytes, window_to_bytes
from schemas.signal import SCHEMA_VERSION as SIGNAL_SCHEMA_VERSION
from schemas import (SchemaError, Signal, decode_kline, interval_ms,
                     make_signal_id)


@dataclass
class BatchResult:
    signals: list[tuple[str, bytes]] = field(default_factory=list)      # (symbol, Signal bytes)
    rejects: list[tuple[str, bytes | None, bytes | None]] = field(default_factory=list)  # (reason, key, raw)
    states: dict[str, bytes] = field(default_factory=dict)              # symbol -> new state bytes
    windows: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (symbol, M5 bucket ms) -> new window bytes
    klines: int = 0
    # what KlineProcessor.encode() turns into `states` and `windows`
    touched: dict[str, SymbolState] = field(default_factory=dict, repr=False)
    touched_windows: dict[tuple[str, int], list] = field(default_factory=dict, repr=False)


class Tables(Protocol):
    """What the processor reads: the newest stored bytes, None when there are none."""

    def state(self, symbol: str) -> bytes | None: ...

    def window(self, symbol: str, bucket: int) -> bytes | None: ...


class MemoryTables:
    """Both tables as dicts: reference runs, tests and benchmarks (the Faust agent has its own view)."""

    def __init__(self) -> None:
        self.states: dict[str, bytes] = {}
        self.windows: dict[tuple[str, int], bytes] = {}

    def state(self, symbol: str) -> bytes | None:
        return self.states.get(symbol)

    def window(self, symbol: str, bucket: int) -> bytes | None:
        return self.windows.get((symbol, bucket))

    def apply(self, result: "BatchResult") -> None:
        self.states.update(result.states)
        self.windows.update(result.windows)


def _signal_fields(symbol: str, out, confidence: float, model_version: str, strategy_version: str,
                   events) -> dict:
    """A Signal's fields from an engine output, in Signal's field order (so dumping the dict gives the same
    bytes as encoding the dataclass; tests/processors/test_core.py checks that on real outputs). events:
    the output's events with sorted keys at every level (the batch engine's events JSON, byte for byte), as
    a dict or an orjson.Fragment of those bytes."""
    tf = out.timeframe
    setup = out.setup
    return {
        "signal_id": make_signal_id(symbol, tf, out.open_time, strategy_version),
        "strategy_version": strategy_version, "symbol": symbol, "timeframe": tf,
        "open_time": out.open_time, "close_time": out.open_time + interval_ms(tf) - 1,
        "open": out.open, "high": out.high, "low": out.low, "close": out.close, "volume": out.volume,
        "atr": out.atr if out.atr == out.atr else 0.0,  # NaN during warm-up; JSON has no NaN
        "events": events, "features": list(out.features), "confidence": round(float(confidence), 12),
        "model_version": model_version, "side": setup.side, "entry": setup.entry, "stop": setup.stop,
        "target": setup.target, "v": SIGNAL_SCHEMA_VERSION}


def signal_from_output(symbol: str, out, confidence: float, model_version: str, strategy_version: str) -> Signal:
    events = orjson.loads(out.events_json()) if out.events else out.events
    return Signal(**_signal_fields(symbol, out, confidence, model_version, strategy_version, events))


def signal_bytes(symbol: str, out, confidence: float, model_version: str, strategy_version: str) -> bytes:
    """encode_signal(signal_from_output(...)) without the frozen dataclass in between (the hot path)."""
    events = orjson.Fragment(out.events_json()) if out.events else out.events
    return orjson.dumps(_signal_fields(symbol, out, confidence, model_version, strategy_version, events))


def open_time_limit(interval: str, replay_end: int, now_ms: Callable[[], int]) -> Callable[[], tuple[int, str]]:
    """The latest open_time a processor accepts: the replay's declared end (exclusive) when it has one,
    else the wall clock, plus one interval of slack."""
    step = interval_ms(interval)
    if replay_end > 0:
        return lambda: (replay_end - 1 + step, f"the replay's declared range (end {replay_end})")
    return lambda: (now_ms() + step, "the wall clock")


def expired_windows(keys: Iterable[tuple], horizon: float, state_buckets: Mapping[str, float]) -> list[tuple]:
    """Windowed-table keys (symbol, (start, end)) starting more than `horizon` before the bucket of their
    symbol's stored state (the window of its newest base bar, in seconds as the keys are), never before
    the windows' own newest: a crash between the two flushes of a group commit leaves windows ahead of
    the state (processors/app.py), and the state's open window must outlive them, or a restart rebuilds
    that HTF bar from part of its bars. A symbol whose stored state is not known keeps every window;
    the open window of a state is never expired."""
    return [k for k in keys if k[0] in state_buckets and k[1][0] < state_buckets[k[0]] - horizon]


class KlineProcessor:
    def __init__(self, scorer: Scorer, strategy_version: str, interval: str = "1m", htf_factor: int = 5,
                 config: SmcConfig | None = None, time_limit: Callable[[], tuple[int, str]] | None = None,
                 universe: Iterable[str] | None = None) -> None:
        """time_limit: () -> (latest acceptable open_time in ms, what that bound is), read once per batch;
        None accepts any time (the pure tests). universe: the symbols a kline may have (a replay's list);
        None accepts any (live: ingest only publishes the vetted exchangeInfo universe)."""
        self.scorer = scorer
        self.universe = frozenset(universe) if universe is not None else None
        self.time_limit = time_limit
        self.strategy_version = strategy_version
        self.interval = interval
        step = interval_ms(interval)
        self.config = config or SmcConfig(interval_ms=step, htf_factor=htf_factor)
        self._cache: dict[str, tuple[bytes | None, SymbolState]] = {}

    def _state(self, symbol: str, tables: Tables) -> SymbolState:
        stored = tables.state(symbol)
        cached = self._cache.get(symbol)
        if cached is not None and cached[0] is stored:
            return cached[1]   # its open window is the one this process stored last
        if not stored:
            state = SymbolState(self.config)
        else:
            state = SymbolState.from_bytes(stored)
            bucket = state.open_bucket
            window = tables.window(symbol, bucket) if bucket is not None else None
            if window is not None:
                # written before the state (processors/app.py), so present, and possibly ahead of it;
                # absent only for a state of version 1, which carried its open window itself
                state.agg.cur = window_from_bytes(window)
        self._cache[symbol] = (stored, state)
        return state

    def forget(self, symbols: Iterable[str] | None = None) -> None:
        """Drop cached objects (after a rebalance the table's bytes are the truth)."""
        if symbols is None:
            self._cache.clear()
        else:
            for s in symbols:
                self._cache.pop(s, None)

    def process(self, records: Iterable[tuple[bytes | None, bytes]], tables: Tables) -> BatchResult:
        """A batch in, its signals, rejects and new table bytes out."""
        return self.encode(self.step(records, tables))

    def step(self, records: Iterable[tuple[bytes | None, bytes]], tables: Tables) -> BatchResult:
        """process() without encoding the new table bytes: a caller may send the signals first (state
        bytes cost about as much as the update itself) and must call encode() before the next step()."""
        result = BatchResult()
        outputs: list[tuple[str, object]] = []
        touched = result.touched
        windows = result.touched_windows
        limit, limit_what = self.time_limit() if self.time_limit is not None else (None, "")
        for key, raw in records:
            result.klines += 1
            try:
                k = decode_kline(raw)
            except SchemaError as exc:
                result.rejects.append((str(exc), key, raw))
                continue
            if key != k.symbol.encode():
                # per-symbol order holds only when the key is the symbol (one partition per symbol),
                # and the tables' changelog partitions follow it
                result.rejects.append((f"Kline.symbol={k.symbol!r}: message key {key!r} is not the symbol", key, raw))
                continue
            if self.universe is not None and k.symbol not in self.universe:
                # before the state: a symbol nobody asked for never gets one (nor signals, nor trades)
                result.rejects.append((f"Kline.symbol={k.symbol!r}: not in the run's universe "
                                       f"({len(self.universe)} symbols, SMC_UNIVERSE)", key, raw))
                continue
            if k.interval != self.interval:
                result.rejects.append((f"Kline.interval={k.interval!r}: this processor runs on {self.interval} bars", key, raw))
                continue
            if limit is not None and k.open_time > limit:
                # before the state is touched: a bar from 2100 would make every real bar after it
                # "out-of-order" and disable the symbol for good
                result.rejects.append((f"Kline.open_time={k.open_time}: beyond {limit_what} by more than one interval "
                                       f"(latest accepted {limit})", key, raw))
                continue
            state = touched.get(k.symbol) or self._state(k.symbol, tables)
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
            window = state.agg.window
            windows[(k.symbol, window[0])] = window
            outputs.extend((k.symbol, o) for o in outs)
        if outputs:
            feats = np.array([o.features for _, o in outputs], dtype=np.float64)
            conf = self.scorer.score(feats)
            for (symbol, out), c in zip(outputs, conf):
                result.signals.append((symbol, signal_bytes(symbol, out, c, self.scorer.version, self.strategy_version)))
        return result

    def encode(self, result: BatchResult) -> BatchResult:
        """Fill result.states and result.windows from the states a step() touched."""
        for symbol, state in result.touched.items():
            blob = state.to_bytes()
            result.states[symbol] = blob
            self._cache[symbol] = (blob, state)
        for key, window in result.touched_windows.items():
            result.windows[key] = window_to_bytes(window)
        result.touched.clear()
        result.touched_windows.clear()
        return result

