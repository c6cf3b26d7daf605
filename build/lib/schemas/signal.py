"""Signal: the processors' verdict on one closed bar of one timeframe (key = symbol).

One record per closed bar, flat or not: the executor needs every bar's price for exits, and a replay
needs the full record to diff. Everything in it derives from the klines, so the same klines give the
same bytes (no clocks, no randomness).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from schemas.codec import decode_as, encode
from schemas.errors import SchemaError

SCHEMA_VERSION = 1
SIDES = ("long", "short", "flat")
N_FEATURES = 12


def make_signal_id(symbol: str, timeframe: str, open_time: int, strategy_version: str) -> str:
    """Readable and derived from the input only: replays reproduce it."""
    return f"{symbol}:{timeframe}:{open_time}:{strategy_version}"


def short_hash(text: str, nbytes: int = 10) -> str:
    return hashlib.blake2b(text.encode(), digest_size=nbytes).hexdigest()


@dataclass(slots=True, frozen=True)
class Signal:
    signal_id: str
    strategy_version: str
    symbol: str
    timeframe: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    atr: float
    events: dict = field(default_factory=dict)
    features: list[float] = field(default_factory=list)   # in processors.smc.FEATURE_NAMES order
    confidence: float = 0.0
    model_version: str = "heuristic"
    side: str = "flat"
    entry: float = 0.0
    stop: float = 0.0
    target: float = 0.0
    v: int = SCHEMA_VERSION


def validate_signal(s: Signal) -> None:
    if s.side not in SIDES:
        raise SchemaError("Signal", "side", s.side, f"expected one of {SIDES}")
    if not 0.0 <= s.confidence <= 1.0:
        raise SchemaError("Signal", "confidence", s.confidence, "expected a probability in [0, 1]")
    if len(s.features) != N_FEATURES:
        raise SchemaError("Signal", "features", len(s.features), f"expected {N_FEATURES} values")
    if s.side != "flat":
        if s.side == "long" and not s.stop < s.entry < s.target:
            raise SchemaError("Signal", "stop", s.stop, f"a long needs stop < entry ({s.entry}) < target ({s.target})")
        if s.side == "short" and not s.target < s.entry < s.stop:
            raise SchemaError("Signal", "stop", s.stop, f"a short needs target < entry ({s.entry}) < stop ({s.stop})")
    for name in ("open", "high", "low", "close", "atr", "entry", "stop", "target"):
        if not math.isfinite(getattr(s, name)):
            raise SchemaError("Signal", name, getattr(s, name), "not finite")
    if s.v != SCHEMA_VERSION:
        raise SchemaError("Signal", "v", s.v, f"unsupported schema version (this code reads {SCHEMA_VERSION})")


def decode_signal(raw: bytes | str | dict) -> Signal:
    return decode_as(Signal, raw, validate_signal)


def encode_signal(s: Signal) -> bytes:
    return encode(s)
