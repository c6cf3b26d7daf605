"""Replay recorded klines from files into the `klines` topic.

Functional core: `load_klines` reads any of the supported layouts into one normalised polars frame,
filtered to the chosen symbols and time range and sorted by (open_time, symbol); `frame_to_klines`
turns rows into validated `Kline`s (source="replay", received_at = close_time + 1 so that a replay is
byte-reproducible). The shell, `replay`, produces them with the idempotent producer, as fast as
possible or paced at a speed factor, with an optional rich progress bar.

Supported layouts (detected from the columns / first line):
  * Parquet or CSV with a header and a `volume` column (klines_1h*.parquet, shared/data/klines_1h/*.csv)
  * Parquet or CSV with a header and `quote_volume` but no `volume` (klines_1m_btc.parquet, BTC-PERP CSV)
  * Binance 12-column dumps without header (open_time, open, high, low, close, volume, close_time,
    quote_volume, trades, taker_buy_base, taker_buy_quote, ignore), e.g. BINANCE-SPOT-ADABTC-1m-*.csv,
    and the newer dumps with a header row (count, taker_buy_volume, taker_buy_quote_volume are read as
    trades, taker_buy_base, taker_buy_quote)
A file without a `symbol` column takes its symbol from the file name (`BTCUSDT-1h.csv`,
`BINANCE-SPOT-ADABTC-1m-2021-11-27.csv`, `BTC-PERP-1m-2022-01.csv` -> BTCUSDT) or from `symbol=`.

Missing columns are filled as follows (documented estimates, never invented precision):
  * quote_volume absent: volume * close (a typical-price estimate of the notional);
  * volume absent: quote_volume / close (the same estimate inverted);
  * trades, taker_buy_base, taker_buy_quote absent: 0.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import polars as pl

from schemas import Kline, SchemaError, encode_kline, interval_ms
from schemas.kline import validate_kline

log = logging.getLogger("smc.ingest.replay")

COLUMNS = ["symbol", "open_time", "close_time", "open", "high", "low", "close", "volume", "quote_volume",
           "trades", "taker_buy_base", "taker_buy_quote"]
DUMP_COLUMNS = ["open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume",
                "trades", "taker_buy_base", "taker_buy_quote", "ignore"]
_FLOATS = ["open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base", "taker_buy_quote"]
# the header row of newer data.binance.vision dumps (open_time,open,high,low,close,volume,close_time,
# quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore) -> the names used here
_DUMP_HEADER = {"count": "trades", "taker_buy_volume": "taker_buy_base", "taker_buy_quote_volume": "taker_buy_quote"}


class ReplayError(ValueError):
    """Bad replay request: missing file, unknown symbol, empty period, unreadable layout."""


def symbol_from_filename(path: str | Path) -> str | None:
    name = Path(path).name.upper()
    m = re.match(r"BINANCE-[A-Z]+-([A-Z0-9]+)-\d+[MHDW]", name)
    if m:
        return m.group(1)
    m = re.match(r"([A-Z0-9]+)-PERP\b", name)
    if m:
        return m.group(1) + "USDT"
    m = re.match(r"([A-Z0-9]+?)(_USDT)?[-_]\d+[MHDW]\b", name)
    if m:
        return m.group(1) + ("USDT" if m.group(2) else "")
    return None


def parse_time(value: str | int | None) -> int | None:
    """ms UTC from an int (ms), a digit string (ms) or an ISO date/datetime (UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    from datetime import datetime, timezone
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"cannot read time {value!r}: use ms since epoch or ISO 8601 (2026-06-01T00:00)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def read_kline_csv(data: bytes, name: str) -> pl.DataFrame:
    """A kline CSV's rows as read (no symbol, not normalised): with a header row (its names kept;
    Binance's dump header is mapped onto DUMP_COLUMNS), or Binance's 12-column dump layout without one.
    `name` is only for error messages (a file path, or the member of a downloaded zip)."""
    first = data.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not first:
        raise ReplayError(f"replay file is empty: {name}")
    has_header = not first.split(",")[0].strip().lstrip("-").isdigit()
    if has_header:
        # prices/volumes as floats whatever the first rows look like (a coin quoted in whole numbers
        # for 10,000 rows would otherwise be inferred as integers and fail on its first decimal)
        names = [n.strip() for n in first.split(",")]
        floats = {n: pl.Float64 for n in names if _DUMP_HEADER.get(n, n) in _FLOATS}
        df = pl.read_csv(data, infer_schema_length=10_000, schema_overrides=floats)
        return df.rename({k: v for k, v in _DUMP_HEADER.items() if k in df.columns and v not in df.columns})
    ncols = len(first.split(","))
    if ncols != 12:
        raise ReplayError(f"{name}: headerless CSV with {ncols} columns; expected Binance's 12-column layout")
    return pl.read_csv(data, has_header=False, new_columns=DUMP_COLUMNS,
                       schema_overrides={c: pl.Float64 for c in _FLOATS})


def _read_one(path: Path, symbol: str | None) -> pl.DataFrame:
    if not path.exists():
        raise ReplayError(f"replay file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = pl.read_parquet(path)
    elif suffix in (".csv", ".txt"):
        df = read_kline_csv(path.read_bytes(), str(path))
    else:
        raise ReplayError(f"{path}: unsupported file type {suffix!r} (use .parquet or .csv)")
    if "symbol" not in df.columns:
        sym = symbol or symbol_from_filename(path)
        if not sym:
            raise ReplayError(f"{path}: no symbol column and no symbol in the file name; pass symbol=")
        df = df.with_columns(pl.lit(sym).alias("symbol"))
    missing = [c for c in ("open_time", "open", "high", "low", "close") if c not in df.columns]
    if missing:
        raise ReplayError(f"{path}: missing columns {missing} (has {df.columns})")
    if "volume" not in df.columns and "quote_volume" not in df.columns:
        raise ReplayError(f"{path}: needs a volume or quote_volume column (has {df.columns})")
    return _normalise(df)


def _normalise(df: pl.DataFrame) -> pl.DataFrame:
    exprs = []
    cols = set(df.columns)
    for c in ("open", "high", "low", "close"):
        exprs.append(pl.col(c).cast(pl.Float64))
    if "volume" in cols:
        exprs.append(pl.col("volume").cast(pl.Float64))
    else:
        exprs.append((pl.col("quote_volume").cast(pl.Float64) / pl.col("close").cast(pl.Float64)).alias("volume"))
    if "quote_volume" in cols:
        exprs.append(pl.col("quote_volume").cast(pl.Float64))
    else:
        exprs.append((pl.col("volume").cast(pl.Float64) * pl.col("close").cast(pl.Float64)).alias("quote_volume"))
    exprs.append(pl.col("trades").cast(pl.Int64) if "trades" in cols else pl.lit(0, pl.Int64).alias("trades"))
    for c in ("taker_buy_base", "taker_buy_quote"):
        exprs.append(pl.col(c).cast(pl.Float64) if c in cols else pl.lit(0.0, pl.Float64).alias(c))
    exprs.append(pl.col("open_time").cast(pl.Int64))
    exprs.append(pl.col("close_time").cast(pl.Int64) if "close_time" in cols
                 else pl.lit(None, pl.Int64).alias("close_time"))
    exprs.append(pl.col("symbol").cast(pl.Utf8))
    return df.select(exprs).select(COLUMNS)


def load_klines(files: Sequence[str | Path], symbols: Iterable[str] | None = None, start: int | str | None = None,
                end: int | str | None = None, interval: str = "1m", symbol: str | None = None) -> pl.DataFrame:
    """All rows of `files` for `symbols` with start <= open_time < end, sorted by (open_time, symbol).

    Raises ReplayError for no files, a missing file, requested symbols absent from the files, or an
    empty selection. A missing close_time is derived as open_time + interval - 1.
    """
    if not files:
        raise ReplayError("no replay files given")
    step = interval_ms(interval)
    frames = [_read_one(Path(f), symbol) for f in files]
    df = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
    df = df.with_columns(pl.col("close_time").fill_null(pl.col("open_time") + (step - 1)))
    available = set(df.get_column("symbol").unique().to_list())
    if symbols is not None:
        wanted = [s.strip().upper() for s in symbols if s and s.strip()]
        unknown = sorted(set(wanted) - available)
        if unknown:
            shown = ", ".join(sorted(available)[:10]) + (" ..." if len(available) > 10 else "")
            raise ReplayError(f"unknown symbol(s) {unknown}: not in the replay files (they have {len(available)}: {shown})")
        df = df.filter(pl.col("symbol").is_in(wanted))
    t0, t1 = parse_time(start), parse_time(end)
    if t0 is not None:
        df = df.filter(pl.col("open_time") >= t0)
    if t1 is not None:
        df = df.filter(pl.col("open_time") < t1)
    if df.height == 0:
        raise ReplayError(f"empty period: no klines with {t0} <= open_time < {t1} for the chosen symbols")
    # the same bar in two files (overlapping dumps) is replayed once: the first file wins
    return df.unique(subset=["symbol", "open_time"], keep="first", maintain_order=True).sort(["open_time", "symbol"])


def frame_to_klines(df: pl.DataFrame, interval: str = "1m") -> Iterator[Kline | tuple[dict, SchemaError]]:
    """Validated Klines in frame order; an invalid row yields (row dict, SchemaError) instead."""
    for row in df.iter_rows():
        sym, ot, ct, o, h, l, c, v, qv, n, tbb, tbq = row
        k = Kline(sym, interval, ot, ct, o, h, l, c, v, qv, n, tbb, tbq, "replay", ct + 1)
        try:
            validate_kline(k)
        except SchemaError as exc:
            yield (dict(zip(COLUMNS, row)), exc)
            continue
        yield k


@dataclass
class ReplayStats:
    rows: int = 0
    produced: int = 0
    rejected: int = 0
    delivery_errors: int = 0
    symbols: int = 0
    first_open_time: int = 0
    last_open_time: int = 0
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)


def replay(settings, files: Sequence[str | Path], symbols: Iterable[str] | None = None,
           start: int | str | None = None, end: int | str | None = None, interval: str = "1m",
           speed: float = 0.0, progress: bool = True, producer=None, symbol: str | None = None,
           sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> ReplayStats:
    """Produce the selected recorded klines to `klines` (key = symbol) in (open_time, symbol) order.

    speed <= 0: as fast as possible; speed = S: S seconds of market time per wall second (60 replays
    1m bars at one minute per second). Invalid rows go to the dlq (stage ingest.replay).
    """
    import orjson
    from infra.kafka_io import ensure_topics, send_reject, topic

    t_start = time.perf_counter()
    df = load_klines(files, symbols, start, end, interval, symbol)
    stats = ReplayStats(rows=df.height, symbols=df.get_column("symbol").n_unique(),
                        first_open_time=int(df.get_column("open_time").min()),
                        last_open_time=int(df.get_column("open_time").max()))
    ensure_topics(settings, ["klines", "dlq"])
    own = producer is None
    if own:
        from infra.kafka_io import producer as make_producer
        producer = make_producer(settings, **{"linger.ms": 20, "queue.buffering.max.messages": 500_000,
                                              "queue.buffering.max.kbytes": 1_048_576})
    klines_topic = topic(settings, "klines")

    def on_delivery(err, _msg):
        if err is not None:
            stats.delivery_errors += 1
            if len(stats.reasons) < 10:
                stats.reasons.append(str(err))

    def produce(key: bytes, value: bytes) -> None:
        while True:
            try:
                producer.produce(klines_topic, value=value, key=key, on_delivery=on_delivery)
                return
            except BufferError:
                producer.poll(0.05)

    market0 = stats.first_open_time
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        bar = Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        bar.start()
        task = bar.add_task("replay", total=stats.rows)
    wall0 = clock()       # after the progress bar's start-up: pacing counts from the first bar
    try:
        last_ot = None
        done = 0
        for item in frame_to_klines(df, interval):
            if isinstance(item, tuple):
                row, exc = item
                stats.rejected += 1
                send_reject(producer, settings, "ingest.replay", str(exc), orjson.dumps(row), row.get("symbol"))
                continue
            if speed and speed > 0 and item.open_time != last_ot:
                due = wall0 + (item.open_time - market0) / 1000.0 / speed
                delay = due - clock()
                if delay > 0:
                    producer.poll(0)
                    sleep(delay)
                last_ot = item.open_time
            produce(item.symbol.encode(), encode_kline(item))
            stats.produced += 1
            done += 1
            if done % 10_000 == 0:
                producer.poll(0)
                if bar is not None:
                    bar.update(task, completed=done)
        remaining = producer.flush(60)
        if remaining:
            raise RuntimeError(f"replay: {remaining} messages not delivered after 60 s")
        if bar is not None:
            bar.update(task, completed=stats.rows)
    finally:
        if bar is not None:
            bar.stop()
    if stats.delivery_errors:
        raise RuntimeError(f"replay: {stats.delivery_errors} delivery errors, e.g. {stats.reasons[:3]}")
    stats.seconds = time.perf_counter() - t_start
    log.info("replayed %d klines of %d symbols in %.1f s (%d rejected)", stats.produced, stats.symbols,
             stats.seconds, stats.rejected)
    return stats
