"""Kline: one closed candle of one symbol, the unit of the `klines` topic (key = symbol)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from schemas.codec import decode_as, encode
from schemas.errors import SchemaError

SCHEMA_VERSION = 1
SOURCES = ("live", "backfill", "replay")
_SYMBOL = re.compile(r"[A-Z0-9]{2,32}")

_FLOAT_FIELDS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base", "taker_buy_quote")
_NON_NEGATIVE_FIELDS = ("volume", "quote_volume", "trades", "taker_buy_base", "taker_buy_quote")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def interval_ms(interval: str) -> int:
    """Milliseconds of a Binance interval string ("1m", "5m", "1h", "1d", "1w")."""
    try:
        return int(interval[:-1]) * _UNIT_MS[interval[-1]]
    except (KeyError, ValueError, IndexError):
        raise SchemaError("Kline", "interval", interval, "unknown interval (use e.g. 1m, 5m, 1h)") from None


def interval_name(ms: int) -> str:
    """Inverse of interval_ms for whole units ("5m" for 300000)."""
    for unit, size in (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise ValueError(f"interval of {ms} ms is not a whole number of minutes")


@dataclass(slots=True, frozen=True)
class Kline:
    symbol: str
    interval: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float = 0.0
    trades: int = 0
    taker_buy_base: float = 0.0
    taker_buy_quote: float = 0.0
    source: str = "live"
    received_at: int = 0
    v: int = SCHEMA_VERSION

    @property
    def key(self) -> tuple[str, str, int]:
        """Natural id: duplicates with the same key are the same bar (idempotent)."""
        return (self.symbol, self.interval, self.open_time)


def validate_kline(k: Kline) -> None:
    """The invariants of DESIGN.md; raises SchemaError naming the field and the value."""
    if not _SYMBOL.fullmatch(k.symbol):
        raise SchemaError("Kline", "symbol", k.symbol, "expected an upper-case alphanumeric symbol")
    step = interval_ms(k.interval)
    if k.open_time < 0 or k.open_time % step != 0:
        raise SchemaError("Kline", "open_time", k.open_time, f"not aligned on the {k.interval} grid")
    if k.close_time != k.open_time + step - 1:
        raise SchemaError("Kline", "close_time", k.close_time, f"expected open_time + {step} - 1 = {k.open_time + step - 1}")
    # one check on the hot path (a NaN or infinity makes the sum non-finite), the field loop only to name it
    if not math.isfinite(k.open + k.high + k.low + k.close + k.volume + k.quote_volume + k.taker_buy_base
                         + k.taker_buy_quote):
        for name in _FLOAT_FIELDS:
            if not math.isfinite(getattr(k, name)):
                raise SchemaError("Kline", name, getattr(k, name), "not finite")
    if k.low > min(k.open, k.close):
        raise SchemaError("Kline", "low", k.low, f"above min(open, close) = {min(k.open, k.close)}")
    if k.high < max(k.open, k.close):
        raise SchemaError("Kline", "high", k.high, f"below max(open, close) = {max(k.open, k.close)}")
    if k.low <= 0:
        raise SchemaError("Kline", "low", k.low, "prices must be positive")
    if min(k.volume, k.quote_volume, k.trades, k.taker_buy_base, k.taker_buy_quote) < 0:
        for name in _NON_NEGATIVE_FIELDS:
            if getattr(k, name) < 0:
                raise SchemaError("Kline", name, getattr(k, name), "must be >= 0")
    if k.source not in SOURCES:
        raise SchemaError("Kline", "source", k.source, f"expected one of {SOURCES}")
    if k.v != SCHEMA_VERSION:
        raise SchemaError("Kline", "v", k.v, f"unsupported schema version (this code reads {SCHEMA_VERSION})")


def decode_kline(raw: bytes | str | dict) -> Kline:
    return decode_as(Kline, raw, validate_kline)


def encode_kline(k: Kline) -> bytes:
    return encode(k)
