"""Read the processors' Faust tables from their changelogs, as Faust recovers them (no worker needed).

`smc htf-bars` shows the M5 bars (the HTF bars of the windowed table `htf-bars`) of a run's namespace.
"""
from __future__ import annotations

from typing import Iterable

import orjson

from infra import kafka_io
from infra.settings import Settings
from processors.app import app_id


def compact(records: Iterable[tuple[bytes, bytes | None]]) -> dict[bytes, bytes]:
    """The newest value per key, in log order; a tombstone (None) deletes its key."""
    out: dict[bytes, bytes] = {}
    for key, value in records:
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def changelog(settings: Settings, table: str, timeout: float = 60.0) -> dict[bytes, bytes]:
    """A processors table (`symbol-state`, `htf-bars`) of settings.namespace, compacted."""
    base = f"{app_id(settings.with_(namespace=''))}-{table}-changelog"
    return compact((m.key(), m.value()) for m in kafka_io.read_topic(settings, base, timeout=timeout))


def htf_bars(settings: Settings, symbols: set[str] | None = None) -> dict[str, list[dict]]:
    """symbol -> its stored HTF windows (oldest first): open_time, OHLCV, last_open_time, bars."""
    out: dict[str, list[dict]] = {}
    for key, value in changelog(settings, "htf-bars").items():
        symbol, _window = orjson.loads(key)          # Faust's windowed key: [symbol, [start_s, end_s]]
        if symbols is None or symbol in symbols:
            out.setdefault(symbol, []).append(orjson.loads(value))
    for bars in out.values():
        bars.sort(key=lambda b: b["open_time"])
    return out
